#!/usr/bin/env bats
# Inbound mode (issue 7): a legacy server that listens in plaintext, started
# with LD_PRELOAD=libtlsshim.so and a configuration file, accepts only TLS
# connections with the operator's certificate, from the allowed networks and
# (when asked) holders of approved client certificates, without a change to
# the server. See docs/inbound.md.
#
# Servers under the shim (plaintext programs all): python3 -m http.server,
# nginx serving plain HTTP (single process, and master + workers), redis-server
# without TLS, tests/e2e/echo_server.c (poll + accept4, or fork + accept; it
# logs what accept()/getpeername()/getsockname() told it and every byte it
# received), a small python proxy (inbound and outbound in one process).
# Remote clients run WITHOUT the shim: curl, openssl s_client, redis-cli
# --tls, nc, sslscan, and inclient.py (written by setup_file, see the end of
# this file): TLS echo exchanges, session resumption, stalled connections,
# raw plaintext.
#
# What the shim logs (TLSSHIM_LOG_STDERR=1) lands in the server's
# $BATS_TEST_TMPDIR/NAME.err beside the program's own messages (nginx: its
# error.log too). Log lines are written by the relay thread, possibly after
# the client has given up, so tests wait for them with `waitfor grep`. The
# shim folds identical inbound failures from one client address (any port)
# on one listener into one line; a test that needs a line per connection
# uses a source address per connection (127.0.0.x, all on lo).
#
# "The program never saw it" is checked after a later, successful connection
# has been served (an ordering barrier), from the program's own log: python's
# request log, echo_server's recv lines, redis' command statistics.
#
# Networks: loopback only, except the origin-restriction test, which creates
# a network namespace and a veth pair of its own (10.231.X.1/30 on the host
# side, 10.231.X.2/30 inside) and removes them in teardown.
#
# Environment (besides helpers.bash's): TLSSHIM_OCSP reuses a gen-ocsp.sh
# output directory, as TLSSHIM_CERTS does for gen-certs.sh.

# bats' `run` sets status, output and stderr; shellcheck cannot see that.
# shellcheck disable=SC2030,SC2031,SC2154

load helpers

setup_file() {
  e2e_setup_file
  inbound_in_build
  export INCLIENT=$BATS_FILE_TMPDIR/inclient.py
  write_inclient >"$INCLIENT"
  export ECHO_SERVER=$BATS_FILE_TMPDIR/echo_server
  gcc -O2 -Wall -o "$ECHO_SERVER" "$E2E/echo_server.c"
}

setup() {
  port=$(free_port)
  TMP=$BATS_TEST_TMPDIR
  NETNS=
}

teardown() {
  e2e_teardown
  netns_cleanup
  [[ -z ${NOBODY_DIR:-} ]] || rm -rf "$NOBODY_DIR"
}

# --- local helpers ----------------------------------------------------------

# inbound_in_build: fail (every test) with a clear message when the library
# has no inbound mode (it does not export accept4).
inbound_in_build() {
  local obj
  for obj in ${TLSSHIM_LIB//:/ }; do
    [[ $(basename "$obj") == libtlsshim* ]] || continue
    if ! nm -D --defined-only "$obj" 2>/dev/null | grep -qE ' T accept4$'; then
      echo "inbound mode is not in $obj (it exports no accept4)" >&2
      return 1
    fi
  done
}

# base_conf [LINE...]: the [tlsshim] section most tests share: outbound trust
# in ca.pem, server.pem as the default inbound certificate, a 2 s handshake
# bound, log lines on stderr; then LINEs (still in [tlsshim]).
base_conf() {
  cat <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
cert = $CERTS/server.pem
key = $CERTS/server.key
handshake_timeout = 2
log_stderr = yes
EOF
  [[ $# -eq 0 ]] || printf '%s\n' "$@"
}

# serve NAME CONF CMD...: start CMD in the background under the shim,
# configured by the file CONF (start_bg: output in $TMP/NAME.out/.err).
serve() {
  local name=$1 conf=$2
  shift 2
  start_bg "$name" env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$conf" \
    TLSSHIM_LOG_STDERR=1 "$@"
}

# start_http NAME CONF PORT [BIND]: python3 -m http.server under the shim on
# BIND (default 127.0.0.1):PORT, serving "inbound-page NAME" as /. Its log
# (one line per request, with the client's address) is $TMP/NAME.err.
start_http() {
  local name=$1 conf=$2 hport=$3 bind=${4:-127.0.0.1} www=$BATS_TEST_TMPDIR/www-$1
  mkdir -p "$www"
  echo "inbound-page $name" >"$www/index.html"
  serve "$name" "$conf" "$PY" -u -m http.server --bind "$bind" --directory "$www" "$hport"
  wait_listen "$hport" 1 "$name"
}

# start_echo NAME CONF ADDRESS [ECHO_SERVER_OPTION...]: echo_server under the
# shim (CONF "-" for no shim at all); waits until it listens.
start_echo() {
  local name=$1 conf=$2 addr=$3
  shift 3
  if [[ $conf == - ]]; then
    start_bg "$name" "$ECHO_SERVER" "$@" "$addr"
  else
    serve "$name" "$conf" "$ECHO_SERVER" "$@" "$addr"
  fi
  if ! "$WAITFOR" -t 10 grep "$BATS_TEST_TMPDIR/$name.out" "listening addr="; then
    cat "$BATS_TEST_TMPDIR/$name.out" "$BATS_TEST_TMPDIR/$name.err" >&2
    return 1
  fi
  if [[ $addr != unix:* ]]; then
    wait_listen "${addr##*:}" 1 "$name"
  fi
}

# wait_log FILE EVENTS [MORE_REGEX]: wait (10 s) until FILE has a tlsshim line
# with event=one of EVENTS ("a|b") and dir=in, and MORE_REGEX later on the
# line when given; show the file and fail otherwise.
wait_log() {
  local file=$1 events=$2 more=${3:-}
  local re="tlsshim\\[[0-9]+\\]: [^\\n]*event=($events)[ \\n][^\\n]*dir=in[ \\n]"
  [[ -z $more ]] || re+="[^\\n]*$more"
  if ! "$WAITFOR" -t 10 grep "$file" "$re"; then
    echo "no log line event=($events) dir=in${more:+ ...$more} in $file:" >&2
    cat "$file" >&2
    return 1
  fi
}

# assert_log_in FILE FIELD...: assert_log_fields on the lines of FILE.
assert_log_in() {
  local file=$1
  shift
  local stderr
  # shellcheck disable=SC2034 # read by assert_log_fields
  stderr=$(cat "$file")
  assert_log_fields "$@"
}

# inlog_count FILE EVENT: number of tlsshim lines with event=EVENT dir=in.
inlog_count() {
  grep -cE "tlsshim\[[0-9]+\]: .*event=$2( .*)? dir=in( |$)" "$1" || true
}

# re_escape TEXT: TEXT with the regex metacharacters of addresses escaped.
re_escape() {
  local s=${1//./\\.}
  s=${s//\[/\\[}
  echo "${s//\]/\\]}"
}

# lacks FILE TEXT: FILE does not contain TEXT (shows FILE when it does).
lacks() {
  if grep -qaF -- "$2" "$1" 2>/dev/null; then
    echo "$1 unexpectedly contains: $2" >&2
    cat "$1" >&2
    return 1
  fi
}

# has FILE TEXT: FILE contains TEXT (shows FILE when it does not).
has() {
  if ! grep -qaF -- "$2" "$1" 2>/dev/null; then
    echo "$1 lacks: $2" >&2
    cat "$1" >&2 2>/dev/null || true
    return 1
  fi
}

# wait_has FILE TEXT: wait (10 s) until FILE contains TEXT (a fixed string).
wait_has() {
  local re
  re=$("$PY" -c 'import re, sys; print(re.escape(sys.argv[1]))' "$2")
  if ! "$WAITFOR" -t 10 grep "$1" "$re"; then
    echo "$1 never got: $2" >&2
    cat "$1" >&2 2>/dev/null || true
    return 1
  fi
}

# get URL [CURL_OPTION...]: `run` curl (no shim) with the test CA.
get() {
  local url=$1
  shift
  run --separate-stderr bounded curl -sS --cacert "$CERTS/ca.pem" "$@" "$url"
}

# assert_refused: the last `run` of a client failed and printed no page.
assert_refused() {
  if [[ $status -eq 0 || $output == *inbound-page* || $output == *inbound-nginx* ]]; then
    echo "expected a refused connection (non-zero status, no page)" >&2
    show_run
    return 1
  fi
}

# --- capture (evidence on the wire) -------------------------------------------

# capture_start PORT...: tcpdump on lo for PORTs and a control port.
capture_start() {
  [[ $(id -u) -eq 0 ]] || skip "tcpdump on lo needs root"
  command -v tcpdump >/dev/null || skip "tcpdump is not installed"
  ctl_port=$(free_port)
  ctl_marker=CONTROL-$(new_marker)
  pcap=$TMP/cap.pcap
  local filter="tcp port $ctl_port" p
  for p in "$@"; do filter+=" or tcp port $p"; done
  start_bg tcpdump tcpdump --immediate-mode -i lo -U -n -Z root -w "$pcap" "$filter"
  CAPTURE_PID=$BG_PID
  "$WAITFOR" -t 10 grep "$TMP/tcpdump.err" "listening on" || {
    cat "$TMP/tcpdump.err" >&2
    false
  }
}

# capture_stop: a control exchange in clear on the control port, wait until
# its marker is in the capture (so every earlier packet is too), stop tcpdump.
capture_stop() {
  start_plain "$ctl_port" "$TMP/control-received"
  bounded "$PY" "$PYCLIENT" connect --send "$ctl_marker" 127.0.0.1 "$ctl_port" \
    >"$TMP/control-client.out"
  "$WAITFOR" -t 10 grep "$pcap" "$ctl_marker" || {
    echo "control marker never showed up in the capture" >&2
    false
  }
  stop_pid "$CAPTURE_PID" INT
}

# capture_lacks TEXT: TEXT never crossed loopback in clear.
capture_lacks() {
  local n
  n=$(count_in "$pcap" "$1")
  if [[ $n -ne 0 ]]; then
    echo "'$1' is in the capture $n time(s), in clear" >&2
    tcpdump -r "$pcap" -n -A 2>/dev/null | head -80 >&2
    return 1
  fi
}

# --- network namespace -------------------------------------------------------

# netns_setup: a namespace $NETNS joined to the host by a veth pair; sets
# HOST_IP (host side) and NS_IP (inside), a /30 of 10.231.0.0/16 that no
# interface uses yet. Skips the test when namespaces are not permitted.
netns_setup() {
  command -v ip >/dev/null || skip "no ip(8)"
  local x
  for x in $(seq 0 255); do
    ip -4 -o addr show | grep -qF " 10.231.$x." && continue
    ip -4 route show | grep -qF "10.231.$x." && continue
    break
  done
  HOST_IP=10.231.$x.1
  NS_IP=10.231.$x.2
  NETNS=tsi-$$-$BATS_TEST_NUMBER
  VETH_H=tsih$$
  VETH_N=tsin$$
  if ! ip netns add "$NETNS" 2>"$TMP/netns.err"; then
    NETNS=
    skip "ip netns add is not permitted here: $(cat "$TMP/netns.err")"
  fi
  if ! ip link add "$VETH_H" type veth peer name "$VETH_N" netns "$NETNS" 2>"$TMP/netns.err"; then
    netns_cleanup
    skip "cannot create a veth pair here: $(cat "$TMP/netns.err")"
  fi
  ip addr add "$HOST_IP/30" dev "$VETH_H"
  ip link set "$VETH_H" up
  ip netns exec "$NETNS" ip addr add "$NS_IP/30" dev "$VETH_N"
  ip netns exec "$NETNS" ip link set "$VETH_N" up
  ip netns exec "$NETNS" ip link set lo up
  # The link is usable once the host side answers (a refused connection).
  "$WAITFOR" -t 10 cmd -- ip netns exec "$NETNS" "$PY" -c "
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(('$HOST_IP', 9))
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    sys.exit(1)"
}

netns_cleanup() {
  [[ -n ${NETNS:-} ]] || return 0
  ip netns del "$NETNS" 2>/dev/null || true
  ip link del "$VETH_H" 2>/dev/null || true
  NETNS=
}

# in_ns CMD...: run CMD (no shim) inside $NETNS, bounded.
in_ns() {
  timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" ip netns exec "$NETNS" "$@"
}

# --- nginx and redis -----------------------------------------------------------

# start_nginx_plain NAME CONF PORT MASTER WORKERS [USER [ENV]]: nginx
# serving plain HTTP on 127.0.0.1:PORT under the shim. USER: the `user`
# directive (default root; "-" for none: nginx's default, nobody, when run
# as root). ENV (default yes): `env LD_PRELOAD; env TLSSHIM_CONFIG; ...`,
# which keep the shim's environment in the workers: nginx replaces the
# environment of its workers with only the variables `env` names. (Workers
# are forked, so the library stays mapped either way; the environment is
# what a shim reading TLSSHIM_CONFIG late, or an exec, would see.)
# Every request is answered with one line:
#   inbound-nginx ok pid=WORKER remote=ADDR:PORT server=ADDR:PORT uri=URI
# and files in $TMP/NAME/html/files/ are served under /files/.
start_nginx_plain() {
  local name=$1 conf=$2 nport=$3 master=$4 workers=$5 user=${6:-root} env=${7:-yes}
  local dir=$BATS_TEST_TMPDIR/$name userline='' envlines=''
  [[ $user == - ]] || userline="user $user;"
  [[ $env == no ]] || envlines="env LD_PRELOAD; env TLSSHIM_CONFIG; env TLSSHIM_LOG_STDERR;"
  mkdir -p "$dir/html/files"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process $master;
worker_processes $workers;
$userline
$envlines
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 1024; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  default_type text/plain;
  server {
    listen 127.0.0.1:$nport;
    location /files/ { root $dir/html; }
    location / {
      return 200 "inbound-nginx ok pid=\$pid remote=\$remote_addr:\$remote_port server=\$server_addr:\$server_port uri=\$request_uri\n";
    }
  }
}
EOF
  serve "$name" "$conf" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_listen "$nport" 1 "$name" || {
    cat "$dir/error.log" >&2
    return 1
  }
}

# nginx_workers BGPID: pids of the worker processes of the nginx master that
# start_bg started as BGPID (timeout -> nginx master -> workers).
nginx_workers() {
  local master
  master=$(pgrep -P "$1" | head -n 1)
  [[ -n $master ]] && pgrep -P "$master"
}

# --- tests: python http.server ---------------------------------------------------

@test "http.server: a TLS client gets the page, by name and by IP" {
  conf=$(base_conf | write_conf c)
  start_http web "$conf" "$port"
  get "https://localhost:$port/?id=byname"
  assert_status 0
  assert_output_has "inbound-page web"
  get "https://127.0.0.1:$port/?id=byip"
  assert_status 0
  assert_output_has "inbound-page web"
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" \
    -servername localhost -CAfile "$CERTS/ca.pem" -verify_return_error -brief </dev/null
  assert_status 0
  assert_stderr_has "Verification: OK"
  wait_has "$TMP/web.err" '"GET /?id=byname HTTP/1.1" 200'
  has "$TMP/web.err" '"GET /?id=byip HTTP/1.1" 200'
}

@test "http.server: plaintext clients (curl http://, nc) are refused; no plaintext answer, in the program or on the wire" {
  local marker
  marker=$(new_marker)
  conf=$(base_conf | write_conf c)
  start_http web "$conf" "$port"
  capture_start "$port"

  get "http://127.0.0.1:$port/?id=curl-$marker"
  assert_refused
  # shellcheck disable=SC2016 # expanded by the inner shell
  run --separate-stderr bash -c 'printf "GET /?id=nc-%s HTTP/1.0\r\n\r\n" "$1" |
    timeout -k 2 20 nc -N -w 5 127.0.0.1 "$2"' _ "$marker" "$port"
  if [[ $output == *HTTP/1.* || $output == *inbound-page* ]]; then
    echo "nc got a plaintext answer" >&2
    show_run
    false
  fi
  wait_log "$TMP/web.err" "refused_plaintext|handshake_failed"
  # Barrier: a TLS request after the refused ones is served and logged.
  get "https://localhost:$port/?id=barrier"
  assert_status 0
  wait_has "$TMP/web.err" '"GET /?id=barrier HTTP/1.1" 200'
  capture_stop

  lacks "$TMP/web.err" "$marker"
  lacks "$TMP/web.err" "code 400"
  [[ $(grep -c '"GET ' "$TMP/web.err") -eq 1 ]] || {
    cat "$TMP/web.err" >&2
    false
  }
  # Every answer of http.server carries this header; none crossed in clear.
  capture_lacks "Server: SimpleHTTP"
  capture_lacks "inbound-page"
}

@test "http.server: a TLS client that does not trust the CA fails on its own side" {
  conf=$(base_conf | write_conf c)
  start_http web "$conf" "$port"
  # No --cacert: the system store, which does not hold the test CA.
  run --separate-stderr bounded curl -sS "https://localhost:$port/?id=nocacert"
  assert_status 60
  get "https://localhost:$port/?id=otherca" --cacert "$CERTS/other-ca.pem"
  assert_status 60
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" \
    -CAfile "$CERTS/other-ca.pem" -verify_return_error -brief </dev/null
  [[ $status -ne 0 ]] || {
    show_run
    false
  }
  wait_log "$TMP/web.err" handshake_failed
  get "https://localhost:$port/?id=barrier"
  assert_status 0
  wait_has "$TMP/web.err" "id=barrier"
  lacks "$TMP/web.err" "id=nocacert"
  lacks "$TMP/web.err" "id=otherca"
}

@test "certificates: a section's own (full chain), the global default for unmatched listeners" {
  local other
  other=$(free_port)
  conf=$(
    {
      cat <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
cert = $CERTS/untrusted.pem
key = $CERTS/untrusted.key
handshake_timeout = 2
inbound = inbound
[inbound]
1 = api
[api]
listen = 127.0.0.1:$port
cert = $CERTS/chain-leaf-fullchain.pem
key = $CERTS/chain-leaf.key
EOF
    } | write_conf c
  )
  start_http api "$conf" "$port"
  start_http other "$conf" "$other"
  # The section's certificate: a leaf from int-ca, sent with int-ca.
  get "https://localhost:$port/"
  assert_status 0
  assert_output_has "inbound-page api"
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" \
    -CAfile "$CERTS/ca.pem" -showcerts </dev/null
  assert_output_has "CN = tlsshim intermediate CA"
  # The global one (from other-ca) where no section matches.
  get "https://localhost:$other/" --cacert "$CERTS/other-ca.pem"
  assert_status 0
  assert_output_has "inbound-page other"
  get "https://localhost:$other/"
  assert_status 60
}

# --- tests: configuration modes -------------------------------------------------

@test "inbound_default = plaintext leaves unmatched listeners alone; matched ones are TLS" {
  local other
  other=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound" "inbound_default = plaintext")
[inbound]
1 = api
[api]
listen = 127.0.0.1:$port
EOF
  )
  start_http api "$conf" "$port"
  start_http legacy "$conf" "$other"
  get "http://127.0.0.1:$other/?id=plain"
  assert_status 0
  assert_output_has "inbound-page legacy"
  get "https://localhost:$port/?id=tls"
  assert_status 0
  assert_output_has "inbound-page api"
  get "http://127.0.0.1:$port/?id=plain-to-tls"
  assert_refused
}

@test "action = plaintext: an explicit exception, logged as event=plaintext_allowed dir=in" {
  local other
  other=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = admin
[admin]
listen = 127.0.0.1:$port
action = plaintext
EOF
  )
  start_http admin "$conf" "$port"
  start_http api "$conf" "$other"
  get "http://127.0.0.1:$port/?id=admin"
  assert_status 0
  assert_output_has "inbound-page admin"
  wait_log "$TMP/admin.err" plaintext_allowed
  # Other listeners still default to TLS.
  get "https://localhost:$other/"
  assert_status 0
  get "http://127.0.0.1:$other/"
  assert_refused
}

@test "no certificate configured: every connection is refused at accept, logged with the missing keys" {
  conf=$(write_conf c <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
handshake_timeout = 2
EOF
  )
  start_http web "$conf" "$port"
  get "https://localhost:$port/?id=tls"
  assert_refused
  # From another address: the log folds repeated failures of one address.
  get "http://127.0.0.1:$port/?id=plain" --interface 127.0.0.2
  assert_refused
  wait_log "$TMP/web.err" denied 'reason="[^"\n]*cert'
  wait_log "$TMP/web.err" denied 'reason="[^"\n]*key'
  wait_log "$TMP/web.err" denied 'peer=127\.0\.0\.2:'
  [[ $(inlog_count "$TMP/web.err" denied) -ge 2 ]] || {
    cat "$TMP/web.err" >&2
    false
  }
  lacks "$TMP/web.err" "GET /"
}

@test "environment-only quick start: listeners stay plaintext, with one warning" {
  start_bg web env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CA_FILE="$CERTS/ca.pem" \
    TLSSHIM_LOG_STDERR=1 "$PY" -u -m http.server --bind 127.0.0.1 --directory "$TMP" "$port"
  wait_listen "$port" 1 web
  echo "inbound-page env" >"$TMP/index.html"
  get "http://127.0.0.1:$port/?id=one"
  assert_status 0
  assert_output_has "inbound-page env"
  get "http://127.0.0.1:$port/?id=two"
  assert_status 0
  wait_log "$TMP/web.err" insecure_setting
  wait_has "$TMP/web.err" "id=two"
  [[ $(inlog_count "$TMP/web.err" insecure_setting) -eq 1 ]] || {
    echo "expected exactly one event=insecure_setting dir=in line" >&2
    cat "$TMP/web.err" >&2
    false
  }
}

@test "sections match the listening socket's local address, first match wins (127.0.0.1:P, [::1]:P, *:*)" {
  local p2
  p2=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = plain4
2 = v6
3 = any
[plain4]
listen = 127.0.0.1:$port
action = plaintext
[v6]
listen = [::1]:$port
[any]
listen = *:*
client_ca = $CERTS/ca.pem
client_cert = require
EOF
  )
  start_echo plain4 "$conf" "127.0.0.1:$port"
  run --separate-stderr bounded "$PY" "$INCLIENT" raw 127.0.0.1 "$port" --send 'hello\n' --wait 2
  assert_output_has "recv=b'hello\\n'"
  if have_ipv6; then
    start_echo v6 "$conf" "[::1]:$port"
    run --separate-stderr bounded "$PY" "$INCLIENT" tls ::1 "$port" --ca "$CERTS/ca.pem" --send six
    assert_status 0
    assert_output_has "recv=six"
  fi
  # *:* (mTLS required) and not the default (no client certificate).
  start_echo any "$conf" "127.0.0.1:$p2"
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$p2" --ca "$CERTS/ca.pem" --send nocert
  [[ $status -ne 0 ]] || {
    show_run
    false
  }
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$p2" --ca "$CERTS/ca.pem" \
    --cert "$CERTS/client.pem" --key "$CERTS/client.key" --send withcert
  assert_status 0
  assert_output_has "recv=withcert"
}

# --- tests: client certificates ------------------------------------------------------

# mtls_conf MODE [LINE...]: a section for 127.0.0.1:$port with client_ca =
# ca.pem, client_cert = MODE and LINEs.
mtls_conf() {
  local mode=$1
  shift
  {
    base_conf "inbound = inbound"
    echo "[inbound]"
    echo "1 = api"
    echo "[api]"
    echo "listen = 127.0.0.1:$port"
    [[ $mode == none ]] || echo "client_ca = $CERTS/ca.pem"
    echo "client_cert = $mode"
    printf '%s\n' "$@"
  } | write_conf "mtls-$mode"
}

# with_cert NAME: curl options presenting $CERTS/NAME.pem.
with_cert() {
  echo "--cert $CERTS/$1.pem --key $CERTS/$1.key"
}

@test "client_cert = require: client.pem accepted; client2.pem (other CA) and no certificate refused" {
  conf=$(mtls_conf require)
  start_http api "$conf" "$port"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client" $(with_cert client)
  assert_status 0
  assert_output_has "inbound-page api"
  # shellcheck disable=SC2016 # expanded by the inner shell
  run --separate-stderr bash -c 'printf "GET /?id=s_client HTTP/1.0\r\n\r\n" |
    timeout -k 2 20 openssl s_client -quiet -connect "127.0.0.1:$1" -CAfile "$2/ca.pem" \
      -cert "$2/client.pem" -key "$2/client.key" -verify_return_error' _ "$port" "$CERTS"
  assert_output_has "inbound-page api"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client2" $(with_cert client2)
  assert_refused
  wait_log "$TMP/api.err" "handshake_failed|denied" "test-client-2"
  get "https://localhost:$port/?id=nocert"
  assert_refused
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=barrier" $(with_cert client)
  assert_status 0
  wait_has "$TMP/api.err" "id=barrier"
  has "$TMP/api.err" "id=s_client"
  lacks "$TMP/api.err" "id=client2"
  lacks "$TMP/api.err" "id=nocert"
}

@test "client_cert = optional: client.pem and no certificate accepted; client2.pem refused" {
  conf=$(mtls_conf optional)
  start_http api "$conf" "$port"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client" $(with_cert client)
  assert_status 0
  assert_output_has "inbound-page api"
  get "https://localhost:$port/?id=nocert"
  assert_status 0
  assert_output_has "inbound-page api"
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" \
    -CAfile "$CERTS/ca.pem" -msg </dev/null
  assert_output_has "CertificateRequest"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client2" $(with_cert client2)
  assert_refused
  wait_log "$TMP/api.err" "handshake_failed|denied" "test-client-2"
  get "https://localhost:$port/?id=barrier"
  assert_status 0
  wait_has "$TMP/api.err" "id=barrier"
  lacks "$TMP/api.err" "id=client2"
}

@test "client_cert = none: no certificate asked for; clients with or without one accepted" {
  conf=$(mtls_conf none)
  start_http api "$conf" "$port"
  get "https://localhost:$port/?id=nocert"
  assert_status 0
  assert_output_has "inbound-page api"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client2" $(with_cert client2)
  assert_status 0
  # The server sends no CertificateRequest.
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" \
    -CAfile "$CERTS/ca.pem" -msg </dev/null
  assert_status 0
  assert_output_has "ServerHello"
  [[ $output != *CertificateRequest* ]] || {
    show_run
    false
  }
}

@test "allow_client: CN=test-* admits client.pem; CN=ops-*, DNS:*.mgmt.internal refuses it" {
  local p2
  p2=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = match
2 = miss
[match]
listen = 127.0.0.1:$port
client_ca = $CERTS/ca.pem
client_cert = require
allow_client = CN=test-*
[miss]
listen = 127.0.0.1:$p2
client_ca = $CERTS/ca.pem
client_cert = require
allow_client = CN=ops-*, DNS:*.mgmt.internal
EOF
  )
  start_http match "$conf" "$port"
  start_http miss "$conf" "$p2"
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=match" $(with_cert client)
  assert_status 0
  assert_output_has "inbound-page match"
  # shellcheck disable=SC2046
  get "https://localhost:$p2/?id=miss" $(with_cert client)
  assert_refused
  wait_log "$TMP/miss.err" "handshake_failed|denied" "test-client"
  lacks "$TMP/miss.err" "id=miss"
}

# issue_client NAME CN SAN: a clientAuth certificate from ca.pem with
# subjectAltName SAN (an openssl extension value, e.g. DNS:a.example or
# DER:hex), in $TMP/pki/NAME.pem and NAME.key.
issue_client() {
  local name=$1 cn=$2 san=$3 d=$TMP/pki
  mkdir -p "$d"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "/O=tlsshim test/CN=$cn" -out "$d/$name.csr"
  printf '[v3]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\nsubjectAltName = %s\n' \
    "$san" >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 -extfile "$d/$name.ext" \
    -extensions v3 -out "$d/$name.pem" 2>/dev/null
  openssl verify -CAfile "$CERTS/ca.pem" -purpose sslclient "$d/$name.pem" >/dev/null
}

@test "allow_client DNS:*.mgmt.internal: a matching SAN is admitted; a SAN that hides a NUL byte is not" {
  issue_client ops1 ops-host "DNS:ops1.mgmt.internal"
  # dNSName "ops1.mgmt.internal\0.evil.example": a CA that checks the suffix
  # of requested names (.evil.example) issues it; read as a C string it is
  # ops1.mgmt.internal.
  local hex
  hex=$("$PY" -c '
n = b"ops1.mgmt.internal\x00.evil.example"
gn = b"\x82" + bytes([len(n)]) + n
print((b"\x30" + bytes([len(gn)]) + gn).hex())')
  issue_client nul ops-host "DER:$hex"
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = api
[api]
listen = 127.0.0.1:$port
client_ca = $CERTS/ca.pem
client_cert = require
allow_client = DNS:*.mgmt.internal
EOF
  )
  start_http api "$conf" "$port"
  get "https://localhost:$port/?id=ops1" --cert "$TMP/pki/ops1.pem" --key "$TMP/pki/ops1.key"
  assert_status 0
  assert_output_has "inbound-page api"
  get "https://localhost:$port/?id=nul" --cert "$TMP/pki/nul.pem" --key "$TMP/pki/nul.key"
  assert_refused
  # shellcheck disable=SC2046
  get "https://localhost:$port/?id=client" $(with_cert client)
  assert_refused
  get "https://localhost:$port/?id=barrier" --cert "$TMP/pki/ops1.pem" --key "$TMP/pki/ops1.key"
  assert_status 0
  wait_has "$TMP/api.err" "id=barrier"
  lacks "$TMP/api.err" "id=nul"
  lacks "$TMP/api.err" "id=client "
}

# --- tests: what the program sees -------------------------------------------------------

# assert_echo_peer NAME LOCAL: the last `run` of `inclient.py tls ... --send
# peer?` shows the server reporting the client's own address as its peer
# and LOCAL as its local address, and echo_server logged the same from
# accept() and getpeername(). Also prints nothing; sets CLIENT.
assert_echo_peer() {
  local name=$1 want_local=$2
  CLIENT=$(sed -n 's/^handshake=ok .*sockname=\([^ ]*\).*/\1/p' <<<"$output")
  [[ -n $CLIENT ]] || {
    show_run
    false
  }
  assert_output_has "recv=peer=$CLIENT local=$want_local"
  wait_has "$TMP/$name.out" "accepted"
  has "$TMP/$name.out" "peer=$CLIENT getpeername=$CLIENT local=$want_local"
}

@test "echo server, poll + accept4(SOCK_NONBLOCK|SOCK_CLOEXEC): flags kept; accept, getpeername and getsockname report the real endpoints" {
  conf=$(base_conf | write_conf c)
  start_echo echo "$conf" "127.0.0.1:$port" -m poll
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" \
    --send 'peer?' --send hello
  assert_status 0
  assert_output_has "recv=hello"
  assert_echo_peer echo "127.0.0.1:$port"
  has "$TMP/echo.out" "peer=$CLIENT getpeername=$CLIENT local=127.0.0.1:$port family=inet type=stream nonblock=1 cloexec=1"
}

@test "echo server, fork + blocking accept, over IPv6: flags as asked (none); real endpoints" {
  have_ipv6 || skip "no ::1 on this host"
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = v6
[v6]
listen = [::1]:$port
EOF
  )
  start_echo echo "$conf" "[::1]:$port" -m fork
  run --separate-stderr bounded "$PY" "$INCLIENT" tls ::1 "$port" --ca "$CERTS/ca.pem" \
    --send 'peer?' --send hello
  assert_status 0
  assert_output_has "recv=hello"
  assert_echo_peer echo "[::1]:$port"
  has "$TMP/echo.out" "peer=$CLIENT getpeername=$CLIENT local=[::1]:$port family=inet6 type=stream nonblock=0 cloexec=0"
}

@test "server speaks first: the greeting reaches TLS clients only, never a plaintext client or the wire" {
  local greeting marker
  greeting=GREETING-$(new_marker)
  marker=$(new_marker)
  conf=$(base_conf | write_conf c)
  start_echo echo "$conf" "127.0.0.1:$port" -g "$greeting"
  capture_start "$port"
  run --separate-stderr bounded "$PY" "$INCLIENT" raw 127.0.0.1 "$port" --wait 4
  if [[ $output == *GREETING* ]]; then
    echo "a plaintext client got the greeting" >&2
    show_run
    false
  fi
  run --separate-stderr bounded "$PY" "$INCLIENT" raw 127.0.0.1 "$port" \
    --send "plain-$marker\n" --wait 4
  [[ $output != *GREETING* && $output != *"plain-$marker"* ]] || {
    show_run
    false
  }
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" \
    --send "tls-$marker" --lines 2
  assert_status 0
  assert_output_has "recv=$greeting"
  assert_output_has "recv=tls-$marker"
  capture_stop
  capture_lacks "$greeting"
  capture_lacks "tls-$marker"
  lacks "$TMP/echo.out" "plain-$marker"
  has "$TMP/echo.out" "tls-$marker"
}

@test "inetd style (socat TCP-LISTEN,fork EXEC:cat): the forked child execs a handler on the connection" {
  command -v socat >/dev/null || skip "socat is not installed (scripts/install-deps.sh --bench)"
  conf=$(base_conf | write_conf c)
  serve socat "$conf" socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" EXEC:cat
  wait_listen "$port" 1 socat
  # (Not $i: bats 1.8's `run --separate-stderr` sets a variable i.)
  local conn
  for conn in 1 2 3; do
    run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" \
      --send "inetd-$conn-a" --send "inetd-$conn-b"
    assert_status 0
    assert_output_has "recv=inetd-$conn-b"
  done
  run --separate-stderr bounded "$PY" "$INCLIENT" raw 127.0.0.1 "$port" --send 'plain\n' --wait 4
  [[ $output != *"b'plain"* ]] || {
    show_run
    false
  }
}

@test "Unix-socket listeners are never touched" {
  conf=$(base_conf | write_conf c)
  start_echo echo "$conf" "unix:$TMP/echo.sock"
  # shellcheck disable=SC2016 # expanded by the inner shell
  run --separate-stderr bash -c 'printf "over-unix\n" | timeout -k 2 20 nc -N -U "$1"' _ "$TMP/echo.sock"
  assert_status 0
  assert_output_has "over-unix"
}

@test "allow_from: a source outside is closed at once and never reaches the program; one inside is served" {
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound" "handshake_timeout = 10")
[inbound]
1 = api
[api]
listen = 127.0.0.1:$port
allow_from = 127.0.0.2/32, ::1/128
EOF
  )
  start_echo echo "$conf" "127.0.0.1:$port"
  # From 127.0.0.1 (outside): closed at once, not after the 10 s bound.
  run --separate-stderr bounded "$PY" "$INCLIENT" raw 127.0.0.1 "$port" --bind 127.0.0.1 \
    --send 'x\n' --wait 8
  local denied
  denied=$(sed -n 's/^connect=[a-z]* sockname=\([^ ]*\).*/\1/p' <<<"$output")
  [[ $output =~ end=(eof|reset)\ elapsed=([0-9.]+) ]] || {
    show_run
    false
  }
  "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 5 else 1)" "${BASH_REMATCH[2]}" || {
    echo "closed only after ${BASH_REMATCH[2]} s" >&2
    false
  }
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" --send denied
  [[ $status -ne 0 ]] || {
    show_run
    false
  }
  wait_log "$TMP/echo.err" denied "peer=$(re_escape "$denied")[ \\n]"
  # From 127.0.0.2 (inside): served, and the program sees that address.
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --bind 127.0.0.2 \
    --ca "$CERTS/ca.pem" --send 'peer?'
  assert_status 0
  assert_echo_peer echo "127.0.0.1:$port"
  [[ $CLIENT == 127.0.0.2:* ]]
  lacks "$TMP/echo.out" "peer=$denied "
  lacks "$TMP/echo.out" "peer=127.0.0.1:"
}

@test "origin restriction for real: a namespace outside allow_from gets no connection, inside it does" {
  [[ $(id -u) -eq 0 ]] || skip "network namespaces need root"
  netns_setup
  local p2
  p2=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = waf_only
2 = mgmt
[waf_only]
listen = $HOST_IP:$port
allow_from = 127.0.0.0/8
[mgmt]
listen = $HOST_IP:$p2
allow_from = $NS_IP/32
EOF
  )
  start_http outside "$conf" "$port" "$HOST_IP"
  start_http inside "$conf" "$p2" "$HOST_IP"
  # The name is checked against DNS:localhost, resolved to the host side.
  run --separate-stderr in_ns curl -sS --cacert "$CERTS/ca.pem" \
    --resolve "localhost:$port:$HOST_IP" "https://localhost:$port/?id=ns-outside"
  assert_refused
  run --separate-stderr in_ns "$PY" "$INCLIENT" raw "$HOST_IP" "$port" --wait 5
  [[ $output =~ end=(eof|reset) ]] || {
    show_run
    false
  }
  wait_log "$TMP/outside.err" denied "peer=$(re_escape "$NS_IP"):"
  run --separate-stderr in_ns curl -sS --cacert "$CERTS/ca.pem" \
    --resolve "localhost:$p2:$HOST_IP" "https://localhost:$p2/?id=ns-inside"
  assert_status 0
  assert_output_has "inbound-page inside"
  wait_has "$TMP/inside.err" "$NS_IP - - "
  lacks "$TMP/outside.err" "id=ns-outside"
  lacks "$TMP/outside.err" "$NS_IP - - "
}

@test "dual-stack listener ([::]:P): IPv4 clients arrive mapped, and IPv4 allow_from patterns apply to them" {
  # Inside a namespace of the test's own: the listener takes every address.
  [[ $(id -u) -eq 0 ]] || skip "network namespaces need root"
  netns_setup
  ip netns exec "$NETNS" ip -6 addr show dev lo | grep -q '::1/128' || skip "no ::1 in the namespace"
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = any
[any]
listen = [::]:$port
allow_from = 127.0.0.2/32, ::1/128
EOF
  )
  start_bg echo ip netns exec "$NETNS" env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$conf" \
    TLSSHIM_LOG_STDERR=1 "$ECHO_SERVER" -d "[::]:$port"
  wait_has "$TMP/echo.out" "listening addr="
  "$WAITFOR" -t 10 cmd -- ip netns exec "$NETNS" bash -c "ss -Hltn 'sport = :$port' | grep -q ."
  # IPv4 from 127.0.0.2: admitted; the program sees the mapped address.
  run --separate-stderr in_ns "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --bind 127.0.0.2 \
    --ca "$CERTS/ca.pem" --send 'peer?'
  assert_status 0
  local client
  client=$(sed -n 's/^handshake=ok .*sockname=127\.0\.0\.2:\([0-9]*\).*/\1/p' <<<"$output")
  [[ -n $client ]] || {
    show_run
    false
  }
  assert_output_has "recv=peer=[::ffff:127.0.0.2]:$client local=[::ffff:127.0.0.1]:$port"
  # IPv4 from 127.0.0.1: outside.
  run --separate-stderr in_ns "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" --send x
  assert_status 3
  wait_log "$TMP/echo.err" denied
  # IPv6 from ::1: admitted.
  run --separate-stderr in_ns "$PY" "$INCLIENT" tls ::1 "$port" --ca "$CERTS/ca.pem" --send six
  assert_status 0
  assert_output_has "recv=six"
}

# --- tests: robustness ------------------------------------------------------------------

@test "stalled clients are closed after handshake_timeout, while the server keeps serving" {
  conf=$(base_conf | write_conf c) # handshake_timeout = 2
  start_echo echo "$conf" "127.0.0.1:$port" -m poll
  # Each stalled client from its own address (127.0.0.10-14): the log folds
  # identical inbound failures from one address into one line.
  run --separate-stderr timeout -k 2 30 "$PY" "$INCLIENT" stall 127.0.0.1 "$port" \
    --bind 127.0.0.10 --ca "$CERTS/ca.pem" --silent 3 --partial 2 --wait 15
  assert_status 0
  [[ $output =~ good=ok\ elapsed=([0-9.]+) ]] || {
    echo "the server did not serve a TLS client while others stalled" >&2
    show_run
    false
  }
  local good=${BASH_REMATCH[1]} line kind end elapsed sock
  while read -r line; do
    [[ $line == stalled=* ]] || continue
    kind=$(log_field "$line" kind)
    end=$(log_field "$line" end)
    elapsed=$(log_field "$line" elapsed)
    sock=$(log_field "$line" sockname)
    [[ $end == eof || $end == reset ]] || {
      echo "$kind connection $sock was not closed: $line" >&2
      false
    }
    # Closed after the bound (2 s), not long after, and after the good client.
    "$PY" -c 'import sys; e, g = map(float, sys.argv[1:]); sys.exit(0 if 1.5 <= e <= 8 and g < e else 1)' \
      "$elapsed" "$good" || {
      echo "$kind connection closed at ${elapsed}s (want 1.5..8, after the good client at ${good}s)" >&2
      show_run
      false
    }
    wait_log "$TMP/echo.err" "handshake_failed" "peer=$(re_escape "$sock")[ \\n]"
    lacks "$TMP/echo.out" "recv peer=$sock "
  done <<<"$output"
  [[ $(grep -c '^stalled=' <<<"$output") -eq 5 ]]
}

@test "nginx, master + 2 workers, plain HTTP: 50 concurrent TLS clients all served while others stall" {
  conf=$(base_conf "handshake_timeout = 5" | write_conf c)
  start_nginx_plain nginx "$conf" "$port" on 2 root
  local nginx_bg=$BG_PID w workers
  "$WAITFOR" -t 10 cmd -- bash -c "[[ \$(pgrep -P \$(pgrep -P $nginx_bg | head -n1) | wc -l) -ge 2 ]]"
  workers=$(nginx_workers "$nginx_bg")
  # The workers carry the shim. (Their environment cannot be checked from
  # outside: nginx overwrites the original environ block with its process
  # titles, so /proc/PID/environ shows nothing useful.)
  for w in $workers; do
    grep -q libtlsshim "/proc/$w/maps" || {
      echo "worker $w has no libtlsshim mapped" >&2
      false
    }
  done
  # A 4 MiB file, to make the relay push through backpressure.
  head -c 4194304 /dev/urandom >"$TMP/nginx/html/files/big.bin"
  start_bg stallers "$PY" "$INCLIENT" stall 127.0.0.1 "$port" --ca "$CERTS/ca.pem" \
    --silent 10 --partial 5 --no-good --wait 30
  local stall_bg=$BG_PID i failed=0
  local -a pids=()
  for i in $(seq 1 50); do
    timeout -k 2 60 curl -sS --cacert "$CERTS/ca.pem" -w 'local_port=%{local_port}\n' \
      "https://127.0.0.1:$port/load-$i" >"$TMP/load-$i.out" 2>"$TMP/load-$i.err" 3>&- &
    pids+=($!)
  done
  timeout -k 2 60 curl -sS --cacert "$CERTS/ca.pem" -o "$TMP/big.got" \
    "https://localhost:$port/files/big.bin" 2>"$TMP/big.err" 3>&- &
  local big=$!
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || {
      failed=$((failed + 1))
      echo "client $((i + 1)): $(cat "$TMP/load-$((i + 1)).err")" >&2
    }
  done
  wait "$big" || {
    echo "big download: $(cat "$TMP/big.err")" >&2
    failed=$((failed + 1))
  }
  [[ $failed -eq 0 ]]
  cmp "$TMP/nginx/html/files/big.bin" "$TMP/big.got"
  local lp
  for i in $(seq 1 50); do
    lp=$(sed -n 's/^local_port=//p' "$TMP/load-$i.out")
    has "$TMP/load-$i.out" "remote=127.0.0.1:$lp server=127.0.0.1:$port uri=/load-$i"
  done
  # The stalled connections were held during the load, and closed after.
  "$WAITFOR" -t 30 gone "$stall_bg"
  [[ $(grep -c 'end=eof\|end=reset' "$TMP/stallers.out") -eq 15 ]] || {
    cat "$TMP/stallers.out" >&2
    false
  }
}

@test "nginx, master + worker as nobody: what the shim needs is read before privileges drop" {
  # The key stays root-only (gen-certs makes it 0600) and the configuration
  # sits in a directory only root can enter: the worker (nobody) can read
  # neither, so the shim must have loaded them in the master.
  id nobody >/dev/null 2>&1 || skip "no user nobody"
  [[ $(id -u) -eq 0 ]] || skip "needs root"
  [[ $(stat -c %a "$CERTS/server.key") == 600 ]]
  conf=$(base_conf | write_conf c)
  start_nginx_plain nginx "$conf" "$port" on 1 -
  local w
  "$WAITFOR" -t 10 cmd -- bash -c "[[ -n \$(pgrep -P \$(pgrep -P $BG_PID | head -n1)) ]]"
  w=$(nginx_workers "$BG_PID")
  [[ $(stat -c %U "/proc/$w") == nobody ]]
  get "https://localhost:$port/as-nobody"
  assert_status 0
  assert_output_has "inbound-nginx ok"
}

@test "nginx without env directives (workers lose TLSSHIM_CONFIG): never plaintext" {
  # An operator who forgets `env TLSSHIM_CONFIG;` must not end up with a
  # plaintext server: the workers either still serve TLS (the shim read its
  # configuration before nginx cleared the environment) or refuse.
  conf=$(base_conf | write_conf c)
  start_nginx_plain nginx "$conf" "$port" on 1 root no
  get "http://127.0.0.1:$port/plain-without-env"
  assert_refused
  get "https://localhost:$port/tls-without-env"
  echo "# TLS client without env directives: status $status" >&3
  lacks "$TMP/nginx/access.log" "/plain-without-env"
}

@test "nginx, single process: page and peer address, plaintext refused" {
  conf=$(base_conf | write_conf c)
  start_nginx_plain nginx "$conf" "$port" off 1
  get "https://localhost:$port/single" -w 'local_port=%{local_port}\n'
  assert_status 0
  local lp
  lp=$(sed -n 's/^local_port=//p' <<<"$output")
  assert_output_has "remote=127.0.0.1:$lp server=127.0.0.1:$port uri=/single"
  get "http://127.0.0.1:$port/plain"
  assert_refused
  get "https://localhost:$port/barrier"
  assert_status 0
  lacks "$TMP/nginx/access.log" "/plain"
}

@test "redis-server (plaintext) behind the shim: redis-cli --tls works, plaintext redis-cli is refused" {
  local dir=$TMP/redis
  mkdir -p "$dir"
  conf=$(base_conf | write_conf c)
  serve redis "$conf" redis-server --port "$port" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$dir" --logfile "$dir/redis.log" --loglevel verbose --daemonize no
  wait_listen "$port" 1 redis || {
    cat "$dir/redis.log" >&2
    false
  }
  run --separate-stderr bounded redis-cli --tls --cacert "$CERTS/ca.pem" -h 127.0.0.1 -p "$port" PING
  assert_status 0
  assert_output_has PONG
  run --separate-stderr bounded redis-cli -h 127.0.0.1 -p "$port" PING
  [[ $output != *PONG* ]] || {
    show_run
    false
  }
  wait_log "$TMP/redis.err" "refused_plaintext|handshake_failed"
  run --separate-stderr bounded redis-cli --tls --cacert "$CERTS/ca.pem" -h 127.0.0.1 -p "$port" \
    INFO commandstats
  assert_status 0
  # Exactly the one PING over TLS was executed.
  assert_output_has "cmdstat_ping:calls=1,"
}

# --- tests: protocol --------------------------------------------------------------------

@test "session resumption: returning clients resume (TLS 1.3, TLS 1.2, and with client certificates)" {
  conf=$(mtls_conf optional)
  start_echo echo "$conf" "127.0.0.1:$port"
  local v
  for v in 1.3 1.2; do
    run --separate-stderr bounded "$PY" "$INCLIENT" resume 127.0.0.1 "$port" \
      --ca "$CERTS/ca.pem" --tls "$v"
    assert_status 0
    assert_output_has "conn=1 reused=False version=TLSv$v"
    assert_output_has "conn=2 reused=True version=TLSv$v"
    assert_output_has "conn=3 reused=True version=TLSv$v"
    run --separate-stderr bounded "$PY" "$INCLIENT" resume 127.0.0.1 "$port" \
      --ca "$CERTS/ca.pem" --tls "$v" --cert "$CERTS/client.pem" --key "$CERTS/client.key"
    assert_status 0
    assert_output_has "conn=2 reused=True version=TLSv$v"
    assert_output_has "conn=3 reused=True version=TLSv$v"
  done
}

@test "protocols: TLS 1.2 and 1.3 by default, never 1.1; min_protocol = TLSv1.3 in a section" {
  local p2
  p2=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = modern
[modern]
listen = 127.0.0.1:$p2
min_protocol = TLSv1.3
EOF
  )
  start_echo default "$conf" "127.0.0.1:$port"
  start_echo modern "$conf" "127.0.0.1:$p2"
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" --tls 1.2 --send a
  assert_status 0
  assert_output_has "version=TLSv1.2"
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$port" --ca "$CERTS/ca.pem" --tls 1.3 --send a
  assert_status 0
  assert_output_has "version=TLSv1.3"
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" -tls1_1 \
    -cipher 'DEFAULT:@SECLEVEL=0' </dev/null
  [[ $status -ne 0 ]] || {
    show_run
    false
  }
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$p2" --ca "$CERTS/ca.pem" --tls 1.2 --send a
  assert_status 3
  run --separate-stderr bounded "$PY" "$INCLIENT" tls 127.0.0.1 "$p2" --ca "$CERTS/ca.pem" --tls 1.3 --send a
  assert_status 0
}

@test "sslscan: no protocol below TLS 1.2, no weak cipher, no insecure renegotiation" {
  command -v sslscan >/dev/null || skip "sslscan is not installed (scripts/install-deps.sh)"
  conf=$(base_conf | write_conf c)
  start_echo echo "$conf" "127.0.0.1:$port"
  bounded sslscan --no-colour --xml="$TMP/scan.xml" "127.0.0.1:$port" >"$TMP/scan.txt" 2>&1 || {
    cat "$TMP/scan.txt" >&2
    false
  }
  run --separate-stderr "$PY" - "$TMP/scan.xml" <<'PY'
import re, sys
import xml.etree.ElementTree as ET

t = ET.parse(sys.argv[1]).getroot().find("ssltest")
bad = []
if t is None:
    sys.exit("no <ssltest> in the XML")
protos = {}
for p in t.findall("protocol"):
    name = ("SSLv" if p.get("type") == "ssl" else "TLSv") + p.get("version")
    protos[name] = p.get("enabled") == "1"
    print(f"protocol {name} enabled={int(protos[name])}")
for name in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
    if name not in protos:
        bad.append(f"{name} not probed")
    elif protos[name]:
        bad.append(f"{name} enabled")
for name in ("TLSv1.2", "TLSv1.3"):  # the scan did reach the server
    if not protos.get(name):
        bad.append(f"{name} not enabled")
weak = re.compile(r"NULL|EXP|RC4|DES|MD5|ADH|AECDH|anon|PSK|SRP", re.I)
ciphers = t.findall("cipher")
if not ciphers:
    bad.append("no cipher accepted")
for c in ciphers:
    v, n, s, b = c.get("sslversion"), c.get("cipher", ""), c.get("strength"), int(c.get("bits", "0"))
    print(f"cipher {v} {n} bits={b} strength={s}")
    if v not in ("TLSv1.2", "TLSv1.3"):
        bad.append(f"cipher {n} over {v}")
    if s not in ("strong", "acceptable") or weak.search(n) or b < 128:
        bad.append(f"weak cipher {n} ({v}, {b} bits, {s})")
for r in t.findall("renegotiation"):
    print(f"renegotiation supported={r.get('supported')} secure={r.get('secure')}")
    if r.get("supported") == "1" and r.get("secure") != "1":
        bad.append("insecure renegotiation")
for h in t.findall("heartbleed"):
    if h.get("vulnerable") != "0":
        bad.append(f"heartbleed {h.get('sslversion')}")
subj = t.find("certificates/certificate/subject")
print(f"subject {subj.text if subj is not None else None}")
if subj is None or subj.text != "localhost":
    bad.append("not the configured certificate")
for b in bad:
    print(f"BAD: {b}")
sys.exit(1 if bad else 0)
PY
  assert_status 0
}

@test "OCSP stapling: the configured response is stapled (sslscan --ocsp, s_client -status); none without" {
  command -v sslscan >/dev/null || skip "sslscan is not installed (scripts/install-deps.sh)"
  local ocsp=${TLSSHIM_OCSP:-$BATS_FILE_TMPDIR/ocsp} p2
  "$ROOT/scripts/gen-ocsp.sh" "$ocsp" "$CERTS"
  p2=$(free_port)
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = stapled
[stapled]
listen = 127.0.0.1:$port
cert = $ocsp/good.pem
key = $ocsp/good.key
ocsp_response_file = $ocsp/good.der
EOF
  )
  start_echo stapled "$conf" "127.0.0.1:$port"
  start_echo plain "$conf" "127.0.0.1:$p2"
  # sslscan's XML has no OCSP element: its --ocsp report is text.
  run --separate-stderr bounded sslscan --no-colour --ocsp "127.0.0.1:$port"
  assert_status 0
  assert_output_has "OCSP Response Status: successful"
  assert_output_has "Cert Status: good"
  local tls
  for tls in -tls1_2 -tls1_3; do
    run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$port" "$tls" \
      -servername localhost -CAfile "$CERTS/ca.pem" -verify_return_error -status </dev/null
    assert_status 0
    assert_output_has "OCSP Response Status: successful"
    assert_output_has "Cert Status: good"
  done
  run --separate-stderr bounded openssl s_client -connect "127.0.0.1:$p2" \
    -servername localhost -CAfile "$CERTS/ca.pem" -status </dev/null
  assert_status 0
  assert_output_has "OCSP response: no response sent"
}

@test "OCSP staple file: re-read when it changes; a stale response is not stapled" {
  local ocsp=${TLSSHIM_OCSP:-$BATS_FILE_TMPDIR/ocsp} staple=$TMP/staple.der
  "$ROOT/scripts/gen-ocsp.sh" "$ocsp" "$CERTS"
  cp "$ocsp/good.der" "$staple"
  conf=$(write_conf c <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = stapled
[stapled]
listen = 127.0.0.1:$port
cert = $ocsp/good.pem
key = $ocsp/good.key
ocsp_response_file = $staple
EOF
  )
  start_echo stapled "$conf" "127.0.0.1:$port"
  run staple_status
  assert_output_has "Cert Status: good"
  # Replaced (atomically) by a response whose nextUpdate has passed. The
  # new file's mtime is set 10 s on, so that the change is visible even to
  # a check with one-second resolution.
  replace_staple "$ocsp/stale.der" "$staple"
  run staple_status
  assert_output_has "OCSP response: no response sent"
  replace_staple "$ocsp/good.der" "$staple"
  run staple_status
  assert_output_has "Cert Status: good"
}

# staple_status: what s_client says about the staple of 127.0.0.1:$port.
staple_status() {
  bounded openssl s_client -connect "127.0.0.1:$port" -servername localhost \
    -CAfile "$CERTS/ca.pem" -status </dev/null 2>/dev/null |
    grep -E 'Cert Status:|OCSP response: no response sent' || true
}

# replace_staple NEW FILE: rename a copy of NEW over FILE, mtime 10 s later.
replace_staple() {
  cp "$1" "$2.new"
  touch -d "@$(($(stat -c %Y "$2") + 10))" "$2.new"
  mv "$2.new" "$2"
}

# --- tests: both directions -----------------------------------------------------------------

@test "shim on both ends: a plaintext client and a plaintext server, TLS with a required staple between" {
  local ocsp=${TLSSHIM_OCSP:-$BATS_FILE_TMPDIR/ocsp} p2
  "$ROOT/scripts/gen-ocsp.sh" "$ocsp" "$CERTS"
  p2=$(free_port)
  sconf=$(write_conf server <<EOF
$(base_conf "inbound = inbound")
[inbound]
1 = stapled
[stapled]
listen = 127.0.0.1:$port
cert = $ocsp/good.pem
key = $ocsp/good.key
ocsp_response_file = $ocsp/good.der
EOF
  )
  start_http stapled "$sconf" "$port"
  start_http nostaple "$sconf" "$p2"
  cconf=$(write_conf client <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
ocsp = require
EOF
  )
  run --separate-stderr shim_conf "$cconf" curl -sS "http://127.0.0.1:$port/?id=both-ends"
  assert_status 0
  assert_output_has "inbound-page stapled"
  run --separate-stderr shim_conf "$cconf" curl -sS "http://127.0.0.1:$p2/?id=unstapled"
  assert_status 7
  assert_log_fields event=handshake_failed dir=out stage=ocsp
}

# write_proxy: a legacy HTTP proxy (plaintext, one request per connection):
# accepts on 127.0.0.1:LPORT, forwards the request to BHOST:BPORT, sends the
# response back, or a 502 naming the errno when the backend fails.
write_proxy() {
  cat <<'PY'
import errno, socket, sys
lport, bhost, bport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport))
ls.listen(16)
print("listening", flush=True)
while True:
    c, addr = ls.accept()
    print(f"accepted {addr[0]}:{addr[1]}", flush=True)
    c.settimeout(10)
    req = b""
    try:
        while b"\r\n\r\n" not in req:
            chunk = c.recv(65536)
            if not chunk:
                break
            req += chunk
    except OSError as e:
        print(f"client error {e}", flush=True)
    if b"\r\n\r\n" not in req:
        c.close()
        continue
    try:
        b = socket.create_connection((bhost, bport), timeout=10)
        b.sendall(req)
        resp = b""
        while True:
            chunk = b.recv(65536)
            if not chunk:
                break
            resp += chunk
        b.close()
        print(f"backend ok bytes={len(resp)}", flush=True)
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e))
        print(f"backend error {name}", flush=True)
        resp = (b"HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\n"
                b"proxy: backend failed: " + name.encode() + b"\n")
    c.sendall(resp)
    c.close()
PY
}

@test "a legacy proxy: inbound TLS and verified outbound TLS in one process" {
  local good bad
  good=$(free_port)
  bad=$(free_port)
  start_bg backend openssl s_server -quiet -www -accept "127.0.0.1:$good" \
    -cert "$CERTS/server.pem" -key "$CERTS/server.key"
  start_bg badbackend openssl s_server -quiet -www -accept "127.0.0.1:$bad" \
    -cert "$CERTS/untrusted.pem" -key "$CERTS/untrusted.key"
  wait_listen "$good" 1 backend
  wait_listen "$bad" 1 badbackend
  write_proxy >"$TMP/proxy.py"
  conf=$(base_conf | write_conf c)
  serve proxy "$conf" "$PY" -u "$TMP/proxy.py" "$port" 127.0.0.1 "$good"
  wait_listen "$port" 1 proxy
  local p2
  p2=$(free_port)
  serve badproxy "$conf" "$PY" -u "$TMP/proxy.py" "$p2" 127.0.0.1 "$bad"
  wait_listen "$p2" 1 badproxy
  get "https://localhost:$port/via-proxy"
  assert_status 0
  assert_output_has "s_server"
  has "$TMP/proxy.out" "backend ok"
  # The outbound leg is verified: an untrusted backend is refused.
  get "https://localhost:$p2/via-proxy"
  assert_status 0
  assert_output_has "proxy: backend failed: ECONNREFUSED"
  "$WAITFOR" -t 10 grep "$TMP/badproxy.err" "event=handshake_failed[^\\n]* dir=out[ \\n]" || {
    cat "$TMP/badproxy.err" >&2
    false
  }
  # And the inbound leg is TLS only.
  get "http://127.0.0.1:$port/plain"
  assert_refused
}

# --- inclient.py ------------------------------------------------------------------------

write_inclient() {
  cat <<'PY'
#!/usr/bin/python3
"""inclient.py: TLS and plaintext clients for the inbound-mode tests. Runs
WITHOUT the shim: it plays the remote client of a server that runs under it.
Every command takes --bind ADDR (the source address, e.g. 127.0.0.2).

  tls HOST PORT --ca CA [--cert C --key K] [--sni NAME] [--tls 1.2|1.3]
      [--send LINE]... [--lines N]
      TLS handshake (verifying the server against CA and the name of --sni,
      or HOST, an IP address checked against the IP SANs), then send each LINE plus a newline and read N
      lines (default: as many as were sent). Prints
        handshake=ok version=V cipher=C sockname=IP:PORT
        recv=LINE           (one per line read)
      or handshake=fail error="..." / error="..." (after the handshake).
      Exit 0 when N lines arrived, 3 when the handshake failed, 4 otherwise.
  resume HOST PORT --ca CA [--cert C --key K] [--tls 1.2|1.3] [--count N]
      N (default 3) connections, each but the first offering the session of
      the previous one; each exchanges a line. Prints
        conn=I reused=True|False version=V
  stall HOST PORT --ca CA --silent N --partial M [--wait S] [--no-good]
      Opens N TCP connections that send nothing and M that send only the
      first 5 bytes of a TLS record header, then (while they hang) one TLS
      echo exchange (not with --no-good); then waits (S seconds at most,
      default 20) for the server to close each stalled connection. Prints
        good=ok elapsed=SECONDS      (or good=fail error="...")
        stalled=I kind=silent|partial end=eof|reset|timeout elapsed=S bytes=B sockname=IP:PORT
      elapsed counts from when the stalled connections were opened. With
      --bind A.B.C.D, stalled connection I comes from A.B.C.(D+I), and the
      good one from A.B.C.D.
  raw HOST PORT [--send TEXT] [--wait S]
      Plaintext: connect, send TEXT (escapes like \\n are decoded), read
      until the server closes (S seconds at most, default 10). Prints
        connect=ok sockname=IP:PORT
      (or connect=reset when the reset beat connect(); sockname is then
      known only with --bind)
        recv=b'python repr of the bytes' end=eof|reset|timeout elapsed=S
"""
import argparse
import socket
import ssl
import sys
import time


def fmt_addr(sa):
    if ":" in sa[0]:
        return f"[{sa[0]}]:{sa[1]}"
    return f"{sa[0]}:{sa[1]}"


def ctx_for(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.check_hostname = True  # the name of --sni, else HOST (an IP: against the IP SANs)
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    if a.tls == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif a.tls == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def tcp_connect(a):
    src = (a.bind, 0) if getattr(a, "bind", None) else None
    return socket.create_connection((a.host, a.port), timeout=10, source_address=src)


def tls_connect(a, ctx, session=None):
    raw = tcp_connect(a)
    try:
        return ctx.wrap_socket(raw, server_hostname=a.sni or a.host, session=session)
    except BaseException:
        raw.close()
        raise


def read_lines(s, n):
    buf, lines = b"", []
    while len(lines) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf and len(lines) < n:
            line, buf = buf.split(b"\n", 1)
            lines.append(line.decode(errors="replace"))
    return lines


def q(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_tls(a):
    ctx = ctx_for(a)
    try:
        s = tls_connect(a, ctx)
    except (OSError, ssl.SSLError) as e:
        print(f"handshake=fail error={q(e)}")
        return 3
    print(f"handshake=ok version={s.version()} cipher={s.cipher()[0]} "
          f"sockname={fmt_addr(s.getsockname())}", flush=True)
    want = a.lines if a.lines is not None else len(a.send)
    try:
        for line in a.send:
            s.sendall(line.encode() + b"\n")
        lines = read_lines(s, want)
    except (OSError, ssl.SSLError) as e:
        print(f"error={q(e)}")
        return 4
    for line in lines:
        print(f"recv={line}")
    s.close()
    return 0 if len(lines) == want else 4


def cmd_resume(a):
    ctx = ctx_for(a)
    session, ok = None, True
    for i in range(1, a.count + 1):
        s = tls_connect(a, ctx, session)
        s.sendall(b"resume-%d\n" % i)
        lines = read_lines(s, 1)
        ok = ok and lines == ["resume-%d" % i]
        print(f"conn={i} reused={s.session_reused} version={s.version()} echo={lines}")
        session = s.session
        s.close()
    return 0 if ok else 4


def wait_close(s, deadline):
    got = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", got
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return "timeout", got
        except ConnectionResetError:
            return "reset", got
        if not chunk:
            return "eof", got
        got += len(chunk)


def cmd_stall(a):
    stalled = []
    t0 = time.monotonic()
    for i in range(a.silent + a.partial):
        src = None
        if a.bind:  # one source address each: A.B.C.D, A.B.C.D+1, ...
            base = a.bind.rsplit(".", 1)
            src = (f"{base[0]}.{int(base[1]) + i}", 0)
        s = socket.create_connection((a.host, a.port), timeout=10, source_address=src)
        kind = "silent"
        if i >= a.silent:
            kind = "partial"
            s.sendall(b"\x16\x03\x01\x02\x00")  # a handshake record of 512 bytes, never sent
        stalled.append((s, kind))
    ctx = ctx_for(a)
    try:
        if a.no_good:
            raise StopIteration
        g = tls_connect(a, ctx)
        g.sendall(b"good\n")
        lines = read_lines(g, 1)
        g.close()
        if lines != ["good"]:
            raise OSError(f"echo was {lines!r}")
        print(f"good=ok elapsed={time.monotonic() - t0:.3f}", flush=True)
    except StopIteration:
        pass
    except (OSError, ssl.SSLError) as e:
        print(f"good=fail error={q(e)} elapsed={time.monotonic() - t0:.3f}", flush=True)
    deadline = t0 + a.wait
    for i, (s, kind) in enumerate(stalled):
        name = fmt_addr(s.getsockname())
        end, got = wait_close(s, deadline)
        print(f"stalled={i} kind={kind} end={end} elapsed={time.monotonic() - t0:.3f} "
              f"bytes={got} sockname={name}", flush=True)
        s.close()
    return 0


def cmd_raw(a):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET)
    name = None
    if a.bind:
        s.bind((a.bind, 0))
        name = fmt_addr(s.getsockname())
    s.settimeout(10)
    try:
        s.connect((a.host, a.port))
    except ConnectionResetError:
        # The server's reset can arrive before connect() has looked at the
        # result: refused at once, like a reset after connecting.
        print(f"connect=reset sockname={name}")
        print(f"recv=b'' end=reset elapsed={time.monotonic() - t0:.3f}")
        return 0
    print(f"connect=ok sockname={fmt_addr(s.getsockname())}", flush=True)
    data = b""
    if a.send is not None:
        try:
            s.sendall(a.send.encode().decode("unicode_escape").encode("latin-1"))
        except OSError as e:
            print(f"send_error={q(e)}")
    deadline = t0 + a.wait
    end = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            end = "reset"
            break
        if not chunk:
            end = "eof"
            break
        data += chunk
    print(f"recv={repr(data)} end={end} "
          f"elapsed={time.monotonic() - t0:.3f}")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("tls", "resume", "stall", "raw"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        sp.add_argument("--bind", help="source address")
        if name != "raw":
            sp.add_argument("--ca", required=True)
            sp.add_argument("--cert")
            sp.add_argument("--key")
            sp.add_argument("--sni")
            sp.add_argument("--tls", choices=["1.2", "1.3"])
    tl = sub.choices["tls"]
    tl.add_argument("--send", action="append", default=[])
    tl.add_argument("--lines", type=int)
    sub.choices["resume"].add_argument("--count", type=int, default=3)
    st = sub.choices["stall"]
    st.add_argument("--silent", type=int, default=1)
    st.add_argument("--partial", type=int, default=0)
    st.add_argument("--wait", type=float, default=20.0)
    st.add_argument("--no-good", action="store_true")
    rw = sub.choices["raw"]
    rw.add_argument("--send")
    rw.add_argument("--wait", type=float, default=10.0)
    a = p.parse_args()
    return {"tls": cmd_tls, "resume": cmd_resume, "stall": cmd_stall, "raw": cmd_raw}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
PY
}
