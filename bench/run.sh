#!/usr/bin/env bash
# bench/run.sh: tlsshim's benchmark (`make bench`; docs/performance.md).
#
# Installs what it needs (scripts/install-deps.sh --bench), builds the bench
# programs, starts a TLS and a plaintext server on loopback, stunnel (client
# mode) and socat (OPENSSL address) in front of the TLS one, and measures the
# same plaintext client program against the plaintext server (the ceiling),
# under LD_PRELOAD=libtlsshim.so, through stunnel and through socat, and the
# in-process OpenSSL client (the reference).  Contenders are interleaved
# (A B C A B C ...) and each figure is the median of the repetitions.  Prints
# one table; raw figures are kept in build/bench/results.txt.
#
# Knobs (environment):
#   BENCH_BYTES=N        bulk transfer size (default 1 GiB; e.g. 268435456)
#   BENCH_REPS=N         repetitions of the timed workloads (default 3)
#   BENCH_IDLE="1000 10000"  idle connection counts
#   BENCH_MANY=N         concurrent busy connections (default 256)
#   BENCH_ONLY="up down rtt conns resume many idle files callgrind"  a subset
#   BENCH_CG_BYTES=N     bytes moved under callgrind (default 64 MiB)
#   BUILD=dir            where libtlsshim.so is (default build)
# Everything runs on 127.0.0.1 and every step is bounded in time.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$root/$BUILD ;; esac
out=$BUILD/bench
lib=$BUILD/libtlsshim.so
BYTES=${BENCH_BYTES:-1073741824}
REPS=${BENCH_REPS:-3}
IDLE=${BENCH_IDLE:-1000 10000}
MANY=${BENCH_MANY:-256}
ONLY=${BENCH_ONLY:-up down rtt conns resume many idle files callgrind}
CG_BYTES=${BENCH_CG_BYTES:-67108864}
results=$out/results.txt
step_timeout=400

want() { [[ " $ONLY " == *" $1 "* ]]; }
say() { echo "bench: $*" >&2; }

bash "$root/scripts/install-deps.sh" --bench >&2
[ -f "$lib" ] || { say "$lib missing: run make first"; exit 1; }

mkdir -p "$out"
cflags=(-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Wshadow -Werror)
for p in server client; do
	if [ ! -x "$out/bench-$p" ] || [ "$root/bench/$p.c" -nt "$out/bench-$p" ] ||
		[ "$root/bench/bench.h" -nt "$out/bench-$p" ]; then
		gcc "${cflags[@]}" -o "$out/bench-$p" "$root/bench/$p.c" -lssl -lcrypto -lpthread
	fi
done
bash "$root/scripts/gen-certs.sh" "$out/certs"
ca=$out/certs/ca.pem
client=$out/bench-client

# --- helpers and servers ------------------------------------------------------

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true
	done
	rm -rf "$out/run"
}
trap cleanup EXIT
rm -rf "$out/run"
mkdir -p "$out/run"

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port: bounded wait until something listens on 127.0.0.1:port
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	say "nothing listens on port $1"
	exit 1
}

start_server() { # name [--tls cert key]: sets PORT
	local name=$1
	shift
	setsid "$out/bench-server" --port-file "$out/run/$name.port" --max-seconds 1800 "$@" \
		>"$out/run/$name.log" 2>&1 &
	pids+=("$!")
	for _ in $(seq 1 100); do
		[ -s "$out/run/$name.port" ] && break
		sleep 0.05
	done
	PORT=$(cat "$out/run/$name.port")
}

start_server tls --tls "$out/certs/server.pem" "$out/certs/server.key"
TLS_PORT=$PORT
start_server plain
PLAIN_PORT=$PORT
STUNNEL_PORT=$(free_port)
STUNNEL_NR_PORT=$(free_port)
SOCAT_PORT=$(free_port)

# stunnel in client mode, verifying like tlsshim does (chain to ca.pem, IP SAN).
cat >"$out/run/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $out/run/stunnel.log
[resume]
client = yes
accept = 127.0.0.1:$STUNNEL_PORT
connect = 127.0.0.1:$TLS_PORT
CAfile = $ca
verifyChain = yes
checkIP = 127.0.0.1
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[noresume]
client = yes
accept = 127.0.0.1:$STUNNEL_NR_PORT
connect = 127.0.0.1:$TLS_PORT
CAfile = $ca
verifyChain = yes
checkIP = 127.0.0.1
sessionResume = no
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
setsid stunnel4 "$out/run/stunnel.conf" >"$out/run/stunnel.out" 2>&1 &
STUNNEL_PID=$!
pids+=("$STUNNEL_PID")

# socat, a process per connection; -b 65536 (its default is 8192, which
# halves its bulk throughput here) to match the 64 KiB the others use.
setsid socat -b 65536 \
	"TCP-LISTEN:$SOCAT_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=4096" \
	"OPENSSL:127.0.0.1:$TLS_PORT,cafile=$ca,verify=1,nodelay" >"$out/run/socat.log" 2>&1 &
SOCAT_PID=$!
pids+=("$SOCAT_PID")
wait_port "$STUNNEL_PORT"
wait_port "$STUNNEL_NR_PORT"
wait_port "$SOCAT_PORT"

# run_one contender workload args...: one client run, its figures appended.
run_one() {
	local who=$1 wl=$2
	shift 2
	local cmd
	case $who in
	plaintext) cmd=("$client" --port "$PLAIN_PORT") ;;
	inproc) cmd=("$client" --tls "$ca" --port "$TLS_PORT") ;;
	inproc-resume) cmd=("$client" --tls "$ca" --resume --port "$TLS_PORT") ;;
	tlsshim) cmd=(env TLSSHIM_CA_FILE="$ca" LD_PRELOAD="$lib" "$client" --port "$TLS_PORT") ;;
	tlsshim-1t) cmd=(env TLSSHIM_CA_FILE="$ca" TLSSHIM_RELAY_THREADS=1 LD_PRELOAD="$lib" "$client"
		--port "$TLS_PORT") ;;
	noshim) cmd=("$client" --port "$PLAIN_PORT") ;;
	stunnel) cmd=("$client" --port "$STUNNEL_PORT") ;;
	stunnel-noresume) cmd=("$client" --port "$STUNNEL_NR_PORT") ;;
	socat) cmd=("$client" --port "$SOCAT_PORT") ;;
	*) say "unknown contender $who"; exit 1 ;;
	esac
	case $who in
	stunnel*) cmd+=(--watch "$STUNNEL_PID") ;;
	socat) cmd+=(--watch "$SOCAT_PID") ;;
	esac
	local line
	if ! line=$(timeout "$step_timeout" "${cmd[@]}" "$@"); then
		say "$wl/$who failed: ${cmd[*]} $*"
		line="failed=1"
	fi
	echo "$wl $who $line" >>"$results"
	say "$wl $who $line"
}

# interleave workload reps contenders... -- client args
interleave() {
	local wl=$1 reps=$2
	shift 2
	local who=()
	while [ "$1" != -- ]; do
		who+=("$1")
		shift
	done
	shift
	local w
	for _ in $(seq 1 "$reps"); do
		for w in "${who[@]}"; do
			run_one "$w" "$wl" "$@"
		done
	done
}

: >"$results"
{
	echo "meta nproc $(nproc)"
	echo "meta cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "meta kernel $(uname -r)"
	echo "meta openssl $(openssl version | cut -d' ' -f2)"
	echo "meta loadavg_before $(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$results"
start=$(date +%s)
ALL=(plaintext inproc tlsshim stunnel socat)

want up && interleave up "$REPS" "${ALL[@]}" -- up "$BYTES"
want down && interleave down "$REPS" "${ALL[@]}" -- down "$BYTES"
want rtt && interleave rtt "$REPS" "${ALL[@]}" -- rtt 20000 3
want conns && interleave conns "$REPS" plaintext inproc tlsshim stunnel-noresume socat -- \
	conns 2 20000
want resume && interleave resume "$REPS" plaintext inproc-resume tlsshim stunnel socat -- \
	conns 2 20000
# Many connections busy at once (1 KiB echoes, a thread each): where more
# than one relay thread can matter; tlsshim-1t is tlsshim held to one.
want many && interleave many "$REPS" plaintext inproc tlsshim stunnel socat tlsshim-1t -- \
	many "$MANY" 3 1024
if want idle; then
	for n in $IDLE; do
		if [ "$n" -le 2000 ]; then
			interleave "idle$n" 1 "${ALL[@]}" -- idle "$n"
		else
			# socat forks a process per connection: 10,000 would take gigabytes.
			interleave "idle$n" 1 plaintext inproc tlsshim stunnel -- idle "$n"
		fi
	done
fi
# On tmpfs when there is one, so that the disk's noise does not hide the shim's.
fdir=/dev/shm
[ -d "$fdir" ] && [ -w "$fdir" ] || fdir=$out/run
want files && interleave files 15 noshim tlsshim -- files 100000 "$fdir/tlsshim-bench-$$.dat"

if want callgrind; then
	for who in inproc tlsshim; do
		for dir in up down; do
			cg=$out/run/callgrind.$who.$dir
			case $who in
			inproc) cmd=("$client" --tls "$ca" --port "$TLS_PORT") ;;
			tlsshim) cmd=(env TLSSHIM_CA_FILE="$ca" LD_PRELOAD="$lib" "$client" --port "$TLS_PORT") ;;
			esac
			if timeout "$step_timeout" valgrind --tool=callgrind --callgrind-out-file="$cg" \
				--trace-children=yes "${cmd[@]}" "$dir" "$CG_BYTES" >/dev/null 2>"$cg.log"; then
				ir=$(grep -h '^summary:' "$cg"* 2>/dev/null | awk '{s += $2} END {print s}')
				echo "cg_$dir $who Ir=$ir bytes=$CG_BYTES" >>"$results"
				say "callgrind $who $dir: Ir=$ir"
				cp "$cg" "$out/callgrind.$who.$dir.out" 2>/dev/null || true
			else
				say "callgrind $who $dir failed (see $cg.log)"
			fi
		done
	done
fi
elapsed=$(($(date +%s) - start))
echo "meta loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"

python3 "$root/bench/table.py" "$results" "$BYTES" "$REPS" "$elapsed"
