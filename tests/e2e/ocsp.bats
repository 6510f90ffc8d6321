#!/usr/bin/env bats
# Revocation (issue 4): OCSP stapling checked on every outbound connection,
# in each mode (`ocsp = require | prefer | off`) against each outcome (good,
# revoked, unknown, no staple, each kind of bad staple), must-staple
# certificates, the `ocsp_skew` tolerance, per-rule overrides, a live
# responder, nginx stapling, CRLs (`crl_file`, `crl_dir`, `crl_check`) and
# `tlsshim probe`.
#
# The test bed is made at test time by scripts/gen-ocsp.sh (see its header
# for what every file contains) in $OCSP, from the gen-certs.sh PKI in
# $CERTS. Servers are `openssl s_server -www -status_file STAPLE.der` on
# 127.0.0.1 (the -www page contains "s_server"), nginx with
# `ssl_stapling_file`, and s_server -status_url with a live `openssl ocsp`
# responder. `openssl ocsp -port` listens on every address, so the live
# responder tests run in a network namespace of their own, where loopback is
# the only interface.
#
# Clients are stock curl (mostly; it connects to 127.0.0.1, checked against
# the IP SAN), wget and python, under the shim configured by a file
# (TLSSHIM_CONFIG) with `ocsp = ...`. A refusal is connect() failing with
# ECONNREFUSED (curl exit 7, wget exit 4) and the log line
#   event=handshake_failed stage=ocsp reason="..." ocsp=<outcome>
# An acceptance is asserted on the page and on the `event=connected` line
# (log_success = yes) with ocsp=<outcome>.
#
# Environment: TLSSHIM_OCSP reuses an existing gen-ocsp.sh output directory
# (as TLSSHIM_CERTS does for gen-certs.sh).

# bats' `run` sets status, output and stderr; shellcheck cannot see that.
# shellcheck disable=SC2030,SC2031,SC2154

load helpers

setup_file() {
  e2e_setup_file
  export OCSP=${TLSSHIM_OCSP:-$BATS_FILE_TMPDIR/ocsp}
  "$ROOT/scripts/gen-ocsp.sh" "$OCSP" "$CERTS"
}

setup() {
  port=$(free_port)
}

teardown() {
  e2e_teardown
}

# --- local helpers ----------------------------------------------------------

# ocsp_conf NAME [LINE...]: a file whose [tlsshim] section trusts ca.pem,
# logs successful connections (log_success = yes) and holds LINEs (a later
# `ca_file = ...` line replaces the first). Prints its path.
ocsp_conf() {
  local name=$1
  shift
  {
    echo "[tlsshim]"
    echo "ca_file = $CERTS/ca.pem"
    echo "log_success = yes"
    printf '%s\n' "$@"
  } | write_conf "$name"
}

# stapler CERT STAPLE [S_SERVER_OPTION...]: s_server -www on 127.0.0.1:$port
# presenting $OCSP/CERT.pem and stapling STAPLE: a name in $OCSP (without
# .der), a path, or "-" for no staple at all.
stapler() {
  local cert=$1 staple=$2
  shift 2
  local -a st=()
  case $staple in
  -) ;;
  */*) st=(-status_file "$staple") ;;
  *) st=(-status_file "$OCSP/$staple.der") ;;
  esac
  start_bg "stapler-$port" openssl s_server -quiet -www -accept "127.0.0.1:$port" \
    -cert "$OCSP/$cert.pem" -key "$OCSP/$cert.key" "${st[@]}" "$@"
  wait_listen "$port" 1 "stapler-$port"
}

# fetch CONF: curl http://127.0.0.1:$port/ under the shim configured by CONF.
fetch() {
  run --separate-stderr shim_conf "$1" curl -sS "http://127.0.0.1:$port/"
}

# accepted OUTCOME [PAGE]: the last run got the server's page (PAGE, default
# "s_server"), nothing failed, and the connected line says ocsp=OUTCOME.
accepted() {
  assert_status 0
  assert_output_has "${2:-s_server}"
  assert_stderr_lacks "event=handshake_failed"
  assert_log_fields event=connected "ocsp=$1"
}

# refused FIELD...: the last run (curl) failed with ECONNREFUSED, logged a
# handshake_failed line with every FIELD (see assert_log_fields), and no
# byte of the server's answer reached the client.
refused() {
  assert_status 7
  assert_log_fields event=handshake_failed "$@"
  [[ -z $output ]] || {
    echo "the client received data from a refused server" >&2
    show_run
    false
  }
}

# refused_ocsp OUTCOME REASON: refused at the ocsp stage with exactly
# reason="REASON" and ocsp=OUTCOME.
refused_ocsp() {
  refused stage=ocsp "reason=$2" "ocsp=$1"
}

# refused_bad WHY: refused at the ocsp stage for a bad staple:
# reason="bad OCSP staple: ..." and ocsp=bad:WHY. WHY may be "A|B" when
# either short reason is right.
refused_bad() {
  if [[ $1 == *'|'* ]]; then
    refused stage=ocsp "reason~bad OCSP staple: " "ocsp~bad:${1//|/|bad:}"
  else
    refused stage=ocsp "reason~bad OCSP staple: " "ocsp=bad:$1"
  fi
}

# staple_at NAME OFFSET MINUTES: a good response for good.pem made with the
# clock moved by OFFSET (faketime syntax: -62m, +2m) and valid MINUTES from
# then, written to $BATS_TEST_TMPDIR/NAME.der; prints that path.
staple_at() {
  local der=$BATS_TEST_TMPDIR/$1.der
  faketime -f "$2" openssl ocsp -index "$OCSP/index.txt" -CA "$CERTS/ca.pem" \
    -rsigner "$OCSP/responder.pem" -rkey "$OCSP/responder.key" \
    -issuer "$CERTS/ca.pem" -cert "$OCSP/good.pem" -no_nonce -nmin "$3" \
    -respout "$der" >"$BATS_TEST_TMPDIR/$1.log" 2>&1 || {
    cat "$BATS_TEST_TMPDIR/$1.log" >&2
    return 1
  }
  echo "$der"
}

# count_lines TEXT: how many lines of the last run's stderr contain TEXT.
count_lines() {
  grep -c -F -- "$1" <<<"${stderr:-}" || true
}

# --- require ----------------------------------------------------------------

@test "require x good (TLS 1.3): accepted, ocsp=good" {
  stapler good good -tls1_3
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
}

@test "require x good (TLS 1.2, CertificateStatus message): accepted, ocsp=good" {
  stapler good good -tls1_2
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
}

@test "require x good, signed by the issuing CA itself (no responder certificate): accepted" {
  stapler good ca-signed
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
}

@test "require x revoked (TLS 1.3): refused, revoked (keyCompromise)" {
  stapler revoked revoked -tls1_3
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp revoked "revoked (keyCompromise)"
}

@test "require x revoked (TLS 1.2): refused, revoked (keyCompromise)" {
  stapler revoked revoked -tls1_2
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp revoked "revoked (keyCompromise)"
}

@test "require x unknown: refused, OCSP status unknown" {
  stapler unknown unknown
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp unknown "OCSP status unknown"
}

@test "require x no staple: refused, no OCSP staple, ocsp=none" {
  stapler good -
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp none "no OCSP staple"
}

@test "require x bad staple, signed by an OCSPSigning responder of an untrusted CA: bad:signer" {
  stapler good bad-signer
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad signer
}

@test "require x bad staple, signed by a certificate of ca without OCSPSigning: bad:signer" {
  stapler good bad-signer-noeku
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad signer
}

@test "require x bad staple, signed by the responder of another trusted CA: bad:signer" {
  stapler good bad-signer-partner
  fetch "$(ocsp_conf c 'ocsp = require' "ca_file = $OCSP/ca-and-partner.pem")"
  refused_bad signer
}

@test "require x bad staple, a good response about another certificate: bad:serial" {
  stapler good bad-serial
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad serial
}

@test "require x bad staple, same serial but another (trusted) issuer in the CertID: bad:serial" {
  stapler good bad-issuer
  fetch "$(ocsp_conf c 'ocsp = require' "ca_file = $OCSP/ca-and-partner.pem")"
  refused_bad serial
}

@test "require x bad staple, signature altered: bad:signature" {
  stapler good bad-signature
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad signature
}

@test "require x bad staple, stale (nextUpdate 2 days ago): bad:stale" {
  stapler good stale
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad stale
}

@test "require x bad staple, not yet valid (thisUpdate in 1 day): bad:future" {
  stapler good future
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad future
}

@test "require x bad staple, garbage bytes (in a well-formed envelope): bad:parse" {
  # garbage.der itself (random bytes) cannot be served: s_server and nginx
  # parse their staple file and fail. garbage-inner.der is the garbage a
  # server does pass on: random bytes where the BasicOCSPResponse should be.
  stapler good garbage-inner
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad parse
}

@test "require x bad staple, responder certificate left out: bad:signer or bad:signature" {
  # Signed by the delegated responder, whose certificate is not in the
  # response: the client cannot find the signer, so cannot check the
  # signature. The interface allows either short reason.
  stapler good no-certs
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused_bad 'signer|signature'
}

@test "require x bad staple, responseStatus tryLater (no response bytes): bad:status" {
  # Not in the interface's list of short reasons (the interface is silent on
  # unsuccessful responses): bad:status is what the implementation says.
  stapler good trylater
  fetch "$(ocsp_conf c 'ocsp = require')"
  refused stage=ocsp "reason=bad OCSP staple: responder said trylater" ocsp=bad:status
}

@test "require x revoked (python socket): connect() fails with ECONNREFUSED" {
  stapler revoked revoked
  run --separate-stderr shim_conf "$(ocsp_conf c 'ocsp = require')" \
    "$PY" "$PYCLIENT" connect --send "GET / HTTP/1.0" 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ECONNREFUSED"
  assert_log_fields event=handshake_failed stage=ocsp "reason=revoked (keyCompromise)" \
    ocsp=revoked
}

@test "require: every connection of a process is checked (python, 3 connections, TLS 1.2 and 1.3)" {
  # Should the shim ever resume sessions, a resumed handshake carries no
  # staple: each connection must still be accepted with ocsp=good.
  local conf proto
  conf=$(ocsp_conf c 'ocsp = require')
  for proto in -tls1_2 -tls1_3; do
    port=$(free_port)
    stapler good good "$proto"
    run --separate-stderr shim_conf "$conf" \
      "$PY" "$PYCLIENT" connect -n 3 --send "GET / HTTP/1.0" 127.0.0.1 "$port"
    assert_status 0
    [[ $(count_lines "event=connected") -eq 3 && $(count_lines "ocsp=good") -eq 3 ]] || {
      echo "expected 3 connected lines with ocsp=good ($proto)" >&2
      show_run
      false
    }
  done
}

# --- prefer -------------------------------------------------------------------

@test "prefer x good: accepted, ocsp=good" {
  stapler good good
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  accepted good
}

@test "prefer x revoked: refused, revoked (keyCompromise)" {
  stapler revoked revoked
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  refused_ocsp revoked "revoked (keyCompromise)"
}

@test "prefer x unknown: refused, OCSP status unknown" {
  stapler unknown unknown
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  refused_ocsp unknown "OCSP status unknown"
}

@test "prefer x no staple: accepted, silent unless log_success, then ocsp=none" {
  stapler good -
  fetch "$(write_conf quiet <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
ocsp = prefer
EOF
)"
  assert_status 0
  assert_output_has "s_server"
  # Nothing at all is logged for it (info, only with log_success).
  assert_stderr_lacks "tlsshim["
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  accepted none
}

@test "prefer x bad staple, signature altered: refused, bad:signature" {
  stapler good bad-signature
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  refused_bad signature
}

@test "prefer x every other bad staple: refused with its reason" {
  local conf bundle spec staple why
  conf=$(ocsp_conf c 'ocsp = prefer')
  bundle=$(ocsp_conf bundle 'ocsp = prefer' "ca_file = $OCSP/ca-and-partner.pem")
  for spec in bad-signer:signer bad-signer-noeku:signer bad-serial:serial \
    stale:stale future:future garbage-inner:parse 'no-certs:signer|signature' \
    trylater:status bad-signer-partner:signer bad-issuer:serial; do
    staple=${spec%%:*} why=${spec#*:}
    port=$(free_port)
    stapler good "$staple"
    case $staple in
    bad-signer-partner | bad-issuer) fetch "$bundle" ;;
    *) fetch "$conf" ;;
    esac
    echo "# staple $staple" >&2
    refused_bad "$why"
  done
}

@test "no ocsp key: the default is prefer (revoked refused, no staple accepted)" {
  local conf
  conf=$(ocsp_conf c)
  stapler revoked revoked
  fetch "$conf"
  refused_ocsp revoked "revoked (keyCompromise)"
  port=$(free_port)
  stapler good -
  fetch "$conf"
  accepted none
}

# --- off ----------------------------------------------------------------------

@test "off x revoked: accepted, insecure_setting warning" {
  stapler revoked revoked
  fetch "$(ocsp_conf c 'ocsp = off')"
  assert_status 0
  assert_output_has "s_server"
  assert_stderr_lacks "event=handshake_failed"
  assert_log_fields event=insecure_setting
}

@test "off x garbage staple: accepted (not looked at)" {
  stapler good garbage-inner
  fetch "$(ocsp_conf c 'ocsp = off')"
  assert_status 0
  assert_output_has "s_server"
  assert_stderr_lacks "event=handshake_failed"
}

@test "off: the insecure_setting warning is logged once per process (3 connections, python)" {
  stapler revoked revoked
  run --separate-stderr shim_conf "$(ocsp_conf c 'ocsp = off')" \
    "$PY" "$PYCLIENT" connect -n 3 --send "GET / HTTP/1.0" 127.0.0.1 "$port"
  assert_status 0
  [[ $(grep -c '^connect=ok' <<<"$output") -eq 3 ]] || {
    show_run
    false
  }
  [[ $(count_lines "event=insecure_setting") -eq 1 ]] || {
    echo "expected exactly one event=insecure_setting line" >&2
    show_run
    false
  }
  assert_stderr_lacks "event=handshake_failed"
}

@test "off in one rule: accepted there, insecure_setting names the rule, once" {
  local conf
  conf=$(ocsp_conf c 'ocsp = prefer' 'rules = rules' '[rules]' '1 = lax' \
    '[lax]' "match = 127.0.0.1:$port" 'action = tls' 'ocsp = off')
  stapler revoked revoked
  run --separate-stderr shim_conf "$conf" \
    "$PY" "$PYCLIENT" connect -n 2 --send "GET / HTTP/1.0" 127.0.0.1 "$port"
  assert_status 0
  assert_log_fields event=insecure_setting rule=lax
  [[ $(count_lines "event=insecure_setting") -eq 1 ]] || {
    echo "expected exactly one event=insecure_setting line" >&2
    show_run
    false
  }
}

@test "prefer and require log no insecure_setting warning" {
  stapler good good
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  accepted good
  assert_stderr_lacks "event=insecure_setting"
  fetch "$(ocsp_conf r 'ocsp = require')"
  accepted good
  assert_stderr_lacks "event=insecure_setting"
}

# --- must-staple --------------------------------------------------------------

@test "must-staple certificate without a staple, under prefer (wget): refused" {
  stapler mustaple -
  run --separate-stderr shim_conf "$(ocsp_conf c 'ocsp = prefer')" \
    wget -q -O - --tries=1 --timeout=10 "http://127.0.0.1:$port/"
  assert_status 4 # wget: network failure
  assert_log_fields event=handshake_failed stage=ocsp \
    "reason=must-staple certificate without OCSP staple" ocsp=none
  [[ $output != *s_server* ]]
}

@test "must-staple certificate without a staple, under off: refused (must-staple wins)" {
  # Issue 4: a must-staple certificate "is treated as require whatever the mode".
  stapler mustaple -
  fetch "$(ocsp_conf c 'ocsp = off')"
  refused_ocsp none "must-staple certificate without OCSP staple"
}

@test "must-staple certificate with a good staple, under prefer: accepted" {
  stapler mustaple mustaple-good
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  accepted good
}

@test "must-staple certificate with a staple about another certificate: bad:serial" {
  stapler mustaple good
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  refused_bad serial
}

# --- ocsp_skew ----------------------------------------------------------------

@test "ocsp_skew: nextUpdate 2 minutes ago passes the default 300 s, not ocsp_skew = 30" {
  local der
  der=$(staple_at just-stale -62m 60)
  stapler good "$der"
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
  fetch "$(ocsp_conf c 'ocsp = require' 'ocsp_skew = 30')"
  refused_bad stale
}

@test "ocsp_skew: thisUpdate 2 minutes ahead passes the default 300 s, not ocsp_skew = 30" {
  local der
  der=$(staple_at just-future +2m 60)
  stapler good "$der"
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
  fetch "$(ocsp_conf c 'ocsp = require' 'ocsp_skew = 30')"
  refused_bad future
}

# --- per-rule settings ----------------------------------------------------------

@test "rule ocsp = require overrides the global prefer (no staple refused there only)" {
  local conf other
  conf=$(ocsp_conf c 'ocsp = prefer' 'rules = rules' '[rules]' '1 = strict' \
    '[strict]' "match = 127.0.0.1:$port" 'action = tls' 'ocsp = require')
  stapler good -
  fetch "$conf"
  refused_ocsp none "no OCSP staple"
  assert_log_fields event=handshake_failed rule=strict
  other=$port
  port=$(free_port)
  stapler good -
  fetch "$conf"
  accepted none
  port=$other
}

@test "rule ocsp = prefer overrides the global require (no staple accepted there only)" {
  local conf
  conf=$(ocsp_conf c 'ocsp = require' 'rules = rules' '[rules]' '1 = lax' \
    '[lax]' "match = 127.0.0.1:$port" 'action = tls' 'ocsp = prefer')
  stapler good -
  fetch "$conf"
  accepted none
  port=$(free_port)
  stapler good -
  fetch "$conf"
  refused_ocsp none "no OCSP staple"
}

@test "rule ocsp_skew = 30 overrides the global default" {
  local der conf
  der=$(staple_at just-stale -62m 60)
  conf=$(ocsp_conf c 'ocsp = require' 'rules = rules' '[rules]' '1 = tight' \
    '[tight]' "match = 127.0.0.1:$port" 'action = tls' 'ocsp_skew = 30')
  stapler good "$der"
  fetch "$conf"
  refused_bad stale
  port=$(free_port)
  stapler good "$der"
  fetch "$conf"
  accepted good
}

# --- live responder (s_server -status_url) ----------------------------------------

# netns_start: a network namespace of this test, with only lo (up), held by a
# background process; sets NS to that process's pid.
netns_start() {
  have_netns || skip "cannot create a network namespace here"
  local pidfile=$BATS_TEST_TMPDIR/netns.pid
  # shellcheck disable=SC2016 # expanded by the inner shell
  start_bg netns unshare -n -- sh -c \
    'ip link set lo up && echo $$ >"$1" && exec tail -f /dev/null' netns "$pidfile"
  "$WAITFOR" -t 10 grep "$pidfile" '^[0-9]+\n' || return 1
  NS=$(cat "$pidfile")
}

# in_ns CMD...: CMD in the test's network namespace.
in_ns() {
  nsenter -t "$NS" -n -- "$@"
}

# live_stapler CERT: in the namespace, `openssl ocsp` answering from
# index.txt on port $rport and s_server -www on 127.0.0.1:$port presenting
# $OCSP/CERT.pem and stapling what the responder says (-status_url).
live_stapler() {
  local cert=$1
  rport=$(free_port)
  start_bg "responder-$rport" nsenter -t "$NS" -n -- openssl ocsp -port "$rport" \
    -index "$OCSP/index.txt" -CA "$CERTS/ca.pem" \
    -rsigner "$OCSP/responder.pem" -rkey "$OCSP/responder.key" -ndays 1
  in_ns "$WAITFOR" -t 10 listen "$rport" || {
    cat "$BATS_TEST_TMPDIR/responder-$rport.err" >&2
    return 1
  }
  start_bg "stapler-$port" nsenter -t "$NS" -n -- openssl s_server -quiet -www \
    -accept "127.0.0.1:$port" -cert "$OCSP/$cert.pem" -key "$OCSP/$cert.key" \
    -CAfile "$CERTS/ca.pem" -status_url "http://127.0.0.1:$rport/"
  in_ns "$WAITFOR" -t 10 listen "$port" || {
    cat "$BATS_TEST_TMPDIR/stapler-$port.err" >&2
    return 1
  }
}

# ns_fetch CONF: curl http://127.0.0.1:$port/ in the namespace, under the shim.
ns_fetch() {
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" \
    nsenter -t "$NS" -n -- env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$1" \
    TLSSHIM_LOG_STDERR=1 curl -sS "http://127.0.0.1:$port/"
}

@test "live responder (s_server -status_url, openssl ocsp -port) x good: accepted" {
  netns_start
  live_stapler good
  ns_fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
  # The staple really came from the live responder.
  "$WAITFOR" -t 5 grep "$BATS_TEST_TMPDIR/responder-$rport.err" 'Received request'
}

@test "live responder x revoked: refused, revoked (keyCompromise)" {
  netns_start
  live_stapler revoked
  ns_fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp revoked "revoked (keyCompromise)"
  "$WAITFOR" -t 5 grep "$BATS_TEST_TMPDIR/responder-$rport.err" 'Received request'
}

# --- ocsp_fetch: asking the responder a certificate names (AIA) ----------------------
#
# The aia-*.pem certificates name http://127.0.0.1:18888/ (gen-ocsp.sh
# AIA_PORT): the responder runs there in the test's own namespace, where
# nothing else listens.

AIA_PORT=18888

# aia_responder [OPENSSL_OCSP_OPTION...]: `openssl ocsp` answering from
# index.txt on 127.0.0.1:$AIA_PORT in the namespace, signed by responder.pem
# (options default to -ndays 1; later -rsigner/-rkey options win). With
# AIA_FAKE set (faketime syntax), its clock is moved by that much.
aia_responder() {
  local -a pre=() opts=("$@")
  [[ ${#opts[@]} -gt 0 ]] || opts=(-ndays 1)
  [[ -z ${AIA_FAKE:-} ]] || pre=(faketime -f "$AIA_FAKE")
  start_bg aia-responder nsenter -t "$NS" -n -- "${pre[@]}" openssl ocsp \
    -port "$AIA_PORT" -index "$OCSP/index.txt" -CA "$CERTS/ca.pem" \
    -rsigner "$OCSP/responder.pem" -rkey "$OCSP/responder.key" "${opts[@]}"
  AIA_PID=$BG_PID
  in_ns "$WAITFOR" -t 10 listen "$AIA_PORT" || {
    cat "$BATS_TEST_TMPDIR/aia-responder.err" >&2
    return 1
  }
}

# aia_fake_responder PYTHON_BODY: a python server on 127.0.0.1:$AIA_PORT in
# the namespace; for each connection it runs PYTHON_BODY with `c` the socket.
aia_fake_responder() {
  start_bg aia-responder nsenter -t "$NS" -n -- "$PY" -c "
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $AIA_PORT))
s.listen(16)
while True:
    c, _ = s.accept()
    print('Received request', flush=True)
$1
"
  AIA_PID=$BG_PID
  in_ns "$WAITFOR" -t 10 listen "$AIA_PORT" || {
    cat "$BATS_TEST_TMPDIR/aia-responder.err" >&2
    return 1
  }
}

# aia_requests: how many requests the responder has received.
aia_requests() {
  cat "$BATS_TEST_TMPDIR"/aia-responder.{out,err} 2>/dev/null | grep -c 'Received request' || true
}

# ns_server CERT [STAPLE]: s_server -www in the namespace on 127.0.0.1:$port
# presenting $OCSP/CERT.pem, stapling $OCSP/STAPLE.der when given, else nothing.
ns_server() {
  local -a st=()
  [[ -z ${2:-} ]] || st=(-status_file "$OCSP/$2.der")
  start_bg "server-$port" nsenter -t "$NS" -n -- openssl s_server -quiet -www \
    -accept "127.0.0.1:$port" -cert "$OCSP/$1.pem" -key "$OCSP/$1.key" "${st[@]}"
  in_ns "$WAITFOR" -t 10 listen "$port" || {
    cat "$BATS_TEST_TMPDIR/server-$port.err" >&2
    return 1
  }
}

# fetch_conf [LINE...]: ocsp = require with ocsp_fetch = yes, and LINEs.
fetch_conf() {
  ocsp_conf f 'ocsp = require' 'ocsp_fetch = yes' "$@"
}

# assert_requests N: the responder received exactly N requests.
assert_requests() {
  local n
  n=$(aia_requests)
  [[ $n -eq $1 ]] || {
    echo "the responder received $n requests, expected $1" >&2
    cat "$BATS_TEST_TMPDIR"/aia-responder.{out,err} >&2 2>/dev/null
    show_run
    false
  }
}

@test "ocsp_fetch x good: nothing stapled, the certificate's responder says good: accepted" {
  netns_start
  aia_responder
  ns_server aia-good
  ns_fetch "$(fetch_conf)"
  accepted good
  assert_requests 1
}

@test "ocsp_fetch x revoked: refused, revoked (keyCompromise)" {
  netns_start
  aia_responder
  ns_server aia-revoked
  ns_fetch "$(fetch_conf)"
  refused_ocsp revoked "revoked (keyCompromise) (answer of http://127.0.0.1:$AIA_PORT/)"
  assert_requests 1
}

@test "ocsp_fetch x unknown: refused, OCSP status unknown" {
  netns_start
  aia_responder
  ns_server aia-unknown
  ns_fetch "$(fetch_conf)"
  refused_ocsp unknown "OCSP status unknown (answer of http://127.0.0.1:$AIA_PORT/)"
}

@test "ocsp_fetch: without it, require refuses the same server (no OCSP staple)" {
  netns_start
  aia_responder
  ns_server aia-good
  ns_fetch "$(ocsp_conf c 'ocsp = require')"
  refused_ocsp none "no OCSP staple"
  assert_requests 0
}

@test "ocsp_fetch: a stapling server is not asked about (the staple decides)" {
  netns_start
  aia_responder
  ns_server good good
  ns_fetch "$(fetch_conf)"
  accepted good
  assert_requests 0
}

@test "ocsp_fetch under prefer: no request is made, no staple accepted (fetch is for require)" {
  netns_start
  aia_responder
  ns_server aia-good
  ns_fetch "$(ocsp_conf c 'ocsp = prefer' 'ocsp_fetch = yes')"
  accepted none
  assert_requests 0
}

@test "ocsp_fetch: a must-staple certificate without a staple under prefer is fetched for, accepted" {
  netns_start
  aia_responder
  ns_server aia-mustaple
  ns_fetch "$(ocsp_conf c 'ocsp = prefer' 'ocsp_fetch = yes')"
  accepted good
  assert_requests 1
}

@test "ocsp_fetch: one request per process, the answer is cached until nextUpdate (python, 3 connections)" {
  netns_start
  aia_responder
  ns_server aia-good
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" \
    nsenter -t "$NS" -n -- env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$(fetch_conf)" \
    TLSSHIM_LOG_STDERR=1 "$PY" "$PYCLIENT" connect -n 3 --send "GET / HTTP/1.0" \
    127.0.0.1 "$port"
  assert_status 0
  [[ $(count_lines "event=connected") -eq 3 && $(count_lines "ocsp=good") -eq 3 ]] || {
    echo "expected 3 connected lines with ocsp=good" >&2
    show_run
    false
  }
  assert_requests 1
  # A new process asks again.
  ns_fetch "$(fetch_conf)"
  accepted good
  assert_requests 2
}

@test "ocsp_fetch: responder down: refused, ocsp=none, the reason names the responder" {
  netns_start
  ns_server aia-good
  ns_fetch "$(fetch_conf)"
  refused stage=ocsp ocsp=none \
    "reason~no OCSP staple; OCSP responder http://127.0.0.1:$AIA_PORT/: cannot connect"
}

@test "ocsp_fetch: a responder that never answers is given up after ocsp_fetch_timeout" {
  netns_start
  aia_fake_responder '    c.recv(65536)
    threading.Thread(target=lambda k=c: k.recv(1), daemon=True).start()'
  ns_server aia-good
  ns_fetch "$(fetch_conf 'ocsp_fetch_timeout = 1')"
  refused stage=ocsp ocsp=none "reason~: timed out"
  local line elapsed
  line=$(grep 'event=handshake_failed' <<<"$stderr" | head -1)
  elapsed=$(log_field "$line" elapsed_ms)
  [[ $elapsed -ge 900 && $elapsed -lt 2000 ]] || {
    echo "elapsed_ms=$elapsed, expected about 1000 (ocsp_fetch_timeout = 1)" >&2
    false
  }
}

@test "ocsp_fetch: a responder that answers garbage, or HTTP 500, or resets: refused, never accepted" {
  netns_start
  ns_server aia-good
  local body
  for body in \
    "    c.recv(65536); c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nhello'); c.close()" \
    "    c.recv(65536); c.sendall(b'HTTP/1.0 500 Oops\\r\\nContent-Length: 0\\r\\n\\r\\n'); c.close()" \
    "    c.recv(65536); c.sendall(b'\\x16\\x03\\x01garbage-not-http\\r\\n\\r\\n'); c.close()" \
    "    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00'); c.recv(65536); c.sendall(b'HTTP/1.0 200 OK\\r\\nCon'); c.close()"; do
    aia_fake_responder "$body"
    ns_fetch "$(fetch_conf)"
    refused stage=ocsp ocsp=none "reason~OCSP responder http://127.0.0.1:$AIA_PORT/: "
    assert_requests 1
    stop_pid "$AIA_PID"
    rm -f "$BATS_TEST_TMPDIR"/aia-responder.{out,err}
  done
}

@test "ocsp_fetch: a fetched answer is checked like a staple (unauthorised signer, stale)" {
  netns_start
  ns_server aia-good
  aia_responder -ndays 1 -rsigner "$OCSP/rogue-responder.pem" -rkey "$OCSP/rogue-responder.key"
  ns_fetch "$(fetch_conf)"
  refused stage=ocsp ocsp=bad:signer \
    "reason~bad OCSP response (fetched from http://127.0.0.1:$AIA_PORT/): "
  stop_pid "$AIA_PID"
  AIA_FAKE=-3d aia_responder -ndays 1
  ns_fetch "$(fetch_conf)"
  refused stage=ocsp ocsp=bad:stale \
    "reason=bad OCSP response (fetched from http://127.0.0.1:$AIA_PORT/): nextUpdate has passed"
}

@test "ocsp_fetch: a certificate that names no responder, or only an https one, is refused with why" {
  netns_start
  aia_responder
  ns_server good
  ns_fetch "$(fetch_conf)"
  refused_ocsp none "no OCSP staple; certificate names no OCSP responder"
  port=$(free_port)
  ns_server aia-https
  ns_fetch "$(fetch_conf)"
  refused stage=ocsp ocsp=none "reason~certificate names no http:// OCSP responder (only https://"
  assert_requests 0
}

@test "ocsp_fetch in one rule only: the other destinations still need a staple" {
  netns_start
  aia_responder
  ns_server aia-good
  local conf
  conf=$(ocsp_conf r 'ocsp = require' 'rules = rules' '[rules]' '1 = fetching' \
    '[fetching]' "match = 127.0.0.1:$port" 'action = tls' 'ocsp_fetch = yes')
  ns_fetch "$conf"
  accepted good
  conf=$(ocsp_conf r2 'ocsp = require' 'rules = rules' '[rules]' '1 = other' \
    '[other]' "match = 127.0.0.1:1-2" 'action = tls' 'ocsp_fetch = yes')
  ns_fetch "$conf"
  refused_ocsp none "no OCSP staple"
}

@test "tlsshim probe with ocsp_fetch: ocsp: good from the responder" {
  netns_start
  aia_responder
  ns_server aia-good
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" nsenter -t "$NS" -n -- \
    "$TLSSHIM_BIN" probe "127.0.0.1:$port" --config "$(fetch_conf)"
  assert_status 0
  grep -qx 'ocsp: good' <<<"$output" || {
    show_run
    false
  }
  assert_requests 1
}

@test "tlsshim check: ocsp_fetch settings are checked and shown" {
  local line conf
  for line in 'ocsp_fetch = maybe' 'ocsp_fetch_timeout = 0' 'ocsp_fetch_timeout = soon'; do
    conf=$(ocsp_conf bad "$line")
    run --separate-stderr tlsshim_cli check "$conf"
    assert_status 1
    assert_stderr_has "${line%% =*} = "
  done
  conf=$(ocsp_conf d 'rules = rules' '[rules]' '1 = d' '[d]' 'match = 10.0.0.0/8' \
    'action = deny' 'ocsp_fetch = yes')
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 1
  assert_stderr_has "takes no TLS settings"
  run --separate-stderr tlsshim_cli check "$(fetch_conf 'ocsp_fetch_timeout = 1.5')"
  assert_status 0
  assert_output_has "ocsp_fetch=yes ocsp_fetch_timeout=1.5s"
}

# --- inbound: staples fetched from the responder ------------------------------------

# ns_inbound NAME SECTION_LINE...: python http.server under the shim in the
# namespace on 127.0.0.1:$port, its listener served by an inbound section
# with the given lines, after one handshake; log lines in
# $BATS_TEST_TMPDIR/NAME.err.
ns_inbound() {
  local name=$1 conf www=$BATS_TEST_TMPDIR/www-$1
  shift
  mkdir -p "$www"
  echo "inbound-page $name" >"$www/index.html"
  conf=$(ocsp_conf "in-$name" 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' \
    "listen = 127.0.0.1:$port" "$@")
  start_bg "$name" nsenter -t "$NS" -n -- env LD_PRELOAD="$TLSSHIM_LIB" \
    TLSSHIM_CONFIG="$conf" TLSSHIM_LOG_STDERR=1 "$PY" -u -m http.server \
    --bind 127.0.0.1 --directory "$www" "$port"
  SRV_PID=$BG_PID
  in_ns "$WAITFOR" -t 10 listen "$port" || {
    cat "$BATS_TEST_TMPDIR/$name.err" >&2
    return 1
  }
  # The refresher starts at the process's first handshake (not at listen(),
  # so that servers forking workers fork no thread): make one.
  ns_status >/dev/null
}

# wait_event FILE EVENT [COUNT]: wait (20 s) until FILE has COUNT (default 1)
# tlsshim lines with event=EVENT.
wait_event() {
  local n=${3:-1}
  if ! "$WAITFOR" -t 20 cmd -- sh -c \
    "[ \$(grep -c 'tlsshim\\[[0-9]*\\]: event=$2 ' '$1') -ge $n ]"; then
    echo "$1 never had $n lines with event=$2:" >&2
    cat "$1" >&2
    return 1
  fi
}

# ns_status: what s_client (in the namespace, no shim) says about the staple.
ns_status() {
  in_ns openssl s_client -connect "127.0.0.1:$port" -servername localhost \
    -CAfile "$CERTS/ca.pem" -status </dev/null 2>/dev/null |
    grep -E 'Cert Status:|OCSP response: no response sent|Verify return code' || true
}

@test "inbound ocsp_fetch: the responder's answer is stapled, and fetched again before nextUpdate" {
  netns_start
  # Answers valid for 1 minute, made 50 s ago: nextUpdate is 10 s away, so
  # the next fetch is due within REFRESH_MIN_S (10 s).
  AIA_FAKE=-50s aia_responder -nmin 1
  ns_inbound srv "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes'
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_refreshed
  run ns_status
  assert_output_has "Cert Status: good"
  assert_output_has "Verify return code: 0 (ok)"
  # A tlsshim client that requires a staple is served.
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" nsenter -t "$NS" -n -- \
    env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$(ocsp_conf c 'ocsp = require')" \
    TLSSHIM_LOG_STDERR=1 curl -sS "http://127.0.0.1:$port/"
  assert_status 0
  assert_output_has "inbound-page srv"
  assert_log_fields event=connected ocsp=good
  # Refreshed in the background before the first answer went stale: each
  # refresh is its own line (never folded), and the second comes at least
  # 10 s (REFRESH_MIN_S) after the first, before its nextUpdate.
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_refreshed 2
  [[ $(aia_requests) -ge 2 ]]
  ! grep -q 'event=staple_refreshed.*repeated=' "$BATS_TEST_TMPDIR/srv.err"
  run ns_status
  assert_output_has "Cert Status: good"
}

@test "inbound ocsp_fetch: responder down at start: handshakes go on without a staple, then it is fetched" {
  netns_start
  ns_inbound srv "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes'
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_failed
  local stderr
  stderr=$(cat "$BATS_TEST_TMPDIR/srv.err")
  assert_log_fields event=staple_failed dir=in rule=srv stage=ocsp ocsp=none \
    "reason~OCSP responder http://127.0.0.1:$AIA_PORT/: cannot connect"
  run ns_status
  assert_output_has "OCSP response: no response sent"
  assert_output_has "Verify return code: 0 (ok)"
  aia_responder
  # Retried after 5 s.
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_refreshed
  run ns_status
  assert_output_has "Cert Status: good"
}

@test "inbound ocsp_fetch: a revoked answer is stapled (clients must refuse) and logged as an error" {
  netns_start
  aia_responder
  ns_inbound srv "cert = $OCSP/aia-revoked-chain.pem" "key = $OCSP/aia-revoked.key" \
    'ocsp_fetch = yes'
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_failed
  local stderr
  stderr=$(cat "$BATS_TEST_TMPDIR/srv.err")
  assert_log_fields event=staple_failed ocsp=revoked \
    "reason=this server's certificate is revoked (keyCompromise)"
  run ns_status
  assert_output_has "Cert Status: revoked"
  run --separate-stderr timeout -k 2 "$TLSSHIM_E2E_TIMEOUT" nsenter -t "$NS" -n -- \
    env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$(ocsp_conf c)" \
    TLSSHIM_LOG_STDERR=1 curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  assert_log_fields event=handshake_failed ocsp=revoked
}

@test "inbound ocsp_fetch: a stale or unauthorised answer is not stapled" {
  netns_start
  AIA_FAKE=-3d aia_responder -ndays 1
  ns_inbound srv "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes'
  wait_event "$BATS_TEST_TMPDIR/srv.err" staple_failed
  local stderr
  stderr=$(cat "$BATS_TEST_TMPDIR/srv.err")
  assert_log_fields event=staple_failed ocsp=bad:stale "reason~nextUpdate has passed"
  run ns_status
  assert_output_has "OCSP response: no response sent"
  stop_pid "$AIA_PID"
  stop_pid "$SRV_PID"
  AIA_FAKE= aia_responder -ndays 1 -rsigner "$OCSP/rogue-responder.pem" \
    -rkey "$OCSP/rogue-responder.key"
  ns_inbound srv2 "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes'
  wait_event "$BATS_TEST_TMPDIR/srv2.err" staple_failed
  stderr=$(cat "$BATS_TEST_TMPDIR/srv2.err")
  assert_log_fields event=staple_failed ocsp=bad:signer
  run ns_status
  assert_output_has "OCSP response: no response sent"
}

@test "inbound ocsp_fetch with nginx (master + 2 workers forked after listen): the workers staple and refresh" {
  command -v nginx >/dev/null || skip "nginx is not installed"
  netns_start
  # Answers valid 10 s more when fetched: a worker still stapling after
  # that must have fetched for itself.
  AIA_FAKE=-50s aia_responder -nmin 1
  local dir=$BATS_TEST_TMPDIR/nginx conf master logs i
  mkdir -p "$dir"
  conf=$(ocsp_conf in-nginx 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' \
    "listen = 127.0.0.1:$port" "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" \
    'ocsp_fetch = yes')
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
user root;
env LD_PRELOAD; env TLSSHIM_CONFIG; env TLSSHIM_LOG_STDERR;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  default_type text/plain;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "inbound-nginx ok pid=\$pid\n"; }
  }
}
EOF
  start_bg nginx nsenter -t "$NS" -n -- env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CONFIG="$conf" \
    TLSSHIM_LOG_STDERR=1 nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  in_ns "$WAITFOR" -t 10 listen "$port" || {
    cat "$dir/error.log" >&2
    return 1
  }
  "$WAITFOR" -t 10 grep "$dir/nginx.pid" '^[0-9]+\n'
  master=$(cat "$dir/nginx.pid")
  logs="$dir/error.log $BATS_TEST_TMPDIR/nginx.err"
  for i in 1 2 3 4 5 6; do
    run ns_status
    assert_output_has "Verify return code: 0 (ok)"
  done
  # The workers' lines go to error.log (nginx's stderr): wait until some
  # worker (not the master) has refreshed twice by itself, the second time
  # after the first answer's nextUpdate had come close.
  "$WAITFOR" -t 25 cmd -- sh -c "cat $logs | grep -o 'tlsshim\\[[0-9]*\\]: event=staple_refreshed' |
    grep -v 'tlsshim\\[$master\\]' | sort | uniq -c | awk '\$1 >= 2' | grep -q ." || {
    echo "no worker of master $master refreshed its staple twice:" >&2
    cat $logs >&2
    false
  }
  # Every connection, to either worker, still gets a current staple.
  for i in 1 2 3 4 5 6; do
    run ns_status
    assert_output_has "Cert Status: good"
  done
}

@test "inbound ocsp_fetch: configuration errors (no responder named, no issuer in the chain, two sources)" {
  local conf
  conf=$(ocsp_conf i1 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' 'listen = 127.0.0.1:1' \
    "cert = $OCSP/good.pem" "key = $OCSP/good.key" 'ocsp_fetch = yes')
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 1
  assert_stderr_has "[srv] ocsp_fetch: certificate names no OCSP responder"
  conf=$(ocsp_conf i2 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' 'listen = 127.0.0.1:1' \
    "cert = $OCSP/aia-good.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes')
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 1
  assert_stderr_has "the issuing CA's certificate must follow the server certificate"
  conf=$(ocsp_conf i3 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' 'listen = 127.0.0.1:1' \
    "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes' \
    "ocsp_response_file = $OCSP/good.der")
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 1
  assert_stderr_has "choose one"
  conf=$(ocsp_conf i4 'inbound = inbound' '[inbound]' '1 = srv' '[srv]' 'listen = 127.0.0.1:1' \
    "cert = $OCSP/aia-good-chain.pem" "key = $OCSP/aia-good.key" 'ocsp_fetch = yes')
  run --separate-stderr tlsshim_cli check "$conf"
  assert_status 0
  assert_output_has "ocsp_fetch=yes"
}

# --- nginx ssl_stapling -----------------------------------------------------------

@test "nginx ssl_stapling with its own responder fetch (ssl_stapling_responder): accepted once nginx staples" {
  command -v nginx >/dev/null || skip "nginx is not installed"
  netns_start
  aia_responder
  local dir=$BATS_TEST_TMPDIR/nginx-live conf
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  default_type text/plain;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $OCSP/good.pem;
    ssl_certificate_key $OCSP/good.key;
    ssl_stapling on;
    ssl_stapling_verify on;
    ssl_stapling_responder http://127.0.0.1:$AIA_PORT/;
    ssl_trusted_certificate $CERTS/ca.pem;
    location / { return 200 "tlsshim-e2e ok\n"; }
  }
}
EOF
  start_bg nginx-live nsenter -t "$NS" -n -- nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  in_ns "$WAITFOR" -t 10 listen "$port" || {
    cat "$dir/error.log" >&2
    return 1
  }
  conf=$(ocsp_conf c 'ocsp = require')
  # nginx asks its responder at its first handshake and staples from the
  # next one on: under require, the shim's client is refused until then.
  "$WAITFOR" -t 15 cmd -- nsenter -t "$NS" -n -- env LD_PRELOAD="$TLSSHIM_LIB" \
    TLSSHIM_CONFIG="$conf" curl -sfS -o /dev/null "http://127.0.0.1:$port/" || {
    cat "$dir/error.log" "$BATS_TEST_TMPDIR/aia-responder.err" >&2
    false
  }
  ns_fetch "$conf"
  accepted good "tlsshim-e2e ok"
  [[ $(aia_requests) -ge 1 ]]
}

@test "nginx ssl_stapling_file x good: accepted, ocsp=good" {
  start_nginx_with "$port" "$OCSP/good.pem" "$OCSP/good.key" \
    "ssl_stapling on;" "ssl_stapling_file $OCSP/good.der;"
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good "tlsshim-e2e ok"
}

@test "nginx ssl_stapling_file x revoked: refused, revoked (keyCompromise)" {
  start_nginx_with "$port" "$OCSP/revoked.pem" "$OCSP/revoked.key" \
    "ssl_stapling on;" "ssl_stapling_file $OCSP/revoked.der;"
  fetch "$(ocsp_conf c 'ocsp = prefer')"
  refused_ocsp revoked "revoked (keyCompromise)"
}

# --- CRLs -----------------------------------------------------------------------

@test "crl_file: a revoked leaf is refused at verify, certificate revoked (23)" {
  stapler revoked -
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl.pem")"
  refused stage=verify "reason=certificate revoked" x509_err=23 depth=0
}

@test "crl_file: a leaf that the CRL does not list is accepted" {
  stapler good -
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl.pem")"
  accepted none
}

@test "crl_dir (hashed): a revoked leaf is refused, a good one accepted" {
  local conf
  conf=$(ocsp_conf c "crl_dir = $OCSP/crl-dir")
  stapler revoked -
  fetch "$conf"
  refused stage=verify "reason=certificate revoked" x509_err=23
  port=$(free_port)
  stapler good -
  fetch "$conf"
  accepted none
}

@test "crl_check = chain: a revoked intermediate is refused (depth 1); leaf mode accepts it" {
  stapler crl-int-leaf - -cert_chain "$OCSP/crl-int.pem"
  fetch "$(ocsp_conf leaf "crl_file = $OCSP/crl-all.pem")"
  accepted none
  fetch "$(ocsp_conf leaf2 "crl_file = $OCSP/crl-all.pem" 'crl_check = leaf')"
  accepted none
  fetch "$(ocsp_conf chain "crl_file = $OCSP/crl-all.pem" 'crl_check = chain')"
  refused stage=verify "reason=certificate revoked" x509_err=23 depth=1
}

@test "crl_check = chain: a chain none of whose certificates is revoked is accepted" {
  stapler good -
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl.pem" 'crl_check = chain')"
  accepted none
}

@test "crl_check = chain: no CRL for the intermediate's issuer is refused" {
  stapler crl-int-leaf - -cert_chain "$OCSP/crl-int.pem"
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl-int-crl.pem" 'crl_check = chain')"
  refused stage=verify "reason=unable to get certificate CRL" x509_err=3 depth=1
}

@test "crl_file: an expired CRL is refused, CRL has expired (12)" {
  stapler good -
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl-expired.pem")"
  refused stage=verify "reason=CRL has expired" x509_err=12
}

@test "crl_file: no CRL for the leaf's issuer is refused, unable to get certificate CRL (3)" {
  stapler good -
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl-int-crl.pem")"
  refused stage=verify "reason=unable to get certificate CRL" x509_err=3
}

# Trust anchors are only what ca_file/ca_dir/approved_cert name (DESIGN.md,
# "Trust"): a certificate that happens to sit in a CRL file or directory
# must not be trusted. untrusted.pem is issued by other-ca, whose
# certificate and (empty) CRL are in crl-with-ca.pem and crl-dir-with-ca/.
@test "crl_file holding a CA certificate: that CA is not trusted" {
  start_s_server "$port" untrusted -www
  fetch "$(ocsp_conf c "crl_file = $OCSP/crl-with-ca.pem")"
  refused stage=verify "reason=unable to get local issuer certificate" x509_err=20
}

@test "crl_dir holding a hashed CA certificate: that CA is not trusted" {
  start_s_server "$port" untrusted -www
  fetch "$(ocsp_conf c "crl_dir = $OCSP/crl-dir-with-ca")"
  refused stage=verify "reason=unable to get local issuer certificate" x509_err=20
}

@test "crl_file in a rule applies to that rule only" {
  local conf
  conf=$(ocsp_conf c 'rules = rules' '[rules]' '1 = checked' '[checked]' \
    "match = 127.0.0.1:$port" 'action = tls' "crl_file = $OCSP/crl.pem")
  stapler revoked -
  fetch "$conf"
  refused stage=verify "reason=certificate revoked" rule=checked
  port=$(free_port)
  stapler revoked -
  fetch "$conf"
  accepted none
}

@test "CRL and OCSP together: a good staple does not save a leaf that the CRL revokes" {
  # revoked-but-good.der: a responder that has not heard of the revocation.
  stapler revoked revoked-but-good
  fetch "$(ocsp_conf c 'ocsp = require')"
  accepted good
  fetch "$(ocsp_conf crl 'ocsp = require' "crl_file = $OCSP/crl.pem")"
  refused stage=verify "reason=certificate revoked" x509_err=23
}

# --- configuration errors ---------------------------------------------------------

@test "tlsshim check: malformed revocation settings are errors that name the key" {
  local line conf
  for line in 'ocsp = maybe' 'ocsp_skew = forever' 'ocsp_skew = -1' 'crl_check = all' \
    'crl_file = /nonexistent/crl.pem' 'crl_dir = /nonexistent/crls'; do
    conf=$(ocsp_conf bad "$line")
    run --separate-stderr tlsshim_cli check "$conf"
    assert_status 1
    assert_stderr_has "${line%% =*} = "
  done
}

@test "a malformed ocsp setting refuses every connection (config_error), never falls back" {
  stapler good -
  fetch "$(ocsp_conf c 'ocsp = sometimes')"
  assert_status 7
  assert_stderr_has "ocsp = sometimes"
  [[ -z $output ]]
}

# --- tlsshim probe ----------------------------------------------------------------

@test "tlsshim probe: ocsp: good, exit 0" {
  stapler good good
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" \
    --config "$(ocsp_conf c 'ocsp = require')"
  assert_status 0
  grep -qx 'ocsp: good' <<<"$output" || {
    show_run
    false
  }
  assert_output_has "verdict: accept"
}

@test "tlsshim probe: ocsp: revoked, exit 1, reject with the reason" {
  stapler revoked revoked
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" \
    --config "$(ocsp_conf c 'ocsp = prefer')"
  assert_status 1
  grep -qx 'ocsp: revoked' <<<"$output" || {
    show_run
    false
  }
  assert_output_has "verdict: reject: revoked (keyCompromise)"
  assert_output_has "stage=ocsp"
}

@test "tlsshim probe: ocsp: none under prefer (accepted), and a bad staple" {
  stapler good -
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" \
    --config "$(ocsp_conf c 'ocsp = prefer')"
  assert_status 0
  grep -qx 'ocsp: none' <<<"$output" || {
    show_run
    false
  }
  port=$(free_port)
  stapler good stale
  run --separate-stderr tlsshim_cli probe "127.0.0.1:$port" \
    --config "$(ocsp_conf c 'ocsp = prefer')"
  assert_status 1
  grep -qx 'ocsp: bad:stale' <<<"$output" || {
    show_run
    false
  }
}
