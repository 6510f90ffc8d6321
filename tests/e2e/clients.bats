#!/usr/bin/env bats
# Accepted connections: stock plaintext clients, unmodified, run under the
# shim against real TLS servers on loopback. Each client speaks plaintext to
# a port that only speaks TLS, so the expected answer can only arrive if the
# shim wrapped the connection in TLS and the certificate verified.

load helpers

setup_file() {
  e2e_setup_file
}

setup() {
  port=$(free_port)
}

teardown() {
  e2e_teardown
}

@test "control: without the shim, curl to the TLS port gets no TLS answer" {
  start_nginx "$port" server
  run --separate-stderr bounded curl -sS "http://localhost:$port/control"
  [[ $output != *"tlsshim-e2e ok"* ]] || {
    show_run
    false
  }
}

# curl (since 7.78) resolves "localhost" itself, without getaddrinfo, so the
# shim never learns the name and verifies the IP SAN instead: no SNI here.
# The name path (SNI, DNS SAN) is covered by wget, nc and python below.
@test "curl http://localhost: nginx answers over TLS" {
  start_nginx "$port" server
  run --separate-stderr shim curl -sS "http://localhost:$port/curl-name"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "uri=/curl-name"
}

@test "curl http://127.0.0.1: literal IPv4 verified against the IP SAN" {
  start_nginx "$port" server
  run --separate-stderr shim curl -sS "http://127.0.0.1:$port/curl-ipv4"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "uri=/curl-ipv4"
}

@test "curl http://[::1]: literal IPv6 verified against the IP SAN" {
  have_ipv6 || skip "no ::1 on this host"
  start_nginx "$port" server
  run --separate-stderr shim curl -sS -g "http://[::1]:$port/curl-ipv6"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "uri=/curl-ipv6"
}

@test "curl: several requests on one kept-alive connection" {
  start_nginx "$port" server
  run --separate-stderr shim curl -sS "http://localhost:$port/one" \
    "http://localhost:$port/two" "http://localhost:$port/three"
  assert_status 0
  assert_output_has "uri=/one"
  assert_output_has "uri=/two"
  assert_output_has "uri=/three"
}

@test "curl: a 4 MiB download arrives intact" {
  start_nginx "$port" server
  local dir=$BATS_TEST_TMPDIR/nginx-$port
  head -c 4194304 /dev/urandom >"$dir/html/files/big.bin"
  run --separate-stderr shim curl -sS -o "$BATS_TEST_TMPDIR/got.bin" \
    "http://localhost:$port/files/big.bin"
  assert_status 0
  cmp "$dir/html/files/big.bin" "$BATS_TEST_TMPDIR/got.bin"
}

# More than one relay thread: past 64 connections a second starts (when the
# process may use two CPUs), and every stream stays whole and its own.
relay_threads_want() { # connections [setting]: what the policy allows
  local conns=$1 cap=${2:-auto} cpus
  cpus=$(nproc)
  [ "$cap" = auto ] && cap=$((cpus < 4 ? cpus : 4))
  local need=$(((conns + 63) / 64))
  echo $((need < cap ? need : cap))
}

@test "python3: 150 concurrent keep-alive connections, relay threads spread them" {
  NGINX_WORKER_CONNECTIONS=512 start_nginx "$port" server
  run --separate-stderr shim "$PY" "$PYCLIENT" many 150 4 localhost "$port"
  assert_status 0
  assert_output_has "many=ok conns=150"
  assert_output_has "relay_threads=$(relay_threads_want 150)"
  [ "$(grep -c 'GET /many/' "$BATS_TEST_TMPDIR/nginx-$port/access.log")" -eq 600 ]
}

@test "python3: relay_threads=1 keeps 150 connections on one relay thread" {
  NGINX_WORKER_CONNECTIONS=512 start_nginx "$port" server
  run --separate-stderr shim TLSSHIM_RELAY_THREADS=1 "$PY" "$PYCLIENT" many 150 2 \
    localhost "$port"
  assert_status 0
  assert_output_has "many=ok conns=150"
  assert_output_has "relay_threads=1"
}

# 150 wrapped connections would take 450 descriptors (the program's, the
# relay's socketpair end, the TCP socket): more than a soft limit of 256.
# Idle ones park (relay_park = auto, the default), keeping only the program's
# descriptor, so they all open and stay usable, and TCP_NODELAY set on a
# parked one reaches its TCP socket (shim/relay.c, "Parking").
@test "python3: 150 idle connections under a 256-descriptor limit (idle ones parked)" {
  [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = 0 ] ||
    skip "io_uring is disabled on this host"
  NGINX_WORKER_CONNECTIONS=512 start_nginx "$port" server
  run --separate-stderr shim sh -c 'ulimit -Sn 256 && exec "$@"' sh \
    "$PY" "$PYCLIENT" hold 150 localhost "$port"
  assert_status 0
  assert_output_has "hold=ok conns=150"
  local fds
  fds=$(sed -n 's/^fds=//p' <<<"$output")
  [ "$fds" -lt 256 ]
  [ "$(grep -c 'GET /hold/' "$BATS_TEST_TMPDIR/nginx-$port/access.log")" -eq 300 ]
}

@test "python3: relay_park=off, the same 150 connections run out of descriptors" {
  NGINX_WORKER_CONNECTIONS=512 start_nginx "$port" server
  run --separate-stderr shim TLSSHIM_RELAY_PARK=off sh -c 'ulimit -Sn 256 && exec "$@"' sh \
    "$PY" "$PYCLIENT" hold 150 localhost "$port"
  assert_status 3
  assert_output_has "hold=failed"
}

# make_quota_cgroup: a child of this process's cgroup limited to half a CPU
# (cgroup v1 cpu controller or v2 cpu.max); prints its directory, or fails
# when this host does not let us make one.
make_quota_cgroup() {
  local parent d
  parent=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup)
  for base in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct; do
    if [ -n "$parent" ] && [ -w "$base$parent/cgroup.procs" ]; then
      d=$base${parent%/}/tlsshim-e2e-$$-$BATS_TEST_NUMBER
      mkdir "$d" 2>/dev/null && echo 50000 >"$d/cpu.cfs_quota_us" && echo "$d" && return 0
      rmdir "$d" 2>/dev/null
    fi
  done
  parent=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
  d=/sys/fs/cgroup${parent%/}/tlsshim-e2e-$$-$BATS_TEST_NUMBER
  if grep -qw cpu "/sys/fs/cgroup${parent%/}/cgroup.subtree_control" 2>/dev/null &&
    mkdir "$d" 2>/dev/null; then
    echo "50000 100000" >"$d/cpu.max" && echo "$d" && return 0
    rmdir "$d" 2>/dev/null
  fi
  return 1
}

@test "python3 in a cgroup with half a CPU of quota: one relay thread for 150 connections" {
  local cg
  cg=$(make_quota_cgroup) || skip "cannot make a cgroup with a CPU quota here"
  NGINX_WORKER_CONNECTIONS=512 start_nginx "$port" server
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  run --separate-stderr shim sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" \
    "$PY" "$PYCLIENT" many 150 2 localhost "$port"
  rmdir "$cg"
  assert_status 0
  assert_output_has "many=ok conns=150"
  assert_output_has "relay_threads=1"
}

@test "wget -qO- http://localhost:" {
  start_nginx "$port" server
  run --separate-stderr shim wget -q -O - --tries=1 --timeout=10 \
    "http://localhost:$port/wget"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "sni=localhost uri=/wget"
}

@test "nc (openbsd) to s_server -rev: line reversed, half-close ends it" {
  start_s_server "$port" server -rev
  run --separate-stderr shim nc -N -w 5 localhost "$port" <<<"hello tlsshim"
  assert_status 0
  assert_output_has "mihsslt olleh"
}

@test "python3 plain socket: send/recv, getpeername is the real peer" {
  start_s_server "$port" server -rev
  run --separate-stderr shim "$PY" "$PYCLIENT" connect --send "hello python" \
    --recv-line localhost "$port"
  assert_status 0
  assert_output_has "recv=nohtyp olleh"
  [[ $output =~ connect=ok\ peer=(127\.0\.0\.1|::1):$port ]] || {
    show_run
    false
  }
}

@test "python3 urllib.request.urlopen(timeout=5) (non-blocking connect)" {
  start_nginx "$port" server
  run --separate-stderr shim "$PY" "$PYCLIENT" urlopen \
    "http://localhost:$port/urllib"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "sni=localhost uri=/urllib"
}

@test "redis-cli PING/SET/GET to a TLS-only redis-server" {
  start_redis "$port"
  local key=e2e-$RANDOM
  run --separate-stderr shim redis-cli -h localhost -p "$port" PING
  assert_status 0
  [[ $output == PONG ]] || {
    show_run
    false
  }
  run --separate-stderr shim redis-cli -h localhost -p "$port" SET "$key" v-$$
  assert_status 0
  [[ $output == OK ]] || {
    show_run
    false
  }
  run --separate-stderr shim redis-cli -h 127.0.0.1 -p "$port" GET "$key"
  assert_status 0
  [[ $output == "v-$$" ]] || {
    show_run
    false
  }
}

@test "control: without the shim, redis-cli cannot talk to the TLS-only port" {
  start_redis "$port"
  run --separate-stderr bounded redis-cli -h localhost -p "$port" PING
  [[ $output != PONG ]] || {
    show_run
    false
  }
}
