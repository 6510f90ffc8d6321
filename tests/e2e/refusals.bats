#!/usr/bin/env bats
# Refused connections: each failure the shim must catch, against a real
# server built for it, plus the cases where the shim must stay out of the way
# (Unix sockets) and the `tlsshim run` launcher's own refusals.
#
# A refused connect() fails with ECONNREFUSED (curl exit 7), or ETIMEDOUT on
# a handshake timeout; with TLSSHIM_LOG_STDERR=1 the shim prints one
# structured line per failure, which is asserted on event=, stage= and the
# reason text.

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

# refused_cert CERT HOST REASON X509_ERR: an s_server -www presenting
# $CERTS/CERT.pem; curl http://HOST:PORT/ under the shim must be refused at
# the verify stage with REASON and X509_ERR.
refused_cert() {
  local cert=$1 host=$2 reason=$3 x509=$4
  start_s_server "$port" "$cert" -www
  run --separate-stderr shim curl -sS -g "http://$host:$port/"
  assert_status 7
  assert_log handshake_failed verify "$reason" "$x509"
  # Nothing of the server's page may have reached the client.
  [[ $output != *s_server* ]] || {
    show_run
    false
  }
}

# --- certificate verification ---------------------------------------------

@test "control: the same s_server harness with the valid certificate is accepted" {
  start_s_server "$port" server -www
  run --separate-stderr shim curl -sS "http://localhost:$port/"
  assert_status 0
  assert_output_has "s_server"
  assert_stderr_lacks "event=handshake_failed"
}

@test "untrusted CA: verify, unable to get local issuer certificate (20)" {
  refused_cert untrusted localhost "unable to get local issuer certificate" 20
}

@test "self-signed leaf: verify, self-signed certificate (18)" {
  refused_cert selfsigned localhost "self-signed certificate" 18
}

@test "expired certificate: verify, certificate has expired (10)" {
  refused_cert expired localhost "certificate has expired" 10
}

@test "not yet valid certificate: verify, certificate is not yet valid (9)" {
  refused_cert notyet localhost "certificate is not yet valid" 9
}

# curl resolves "localhost" without getaddrinfo (see clients.bats), so the
# DNS-name check is driven by clients that use the libc resolver.
@test "wrong DNS name (wget): verify, hostname mismatch (62)" {
  start_s_server "$port" wrongname -www
  run --separate-stderr shim wget -q -O - --tries=1 --timeout=10 \
    "http://localhost:$port/"
  assert_status 4 # wget: network failure
  assert_log handshake_failed verify "hostname mismatch" 62
  assert_stderr_has "name=localhost"
  [[ $output != *s_server* ]]
}

@test "wrong DNS name (python socket): ECONNREFUSED, hostname mismatch (62)" {
  start_s_server "$port" wrongname -www
  run --separate-stderr shim "$PY" "$PYCLIENT" connect --send "GET / HTTP/1.0" \
    localhost "$port"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  assert_log handshake_failed verify "hostname mismatch" 62
  assert_stderr_has "name=localhost"
}

@test "wrong IP address: verify, IP address mismatch (64)" {
  refused_cert wrongname 127.0.0.1 "IP address mismatch" 64
}

@test "wrong IPv6 address: verify, IP address mismatch (64)" {
  have_ipv6 || skip "no ::1 on this host"
  refused_cert wrongname "[::1]" "IP address mismatch" 64
}

# --- servers that do not speak TLS ---------------------------------------

@test "plaintext server: refused_plaintext, and it receives none of the data" {
  local rec=$BATS_TEST_TMPDIR/received marker
  marker=$(new_marker)
  start_plain "$port" "$rec"

  run --separate-stderr shim curl -sS "http://localhost:$port/$marker"
  assert_status 7
  assert_log refused_plaintext handshake "server did not speak TLS"

  run --separate-stderr shim "$PY" "$PYCLIENT" connect --send "$marker" \
    localhost "$port"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  assert_log refused_plaintext handshake "server did not speak TLS"

  # The server did hear from the shim (a ClientHello), so it would have
  # recorded the marker had any application byte leaked.
  [[ -s $rec ]] || {
    echo "the plaintext server received nothing: the test proves nothing" >&2
    false
  }
  [[ $(count_in "$rec" "$marker") -eq 0 ]] || {
    echo "plaintext server received application data:" >&2
    cat -v "$rec" >&2
    false
  }

  # Control: the recorder does catch the marker when it is sent in clear.
  run --separate-stderr bounded curl -sS "http://localhost:$port/$marker"
  "$WAITFOR" -t 5 grep "$rec" "$marker"
}

@test "silent server: handshake timeout after TLSSHIM_HANDSHAKE_TIMEOUT=1, ETIMEDOUT" {
  start_silent "$port"
  run --separate-stderr shim TLSSHIM_HANDSHAKE_TIMEOUT=1 \
    "$PY" "$PYCLIENT" connect --send never-sent 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ETIMEDOUT"
  assert_log handshake_failed timeout "handshake timed out"
  # Bounded by the setting: not immediate, and nowhere near the default 10 s.
  local elapsed
  elapsed=$(sed -n 's/^elapsed=//p' <<<"$output")
  "$PY" -c "import sys; e = float(sys.argv[1]); sys.exit(not 0.5 <= e < 5)" \
    "$elapsed" || {
    echo "connect took ${elapsed}s, expected about 1 s" >&2
    show_run
    false
  }
  grep -q accepted "$BATS_TEST_TMPDIR/silent-$port.out"
}

# --- no configuration ----------------------------------------------------

@test "no trust configured: every connect refused, one stderr line per process" {
  local rec=$BATS_TEST_TMPDIR/received marker
  marker=$(new_marker)
  start_plain "$port" "$rec"
  run --separate-stderr preload_only "$PY" "$PYCLIENT" connect -n 2 \
    --send "$marker" localhost "$port"
  assert_status 3
  [[ $(grep -c '^connect=ECONNREFUSED$' <<<"$output") -eq 2 ]] || {
    show_run
    false
  }
  [[ $(grep -c '^tlsshim: no trust configured' <<<"$stderr") -eq 1 ]] || {
    echo "expected exactly one 'tlsshim: no trust configured' line" >&2
    show_run
    false
  }
  [[ $(grep -c . <<<"$stderr") -eq 1 ]] || {
    echo "expected nothing else on stderr" >&2
    show_run
    false
  }
  [[ $(count_in "$rec" "$marker") -eq 0 ]]
}

@test "no trust configured: curl fails with exit 7 and says why" {
  start_nginx "$port" server
  run --separate-stderr preload_only curl -sS "http://localhost:$port/"
  assert_status 7
  assert_stderr_has "tlsshim: no trust configured"
  [[ $output != *"tlsshim-e2e ok"* ]]
}

@test "unix domain sockets are untouched (no config, no trust needed)" {
  run --separate-stderr preload_only "$PY" "$PYCLIENT" unix "$BATS_TEST_TMPDIR"
  assert_status 0
  assert_output_has "unix=ok"
  assert_stderr_lacks "tlsshim"
}

# --- tlsshim run ---------------------------------------------------------

@test "tlsshim version prints 'tlsshim <version>'" {
  run --separate-stderr tlsshim_cli version
  assert_status 0
  [[ $output =~ ^tlsshim\ [^[:space:]]+$ ]] || {
    show_run
    false
  }
}

@test "tlsshim run --ca: curl is wrapped and accepted" {
  start_nginx "$port" server
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- \
    curl -sS "http://localhost:$port/run"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "uri=/run"
}

@test "tlsshim run --ca: refusal still refuses (untrusted server)" {
  start_s_server "$port" untrusted -www
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- \
    env TLSSHIM_LOG_STDERR=1 curl -sS "http://localhost:$port/"
  assert_status 7
  assert_log handshake_failed verify "unable to get local issuer certificate" 20
}

@test "tlsshim run sets an absolute LD_PRELOAD next to the binary, and the CA" {
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- \
    printenv LD_PRELOAD TLSSHIM_CA_FILE
  assert_status 0
  local preload ca
  preload=$(sed -n 1p <<<"$output")
  ca=$(sed -n 2p <<<"$output")
  [[ $preload == /* ]]
  [[ $(readlink -f "$preload") == $(readlink -f "$(dirname "$TLSSHIM_BIN")/libtlsshim.so") ]]
  [[ $(readlink -f "$ca") == $(readlink -f "$CERTS/ca.pem") ]]
}

@test "tlsshim run: the program's exit status is passed through" {
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- \
    sh -c 'exit 3'
  assert_status 3
}

# refuses_to_run PROGRAM: tlsshim run must not start PROGRAM.
refuses_to_run() {
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- "$1"
  assert_status 126
  assert_stderr_has "refusing"
}

@test "tlsshim run: control, a plain copy of true runs" {
  cp /usr/bin/true "$BATS_TEST_TMPDIR/true-plain"
  run --separate-stderr tlsshim_cli run --ca "$CERTS/ca.pem" -- \
    "$BATS_TEST_TMPDIR/true-plain"
  assert_status 0
}

@test "tlsshim run refuses a setuid binary" {
  cp /usr/bin/true "$BATS_TEST_TMPDIR/true-setuid"
  chmod u+s "$BATS_TEST_TMPDIR/true-setuid"
  refuses_to_run "$BATS_TEST_TMPDIR/true-setuid"
}

@test "tlsshim run refuses a setgid binary" {
  cp /usr/bin/true "$BATS_TEST_TMPDIR/true-setgid"
  chmod g+s "$BATS_TEST_TMPDIR/true-setgid"
  refuses_to_run "$BATS_TEST_TMPDIR/true-setgid"
}

@test "tlsshim run refuses a binary with file capabilities" {
  cp /usr/bin/true "$BATS_TEST_TMPDIR/true-cap"
  setcap cap_net_raw+ep "$BATS_TEST_TMPDIR/true-cap" 2>/dev/null ||
    skip "setcap does not work here (needs root and xattrs)"
  refuses_to_run "$BATS_TEST_TMPDIR/true-cap"
}

@test "tlsshim run refuses a statically linked binary" {
  printf 'int main(void) { return 0; }\n' >"$BATS_TEST_TMPDIR/static.c"
  gcc -static -o "$BATS_TEST_TMPDIR/static-true" "$BATS_TEST_TMPDIR/static.c" \
    2>/dev/null || skip "no static libc to build a static binary"
  refuses_to_run "$BATS_TEST_TMPDIR/static-true"
}
