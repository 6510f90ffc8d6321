#!/usr/bin/env bats
# Trust policy (issue 3): the configuration file (TLSSHIM_CONFIG, OpenSSL
# NCONF syntax), per-destination rules (tls / plaintext / deny), approved CAs
# and certificates, pins, client certificates, UDP policy, configuration
# errors, and the `tlsshim check|probe|verify|run --config` commands.
#
# Every program here is a stock client (curl, wget, python3) run under the
# shim with TLSSHIM_CONFIG and nothing else (no TLSSHIM_CA_FILE), against
# openssl s_server or nginx on loopback. Refusals are asserted on the log
# line (event=, stage=, rule=, reason=) that TLSSHIM_LOG_STDERR=1 copies to
# stderr.
#
# curl resolves "localhost" itself, without getaddrinfo, so the shim learns no
# name from it: curl tests connect to 127.0.0.1 (checked against the IP SAN)
# and rules match them by address; host-name rules are driven by python and
# wget, which use the C library's resolver.

# bats' `run` sets status, output and stderr; shellcheck cannot see that.
# shellcheck disable=SC2030,SC2031,SC2154

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

# --- local helpers ----------------------------------------------------------

# another_port: a free port, once the servers on the earlier ones listen.
another_port() {
  free_port
}

# global_conf NAME [LINE...]: a file whose [tlsshim] section trusts ca.pem
# and holds LINEs, and no rules. Prints its path.
global_conf() {
  local name=$1
  shift
  {
    echo "[tlsshim]"
    echo "ca_file = $CERTS/ca.pem"
    printf '%s\n' "$@"
  } | write_conf "$name"
}

# curl_ok CONF PORT: curl http://127.0.0.1:PORT/ under CONF succeeds.
curl_ok() {
  run --separate-stderr shim_conf "$1" curl -sS "http://127.0.0.1:$2/"
  assert_status 0
  assert_stderr_lacks "event=handshake_failed"
}

# curl_refused CONF PORT FIELD...: curl http://127.0.0.1:PORT/ under CONF is
# refused (exit 7) with a handshake_failed log line having every FIELD (see
# assert_log_fields), and no byte of the server's answer reached curl.
curl_refused() {
  local conf=$1 p=$2
  shift 2
  run --separate-stderr shim_conf "$conf" curl -sS "http://127.0.0.1:$p/"
  assert_status 7
  assert_log_fields event=handshake_failed "$@"
  [[ -z $output ]] || {
    echo "curl received data from a refused server" >&2
    show_run
    false
  }
}

# refused_s_server CERT FIELD... [-- S_SERVER_OPTION...]: an s_server -www
# presenting CERT, behind the global trust (ca.pem) only; curl is refused
# with FIELDs.
refused_s_server() {
  local cert=$1 conf
  shift
  local -a fields=() opts=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    fields+=("$1")
    shift
  done
  [[ ${1:-} == -- ]] && shift
  opts=("$@")
  start_s_server "$port" "$cert" -www "${opts[@]}"
  conf=$(global_conf global)
  curl_refused "$conf" "$port" "${fields[@]}"
}

# --- refusals under the global trust (ca_file from the file) ---------------

@test "config ca_file: control, server.pem is accepted" {
  start_s_server "$port" server -www
  curl_ok "$(global_conf global)" "$port"
  assert_output_has "s_server"
}

@test "config: untrusted CA, verify, unable to get local issuer certificate" {
  refused_s_server untrusted stage=verify \
    "reason~unable to get local issuer certificate" x509_err=20
}

@test "config: expired, verify, certificate has expired" {
  refused_s_server expired stage=verify "reason~certificate has expired" x509_err=10
}

@test "config: not yet valid, verify, certificate is not yet valid" {
  refused_s_server notyet stage=verify "reason~certificate is not yet valid" x509_err=9
}

@test "config: self-signed and not approved, verify, self-signed certificate" {
  refused_s_server selfsigned stage=verify "reason~self-signed certificate" x509_err=18
}

@test "config: wrong name (wget, resolved localhost), verify, hostname mismatch" {
  local conf
  conf=$(global_conf global)
  start_s_server "$port" wrongname -www
  run --separate-stderr shim_conf "$conf" wget -q -O - --tries=1 --timeout=10 \
    "http://localhost:$port/"
  assert_status 4
  assert_log_fields event=handshake_failed stage=verify name=localhost \
    "reason~hostname mismatch" x509_err=62
  [[ $output != *s_server* ]]
}

@test "config: missing intermediate, verify, unable to get local issuer certificate" {
  refused_s_server chain-leaf stage=verify \
    "reason~unable to get local issuer certificate" x509_err=20
}

@test "config: intermediate sent by the server (s_server -cert_chain): accepted" {
  start_s_server "$port" chain-leaf -www -cert_chain "$CERTS/int-ca.pem"
  curl_ok "$(global_conf global)" "$port"
  assert_output_has "s_server"
}

@test "config: full chain file in nginx: accepted" {
  start_nginx_with "$port" "$CERTS/chain-leaf-fullchain.pem" "$CERTS/chain-leaf.key"
  curl_ok "$(global_conf global)" "$port"
  assert_output_has "tlsshim-e2e ok"
}

@test "config: RSA-1024 leaf, verify, EE certificate key too weak" {
  refused_s_server rsa1024 stage=verify "reason~EE certificate key too weak" \
    x509_err=66 -- -cipher DEFAULT@SECLEVEL=0
}

@test "config: SHA-1 signed leaf, verify, CA signature digest algorithm too weak" {
  refused_s_server sha1 stage=verify \
    "reason~CA signature digest algorithm too weak" x509_err=68 \
    -- -cipher DEFAULT@SECLEVEL=0
}

@test "config: CA:TRUE certificate served as the leaf, verify, refused" {
  refused_s_server ca-as-leaf stage=verify \
    "reason~certificate is a CA, not a server certificate"
}

@test "config: X.509 v1 leaf, verify, refused" {
  refused_s_server v1 stage=verify "reason~X.509 v1 certificate"
}

@test "config: TLS 1.1-only server, handshake, protocol version too low" {
  refused_s_server server stage=handshake "reason~protocol version too low" \
    -- -tls1_1 -cipher DEFAULT@SECLEVEL=0
}

@test "config: TLS 1.0/1.1-only server (-no_tls1_2 -no_tls1_3), handshake, protocol version too low" {
  refused_s_server server stage=handshake "reason~protocol version too low" \
    -- -no_tls1_2 -no_tls1_3 -cipher DEFAULT@SECLEVEL=0
}

@test "config: server requires a client certificate, none configured (TLS 1.3), handshake" {
  refused_s_server server stage=handshake \
    "reason~server sent alert|certificate required" \
    -- -Verify 1 -CAfile "$CERTS/ca.pem"
}

@test "config: server requires a client certificate, none configured (TLS 1.2), handshake" {
  refused_s_server server stage=handshake \
    "reason~server sent alert|certificate required" \
    -- -Verify 1 -CAfile "$CERTS/ca.pem" -no_tls1_3
}

@test "config: plaintext server still refused (no fallback), application data never sent" {
  local rec=$BATS_TEST_TMPDIR/received marker conf
  marker=$(new_marker)
  conf=$(global_conf global)
  start_plain "$port" "$rec"
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect \
    --send "$marker" 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  assert_log_fields event=refused_plaintext stage=handshake
  [[ $(count_in "$rec" "$marker") -eq 0 ]]
}

@test "config log_stderr = yes: log lines on stderr without TLSSHIM_LOG_STDERR" {
  local conf
  conf=$(global_conf global "log_stderr = yes")
  start_s_server "$port" untrusted -www
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env \
    LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$conf" \
    curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  assert_log_fields event=handshake_failed stage=verify \
    "reason~unable to get local issuer certificate"
}

@test "config handshake_timeout = 1: silent server times out, ETIMEDOUT" {
  local conf elapsed
  conf=$(global_conf global "handshake_timeout = 1")
  start_silent "$port"
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect \
    --send never-sent 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ETIMEDOUT"
  assert_log_fields event=handshake_failed stage=timeout
  elapsed=$(sed -n 's/^elapsed=//p' <<<"$output")
  "$PY" -c "import sys; e = float(sys.argv[1]); sys.exit(not 0.5 <= e < 5)" \
    "$elapsed" || {
    echo "connect took ${elapsed}s, expected about 1 s" >&2
    show_run
    false
  }
}

# --- approved certificates ---------------------------------------------------

@test "approved_cert: the approved self-signed certificate is accepted" {
  local conf
  conf=$(write_conf approved <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = partner_ss
[partner_ss]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
EOF
  )
  start_s_server "$port" approved-selfsigned -www
  curl_ok "$conf" "$port"
  assert_output_has "s_server"
}

@test "approved_cert: another self-signed certificate is refused by that rule" {
  local conf
  conf=$(write_conf approved <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = partner_ss
[partner_ss]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
EOF
  )
  start_s_server "$port" selfsigned -www
  curl_refused "$conf" "$port" stage=verify rule=partner_ss \
    "reason~self-signed certificate"
}

@test "approved_cert: a rule with approved_cert trusts only it, not the global CA" {
  local conf
  conf=$(write_conf approved <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = partner_ss
[partner_ss]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
EOF
  )
  start_s_server "$port" server -www
  curl_refused "$conf" "$port" stage=verify rule=partner_ss \
    "reason~unable to get local issuer certificate"
}

@test "approved_cert: an exactly approved certificate from an untrusted CA is accepted" {
  local conf
  conf=$(write_conf approved <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = exact
[exact]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/untrusted.pem
EOF
  )
  start_s_server "$port" untrusted -www
  curl_ok "$conf" "$port"
  assert_output_has "s_server"
}

@test "approved_cert in [tlsshim]: the approved self-signed and CA-issued ones are accepted" {
  local conf port2
  conf=$(global_conf global "approved_cert = $CERTS/approved-selfsigned.pem")
  start_s_server "$port" approved-selfsigned -www
  port2=$(another_port)
  start_s_server "$port2" server -www
  curl_ok "$conf" "$port"
  curl_ok "$conf" "$port2"
  # and a self-signed one that is not approved is still refused
  local port3
  port3=$(another_port)
  start_s_server "$port3" selfsigned -www
  curl_refused "$conf" "$port3" stage=verify "reason~self-signed certificate"
}

# --- pins ----------------------------------------------------------------------

# pin_conf PORT PINS: a rule "pinned" for 127.0.0.1:PORT with pin = PINS,
# chain from the global ca.pem.
pin_conf() {
  write_conf pinned <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = pinned
[pinned]
match = 127.0.0.1:$1
action = tls
pin = $2
EOF
}

@test "pin: the leaf's SPKI pin matches: accepted" {
  start_s_server "$port" server -www
  curl_ok "$(pin_conf "$port" "$(pin_of server)")" "$port"
  assert_output_has "s_server"
}

@test "pin: the root CA's SPKI pin (in the verified chain) matches: accepted" {
  start_s_server "$port" server -www
  curl_ok "$(pin_conf "$port" "$(pin_of ca)")" "$port"
}

@test "pin: the intermediate's pin matches a chain-leaf server: accepted" {
  start_s_server "$port" chain-leaf -www -cert_chain "$CERTS/int-ca.pem"
  curl_ok "$(pin_conf "$port" "$(pin_of int-ca)")" "$port"
}

@test "pin: a list where only the second pin matches: accepted" {
  start_s_server "$port" server -www
  curl_ok "$(pin_conf "$port" "$(pin_of untrusted), $(pin_of server)")" "$port"
}

@test "pin: another key's pin, chain fine: refused, pin mismatch" {
  start_s_server "$port" server -www
  curl_refused "$(pin_conf "$port" "$(pin_of untrusted)")" "$port" \
    stage=verify rule=pinned "reason~pin mismatch"
}

@test "pin: the pin matches but the chain does not verify: refused (chain AND pin)" {
  start_s_server "$port" untrusted -www
  curl_refused "$(pin_conf "$port" "$(pin_of untrusted)")" "$port" \
    stage=verify rule=pinned "reason~unable to get local issuer certificate"
}

@test "pin in [tlsshim]: applies to unmatched destinations" {
  local conf port2
  conf=$(global_conf global "pin = $(pin_of server)")
  start_s_server "$port" server -www
  port2=$(another_port)
  start_s_server "$port2" chain-leaf -www -cert_chain "$CERTS/int-ca.pem"
  curl_ok "$conf" "$port"
  curl_refused "$conf" "$port2" stage=verify "reason~pin mismatch"
}

@test "pin and approved_cert together: both must pass" {
  local conf_ok conf_bad
  conf_ok=$(write_conf both-ok <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = legacy_partner
[legacy_partner]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
pin = $(pin_of approved-selfsigned)
EOF
  )
  conf_bad=$(write_conf both-bad <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = legacy_partner
[legacy_partner]
match = 127.0.0.1:$port
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
pin = $(pin_of server)
EOF
  )
  start_s_server "$port" approved-selfsigned -www
  curl_ok "$conf_ok" "$port"
  curl_refused "$conf_bad" "$port" stage=verify rule=legacy_partner \
    "reason~pin mismatch"
}

# --- per-rule trust, names, protocols ------------------------------------------

@test "per-rule ca_file: partner CA accepted by its rule, refused by the global trust" {
  local p1=$port p2 p3 conf
  start_s_server "$p1" partner -www
  p2=$(another_port)
  start_s_server "$p2" partner -www
  p3=$(another_port)
  start_s_server "$p3" server -www
  conf=$(write_conf partner <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = partner_rule
2 = internal_rule
[partner_rule]
match = 127.0.0.1:$p1, 127.0.0.1:$p3
action = tls
ca_file = $CERTS/partner-ca.pem
[internal_rule]
match = 127.0.0.1:$p2
action = tls
EOF
  )
  # The partner's server, under the rule that trusts the partner CA.
  curl_ok "$conf" "$p1"
  assert_output_has "s_server"
  # The same certificate under a rule that inherits the global CA: a CA
  # trusted only by another rule does not count.
  curl_refused "$conf" "$p2" stage=verify rule=internal_rule \
    "reason~unable to get local issuer certificate"
  # The rule's ca_file replaces the global one: server.pem (from ca) is not
  # trusted there.
  curl_refused "$conf" "$p3" stage=verify rule=partner_rule \
    "reason~unable to get local issuer certificate"
}

@test "name override: name = wrong.example accepts wrongname.pem by IP, and is sent as SNI" {
  local conf control
  start_nginx_with "$port" "$CERTS/wrongname.pem" "$CERTS/wrongname.key"
  conf=$(write_conf name <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = named
[named]
match = 127.0.0.1:$port
action = tls
name = wrong.example
EOF
  )
  curl_ok "$conf" "$port"
  assert_output_has "tlsshim-e2e ok"
  assert_output_has "sni=wrong.example "
  # Control: without the rule the IP is checked, and it is not in the cert.
  control=$(global_conf global)
  curl_refused "$control" "$port" stage=verify "reason~IP address mismatch"
}

@test "name override also wins over the name the program resolved (python localhost)" {
  local conf
  start_s_server "$port" wrongname -rev
  conf=$(write_conf name <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = named
[named]
match = localhost:$port
action = tls
name = wrong.example
EOF
  )
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect -4 \
    --send hello --recv-line localhost "$port"
  assert_status 0
  assert_output_has "recv=olleh"
}

@test "min_protocol = TLSv1.3 in a rule refuses a TLS 1.2-only server" {
  local conf control
  start_s_server "$port" server -www -no_tls1_3
  conf=$(write_conf tls13 <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = modern
[modern]
match = 127.0.0.1:$port
action = tls
min_protocol = TLSv1.3
EOF
  )
  curl_refused "$conf" "$port" stage=handshake rule=modern "reason~protocol version"
  # Control: the global minimum (TLS 1.2) accepts the same server.
  control=$(global_conf global)
  curl_ok "$control" "$port"
  assert_output_has "TLSv1.2"
}

@test "min_protocol = TLSv1.3 in [tlsshim]: TLS 1.3 server accepted, TLS 1.2-only refused" {
  local conf port2
  conf=$(global_conf global "min_protocol = TLSv1.3")
  start_nginx_with "$port" "$CERTS/server.pem" "$CERTS/server.key"
  port2=$(another_port)
  start_s_server "$port2" server -www -no_tls1_3
  curl_ok "$conf" "$port"
  assert_output_has "proto=TLSv1.3"
  curl_refused "$conf" "$port2" stage=handshake "reason~protocol version"
}

@test "ciphersuites in a rule: the negotiated TLS 1.3 suite is the one allowed" {
  local conf
  start_nginx_with "$port" "$CERTS/server.pem" "$CERTS/server.key"
  conf=$(write_conf suites <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = suites
[suites]
match = 127.0.0.1:$port
action = tls
ciphersuites = TLS_CHACHA20_POLY1305_SHA256
EOF
  )
  curl_ok "$conf" "$port"
  assert_output_has "cipher=TLS_CHACHA20_POLY1305_SHA256 "
}

# --- client certificates (mTLS) ------------------------------------------------

# mtls_conf PORT CERTNAME: rule "mtls" for 127.0.0.1:PORT sending
# $CERTS/CERTNAME.pem.
mtls_conf() {
  write_conf "mtls-$2" <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = mtls
[mtls]
match = 127.0.0.1:$1
action = tls
cert = $CERTS/$2.pem
key = $CERTS/$2.key
EOF
}

@test "mTLS: s_server -Verify 1 -CAfile ca.pem, rule cert/key: accepted, server saw the client" {
  start_s_server "$port" server -www -Verify 1 -CAfile "$CERTS/ca.pem"
  curl_ok "$(mtls_conf "$port" client)" "$port"
  assert_output_has "CN=test-client"
}

@test "mTLS: s_server -Verify 1 over TLS 1.2, rule cert/key: accepted" {
  start_s_server "$port" server -www -Verify 1 -CAfile "$CERTS/ca.pem" -no_tls1_3
  curl_ok "$(mtls_conf "$port" client)" "$port"
  assert_output_has "CN=test-client"
}

@test "mTLS: client_cert and client_key in [tlsshim] are sent to every destination" {
  local conf
  conf=$(global_conf global "client_cert = $CERTS/client.pem" "client_key = $CERTS/client.key")
  start_s_server "$port" server -www -Verify 1 -CAfile "$CERTS/ca.pem"
  curl_ok "$conf" "$port"
  assert_output_has "CN=test-client"
}

@test "mTLS: a client certificate the server does not trust (client2): refused, handshake" {
  # -verify_return_error: without it s_server only notes the failure.
  start_s_server "$port" server -www -Verify 1 -CAfile "$CERTS/ca.pem" \
    -verify_return_error
  curl_refused "$(mtls_conf "$port" client2)" "$port" stage=handshake rule=mtls \
    "reason~server sent alert"
}

@test "mTLS: nginx ssl_verify_client on, rule cert/key: accepted, nginx verified it" {
  start_nginx_with "$port" "$CERTS/server.pem" "$CERTS/server.key" \
    "ssl_verify_client on;" "ssl_client_certificate $CERTS/ca.pem;"
  curl_ok "$(mtls_conf "$port" client)" "$port"
  assert_output_has "tlsshim-e2e ok"
  assert_output_has "client_verify=SUCCESS "
  assert_output_has "CN=test-client"
}

@test "mTLS: nginx ssl_verify_client on, wget (resolved name) with a rule by host name" {
  local conf
  start_nginx_with "$port" "$CERTS/server.pem" "$CERTS/server.key" \
    "ssl_verify_client on;" "ssl_client_certificate $CERTS/ca.pem;"
  conf=$(write_conf mtls-name <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = mtls_by_name
[mtls_by_name]
match = localhost:$port
action = tls
cert = $CERTS/client.pem
key = $CERTS/client.key
EOF
  )
  run --separate-stderr shim_conf "$conf" wget -q -O - --tries=1 --timeout=10 \
    "http://localhost:$port/"
  assert_status 0
  assert_output_has "client_verify=SUCCESS "
}

# --- rule actions and matching ---------------------------------------------------

# deny_conf MATCH: a file with one deny rule "blocked" for MATCH.
deny_conf() {
  write_conf deny <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = blocked
[blocked]
match = $1
action = deny
EOF
}

# assert_denied CONF HOST [PYCLIENT_OPTION...]: python's connect to HOST:$port
# fails EPERM with an event=denied log line naming rule "blocked", and the
# plain recorder on $port never saw a connection.
assert_denied() {
  local conf=$1 host=$2
  shift 2
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect "$@" \
    --send never-sent "$host" "$port"
  assert_status 3
  assert_output_has "connect=EPERM"
  assert_log_fields event=denied stage=policy rule=blocked
}

# start_recorder: the plain recording server on $port; sets rec.
start_recorder() {
  rec=$BATS_TEST_TMPDIR/received
  start_plain "$port" "$rec"
}

# assert_no_connection: the recorder on $port accepted nothing.
assert_no_connection() {
  if grep -q accepted "$BATS_TEST_TMPDIR/plain-$port.out"; then
    echo "the denied destination received a connection" >&2
    cat "$BATS_TEST_TMPDIR/plain-$port.out" >&2
    return 1
  fi
}

@test "deny by address:port: python EPERM, curl exit 7, nothing reaches the server" {
  local conf
  start_recorder
  conf=$(deny_conf "127.0.0.1:$port")
  assert_denied "$conf" 127.0.0.1
  run --separate-stderr shim_conf "$conf" curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  assert_log_fields event=denied stage=policy rule=blocked
  assert_no_connection
}

@test "deny by *:PORT" {
  start_recorder
  assert_denied "$(deny_conf "*:$port")" 127.0.0.1
  assert_no_connection
}

@test "deny by * (anything)" {
  start_recorder
  assert_denied "$(deny_conf "*")" 127.0.0.1
  assert_no_connection
}

@test "deny by CIDR 127.0.0.0/8 and a port range around the port" {
  start_recorder
  assert_denied "$(deny_conf "127.0.0.0/8:$((port - 3))-$((port + 3))")" 127.0.0.1
  assert_no_connection
}

@test "deny by [::1]:PORT: IPv6 denied, IPv4 to the same port is not" {
  have_ipv6 || skip "no ::1 on this host"
  local conf
  conf=$(deny_conf "[::1]:$port")
  start_s_server "$port" server -rev
  assert_denied "$conf" ::1 -6
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect -4 \
    --send abc --recv-line 127.0.0.1 "$port"
  assert_status 0
  assert_output_has "recv=cba"
}

@test "deny by host name: the name python resolved matches, the bare IP does not" {
  local conf
  conf=$(deny_conf "localhost:$port")
  start_s_server "$port" server -rev
  assert_denied "$conf" localhost -4
  # A literal address carries no name: the rule does not match, and the
  # connection is wrapped with the global trust.
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect -4 \
    --send abc --recv-line 127.0.0.1 "$port"
  assert_status 0
  assert_output_has "recv=cba"
}

@test "deny by host name without a port: any port of that name" {
  local conf
  start_recorder
  conf=$(deny_conf "localhost")
  assert_denied "$conf" localhost -4
  run --separate-stderr shim_conf "$conf" wget -q -O - --tries=1 --timeout=10 \
    "http://localhost:$port/"
  assert_status 4
  assert_log_fields event=denied stage=policy rule=blocked
  assert_no_connection
}

@test "plaintext rule: connects in the clear, logged plaintext_allowed with the rule" {
  local conf marker
  marker=$(new_marker)
  start_recorder
  conf=$(write_conf plain <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = loopback_cache
[loopback_cache]
match = 127.0.0.1:$port, [::1]:$port
action = plaintext
EOF
  )
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect \
    --send "$marker" --recv-line 127.0.0.1 "$port"
  assert_status 0
  assert_output_has "connect=ok peer=127.0.0.1:$port"
  assert_output_has "recv=HTTP/1.0 400 Bad Request"
  assert_log_fields event=plaintext_allowed rule=loopback_cache
  "$WAITFOR" -t 5 grep "$rec" "$marker"
}

@test "first matching rule decides, in the order of the rules section" {
  local p2 conf_tls_first conf_deny_first
  start_s_server "$port" server -www
  p2=$(another_port)
  start_s_server "$p2" server -www
  # Sections are written in the file in the opposite order to the list.
  conf_tls_first=$(write_conf tls-first <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[deny_all]
match = *
action = deny
[tls_here]
match = 127.0.0.1:$port
action = tls
[rules]
1 = tls_here
2 = deny_all
EOF
  )
  conf_deny_first=$(write_conf deny-first <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[tls_here]
match = 127.0.0.1:$port
action = tls
[deny_all]
match = *
action = deny
[rules]
1 = deny_all
2 = tls_here
EOF
  )
  curl_ok "$conf_tls_first" "$port"
  assert_output_has "s_server"
  run --separate-stderr shim_conf "$conf_tls_first" curl -sS "http://127.0.0.1:$p2/"
  assert_status 7
  assert_log_fields event=denied stage=policy rule=deny_all
  run --separate-stderr shim_conf "$conf_deny_first" curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  assert_log_fields event=denied stage=policy rule=deny_all
}

@test "unmatched TCP is wrapped with the global settings (not plaintext)" {
  local rec=$BATS_TEST_TMPDIR/received marker conf p2
  marker=$(new_marker)
  start_s_server "$port" server -www
  p2=$(another_port)
  start_plain "$p2" "$rec"
  conf=$(deny_conf "*:1")
  curl_ok "$conf" "$port"
  run --separate-stderr shim_conf "$conf" "$PY" "$PYCLIENT" connect \
    --send "$marker" 127.0.0.1 "$p2"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  assert_log_fields event=refused_plaintext
  [[ $(count_in "$rec" "$marker") -eq 0 ]]
}

@test "a rule's failure names the rule: handshake_failed rule=<section>" {
  local conf
  start_s_server "$port" untrusted -www
  conf=$(write_conf named-rule <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = billing_db
[billing_db]
match = 127.0.0.0/8:$port
action = tls
EOF
  )
  curl_refused "$conf" "$port" stage=verify rule=billing_db \
    "reason~unable to get local issuer certificate"
}

# --- UDP and raw sockets ----------------------------------------------------------
#
# These run in a network namespace of their own (in_netns) whose loopback
# interface also holds $NETNS_V4 and $NETNS_V6: addresses the shim must treat
# as the network, from which no packet can leave the namespace.

# udp_py: write the UDP client used below and print its path.
#   udp.py sendto HOST PORT      receiver bound to HOST:PORT, datagram sent
#                                with sendto; prints sendto=ok|ERRNO and
#                                recv=yes|no
#   udp.py connect HOST PORT     UDP connect() then send(); prints
#                                connect=ok|ERRNO and recv=yes|no
#   udp.py raw HOST              raw IPPROTO_UDP socket, sendto; prints
#                                raw=ok|ERRNO
udp_py() {
  local path=$BATS_TEST_TMPDIR/udp.py
  cat >"$path" <<'PY'
import errno, select, socket, sys

def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def received(r, wait):
    ready, _, _ = select.select([r], [], [], wait)
    return "yes" if ready and r.recv(100) == b"tlsshim-udp" else "no"

mode, host = sys.argv[1], sys.argv[2]
if mode == "raw":
    s = socket.socket(fam(host), socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        s.sendto(b"\0" * 8 + b"tlsshim-udp", (host, 0))
        print("raw=ok")
    except OSError as e:
        print(f"raw={err(e)}")
    sys.exit(0)
port = int(sys.argv[3])
r = socket.socket(fam(host), socket.SOCK_DGRAM)
r.bind((host, port))
s = socket.socket(fam(host), socket.SOCK_DGRAM)
try:
    if mode == "sendto":
        s.sendto(b"tlsshim-udp", (host, port))
    else:
        s.connect((host, port))
        s.send(b"tlsshim-udp")
    print(f"{mode}=ok")
    print("recv=" + received(r, 5))
except OSError as e:
    print(f"{mode}={err(e)}")
    print("recv=" + received(r, 0))
PY
  echo "$path"
}

# udp_run CONF ARGS...: udp.py ARGS under the shim with CONF, in a namespace.
udp_run() {
  local conf=$1
  shift
  run --separate-stderr in_netns timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" env \
    LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$conf" TLSSHIM_LOG_STDERR=1 \
    "$PY" "$(udp_py)" "$@"
}

@test "UDP: control, without the shim the namespace address takes datagrams" {
  have_netns || skip "cannot create a network namespace here"
  run --separate-stderr in_netns timeout 20 "$PY" "$(udp_py)" sendto "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "sendto=ok"
  assert_output_has "recv=yes"
}

@test "UDP: sendto and connect to a network address are denied (EPERM), nothing sent" {
  have_netns || skip "cannot create a network namespace here"
  local conf
  conf=$(global_conf global)
  udp_run "$conf" sendto "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "sendto=EPERM"
  assert_output_has "recv=no"
  assert_log_fields event=denied
  udp_run "$conf" connect "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "connect=EPERM"
  assert_output_has "recv=no"
  assert_log_fields event=denied
}

@test "UDP: IPv6 network address denied (EPERM)" {
  have_netns || skip "cannot create a network namespace here"
  in_netns ip -6 addr show dev lo | grep -q "$NETNS_V6" || skip "no IPv6 in the namespace"
  udp_run "$(global_conf global)" sendto "$NETNS_V6" "$port"
  assert_status 0
  assert_output_has "sendto=EPERM"
  assert_output_has "recv=no"
  assert_log_fields event=denied
}

@test "UDP: loopback is allowed without any rule" {
  have_netns || skip "cannot create a network namespace here"
  local conf
  conf=$(global_conf global)
  udp_run "$conf" sendto 127.0.0.1 "$port"
  assert_status 0
  assert_output_has "sendto=ok"
  assert_output_has "recv=yes"
  if have_ipv6; then
    udp_run "$conf" connect ::1 "$port"
    assert_status 0
    assert_output_has "connect=ok"
    assert_output_has "recv=yes"
  fi
}

@test "UDP: a plaintext rule allows that destination only" {
  have_netns || skip "cannot create a network namespace here"
  local conf other
  conf=$(write_conf udp <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = dns
[dns]
match = $NETNS_V4:$port
action = plaintext
EOF
  )
  udp_run "$conf" sendto "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "sendto=ok"
  assert_output_has "recv=yes"
  udp_run "$conf" connect "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "connect=ok"
  assert_output_has "recv=yes"
  other=$((port == 65535 ? port - 1 : port + 1))
  udp_run "$conf" sendto "$NETNS_V4" "$other"
  assert_status 0
  assert_output_has "sendto=EPERM"
  assert_log_fields event=denied
}

@test "UDP: a tls rule does not let UDP through (only plaintext does)" {
  have_netns || skip "cannot create a network namespace here"
  local conf
  conf=$(write_conf udp-tls <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = wrapped
[wrapped]
match = $NETNS_V4:$port
action = tls
EOF
  )
  udp_run "$conf" sendto "$NETNS_V4" "$port"
  assert_status 0
  assert_output_has "sendto=EPERM"
  assert_output_has "recv=no"
}

@test "raw socket to a network address is denied (EPERM)" {
  have_netns || skip "cannot create a network namespace here"
  udp_run "$(global_conf global)" raw "$NETNS_V4"
  assert_status 0
  assert_output_has "raw=EPERM"
  assert_log_fields event=denied
}

# --- configuration errors -------------------------------------------------------
#
# A bad file refuses every connection (ECONNREFUSED), says so once on stderr
# in one line starting "tlsshim:" that names the file and what is wrong, and
# `tlsshim check FILE` fails with the same reason.

# config_error CONF TOKEN...: against a good nginx, two connects from one
# python process both fail ECONNREFUSED; stderr is exactly one line, starting
# "tlsshim:", naming CONF and containing every TOKEN (a TOKEN may list
# alternatives "A|B"); then `tlsshim check CONF` exits non-zero and names
# CONF and every TOKEN too.
config_error() {
  local conf=$1 text
  shift
  start_nginx "$port" server
  run --separate-stderr preload_only TLSSHIM_CONFIG="$conf" "$PY" "$PYCLIENT" \
    connect -n 2 --send never 127.0.0.1 "$port"
  assert_status 3
  [[ $(grep -c '^connect=ECONNREFUSED$' <<<"$output") -eq 2 ]] || {
    echo "expected two ECONNREFUSED connects" >&2
    show_run
    return 1
  }
  [[ $(grep -c . <<<"$stderr") -eq 1 && $stderr == tlsshim:* ]] || {
    echo "expected exactly one stderr line, starting 'tlsshim:'" >&2
    show_run
    return 1
  }
  check_tokens "$stderr" "$conf" "$@" || {
    show_run
    return 1
  }
  run --separate-stderr tlsshim_cli check "$conf"
  if [[ $status -eq 0 ]]; then
    echo "tlsshim check accepted a bad file" >&2
    show_run
    return 1
  fi
  text="$output"$'\n'"$stderr"
  check_tokens "$text" "$conf" "$@" || {
    show_run
    return 1
  }
}

# check_tokens TEXT TOKEN...: TEXT contains each TOKEN (or one of "A|B").
check_tokens() {
  local text=$1 token alt ok
  shift
  local -a alts
  for token in "$@"; do
    IFS='|' read -r -a alts <<<"$token"
    ok=0
    for alt in "${alts[@]}"; do
      [[ $text == *"$alt"* ]] && ok=1
    done
    if [[ $ok -eq 0 ]]; then
      echo "the message lacks: $token" >&2
      return 1
    fi
  done
}

@test "config error: unknown key" {
  local conf
  conf=$(global_conf bad-key "bogus_key = 1")
  config_error "$conf" bogus_key
}

@test "config error: unknown key refuses even a good server with TLSSHIM_CA_FILE set (no fallback)" {
  local conf
  conf=$(global_conf bad-key "bogus_key = 1")
  start_nginx "$port" server
  run --separate-stderr shim TLSSHIM_CONFIG="$conf" curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  assert_stderr_has "bogus_key"
  [[ $output != *"tlsshim-e2e ok"* ]]
}

@test "config error: bad action" {
  local conf
  conf=$(write_conf bad-action <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = r_action
[r_action]
match = 127.0.0.1:80
action = encrypt
EOF
  )
  config_error "$conf" "r_action|encrypt" action
}

@test "config error: bad match, prefix /33" {
  local conf
  conf=$(write_conf bad-cidr <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = r_cidr
[r_cidr]
match = 10.0.0.0/33:80
action = deny
EOF
  )
  config_error "$conf" "10.0.0.0/33"
}

@test "config error: bad match, port 99999" {
  local conf
  conf=$(write_conf bad-port <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = r_port
[r_port]
match = db.internal:99999
action = deny
EOF
  )
  config_error "$conf" 99999
}

@test "config error: rules names a missing section" {
  local conf
  conf=$(write_conf missing-section <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = nosuch_section
EOF
  )
  config_error "$conf" nosuch_section
}

@test "config error: rule section without match" {
  local conf
  conf=$(write_conf no-match <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = no_match_rule
[no_match_rule]
action = deny
EOF
  )
  config_error "$conf" no_match_rule match
}

@test "config error: unreadable cert" {
  local conf
  conf=$(write_conf bad-cert <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = mtls
[mtls]
match = 127.0.0.1:443
action = tls
cert = $BATS_TEST_TMPDIR/nonexistent-client.pem
key = $CERTS/client.key
EOF
  )
  config_error "$conf" nonexistent-client.pem
}

@test "config error: key does not match cert" {
  local conf
  conf=$(write_conf key-mismatch <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = mtls_bad
[mtls_bad]
match = 127.0.0.1:443
action = tls
cert = $CERTS/client.pem
key = $CERTS/server.key
EOF
  )
  config_error "$conf" "mtls_bad|server.key|client.pem" key
}

@test "config error: malformed pin" {
  local conf
  conf=$(write_conf bad-pin <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = r_pin
[r_pin]
match = 127.0.0.1:443
action = tls
pin = sha256//not-base64!
EOF
  )
  config_error "$conf" pin
}

@test "config error: syntax error names the line" {
  local conf
  # line 4 has no '='
  conf=$(write_conf syntax <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
handshake_timeout = 5
this line has no equal sign
EOF
  )
  start_nginx "$port" server
  run --separate-stderr preload_only TLSSHIM_CONFIG="$conf" "$PY" "$PYCLIENT" \
    connect --send never 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  [[ $(grep -c . <<<"$stderr") -eq 1 && $stderr == tlsshim:* ]] || {
    show_run
    false
  }
  assert_stderr_has "$conf"
  [[ $stderr =~ (line[\ =]?4([^0-9]|$)|:4([^0-9]|$)) ]] || {
    echo "the message does not name line 4" >&2
    show_run
    false
  }
  run --separate-stderr tlsshim_cli check "$conf"
  [[ $status -ne 0 ]]
  [[ "$output $stderr" =~ (line[\ =]?4([^0-9]|$)|:4([^0-9]|$)) ]] || {
    echo "tlsshim check does not name line 4" >&2
    show_run
    false
  }
}

@test "config error: ocsp = maybe" {
  config_error "$(global_conf bad-ocsp "ocsp = maybe")" ocsp
}

@test "config error: a missing TLSSHIM_CONFIG file refuses every connection" {
  config_error "$BATS_TEST_TMPDIR/does-not-exist.cnf"
}

# --- tlsshim check -------------------------------------------------------------------

@test "tlsshim check: a good file exits 0 and prints the rules in order" {
  local conf order
  conf=$(write_conf good <<EOF
# The issue's example, with the test's files.
[tlsshim]
ca_file           = $CERTS/ca.pem    # approved CAs
min_protocol      = TLSv1.2
ocsp              = prefer
handshake_timeout = 10
rules             = rules

[mike_cache]
match  = 127.0.0.1:11211, [::1]:11211
action = plaintext

[rules]
1 = zulu_db
2 = alpha_partner
3 = mike_cache
4 = kilo_blocked

[zulu_db]
match    = 10.20.0.0/16:5432, db.internal:5432
action   = tls
name     = db.internal
cert     = $CERTS/client.pem
key      = $CERTS/client.key
ca_file  = $CERTS/partner-ca.pem

[alpha_partner]
match         = partner.example.net:443, *.example.com:8000-8100
action        = tls
pin           = $(pin_of approved-selfsigned), $(pin_of server)
approved_cert = $CERTS/approved-selfsigned.pem

[kilo_blocked]
match  = *:21, *:23
action = deny
EOF
  )
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 0
  order=$(grep -o -E 'zulu_db|alpha_partner|mike_cache|kilo_blocked' <<<"$output" |
    awk '!seen[$0]++' | paste -sd' ')
  [[ $order == "zulu_db alpha_partner mike_cache kilo_blocked" ]] || {
    echo "rules printed in the order: $order" >&2
    show_run
    false
  }
}

# --- tlsshim probe ---------------------------------------------------------------------

@test "tlsshim probe: a good server, exit 0, protocol, leaf pin, accept, rule" {
  local conf
  start_s_server "$port" server -www
  conf=$(write_conf probe <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = probed_rule
[probed_rule]
match = 127.0.0.1:$port
action = tls
EOF
  )
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" --config "$conf"
  assert_status 0
  assert_output_has "TLSv1.3"
  assert_output_has "$(pin_of server)"
  assert_output_has "accept"
  assert_output_has "probed_rule"
}

@test "tlsshim probe: an untrusted server, non-zero, reject and the reason" {
  start_s_server "$port" untrusted -www
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" --config "$(global_conf global)"
  [[ $status -ne 0 ]] || {
    show_run
    false
  }
  assert_output_has "reject"
  assert_output_has "unable to get local issuer certificate"
  # It still shows the chain, so the operator can pin it.
  assert_output_has "$(pin_of untrusted)"
}

# --- tlsshim verify ----------------------------------------------------------------------

# verify_cli ARGS...: tlsshim verify ARGS (certificate names relative to $CERTS).
verify_cli() {
  run --separate-stderr tlsshim_cli verify "$@"
}

@test "tlsshim verify: server.pem accepted for localhost and for 127.0.0.1" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/server.pem"
  assert_status 0
  assert_output_has "accept"
  verify_cli --ca "$CERTS/ca.pem" --ip 127.0.0.1 "$CERTS/server.pem"
  assert_status 0
  verify_cli --ca "$CERTS/ca.pem" --ip ::1 "$CERTS/server.pem"
  assert_status 0
}

@test "tlsshim verify: expired.pem rejected now, accepted --at 2020-06-01" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/expired.pem"
  assert_status 1
  assert_output_has "reject"
  assert_output_has "certificate has expired"
  verify_cli --ca "$CERTS/ca.pem" --name localhost \
    --at "$(date -u -d 2020-06-01 +%s)" "$CERTS/expired.pem"
  assert_status 0
  assert_output_has "accept"
}

@test "tlsshim verify: chain-leaf.pem needs --untrusted int-ca.pem" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/chain-leaf.pem"
  assert_status 1
  assert_output_has "unable to get local issuer certificate"
  verify_cli --ca "$CERTS/ca.pem" --untrusted "$CERTS/int-ca.pem" \
    --name localhost "$CERTS/chain-leaf.pem"
  assert_status 0
}

@test "tlsshim verify: wrong name and wrong IP rejected" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/wrongname.pem"
  assert_status 1
  assert_output_has "hostname mismatch"
  verify_cli --ca "$CERTS/ca.pem" --ip 127.0.0.1 "$CERTS/wrongname.pem"
  assert_status 1
  assert_output_has "IP address mismatch"
  verify_cli --ca "$CERTS/ca.pem" --name wrong.example "$CERTS/wrongname.pem"
  assert_status 0
}

@test "tlsshim verify: weak, CA and v1 certificates are rejected as live connections are" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/rsa1024.pem"
  assert_status 1
  assert_output_has "EE certificate key too weak"
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/sha1.pem"
  assert_status 1
  assert_output_has "CA signature digest algorithm too weak"
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$CERTS/ca-as-leaf.pem"
  assert_status 1
  assert_output_has "certificate is a CA, not a server certificate"
  # v1.pem has no subjectAltName, so any --name or --ip fails on the name:
  # without one, the version check is what must refuse it.
  verify_cli --ca "$CERTS/ca.pem" "$CERTS/v1.pem"
  assert_status 1
  assert_output_has "X.509 v1 certificate"
}

@test "tlsshim verify: a missing file exits 2" {
  verify_cli --ca "$CERTS/ca.pem" --name localhost "$BATS_TEST_TMPDIR/nope.pem"
  assert_status 2
  verify_cli --ca "$BATS_TEST_TMPDIR/nope-ca.pem" --name localhost "$CERTS/server.pem"
  assert_status 2
}

@test "tlsshim verify --config --rule: the rule's trust, pins and approved certificates" {
  local conf
  conf=$(write_conf verify <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = partner_rule
2 = pinned
3 = approved
4 = internal
[partner_rule]
match = partner.example.net:443
action = tls
ca_file = $CERTS/partner-ca.pem
[pinned]
match = pinned.example.net:443
action = tls
pin = $(pin_of untrusted)
[approved]
match = approved.example.net:443
action = tls
approved_cert = $CERTS/approved-selfsigned.pem
[internal]
match = internal.example.net:443
action = tls
EOF
  )
  verify_cli --config "$conf" --rule partner_rule --name localhost "$CERTS/partner.pem"
  assert_status 0
  verify_cli --config "$conf" --rule internal --name localhost "$CERTS/partner.pem"
  assert_status 1
  assert_output_has "unable to get local issuer certificate"
  verify_cli --config "$conf" --rule internal --name localhost "$CERTS/server.pem"
  assert_status 0
  verify_cli --config "$conf" --rule pinned --name localhost "$CERTS/server.pem"
  assert_status 1
  assert_output_has "pin mismatch"
  verify_cli --config "$conf" --rule approved --name localhost \
    "$CERTS/approved-selfsigned.pem"
  assert_status 0
  verify_cli --config "$conf" --rule approved --name localhost "$CERTS/selfsigned.pem"
  assert_status 1
  assert_output_has "self-signed certificate"
}

# --- tlsshim run --config ------------------------------------------------------------------

@test "tlsshim run --config: sets TLSSHIM_CONFIG, and curl is wrapped by it" {
  local conf
  conf=$(write_conf run <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
rules = rules
[rules]
1 = blocked
[blocked]
match = 127.0.0.1:1
action = deny
EOF
  )
  run --separate-stderr tlsshim_cli run --config "$conf" -- printenv TLSSHIM_CONFIG
  assert_status 0
  [[ $(readlink -f "$output") == $(readlink -f "$conf") ]] || {
    show_run
    false
  }
  start_nginx "$port" server
  run --separate-stderr tlsshim_cli run --config "$conf" -- \
    curl -sS "http://127.0.0.1:$port/run-config"
  assert_status 0
  assert_output_has "tlsshim-e2e ok proto=TLSv1."
  assert_output_has "uri=/run-config"
  run --separate-stderr tlsshim_cli run --config "$conf" -- \
    curl -sS "http://127.0.0.1:1/"
  assert_status 7
}
