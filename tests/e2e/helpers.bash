# helpers.bash: shared setup for the end-to-end tests (loaded by every .bats
# file with `load helpers`).
#
# The tests run real, unmodified programs (curl, wget, nc, python, redis-cli)
# under LD_PRELOAD=libtlsshim.so against real servers (nginx, openssl
# s_server, redis-server, small python servers) on loopback only.
#
# Rules kept here so the .bats files need not repeat them:
# - every command a test runs is bounded by `timeout`, and every test by
#   BATS_TEST_TIMEOUT;
# - every background process is started with start_bg, which records its pid;
#   e2e_teardown stops each one by that pid (and its process group);
# - nothing sleeps for a fixed time: `waitfor` polls a condition to a deadline;
# - servers bind 127.0.0.1 and ::1 only (::1 only when the host has it), on a
#   port chosen by free_port.
#
# Environment knobs:
#   TLSSHIM_LIB    preload value (default build/libtlsshim.so); may list
#                  several objects, e.g. a sanitizer runtime first
#   TLSSHIM_BIN    the CLI (default build/tlsshim)
#   TLSSHIM_CERTS  reuse an existing gen-certs.sh output directory
#   TLSSHIM_E2E_TIMEOUT  bound on each client command, seconds (default 20)

bats_require_minimum_version 1.5.0

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
E2E=$ROOT/tests/e2e
PY=/usr/bin/python3
WAITFOR=$E2E/waitfor
PYSERVER=$E2E/pyserver.py
# shellcheck disable=SC2034 # used by the .bats files
PYCLIENT=$E2E/pyclient.py
: "${TLSSHIM_LIB:=$ROOT/build/libtlsshim.so}"
: "${TLSSHIM_BIN:=$ROOT/build/tlsshim}"
: "${TLSSHIM_E2E_TIMEOUT:=20}"
: "${BATS_TEST_TIMEOUT:=120}"
# How long a background server may live at most, should teardown never run.
SERVER_LIFETIME=300

# A clean slate: the caller's shell must not configure the shim for us.
unset LD_PRELOAD TLSSHIM_CONFIG TLSSHIM_CA_FILE TLSSHIM_LOG_STDERR \
  TLSSHIM_DEBUG TLSSHIM_HANDSHAKE_TIMEOUT

# --- setup and teardown -------------------------------------------------

# e2e_setup_file: call from setup_file. Fails every test of the file if the
# library is missing, and generates (or reuses) the test PKI in $CERTS.
e2e_setup_file() {
  local obj
  for obj in ${TLSSHIM_LIB//:/ }; do
    if [[ $obj == */* && ! -f $obj ]]; then
      echo "missing $obj: run 'make' first (or set TLSSHIM_LIB)" >&2
      return 1
    fi
  done
  export CERTS=${TLSSHIM_CERTS:-$BATS_FILE_TMPDIR/certs}
  "$ROOT/scripts/gen-certs.sh" "$CERTS"
}

# e2e_teardown: call from teardown. Stops every process start_bg started.
e2e_teardown() {
  local pid pidfile=$BATS_TEST_TMPDIR/.bg-pids
  [[ -f $pidfile ]] || return 0
  while read -r pid; do
    stop_pid "$pid" TERM
  done <"$pidfile"
  rm -f "$pidfile"
}

# start_bg NAME CMD...: run CMD in the background, bounded by `timeout`
# (which makes it the leader of its own process group), with stdout and
# stderr in $BATS_TEST_TMPDIR/NAME.out and NAME.err. Sets BG_PID.
# fd 3 is closed so that bats does not wait for the process.
start_bg() {
  local name=$1
  shift
  timeout -k 5 "$SERVER_LIFETIME" "$@" \
    >"$BATS_TEST_TMPDIR/$name.out" 2>"$BATS_TEST_TMPDIR/$name.err" 3>&- &
  BG_PID=$!
  echo "$BG_PID" >>"$BATS_TEST_TMPDIR/.bg-pids"
}

# stop_pid PID [SIGNAL]: signal PID's process group (or PID alone), wait up to
# 5 s for it to exit, then SIGKILL it; reap it.
stop_pid() {
  local pid=$1 sig=${2:-TERM}
  if kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null; then
    if ! "$WAITFOR" -t 5 gone "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# --- ports and waiting ---------------------------------------------------

have_ipv6() {
  [[ -r /proc/net/if_inet6 ]] &&
    grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6
}

# Number of listening sockets a dual-address server opens.
listen_count() {
  if have_ipv6; then echo 2; else echo 1; fi
}

# free_port: print a TCP port that is free on 127.0.0.1 (and ::1) right now.
free_port() {
  "$PY" - <<'PY'
import socket
for _ in range(50):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        s6 = socket.socket(socket.AF_INET6)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.bind(("::1", port))
        s6.close()
    except OSError as e:
        # EADDRNOTAVAIL/EAFNOSUPPORT: no ::1 on this host; IPv4 is enough.
        if e.errno not in (97, 99):
            s.close()
            continue
    s.close()
    print(port)
    break
PY
}

# wait_listen PORT [COUNT] [NAME]: wait (10 s) until COUNT sockets listen on
# PORT; on timeout show the named server's logs and fail.
wait_listen() {
  local port=$1 count=${2:-1} name=${3:-}
  if ! "$WAITFOR" -t 10 listen "$port" "$count"; then
    if [[ -n $name ]]; then
      echo "--- $name stdout:" >&2
      cat "$BATS_TEST_TMPDIR/$name.out" >&2 || true
      echo "--- $name stderr:" >&2
      cat "$BATS_TEST_TMPDIR/$name.err" >&2 || true
    fi
    return 1
  fi
}

# --- servers -------------------------------------------------------------

# start_nginx PORT CERT: nginx (single process, own prefix in the test's
# temp dir) serving TLS with $CERTS/CERT.pem on 127.0.0.1:PORT and
# [::1]:PORT. Files put in $BATS_TEST_TMPDIR/nginx-PORT/html/files/ are
# served under /files/; every other request is answered with one line:
#   tlsshim-e2e ok proto=<TLS version> sni=<SNI> uri=<request URI>
start_nginx() {
  local port=$1 cert=$2 dir=$BATS_TEST_TMPDIR/nginx-$1
  mkdir -p "$dir/html/files"
  # shellcheck disable=SC2016 # nginx's variables, not the shell's
  nginx_tls "$port" "$CERTS/$cert.pem" "$CERTS/$cert.key" \
    "location /files/ { root $dir/html; }" \
    'tlsshim-e2e ok proto=$ssl_protocol sni=$ssl_server_name uri=$request_uri'
}

# nginx_tls PORT CERT KEY EXTRA REPLY: the TLS-only nginx both starters use,
# on 127.0.0.1:PORT (and [::1]:PORT), in $BATS_TEST_TMPDIR/nginx-PORT; EXTRA
# goes into the server block, REPLY (nginx variables allowed) answers `/`.
nginx_tls() {
  local port=$1 cert=$2 key=$3 extra=$4 reply=$5 dir=$BATS_TEST_TMPDIR/nginx-$1
  mkdir -p "$dir"
  local listen6=
  have_ipv6 && listen6="listen [::1]:$port ssl;"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-64}; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  default_type text/plain;
  server {
    listen 127.0.0.1:$port ssl;
    $listen6
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    $extra
    location / {
      return 200 "$reply\n";
    }
  }
}
EOF
  start_bg "nginx-$port" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_listen "$port" "$(listen_count)" "nginx-$port" || {
    cat "$dir/error.log" >&2
    return 1
  }
}

# start_s_server PORT CERT MODE...: `openssl s_server` with $CERTS/CERT.pem,
# one process on 127.0.0.1:PORT and one on [::1]:PORT. MODE is s_server's
# own options, e.g. -rev (answers each line reversed) or -www.
start_s_server() {
  local port=$1 cert=$2
  shift 2
  start_bg "s_server4-$port" openssl s_server -quiet -accept "127.0.0.1:$port" \
    -cert "$CERTS/$cert.pem" -key "$CERTS/$cert.key" "$@"
  if have_ipv6; then
    start_bg "s_server6-$port" openssl s_server -quiet -accept "[::1]:$port" \
      -cert "$CERTS/$cert.pem" -key "$CERTS/$cert.key" "$@"
  fi
  wait_listen "$port" "$(listen_count)" "s_server4-$port"
}

# start_redis PORT: redis-server with TLS only (no plaintext port), no client
# certificates required, no persistence.
start_redis() {
  local port=$1 dir=$BATS_TEST_TMPDIR/redis-$1 bind=127.0.0.1
  mkdir -p "$dir"
  have_ipv6 && bind="127.0.0.1 ::1"
  start_bg "redis-$port" redis-server --port 0 --tls-port "$port" --bind "$bind" \
    --tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key" \
    --tls-ca-cert-file "$CERTS/ca.pem" --tls-auth-clients no \
    --save '' --appendonly no --dir "$dir" --logfile "$dir/redis.log" \
    --daemonize no
  wait_listen "$port" "$(listen_count)" "redis-$port" || {
    cat "$dir/redis.log" >&2
    return 1
  }
}

# start_plain PORT RECORD: plaintext server that records every byte it
# receives into RECORD (see pyserver.py).
start_plain() {
  start_bg "plain-$1" "$PY" "$PYSERVER" plain "$1" "$2"
  wait_listen "$1" "$(listen_count)" "plain-$1"
}

# start_silent PORT: server that accepts and never says anything.
start_silent() {
  start_bg "silent-$1" "$PY" "$PYSERVER" silent "$1"
  wait_listen "$1" "$(listen_count)" "silent-$1"
}

# --- running clients ----------------------------------------------------

# shim [NAME=VALUE...] CMD...: run CMD under the shim, trusting only the test
# CA, with log lines copied to stderr. Only CMD is preloaded (env execs it).
shim() {
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env LD_PRELOAD="$TLSSHIM_LIB" \
    TLSSHIM_CA_FILE="$CERTS/ca.pem" TLSSHIM_LOG_STDERR=1 "$@"
}

# preload_only [NAME=VALUE...] CMD...: CMD with the shim and no trust at all.
preload_only() {
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env LD_PRELOAD="$TLSSHIM_LIB" "$@"
}

# tlsshim_cli ARGS...: the CLI as a user runs it. TLSSHIM_LIB is removed from
# its environment so that `run` has to find the library beside itself.
tlsshim_cli() {
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env -u TLSSHIM_LIB "$TLSSHIM_BIN" "$@"
}

# bounded CMD...: CMD without the shim, bounded in time.
bounded() {
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" "$@"
}

# --- assertions (they print what they saw when they fail) -------------------

show_run() {
  {
    echo "status: ${status:-}"
    echo "--- stdout:"
    printf '%s\n' "${output:-}"
    echo "--- stderr:"
    printf '%s\n' "${stderr:-}"
  } >&2
}

assert_status() {
  if [[ $status -ne $1 ]]; then
    echo "expected exit status $1, got $status" >&2
    show_run
    return 1
  fi
}

# assert_output_has TEXT: stdout of the last `run` contains TEXT.
assert_output_has() {
  if [[ $output != *"$1"* ]]; then
    echo "stdout lacks: $1" >&2
    show_run
    return 1
  fi
}

# assert_stderr_has TEXT: stderr of the last `run --separate-stderr` has TEXT.
assert_stderr_has() {
  if [[ ${stderr:-} != *"$1"* ]]; then
    echo "stderr lacks: $1" >&2
    show_run
    return 1
  fi
}

# assert_stderr_lacks TEXT: stderr of the last run does not contain TEXT.
assert_stderr_lacks() {
  if [[ ${stderr:-} == *"$1"* ]]; then
    echo "stderr unexpectedly has: $1" >&2
    show_run
    return 1
  fi
}

# assert_log EVENT STAGE REASON [X509_ERR]: some stderr line of the last run
# is a tlsshim log line with event=EVENT, stage=STAGE, a reason containing
# REASON and, if given, x509_err=X509_ERR.
assert_log() {
  local event=$1 stage=$2 reason=$3 x509=${4:-} line
  while IFS= read -r line; do
    [[ $line =~ ^tlsshim\[[0-9]+\]:\  ]] || continue
    [[ " $line " == *" event=$event "* ]] || continue
    [[ " $line " == *" stage=$stage "* ]] || continue
    [[ $line == *"reason=\""*"$reason"* ]] || continue
    [[ -z $x509 || " $line " == *" x509_err=$x509 "* ]] || continue
    return 0
  done <<<"${stderr:-}"
  echo "no log line with event=$event stage=$stage reason~\"$reason\"${x509:+ x509_err=$x509}" >&2
  show_run
  return 1
}

# count_in FILE TEXT: print how many times TEXT occurs in FILE (binary-safe).
count_in() {
  grep -a -o -F -- "$2" "$1" 2>/dev/null | wc -l
}

# new_marker: a string that occurs nowhere by chance.
new_marker() {
  echo "MARKER-$RANDOM$RANDOM-$$-$BATS_TEST_NUMBER"
}

# --- trust policy (policy.bats) -------------------------------------------

# shim_conf CONF [NAME=VALUE...] CMD...: run CMD under the shim configured by
# the file CONF alone (TLSSHIM_CONFIG; no TLSSHIM_CA_FILE), with log lines
# copied to stderr.
shim_conf() {
  local conf=$1
  shift
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env LD_PRELOAD="$TLSSHIM_LIB" \
    TLSSHIM_CONFIG="$conf" TLSSHIM_LOG_STDERR=1 "$@"
}

# write_conf NAME: write standard input to $BATS_TEST_TMPDIR/NAME.cnf and
# print that path. Use: conf=$(write_conf x <<EOF ... EOF)
write_conf() {
  local path=$BATS_TEST_TMPDIR/$1.cnf
  cat >"$path"
  echo "$path"
}

# pin_of NAME: the "sha256//BASE64" SPKI pin of $CERTS/NAME.pem, from the
# pins.txt that gen-certs.sh writes.
pin_of() {
  local pin
  pin=$(awk -v n="$1" '$1 == n { print $2 }' "$CERTS/pins.txt")
  if [[ -z $pin ]]; then
    echo "pin_of: no pin for $1 in $CERTS/pins.txt" >&2
    return 1
  fi
  echo "$pin"
}

# log_field LINE KEY: print the value of KEY in a log line, unquoted
# (key="a b" or key=word); status 1 when the line has no such field.
log_field() {
  local line=" $1" key=$2
  local quoted="[[:space:]]$key=\"([^\"]*)\"" bare="[[:space:]]$key=([^[:space:]]*)"
  if [[ $line =~ $quoted ]]; then
    echo "${BASH_REMATCH[1]}"
  elif [[ $line =~ $bare ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    return 1
  fi
}

# assert_log_fields FIELD...: some tlsshim log line on stderr of the last
# `run --separate-stderr` has every FIELD, where FIELD is
#   key=value   the field equals value exactly (quotes removed), or
#   key~TEXT    the field contains TEXT; TEXT may be alternatives "A|B".
assert_log_fields() {
  local line field key want val alt ok
  local -a alts
  while IFS= read -r line; do
    [[ $line =~ ^tlsshim\[[0-9]+\]:\  ]] || continue
    ok=1
    for field in "$@"; do
      key=${field%%[=~]*}
      want=${field:${#key}+1}
      if ! val=$(log_field "$line" "$key"); then
        ok=0
      elif [[ ${field:${#key}:1} == = ]]; then
        [[ $val == "$want" ]] || ok=0
      else
        IFS='|' read -r -a alts <<<"$want"
        ok=0
        for alt in "${alts[@]}"; do
          [[ $val == *"$alt"* ]] && ok=1
        done
      fi
      [[ $ok -eq 1 ]] || break
    done
    [[ $ok -eq 1 ]] && return 0
  done <<<"${stderr:-}"
  echo "no tlsshim log line with: $*" >&2
  show_run
  return 1
}

# start_nginx_with PORT CERTFILE KEYFILE [DIRECTIVE...]: like start_nginx,
# but with certificate and key given as paths (a full chain file works) and
# extra server-block DIRECTIVEs (each a complete "name value;"). Every request
# is answered with one line:
#   tlsshim-e2e ok proto=P cipher=C sni=S client_verify=V client_dn=D uri=U
start_nginx_with() {
  local port=$1 cert=$2 key=$3
  shift 3
  mkdir -p "$BATS_TEST_TMPDIR/nginx-$port/html"
  # shellcheck disable=SC2016 # nginx's variables, not the shell's
  nginx_tls "$port" "$cert" "$key" "$*" \
    'tlsshim-e2e ok proto=$ssl_protocol cipher=$ssl_cipher sni=$ssl_server_name client_verify=$ssl_client_verify client_dn=$ssl_client_s_dn uri=$request_uri'
}

# NETNS_V4, NETNS_V6: addresses that in_netns puts on the namespace's own
# loopback interface: "network" (non-loopback) addresses for the shim's UDP
# policy whose traffic never leaves the test's namespace.
# shellcheck disable=SC2034 # used by the .bats files
NETNS_V4=198.51.100.1
# shellcheck disable=SC2034
NETNS_V6=2001:db8::1

# have_netns: whether this host lets us create a network namespace.
have_netns() {
  unshare -n -- true 2>/dev/null
}

# in_netns CMD...: run CMD in a new network namespace with lo up, holding
# 127.0.0.1, ::1, $NETNS_V4 and $NETNS_V6. Nothing sent there can reach a
# real network: there is no other interface.
in_netns() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare -n -- sh -c 'ip link set lo up &&
    ip addr add "$1/32" dev lo &&
    { ip -6 addr add "$2/128" dev lo nodad 2>/dev/null || true; } &&
    shift 2 && exec "$@"' in_netns "$NETNS_V4" "$NETNS_V6" "$@"
}
