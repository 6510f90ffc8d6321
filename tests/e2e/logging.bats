#!/usr/bin/env bats
# The audit log through a real syslog daemon: each test starts its own
# rsyslogd (rsyslog.bash) on a socket in its temporary directory, points the
# shim at it with TLSSHIM_LOG_SOCKET, and reads what the daemon wrote:
#
#   FACILITY.SEVERITY TAG MESSAGE
#
# Failures are asserted field by field (event, stage, reason, x509_err and
# the certificate's subject, issuer, serial, sha256 and not_after, compared
# with what openssl(1) reads from the certificate file).  Then: ident and
# facility settings, a program with openlog()/syslog() of its own, a daemon
# restart in the middle of a process, and a 10,000-connection flood with and
# without a daemon.

# shellcheck disable=SC2154 # $stderr and $output are set by bats' run
load helpers
load rsyslog

LOGTOOL=$E2E/logging-tool.py

setup_file() {
  e2e_setup_file
  # What the machine's /dev/log is before any test's rsyslogd runs.
  DEV_LOG_BEFORE=$(stat -c '%i %F' /dev/log 2>/dev/null || echo absent)
  export DEV_LOG_BEFORE
}

setup() {
  port=$(free_port)
  start_rsyslog
}

teardown() {
  e2e_teardown
}

# shim_log [NAME=VALUE...] CMD...: `shim` with the log going to our daemon.
shim_log() {
  shim TLSSHIM_LOG_SOCKET="$RSYSLOG_SOCK" "$@"
}

# refused_cert_logged CERT REASON X509_ERR: curl to an s_server presenting
# $CERTS/CERT.pem is refused; the daemon got exactly one line for it, with
# every field checked; the stderr copy is the same line.  Sets $line.
refused_cert_logged() {
  local cert=$1 reason=$2 x509=$3
  start_s_server "$port" "$cert" -www
  run --separate-stderr shim_log curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line == "authpriv.err tlsshim["*"]: event=handshake_failed "* ]] || {
    echo "facility, severity or tag wrong: $line" >&2
    false
  }
  expect_kv "$line" dir out
  expect_kv "$line" stage verify
  expect_kv "$line" reason "$reason"
  expect_kv "$line" x509_err "$x509"
  expect_kv "$line" depth 0
  expect_cert_fields "$line" "$cert"
  expect_kv "$line" exe "$(readlink -f "$(command -v curl)")"
  expect_no_kv "$line" repeated
  expect_no_kv "$line" dropped
  [[ $(grep -cF "peer=127.0.0.1:$port " "$RSYSLOG_FILE") -eq 1 ]]
  # The stderr copy (TLSSHIM_LOG_STDERR=1) is the same line.
  local tag_and_msg=${line#authpriv.err }
  grep -qxF -- "$tag_and_msg" <<<"$stderr" || {
    echo "stderr lacks the syslog line: $tag_and_msg" >&2
    show_run
    false
  }
}

# --- the harness itself -------------------------------------------------------

@test "rsyslogd listens on its own socket only, not on the machine's /dev/log" {
  [[ -S $RSYSLOG_SOCK ]]
  [[ $(stat -c '%i %F' /dev/log 2>/dev/null || echo absent) == "$DEV_LOG_BEFORE" ]]
  grep -q 'SysSock.Use="off"' "$RSYSLOG_DIR/rsyslog.conf"
  # (`! cmd` would not fail a bats test: errexit ignores it.)
  if grep -q 'imklog' "$RSYSLOG_DIR/rsyslog.conf"; then false; fi
}

# --- one line per failure, every field -----------------------------------------

@test "untrusted CA: handshake_failed, verify, x509_err 20, the leaf's fields" {
  refused_cert_logged untrusted "unable to get local issuer certificate" 20
}

@test "self-signed: handshake_failed, verify, x509_err 18" {
  refused_cert_logged selfsigned "self-signed certificate" 18
  [[ $(kv "$line" subject) == "$(kv "$line" issuer)" ]]
}

@test "expired: handshake_failed, verify, x509_err 10, not_after in the past" {
  refused_cert_logged expired "certificate has expired" 10
  [[ $(kv "$line" not_after) < $(date -u +%Y-%m-%dT%H:%M:%SZ) ]]
}

@test "not yet valid: handshake_failed, verify, x509_err 9" {
  refused_cert_logged notyet "certificate is not yet valid" 9
}

@test "wrong name: handshake_failed, verify, hostname mismatch, name=localhost" {
  start_s_server "$port" wrongname -www
  run --separate-stderr shim_log "$PY" "$PYCLIENT" connect -4 localhost "$port"
  assert_status 3
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line == "authpriv.err tlsshim["*"]: event=handshake_failed "* ]]
  expect_kv "$line" name localhost
  expect_kv "$line" stage verify
  expect_kv "$line" reason "hostname mismatch"
  expect_kv "$line" x509_err 62
  expect_kv "$line" depth 0
  expect_cert_fields "$line" wrongname
}

@test "plaintext server: refused_plaintext, handshake, no certificate fields" {
  start_plain "$port" "$BATS_TEST_TMPDIR/received"
  run --separate-stderr shim_log curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line == "authpriv.err tlsshim["*"]: event=refused_plaintext "* ]]
  expect_kv "$line" stage handshake
  expect_kv "$line" reason "server did not speak TLS"
  local f
  for f in x509_err depth subject issuer serial sha256 not_after; do
    expect_no_kv "$line" "$f"
  done
}

@test "silent server: handshake_failed, timeout, handshake timed out" {
  start_silent "$port"
  run --separate-stderr shim_log TLSSHIM_HANDSHAKE_TIMEOUT=1 \
    "$PY" "$PYCLIENT" connect 127.0.0.1 "$port"
  assert_status 3
  assert_output_has "connect=ETIMEDOUT"
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line == "authpriv.err tlsshim["*"]: event=handshake_failed "* ]]
  expect_kv "$line" stage timeout
  expect_kv "$line" reason "handshake timed out"
  local ms
  ms=$(kv "$line" elapsed_ms)
  ((ms >= 900))
}

@test "log_success: connected at info, with protocol, cipher and fingerprint" {
  start_s_server "$port" server -www
  run --separate-stderr shim_log TLSSHIM_LOG_SUCCESS=yes curl -sS "http://127.0.0.1:$port/"
  assert_status 0
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line == "authpriv.info tlsshim["*"]: event=connected "* ]]
  [[ $(kv "$line" tls) == TLSv1.[23] ]]
  [[ -n $(kv "$line" cipher) ]]
  expect_kv "$line" resumed no
  expect_cert_fields "$line" server
  expect_no_kv "$line" reason
}

@test "policy events: denied and insecure_setting at warning, plaintext_allowed at notice" {
  local conf
  start_plain "$port" "$BATS_TEST_TMPDIR/received"
  conf=$BATS_TEST_TMPDIR/policy.cnf
  cat >"$conf" <<EOF
[tlsshim]
ca_file = $CERTS/ca.pem
ocsp = off
rules = rules
[rules]
1 = cache
2 = telnet
[cache]
match = 127.0.0.1:$port
action = plaintext
[telnet]
match = *:23
action = deny
EOF
  run --separate-stderr shim_log TLSSHIM_CONFIG="$conf" \
    "$PY" "$LOGTOOL" steps connect 127.0.0.1 "$port" connect 127.0.0.1 23
  assert_status 0
  [[ $output == $'connect=ok\nconnect=EPERM' ]] || {
    show_run
    false
  }
  line=$(syslog_line "event=plaintext_allowed ")
  [[ $line == "authpriv.notice tlsshim["*"]: event=plaintext_allowed "* ]]
  expect_kv "$line" peer "127.0.0.1:$port"
  expect_kv "$line" rule cache
  line=$(syslog_line "event=denied ")
  [[ $line == "authpriv.warning tlsshim["*"]: event=denied "* ]]
  expect_kv "$line" peer 127.0.0.1:23
  expect_kv "$line" rule telnet
  line=$(syslog_line "event=insecure_setting ")
  [[ $line == "authpriv.warning tlsshim["*"]: event=insecure_setting "* ]]
  [[ $(kv "$line" reason) == "ocsp = off"* ]]
}

# --- settings --------------------------------------------------------------

@test "log_ident and log_facility set the tag and the facility" {
  start_plain "$port" "$BATS_TEST_TMPDIR/received"
  run --separate-stderr shim_log TLSSHIM_LOG_IDENT=shim-e2e TLSSHIM_LOG_FACILITY=local5 \
    curl -sS "http://127.0.0.1:$port/"
  assert_status 7
  line=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $line =~ ^local5\.err\ shim-e2e\[([0-9]+)\]:\ event=refused_plaintext\  ]] || {
    echo "got: $line" >&2
    false
  }
  # The tag's pid is the client's, as in the line's own pid= field.
  expect_kv "$line" pid "${BASH_REMATCH[1]}"
}

# The program's own openlog()/syslog() go to /dev/log, which glibc does not
# let us move; so the program runs in a private mount namespace whose /dev
# is a fresh tmpfs with null/zero/random/urandom bound in, and our daemon's
# socket bound over /dev/log.  The shim is left at its default, /dev/log, so
# both write to the same socket.  The machine's /dev is untouched.
@test "a program's own openlog(\"legacy-app\", LOG_PID, LOG_LOCAL3) keeps its tag and facility" {
  unshare -m true 2>/dev/null || skip "cannot create a mount namespace here"
  local bin=$BATS_TEST_TMPDIR/legacy marker olddev=$BATS_TEST_TMPDIR/olddev
  gcc -O2 -Wall -Werror -o "$bin" "$E2E/logging-legacy.c"
  marker=$(new_marker)
  start_plain "$port" "$BATS_TEST_TMPDIR/received"
  mkdir -p "$olddev"
  # shellcheck disable=SC2016 # the script expands its own arguments
  run --separate-stderr bounded unshare -m --propagation private bash -euc '
    mount --bind /dev "$1"
    mount -t tmpfs -o mode=755 tlsshim-e2e-dev /dev
    for n in null zero random urandom; do
      touch "/dev/$n"
      mount --bind "$1/$n" "/dev/$n"
    done
    touch /dev/log
    mount --bind "$2" /dev/log
    shift 2
    exec "$@"' _ "$olddev" "$RSYSLOG_SOCK" \
    env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CA_FILE="$CERTS/ca.pem" \
    "$bin" 127.0.0.1 "$port" "$marker"
  assert_status 0
  assert_output_has "connect=Connection refused"

  local before after shim pid
  before=$(syslog_line "before connect $marker")
  after=$(syslog_line "after connect $marker")
  shim=$(syslog_line "peer=127.0.0.1:$port ")
  [[ $before =~ ^local3\.warning\ legacy-app\[([0-9]+)\]:\ before\ connect\ $marker$ ]] || {
    echo "program's line changed: $before" >&2
    false
  }
  pid=${BASH_REMATCH[1]}
  [[ $after == "local3.warning legacy-app[$pid]: after connect $marker" ]] || {
    echo "program's line after the shim logged changed: $after" >&2
    false
  }
  [[ $shim == "authpriv.err tlsshim[$pid]: event=refused_plaintext "* ]] || {
    echo "shim's line: $shim" >&2
    false
  }
  expect_kv "$shim" exe "$bin"
  # Nothing of the machine's /dev changed.
  [[ ! -e /dev/log || $(stat -c %F /dev/log) == socket ]]
  [[ $(stat -c %F /dev/null) == "character special file" ]]
}

# --- the daemon restarts ------------------------------------------------------

# One process logs four failures (four servers, so none is folded): the
# daemon is restarted between the first and the second (the shim's socket
# still points at the old one: it reconnects and resends), stopped before
# the third (dropped) and started again before the fourth (which arrives and
# reports the dropped one).
@test "rsyslogd restarts mid-run: reconnect and resend; a line lost while it is down is counted" {
  local ports=() i flag=$BATS_TEST_TMPDIR/flag
  for i in 1 2 3 4; do
    ports+=("$(free_port)")
    start_plain "${ports[-1]}" "$BATS_TEST_TMPDIR/r$i"
  done
  start_bg steps env LD_PRELOAD="$TLSSHIM_LIB" TLSSHIM_CA_FILE="$CERTS/ca.pem" \
    TLSSHIM_LOG_SOCKET="$RSYSLOG_SOCK" \
    "$PY" "$LOGTOOL" steps connect 127.0.0.1 "${ports[0]}" await "$flag-restarted" \
    connect 127.0.0.1 "${ports[1]}" await "$flag-stopped" \
    connect 127.0.0.1 "${ports[2]}" await "$flag-started" \
    connect 127.0.0.1 "${ports[3]}"
  local client=$BG_PID out=$BATS_TEST_TMPDIR/steps.out

  syslog_line "peer=127.0.0.1:${ports[0]} " >/dev/null
  stop_rsyslog
  start_rsyslog "$RSYSLOG_DIR"
  touch "$flag-restarted"
  line=$(syslog_line "peer=127.0.0.1:${ports[1]} ")
  [[ $line == "authpriv.err tlsshim["*"]: event=refused_plaintext "* ]]
  expect_no_kv "$line" dropped

  stop_rsyslog
  touch "$flag-stopped"
  "$WAITFOR" -t 20 grep "$out" "awaited $flag-stopped\nconnect="
  start_rsyslog "$RSYSLOG_DIR"
  touch "$flag-started"
  "$WAITFOR" -t 20 gone "$client"

  line=$(syslog_line "peer=127.0.0.1:${ports[3]} ")
  [[ $line == "authpriv.err tlsshim["*"]: event=refused_plaintext "* ]]
  expect_kv "$line" dropped 1
  if grep -F "peer=127.0.0.1:${ports[2]} " "$RSYSLOG_FILE"; then
    echo "a line sent while no daemon listened cannot have arrived" >&2
    false
  fi
  [[ $(grep -c '^connect=ECONNREFUSED$' "$out") -eq 4 ]] || {
    cat "$out" >&2
    false
  }
}

# Daemons close every descriptor they did not open themselves; the shim's
# log socket is hidden from that (and would be reopened if it were not).
@test "a program that closes all its descriptors still logs" {
  local p2
  p2=$(free_port)
  start_plain "$port" "$BATS_TEST_TMPDIR/r1"
  start_plain "$p2" "$BATS_TEST_TMPDIR/r2"
  run --separate-stderr shim_log "$PY" "$LOGTOOL" steps connect 127.0.0.1 "$port" \
    closeall connect 127.0.0.1 "$p2"
  assert_status 0
  [[ $output == $'connect=ECONNREFUSED\nclosed\nconnect=ECONNREFUSED' ]] || {
    show_run
    false
  }
  syslog_line "peer=127.0.0.1:$port " >/dev/null
  line=$(syslog_line "peer=127.0.0.1:$p2 ")
  [[ $line == "authpriv.err tlsshim["*"]: event=refused_plaintext "* ]]
  expect_no_kv "$line" dropped
}

# --- flood ------------------------------------------------------------------

# start_garbage [COUNT]: the fast not-TLS server on COUNT ports; sets PORTS.
start_garbage() {
  local file=$BATS_TEST_TMPDIR/garbage.ports
  start_bg garbage "$PY" "$LOGTOOL" garbage "$file" "${1:-1}"
  "$WAITFOR" -t 10 cmd -- test -s "$file"
  mapfile -t PORTS <"$file"
}

# events FILE TEXT: "lines=L events=E dropped=D" for FILE's lines with TEXT.
events() {
  "$PY" "$LOGTOOL" events "$@"
}

@test "flood: 10,000 refusals in one process, a bounded number of lines, counts add up" {
  local n=10000 TLSSHIM_E2E_TIMEOUT=300 stats
  start_garbage
  run --separate-stderr shim_log "$PY" "$LOGTOOL" flood 127.0.0.1 "$n" "${PORTS[0]}"
  assert_status 0
  assert_output_has "refused=$n other=0"
  # The last count leaves at exit; wait until the daemon has written it.
  "$WAITFOR" -t 20 cmd -- "$PY" "$LOGTOOL" events "$RSYSLOG_FILE" \
    "peer=127.0.0.1:${PORTS[0]} " --at-least "$n" || true
  stats=$(events "$RSYSLOG_FILE" "peer=127.0.0.1:${PORTS[0]} ")
  echo "syslog: $stats" >&2
  grep -F "peer=127.0.0.1:${PORTS[0]} " "$RSYSLOG_FILE" >&2
  [[ $stats =~ ^lines=([0-9]+)\ events=$n\ dropped=0$ ]]
  # Two lines per 10 s window at most (its first, its count): 40 lines would
  # take the loop over three minutes, beyond the client's bound.
  ((BASH_REMATCH[1] >= 2 && BASH_REMATCH[1] <= 40))
  # The stderr copy is folded the same way.
  printf '%s\n' "$stderr" >"$BATS_TEST_TMPDIR/stderr"
  [[ $(events "$BATS_TEST_TMPDIR/stderr" "peer=127.0.0.1:${PORTS[0]} ") == \
    "${stats%dropped=*}dropped=0" ]]
}

@test "flood with no syslog daemon at all: the loop completes" {
  local n=10000 TLSSHIM_E2E_TIMEOUT=300
  stop_rsyslog
  [[ ! -e $RSYSLOG_SOCK ]]
  start_garbage
  run --separate-stderr shim_log "$PY" "$LOGTOOL" flood 127.0.0.1 "$n" "${PORTS[0]}"
  assert_status 0
  assert_output_has "refused=$n other=0"
  printf '%s\n' "$stderr" >"$BATS_TEST_TMPDIR/stderr"
  [[ $(events "$BATS_TEST_TMPDIR/stderr" "peer=127.0.0.1:${PORTS[0]} ") == \
    "lines="*" events=$n dropped=0" ]]
}

# A daemon that has hung: its socket exists, nothing reads it.  Fifty
# servers make fifty distinct failures, more than the folding table holds,
# so lines keep coming and the socket's queue fills: sends fail with EAGAIN
# and are dropped, never waited for.
@test "flood with a syslog socket nobody reads: the loop completes" {
  # shellcheck disable=SC2034 # TLSSHIM_E2E_TIMEOUT is read by shim()
  local n=10000 TLSSHIM_E2E_TIMEOUT=300 sock=$BATS_TEST_TMPDIR/deaf.sock
  stop_rsyslog
  start_bg deaf "$PY" "$LOGTOOL" deaf "$sock" "$BATS_TEST_TMPDIR/deaf-done"
  "$WAITFOR" -t 10 cmd -- test -S "$sock"
  start_garbage 50
  run --separate-stderr shim TLSSHIM_LOG_SOCKET="$sock" \
    "$PY" "$LOGTOOL" flood 127.0.0.1 "$n" "${PORTS[@]}"
  assert_status 0
  assert_output_has "refused=$n other=0"
  touch "$BATS_TEST_TMPDIR/deaf-done"
  "$WAITFOR" -t 10 grep "$BATS_TEST_TMPDIR/deaf.out" "queued="
  local queued sent
  queued=$(sed -n 's/^queued=//p' "$BATS_TEST_TMPDIR/deaf.out")
  sent=$(grep -c "event=refused_plaintext" <<<"$stderr")
  echo "queued=$queued of $sent lines" >&2
  ((queued > 0 && queued < sent))
  # Every event is still accounted for on the stderr copy.
  printf '%s\n' "$stderr" >"$BATS_TEST_TMPDIR/stderr"
  [[ $(events "$BATS_TEST_TMPDIR/stderr" "event=refused_plaintext") == \
    "lines="*" events=$n dropped=0" ]]
}
