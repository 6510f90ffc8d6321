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

# --- nginx ssl_stapling -----------------------------------------------------------

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
