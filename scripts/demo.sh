#!/usr/bin/env bash
# demo.sh: build tlsshim and show what it does, end to end, on loopback.
#
#   1. a stock `curl http://localhost:PORT/` (plaintext HTTP) run under
#      `tlsshim run` reaches an HTTPS-only nginx: the shim wrapped it in TLS
#      and verified the server's certificate against the demo CA;
#   2. the same command against a server whose certificate comes from another
#      CA is refused, and the shim says why.
#
# Exits 0 when both outcomes are as expected, non-zero otherwise. Servers are
# stopped on exit. Certificates (and keys) go to build/demo-certs, which is
# git-ignored.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=/usr/bin/python3
waitfor=$root/tests/e2e/waitfor

if [[ -t 1 ]]; then
  heading() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
else
  heading() { printf '\n== %s ==\n' "$*"; }
fi

heading "Installing dependencies"
scripts/install-deps.sh

heading "Building"
make
tlsshim=$root/build/tlsshim
[[ -x $tlsshim && -f $root/build/libtlsshim.so ]] || {
  echo "demo: make did not produce build/tlsshim and build/libtlsshim.so" >&2
  exit 1
}
"$tlsshim" version

heading "Generating a demo CA and certificates in build/demo-certs"
certs=$root/build/demo-certs
scripts/gen-certs.sh "$certs"
ls "$certs"

work=$(mktemp -d /tmp/tlsshim-demo.XXXXXX)
pids=()
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nginx NAME PORT CERT: an HTTPS-only nginx on 127.0.0.1 (and ::1).
start_nginx() {
  local name=$1 port=$2 cert=$3 dir=$work/$1 listen6='' count=1
  if grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6 2>/dev/null; then
    listen6="listen [::1]:$port ssl;"
    count=2
  fi
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 64; }
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
    ssl_certificate $certs/$cert.pem;
    ssl_certificate_key $certs/$cert.key;
    location / {
      return 200 "Hello from nginx ($name) over \$ssl_protocol; you asked for \$request_uri\n";
    }
  }
}
EOF
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" </dev/null &
  pids+=($!)
  if ! "$waitfor" -t 10 listen "$port" "$count"; then
    cat "$dir/error.log" >&2
    exit 1
  fi
  echo "nginx '$name' serves HTTPS only on localhost:$port with $cert.pem"
}

good_port=$(free_port)
bad_port=$(free_port)
[[ $bad_port != "$good_port" ]] || bad_port=$(free_port)

heading "Starting two HTTPS-only servers"
start_nginx trusted "$good_port" server
start_nginx untrusted "$bad_port" untrusted

ok=1

heading "Without tlsshim: plaintext curl to an HTTPS port"
echo "\$ curl -sS http://localhost:$good_port/"
timeout 20 curl -sS "http://localhost:$good_port/" | grep -m1 -o '400 The plain HTTP request was sent to HTTPS port' ||
  true

heading "1. Accepted: the same curl under tlsshim, server cert from the trusted CA"
echo "\$ build/tlsshim run --ca build/demo-certs/ca.pem -- curl -sS http://localhost:$good_port/demo"
if out=$(timeout 20 "$tlsshim" run --ca "$certs/ca.pem" -- \
  curl -sS "http://localhost:$good_port/demo"); then
  printf '%s\n' "$out"
else
  printf '%s\n' "$out"
  echo "demo: UNEXPECTED: the connection to the trusted server failed" >&2
  ok=0
fi
if [[ $out == "Hello from nginx (trusted) over TLSv1."* ]]; then
  echo "=> accepted: plaintext HTTP went out inside verified TLS"
else
  echo "demo: UNEXPECTED answer from the trusted server" >&2
  ok=0
fi

heading "2. Refused: server cert from a CA that is not trusted"
echo "\$ TLSSHIM_LOG_STDERR=1 build/tlsshim run --ca build/demo-certs/ca.pem -- curl -sS http://localhost:$bad_port/demo"
set +e
out=$(TLSSHIM_LOG_STDERR=1 timeout 20 "$tlsshim" run --ca "$certs/ca.pem" -- \
  curl -sS "http://localhost:$bad_port/demo" 2>"$work/refused.err")
rc=$?
set -e
[[ -z $out ]] || printf '%s\n' "$out"
cat "$work/refused.err"
echo "(curl exit status: $rc)"
if [[ $rc -eq 7 ]] && grep -q 'event=handshake_failed.*stage=verify' "$work/refused.err" &&
  [[ $out != *"Hello from nginx"* ]]; then
  echo "=> refused: connect() failed with ECONNREFUSED, no request was sent"
else
  echo "demo: UNEXPECTED: the untrusted server was not refused as expected" >&2
  ok=0
fi

heading "Result"
if [[ $ok -eq 1 ]]; then
  echo "demo OK: one connection accepted, one refused, as expected"
  exit 0
fi
echo "demo FAILED" >&2
exit 1
