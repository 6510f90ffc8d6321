# rsyslog.bash: a private rsyslogd for logging.bats (load after helpers).
#
# start_rsyslog runs `rsyslogd -n` with its own configuration: imuxsock with
# the system socket off (the machine's /dev/log is never touched) and one
# input socket in the test's temporary directory, no klog, and every message
# written to a file with a template that keeps all of it:
#
#   FACILITY.SEVERITY TAG MESSAGE
#   authpriv.err tlsshim[4242]: event=handshake_failed dir=out ...
#
# It is started with start_bg, so e2e_teardown kills it.

# start_rsyslog [DIR]: start (or restart) the daemon for DIR (default
# $BATS_TEST_TMPDIR/rsyslog); waits until a probe line sent with logger(1)
# has reached the file. Sets RSYSLOG_DIR, RSYSLOG_SOCK, RSYSLOG_FILE and
# RSYSLOG_PID (the pid start_bg recorded).
start_rsyslog() {
  RSYSLOG_DIR=${1:-$BATS_TEST_TMPDIR/rsyslog}
  RSYSLOG_SOCK=$RSYSLOG_DIR/log.sock
  RSYSLOG_FILE=$RSYSLOG_DIR/messages
  mkdir -p "$RSYSLOG_DIR/work"
  cat >"$RSYSLOG_DIR/rsyslog.conf" <<EOF
global(workDirectory="$RSYSLOG_DIR/work" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="$RSYSLOG_SOCK" CreatePath="on" RateLimit.Interval="0")
template(name="tlsshim-e2e" type="string"
         string="%syslogfacility-text%.%syslogseverity-text% %syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\n")
*.* action(type="omfile" file="$RSYSLOG_FILE" template="tlsshim-e2e")
EOF
  # A socket left behind would look ready before the new daemon binds.
  rm -f "$RSYSLOG_SOCK"
  start_bg rsyslogd rsyslogd -n -f "$RSYSLOG_DIR/rsyslog.conf" -i "$RSYSLOG_DIR/rsyslogd.pid"
  RSYSLOG_PID=$BG_PID
  local probe
  probe=$(new_marker)
  if ! "$WAITFOR" -t 10 cmd -- test -S "$RSYSLOG_SOCK" ||
    ! logger -d -u "$RSYSLOG_SOCK" -t rsyslog-probe "$probe" ||
    ! "$WAITFOR" -t 10 grep "$RSYSLOG_FILE" "$probe"; then
    echo "rsyslogd did not start:" >&2
    cat "$BATS_TEST_TMPDIR/rsyslogd.err" "$BATS_TEST_TMPDIR/rsyslogd.out" >&2 || true
    return 1
  fi
}

# stop_rsyslog: stop the daemon and wait until it has gone (and with it, its
# socket).
stop_rsyslog() {
  stop_pid "$RSYSLOG_PID" TERM
  "$WAITFOR" -t 10 cmd -- test ! -e "$RSYSLOG_SOCK" || rm -f "$RSYSLOG_SOCK"
}

# syslog_line PATTERN: wait (10 s) until a line of $RSYSLOG_FILE contains the
# fixed string PATTERN, and print the last such line.
syslog_line() {
  if ! "$WAITFOR" -t 10 cmd -- grep -qF -- "$1" "$RSYSLOG_FILE"; then
    echo "no syslog line contains: $1" >&2
    echo "--- $RSYSLOG_FILE:" >&2
    cat "$RSYSLOG_FILE" >&2 || true
    return 1
  fi
  grep -F -- "$1" "$RSYSLOG_FILE" | tail -n 1
}

# kv LINE KEY: print the value of KEY in a tlsshim line, unquoted and
# unescaped; status 1 when the line has no such field.
kv() {
  local line=" $1" key=$2 re
  re=" $key=(\"([^\"\\\\]|\\\\.)*\"|[^ \"]*)"
  [[ $line =~ $re ]] || return 1
  local v=${BASH_REMATCH[1]}
  if [[ $v == \"*\" ]]; then
    v=${v:1:${#v}-2}
    v=${v//\\\"/\"}
    v=${v//\\\\/\\}
  fi
  printf '%s\n' "$v"
}

# expect_kv LINE KEY VALUE: KEY's value in LINE is exactly VALUE.
expect_kv() {
  local got
  if ! got=$(kv "$1" "$2"); then
    echo "no $2= in: $1" >&2
    return 1
  fi
  if [[ $got != "$3" ]]; then
    echo "$2: expected \"$3\", got \"$got\" in: $1" >&2
    return 1
  fi
}

# expect_no_kv LINE KEY: LINE has no KEY= field.
expect_no_kv() {
  if kv "$1" "$2" >/dev/null; then
    echo "unexpected $2= in: $1" >&2
    return 1
  fi
}

# expect_cert_fields LINE CERT: subject, issuer, serial, sha256 and
# not_after in LINE are those of $CERTS/CERT.pem, as openssl(1) reads it.
expect_cert_fields() {
  local line=$1 pem=$CERTS/$2.pem subject issuer serial sha256 end not_after
  subject=$(openssl x509 -in "$pem" -noout -subject -nameopt compat | sed 's/^subject=//')
  issuer=$(openssl x509 -in "$pem" -noout -issuer -nameopt compat | sed 's/^issuer=//')
  serial=$(openssl x509 -in "$pem" -noout -serial | sed 's/^serial=//')
  sha256=$(openssl x509 -in "$pem" -noout -fingerprint -sha256 | sed 's/^.*=//; s/://g' |
    tr 'A-F' 'a-f')
  end=$(openssl x509 -in "$pem" -noout -enddate | sed 's/^notAfter=//')
  not_after=$(date -u -d "$end" +%Y-%m-%dT%H:%M:%SZ)
  expect_kv "$line" subject "$subject" &&
    expect_kv "$line" issuer "$issuer" &&
    expect_kv "$line" serial "$serial" &&
    expect_kv "$line" sha256 "$sha256" &&
    expect_kv "$line" not_after "$not_after"
}
