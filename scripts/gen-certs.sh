#!/usr/bin/env bash
# gen-certs.sh OUTDIR: generate the test PKI that the end-to-end tests and the
# demo use. Nothing here is checked in: keys are made at test time.
#
# Keys are EC P-256 and signatures SHA-256 unless said otherwise below. Certificates are issued with
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
#
# For the trust policy tests (issue 3), all with the same SANs as server.pem
# unless said otherwise:
#   int-ca.pem      intermediate CA issued by ca (CA:TRUE, pathlen:0)
#   chain-leaf.pem  leaf issued by int-ca; chain-leaf-fullchain.pem is the
#                   leaf followed by int-ca.pem (no .key of its own)
#   rsa1024.pem     leaf from ca with an RSA-1024 key (too weak at level 2)
#   sha1.pem        leaf from ca signed with SHA-1 (too weak at level 2)
#   partner-ca.pem  a third root, trusted only by one rule of a test
#   partner.pem     leaf issued by partner-ca
#   approved-selfsigned.pem  self-signed leaf (CA:FALSE critical, serverAuth)
#                   for approved_cert; a different key from selfsigned.pem
#   ca-as-leaf.pem  CA:TRUE certificate from ca, served as a leaf (refused)
#   v1.pem          X.509 v1 certificate (no extensions at all) from ca,
#                   CN=localhost (refused)
#   client2.pem     clientAuth certificate from other-ca (untrusted client)
#   pins.txt        "NAME sha256//BASE64" per certificate above: the SHA-256
#                   of its SubjectPublicKeyInfo, as a `pin =` value
# Each NAME.pem has NAME.key beside it (mode 600).
#
# ca.pem is valid from 2019-01-01 (not from yesterday) so that expired.pem
# verifies at a time inside its own validity (`tlsshim verify --at`).
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
  [ -s "$out/pins.txt" ] &&
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

[ v3_intca ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_server_rsa ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_ca_as_leaf ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, digitalSignature, keyCertSign, cRLSign
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF

# Times for `openssl ca` in GeneralizedTime form (YYYYMMDDHHMMSSZ).
ago() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
now_minus_1d=$(ago '1 day ago')
plus_30d=$(date -u -d '29 days' +%Y%m%d%H%M%SZ) # 1 day ago + 30 days
ca_end=$(date -u -d '10 years' +%Y%m%d%H%M%SZ)

# newkey NAME [ec|rsa1024]: private key in OUTDIR/NAME.key, EC P-256 unless
# rsa1024 is asked for.
newkey() {
  local alg=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
  if [ "${2:-ec}" = rsa1024 ]; then
    alg=(-algorithm RSA -pkeyopt rsa_keygen_bits:1024)
  fi
  openssl genpkey "${alg[@]}" -out "$out/$1.key" >>"$log" 2>&1 ||
    fail "key $1"
  chmod 600 "$out/$1.key"
}

# issue NAME CN EXTSECTION START END ISSUER|-selfsign [KEY [MD]]
# KEY is ec (default) or rsa1024, MD the signature digest (default sha256).
# EXTSECTION "-" makes an X.509 v1 certificate: `openssl ca` writes v1 when
# it is given no extension section at all (and the configuration names none).
issue() {
  local name=$1 cn=$2 ext=$3 start=$4 end=$5 issuer=$6 key=${7:-ec} md=${8:-sha256}
  newkey "$name" "$key"
  openssl req -new -config "$work/ca.cnf" -key "$out/$name.key" \
    -subj "/O=tlsshim test/CN=$cn" -out "$work/$name.csr" >>"$log" 2>&1 ||
    fail "csr $name"
  local signer
  if [ "$issuer" = -selfsign ]; then
    signer=(-selfsign -keyfile "$out/$name.key")
  else
    signer=(-cert "$out/$issuer.pem" -keyfile "$out/$issuer.key")
  fi
  local exts=()
  [ "$ext" = - ] || exts=(-extensions "$ext")
  openssl ca -batch -notext -config "$work/ca.cnf" -rand_serial -md "$md" \
    "${signer[@]}" "${exts[@]}" -startdate "$start" -enddate "$end" \
    -in "$work/$name.csr" -out "$out/$name.pem" >>"$log" 2>&1 ||
    fail "certificate $name"
  chmod 644 "$out/$name.pem"
}

issue ca          "tlsshim test CA"       v3_ca         20190101000000Z  "$ca_end"  -selfsign
issue other-ca    "tlsshim other CA"      v3_ca         "$now_minus_1d"  "$ca_end"  -selfsign
issue server      localhost               v3_server     "$now_minus_1d"  "$plus_30d" ca
issue untrusted   localhost               v3_server     "$now_minus_1d"  "$plus_30d" other-ca
issue selfsigned  localhost               v3_selfsigned "$now_minus_1d"  "$plus_30d" -selfsign
issue expired     localhost               v3_server     20200101000000Z  20210101000000Z ca
issue notyet      localhost               v3_server     20990101000000Z  21000101000000Z ca
issue wrongname   wrong.example           v3_wrongname  "$now_minus_1d"  "$plus_30d" ca
issue client      test-client             v3_client     "$now_minus_1d"  "$plus_30d" ca

# Trust policy (issue 3).
issue int-ca      "tlsshim intermediate CA" v3_intca    "$now_minus_1d"  "$ca_end"  ca
issue chain-leaf  localhost               v3_server     "$now_minus_1d"  "$plus_30d" int-ca
cat "$out/chain-leaf.pem" "$out/int-ca.pem" >"$out/chain-leaf-fullchain.pem"
chmod 644 "$out/chain-leaf-fullchain.pem"
issue rsa1024     localhost               v3_server_rsa "$now_minus_1d"  "$plus_30d" ca rsa1024
issue sha1        localhost               v3_server     "$now_minus_1d"  "$plus_30d" ca ec sha1
issue partner-ca  "tlsshim partner CA"    v3_ca         "$now_minus_1d"  "$ca_end"  -selfsign
issue partner     localhost               v3_server     "$now_minus_1d"  "$plus_30d" partner-ca
issue approved-selfsigned localhost       v3_selfsigned "$now_minus_1d"  "$plus_30d" -selfsign
issue ca-as-leaf  localhost               v3_ca_as_leaf "$now_minus_1d"  "$plus_30d" ca
issue v1          localhost               -             "$now_minus_1d"  "$plus_30d" ca
issue client2     test-client-2           v3_client     "$now_minus_1d"  "$plus_30d" other-ca

# Check what the tests rely on, so that a change in openssl's behaviour
# fails here and not as a puzzling test failure.
x509_text() { openssl x509 -noout -text -in "$out/$1.pem"; }
x509_text v1 | grep -q 'Version: 1 (0x0)' || fail "v1.pem is not an X.509 v1 certificate"
x509_text v1 | grep -q 'X509v3' && fail "v1.pem has extensions"
x509_text sha1 | grep -q 'Signature Algorithm: ecdsa-with-SHA1' ||
  fail "sha1.pem is not signed with SHA-1"
x509_text rsa1024 | grep -q 'Public-Key: (1024 bit)' || fail "rsa1024.pem is not RSA-1024"
x509_text ca-as-leaf | grep -q 'CA:TRUE' || fail "ca-as-leaf.pem is not CA:TRUE"
x509_text approved-selfsigned | grep -q 'CA:FALSE' ||
  fail "approved-selfsigned.pem is not CA:FALSE"
openssl verify -CAfile "$out/ca.pem" -untrusted "$out/int-ca.pem" \
  "$out/chain-leaf.pem" >>"$log" 2>&1 || fail "chain-leaf.pem does not verify"
openssl verify -CAfile "$out/partner-ca.pem" "$out/partner.pem" >>"$log" 2>&1 ||
  fail "partner.pem does not verify"

# pins.txt: SPKI SHA-256 pin of every certificate, "NAME sha256//BASE64".
: >"$out/pins.txt.tmp"
for pem in "$out"/*.pem; do
  name=$(basename "$pem" .pem)
  [ "$name" = chain-leaf-fullchain ] && continue
  pin=$(openssl x509 -noout -pubkey -in "$pem" 2>>"$log" |
    openssl pkey -pubin -outform DER 2>>"$log" |
    openssl dgst -sha256 -binary | base64) || fail "pin $name"
  [ "${#pin}" -eq 44 ] || fail "pin $name: '$pin'"
  echo "$name sha256//$pin" >>"$out/pins.txt.tmp"
done
chmod 644 "$out/pins.txt.tmp"
mv "$out/pins.txt.tmp" "$out/pins.txt"

chmod 755 "$out"
touch "$out/.done"
