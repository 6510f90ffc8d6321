#!/usr/bin/env bash
# gen-certs.sh OUTDIR: generate the test PKI that the end-to-end tests and the
# demo use. Nothing here is checked in: keys are made at test time.
#
# All keys are EC P-256, all signatures SHA-256. Certificates are issued with
# `openssl ca` and a throwaway configuration under OUTDIR/.work, because only
# `openssl ca` takes arbitrary -startdate/-enddate (no faketime needed).
#
#   ca.pem          test root CA (CA:TRUE critical; keyCertSign, cRLSign)
#   server.pem      leaf from ca: DNS:localhost, IP:127.0.0.1, IP:::1,
#                   serverAuth, valid from 1 day ago for 30 days
#   other-ca.pem    a second root that the tests never trust
#   untrusted.pem   same SANs as server.pem, issued by other-ca
#   selfsigned.pem  self-signed leaf (CA:FALSE) with the same SANs
#   expired.pem     from ca, valid 2020-01-01 .. 2021-01-01
#   notyet.pem      from ca, valid from 2099-01-01
#   wrongname.pem   from ca, SAN DNS:wrong.example, IP:192.0.2.1 only
#   client.pem      from ca, clientAuth, CN=test-client (for mTLS)
# Each NAME.pem has NAME.key beside it (mode 600).
#
# Idempotent: does nothing when OUTDIR/.done is newer than this script and
# server.pem is still valid for another day. Silent unless it fails.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
self=$(readlink -f "$0")
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Serialise concurrent callers sharing one OUTDIR (bats --jobs, TLSSHIM_CERTS).
exec 9>"$out/.lock"
flock 9

if [ -f "$out/.done" ] && [ "$out/.done" -nt "$self" ] &&
  openssl x509 -checkend 86400 -noout -in "$out/server.pem" >/dev/null 2>&1; then
  exit 0
fi
rm -f "$out/.done"

work="$out/.work"
rm -rf "$work"
mkdir -p "$work/newcerts"
: >"$work/index.txt"
echo 1000 >"$work/serial"
log="$work/openssl.log"
: >"$log"

fail() {
  echo "gen-certs: $*" >&2
  echo "gen-certs: openssl output follows:" >&2
  cat "$log" >&2
  exit 1
}

san='DNS:localhost, IP:127.0.0.1, IP:::1'

cat >"$work/ca.cnf" <<CNF
[ ca ]
default_ca = testca

[ testca ]
dir              = $work
database         = \$dir/index.txt
serial           = \$dir/serial
new_certs_dir    = \$dir/newcerts
default_md       = sha256
policy           = policy_any
unique_subject   = no
copy_extensions  = none
email_in_dn      = no
preserve         = yes

[ policy_any ]
commonName             = supplied
organizationName       = optional

[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ v3_server ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_selfsigned ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash

[ v3_wrongname ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:wrong.example, IP:192.0.2.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_client ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF

# Times for `openssl ca` in GeneralizedTime form (YYYYMMDDHHMMSSZ).
ago() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
now_minus_1d=$(ago '1 day ago')
plus_30d=$(date -u -d '29 days' +%Y%m%d%H%M%SZ) # 1 day ago + 30 days
ca_end=$(date -u -d '10 years' +%Y%m%d%H%M%SZ)

# newkey NAME: EC P-256 private key in OUTDIR/NAME.key.
newkey() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$out/$1.key" >>"$log" 2>&1 || fail "key $1"
  chmod 600 "$out/$1.key"
}

# issue NAME CN EXTSECTION START END ISSUER|-selfsign
issue() {
  local name=$1 cn=$2 ext=$3 start=$4 end=$5 issuer=$6
  newkey "$name"
  openssl req -new -config "$work/ca.cnf" -key "$out/$name.key" \
    -subj "/O=tlsshim test/CN=$cn" -out "$work/$name.csr" >>"$log" 2>&1 ||
    fail "csr $name"
  local signer
  if [ "$issuer" = -selfsign ]; then
    signer=(-selfsign -keyfile "$out/$name.key")
  else
    signer=(-cert "$out/$issuer.pem" -keyfile "$out/$issuer.key")
  fi
  openssl ca -batch -notext -config "$work/ca.cnf" -rand_serial \
    "${signer[@]}" -extensions "$ext" -startdate "$start" -enddate "$end" \
    -in "$work/$name.csr" -out "$out/$name.pem" >>"$log" 2>&1 ||
    fail "certificate $name"
  chmod 644 "$out/$name.pem"
}

issue ca          "tlsshim test CA"       v3_ca         "$now_minus_1d"  "$ca_end"  -selfsign
issue other-ca    "tlsshim other CA"      v3_ca         "$now_minus_1d"  "$ca_end"  -selfsign
issue server      localhost               v3_server     "$now_minus_1d"  "$plus_30d" ca
issue untrusted   localhost               v3_server     "$now_minus_1d"  "$plus_30d" other-ca
issue selfsigned  localhost               v3_selfsigned "$now_minus_1d"  "$plus_30d" -selfsign
issue expired     localhost               v3_server     20200101000000Z  20210101000000Z ca
issue notyet      localhost               v3_server     20990101000000Z  21000101000000Z ca
issue wrongname   wrong.example           v3_wrongname  "$now_minus_1d"  "$plus_30d" ca
issue client      test-client             v3_client     "$now_minus_1d"  "$plus_30d" ca

chmod 755 "$out"
touch "$out/.done"
