#!/usr/bin/env bats
# No plaintext on the wire: capture loopback traffic with tcpdump while a
# client sends a unique marker through the shim, and check that the marker
# never appears in the capture, whether the connection is accepted or
# refused. A control exchange without the shim, on another captured port,
# must show its marker: that proves the capture works and makes each test
# able to fail. The control also runs last, so once its marker is in the
# file every earlier packet has been written too.

load helpers

setup_file() {
  e2e_setup_file
}

setup() {
  [[ $(id -u) -eq 0 ]] || skip "tcpdump on lo needs root"
  command -v tcpdump >/dev/null || skip "tcpdump is not installed"
  port=$(free_port)
  ctl_port=$(free_port)
  [[ $ctl_port != "$port" ]] || ctl_port=$(free_port)
  pcap=$BATS_TEST_TMPDIR/cap.pcap
  marker=$(new_marker)
  ctl_marker=CONTROL-$(new_marker)
}

teardown() {
  e2e_teardown
}

# capture_start: tcpdump on lo for the test's port and the control port.
# --immediate-mode: without it, some kernels (gVisor) hand packets to
# tcpdump only when its buffer fills, i.e. never in a short test.
capture_start() {
  start_bg tcpdump tcpdump --immediate-mode -i lo -U -n -Z root -w "$pcap" \
    "tcp port $port or tcp port $ctl_port"
  CAPTURE_PID=$BG_PID
  "$WAITFOR" -t 10 grep "$BATS_TEST_TMPDIR/tcpdump.err" "listening on" || {
    cat "$BATS_TEST_TMPDIR/tcpdump.err" >&2
    false
  }
}

# capture_stop: run the control exchange in clear, wait until its marker is
# in the capture, then stop tcpdump with SIGINT and wait for it to exit.
capture_stop() {
  start_plain "$ctl_port" "$BATS_TEST_TMPDIR/control-received"
  bounded "$PY" "$PYCLIENT" connect --send "$ctl_marker" 127.0.0.1 "$ctl_port" \
    >"$BATS_TEST_TMPDIR/control-client.out"
  "$WAITFOR" -t 10 grep "$pcap" "$ctl_marker" || {
    echo "control marker never showed up in the capture" >&2
    cat "$BATS_TEST_TMPDIR/tcpdump.err" >&2
    false
  }
  stop_pid "$CAPTURE_PID" INT
}

# assert_capture_clean: the shim's marker is absent, the control's present.
assert_capture_clean() {
  local leaked seen
  leaked=$(count_in "$pcap" "$marker")
  seen=$(count_in "$pcap" "$ctl_marker")
  if [[ $leaked -ne 0 || $seen -eq 0 ]]; then
    echo "marker in capture: $leaked (want 0); control marker: $seen (want >0)" >&2
    tcpdump -r "$pcap" -n -A 2>/dev/null | head -100 >&2
    return 1
  fi
}

@test "accepted connection: the request carrying the marker is encrypted" {
  start_nginx "$port" server
  capture_start
  run --separate-stderr shim curl -sS -H "X-Marker: $marker" \
    "http://localhost:$port/$marker"
  capture_stop
  assert_capture_clean
  assert_status 0
  # The marker did travel (nginx echoes the URI), only not in clear.
  assert_output_has "uri=/$marker"
}

@test "accepted connection, python socket: marker sent both ways, encrypted" {
  start_s_server "$port" server -rev
  capture_start
  local reversed
  reversed=$("$PY" -c 'import sys; print(sys.argv[1][::-1])' "$marker")
  run --separate-stderr shim "$PY" "$PYCLIENT" connect --send "$marker" \
    --recv-line 127.0.0.1 "$port"
  capture_stop
  assert_capture_clean
  assert_status 0
  assert_output_has "recv=$reversed"
  [[ $(count_in "$pcap" "$reversed") -eq 0 ]]
}

@test "refused connection (untrusted certificate): the marker is never sent" {
  start_s_server "$port" untrusted -www
  capture_start
  run --separate-stderr shim curl -sS -H "X-Marker: $marker" \
    "http://localhost:$port/$marker"
  capture_stop
  assert_capture_clean
  assert_status 7
  assert_log handshake_failed verify "unable to get local issuer certificate" 20
}

@test "refused connection (plaintext server): the marker is never sent" {
  start_plain "$port" "$BATS_TEST_TMPDIR/received"
  capture_start
  run --separate-stderr shim curl -sS -H "X-Marker: $marker" \
    "http://localhost:$port/$marker"
  capture_stop
  assert_capture_clean
  assert_status 7
  assert_log refused_plaintext handshake "server did not speak TLS"
  [[ $(count_in "$BATS_TEST_TMPDIR/received" "$marker") -eq 0 ]]
}
