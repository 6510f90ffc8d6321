#!/usr/bin/env bash
# gen-ocsp.sh OUTDIR CERTSDIR: generate the revocation test bed (OCSP
# stapling and CRLs, issue 4) that tests/e2e/ocsp.bats uses. Nothing here is
# checked in: keys and responses are made at test time.
#
# CERTSDIR is the output of scripts/gen-certs.sh: its ca.pem/ca.key is the
# issuing CA of everything below (no intermediate, except for the CRL chain
# case), other-ca and partner-ca sign the unauthorised responders.
# Certificates are issued with `openssl ca` into a CA database of our own
# (OUTDIR/.work/ca), so that `openssl ocsp -index` and `openssl ca -gencrl`
# read the same index.txt. Keys are EC P-256, signatures SHA-256.
#
# Certificates (each NAME.pem with NAME.key, mode 600; SANs DNS:localhost,
# IP:127.0.0.1, IP:::1; valid from 7 days ago for 30 days):
#   good.pem        leaf, status good in index.txt
#   revoked.pem     leaf, revoked (reason keyCompromise) in index.txt
#   unknown.pem     leaf from ca, NOT in index.txt (the responder says unknown)
#   mustaple.pem    leaf with the TLS feature extension status_request
#                   (must-staple), status good
#   other.pem       leaf, status good: the "response about another
#                   certificate" is about this one
#   responder.pem   delegated OCSP responder: issued by ca, EKU OCSPSigning
#                   (critical), id-pkix-ocsp-nocheck
#   rogue-responder.pem    EKU OCSPSigning, but issued by other-ca (untrusted)
#   noeku-responder.pem    issued by ca, EKU serverAuth only (no OCSPSigning)
#   partner-responder.pem  EKU OCSPSigning, issued by partner-ca: trusted when
#                   ca-and-partner.pem is the trust, but not ca's delegate
#   ca-and-partner.pem     ca.pem followed by partner-ca.pem (a trust bundle)
#   aia-good.pem    leaf with an AIA OCSP URL http://127.0.0.1:$AIA_PORT/
#                   (AIA_PORT, default 18888: tests run the responder in a
#                   network namespace of their own), status good;
#                   aia-good-chain.pem is it followed by ca.pem (for
#                   inbound `ocsp_fetch`, which needs the issuer)
#   aia-revoked.pem the same, revoked (keyCompromise); aia-revoked-chain.pem
#   aia-unknown.pem the same, not in index.txt (unknown)
#   aia-mustaple.pem  AIA and must-staple, status good
#   aia-https.pem   AIA naming only an https:// responder (not fetched)
#   index.txt       the ca database: good, revoked, mustaple, other, the
#                   responders and crl-int (revoked) are in it; unknown is not
#
# Static OCSP responses (DER, for `s_server -status_file` and nginx
# `ssl_stapling_file`), each valid 1 day from generation unless said:
#   good.der          good.pem good, signed by responder.pem (cert included)
#   revoked.der       revoked.pem revoked (keyCompromise)
#   unknown.der       unknown.pem unknown
#   mustaple-good.der mustaple.pem good
#   ca-signed.der     good.pem good, signed by ca itself (no certs included):
#                     a valid staple without a delegated responder
#   revoked-but-good.der  revoked.pem good (a responder that has not heard
#                     of the revocation yet), for the CRL-and-OCSP case
# Bad staples, all meant to be served with good.pem:
#   bad-signer.der        good status, signed by rogue-responder (other-ca)
#   bad-signer-noeku.der  good status, signed by noeku-responder (issued by
#                         ca, no OCSPSigning)
#   bad-signer-partner.der good status, signed by partner-responder (a
#                         responder of ANOTHER trusted CA)
#   bad-serial.der        good status about other.pem (another serial)
#   bad-issuer.der        good status for good.pem's serial, but the CertID
#                         names partner-ca as issuer, signed by partner-ca
#                         itself: valid when ca-and-partner.pem is trusted,
#                         but about another issuer's certificate
#   bad-signature.der     good.der with the last byte of the signature
#                         changed (the responder certificate is included)
#   stale.der             good, thisUpdate 3 days ago, nextUpdate 2 days ago
#   future.der            good, thisUpdate in 1 day, nextUpdate in 2 days
#   garbage.der           300 random bytes (not DER). For unit tests: no
#                         stock server staples it (s_server and nginx parse
#                         the file first and fail)
#   garbage-inner.der     a well-formed, successful OCSPResponse envelope
#                         whose BasicOCSPResponse is 300 random bytes: the
#                         garbage a server does pass on
#   no-certs.der          good, signed by responder.pem, -resp_no_certs: the
#                         client cannot find the signer
#   trylater.der          an OCSPResponse with responseStatus tryLater (3)
#                         and no response bytes
#
# CRLs (PEM):
#   crl.pem          ca's CRL, next update in 7 days: revoked.pem and
#                    crl-int.pem revoked (keyCompromise)
#   crl-expired.pem  the same, made 10 days ago with 1 day validity (expired)
#   crl-int-crl.pem  crl-int's CRL (empty), next update in 7 days
#   crl-all.pem      crl.pem followed by crl-int-crl.pem
#   crl-dir/         crl.pem and crl-int-crl.pem, hashed (`openssl rehash`)
#   other-ca-crl.pem other-ca's CRL (empty), next update in 7 days
#   crl-with-ca.pem  crl.pem, other-ca-crl.pem and the other-ca.pem
#                    CERTIFICATE: a CRL bundle that carries a CA certificate,
#                    which must not become a trust anchor
#   crl-dir-with-ca/ the same three, hashed (other-ca.pem as HASH.0)
#   crl-int.pem      intermediate CA issued by ca, revoked in crl.pem
#   crl-int-leaf.pem leaf issued by crl-int; crl-int-leaf-fullchain.pem is
#                    the leaf followed by crl-int.pem
#
# Idempotent: does nothing when OUTDIR/.done is newer than this script and
# than CERTSDIR/ca.pem and less than 6 hours old (the static responses are
# valid for a day). Silent unless it fails.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 OUTDIR CERTSDIR" >&2
  exit 2
fi
out=$1
certs=$(cd "$2" && pwd)
self=$(readlink -f "$0")
mkdir -p "$out"
out=$(cd "$out" && pwd)

for f in ca other-ca partner-ca; do
  if [ ! -s "$certs/$f.pem" ] || [ ! -s "$certs/$f.key" ]; then
    echo "gen-ocsp: $certs/$f.pem or .key missing: run scripts/gen-certs.sh $certs first" >&2
    exit 1
  fi
done
command -v faketime >/dev/null || {
  echo "gen-ocsp: faketime is needed (Debian package faketime)" >&2
  exit 1
}

# Serialise concurrent callers sharing one OUTDIR.
exec 9>"$out/.lock"
flock 9

if [ -f "$out/.done" ] && [ "$out/.done" -nt "$self" ] &&
  [ "$out/.done" -nt "$certs/ca.pem" ] &&
  [ -n "$(find "$out/.done" -mmin -360)" ]; then
  exit 0
fi
rm -f "$out/.done"

work="$out/.work"
rm -rf "$work"
mkdir -p "$work"
log="$work/openssl.log"
: >"$log"

fail() {
  echo "gen-ocsp: $*" >&2
  echo "gen-ocsp: openssl output follows:" >&2
  cat "$log" >&2
  exit 1
}

san='DNS:localhost, IP:127.0.0.1, IP:::1'
aia_port=${AIA_PORT:-18888}
start=$(date -u -d '7 days ago' +%Y%m%d%H%M%SZ)
end=$(date -u -d '23 days' +%Y%m%d%H%M%SZ)

# newdb NAME: an empty `openssl ca` database under .work/NAME.
newdb() {
  mkdir -p "$work/$1/newcerts"
  : >"$work/$1/index.txt"
  echo 'unique_subject = no' >"$work/$1/index.txt.attr"
  echo 1000 >"$work/$1/crlnumber"
  echo 1000 >"$work/$1/serial"
}
newdb ca      # ca's database: OUTDIR/index.txt is a copy of it
newdb scratch # certificates that must not be in ca's index
newdb int     # crl-int's database

# cnf DB: the configuration for `openssl ca` on database DB.
cnf() {
  local db=$work/$1
  cat <<CNF
[ ca ]
default_ca = testca

[ testca ]
database         = $db/index.txt
serial           = $db/serial
new_certs_dir    = $db/newcerts
crlnumber        = $db/crlnumber
default_md       = sha256
policy           = policy_any
unique_subject   = no
copy_extensions  = none
email_in_dn      = no
preserve         = yes
crl_extensions   = crl_ext

[ policy_any ]
commonName             = supplied
organizationName       = optional

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]
CN = unused

[ v3_server ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_mustaple ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
tlsfeature             = status_request

[ v3_aia ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:http://127.0.0.1:$aia_port/

[ v3_aia_mustaple ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:http://127.0.0.1:$aia_port/
tlsfeature             = status_request

[ v3_aia_https ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:https://127.0.0.1:$aia_port/

[ v3_ocsp ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = critical, OCSPSigning
noCheck                = ignored
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_noeku ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_intca ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF
}
for db in ca scratch int; do
  cnf "$db" >"$work/$db.cnf"
done

# issue NAME CN EXTSECTION DB ISSUERPEM ISSUERKEY: NAME.pem/NAME.key in OUTDIR.
issue() {
  local name=$1 cn=$2 ext=$3 db=$4 icert=$5 ikey=$6
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$out/$name.key" >>"$log" 2>&1 || fail "key $name"
  chmod 600 "$out/$name.key"
  openssl req -new -config "$work/$db.cnf" -key "$out/$name.key" \
    -subj "/O=tlsshim test/CN=$cn" -out "$work/$name.csr" >>"$log" 2>&1 ||
    fail "csr $name"
  openssl ca -batch -notext -config "$work/$db.cnf" -rand_serial \
    -cert "$icert" -keyfile "$ikey" -extensions "$ext" \
    -startdate "$start" -enddate "$end" \
    -in "$work/$name.csr" -out "$out/$name.pem" >>"$log" 2>&1 ||
    fail "certificate $name"
  chmod 644 "$out/$name.pem"
}

ca=("$certs/ca.pem" "$certs/ca.key")
issue good              localhost                    v3_server   ca      "${ca[@]}"
issue revoked           localhost                    v3_server   ca      "${ca[@]}"
issue mustaple          localhost                    v3_mustaple ca      "${ca[@]}"
issue other             localhost                    v3_server   ca      "${ca[@]}"
issue responder         "tlsshim test OCSP responder" v3_ocsp    ca      "${ca[@]}"
issue noeku-responder   "tlsshim no-EKU responder"   v3_noeku    ca      "${ca[@]}"
issue crl-int           "tlsshim CRL intermediate"   v3_intca    ca      "${ca[@]}"
issue unknown           localhost                    v3_server   scratch "${ca[@]}"
issue aia-good          localhost                    v3_aia      ca      "${ca[@]}"
issue aia-revoked       localhost                    v3_aia      ca      "${ca[@]}"
issue aia-mustaple      localhost                    v3_aia_mustaple ca  "${ca[@]}"
issue aia-https         localhost                    v3_aia_https ca     "${ca[@]}"
issue aia-unknown       localhost                    v3_aia      scratch "${ca[@]}"
for name in aia-good aia-revoked aia-unknown; do
  cat "$out/$name.pem" "$certs/ca.pem" >"$out/$name-chain.pem"
  chmod 644 "$out/$name-chain.pem"
done
issue rogue-responder   "tlsshim rogue responder"    v3_ocsp     scratch \
  "$certs/other-ca.pem" "$certs/other-ca.key"
issue partner-responder "tlsshim partner responder"  v3_ocsp     scratch \
  "$certs/partner-ca.pem" "$certs/partner-ca.key"
issue crl-int-leaf      localhost                    v3_server   int \
  "$out/crl-int.pem" "$out/crl-int.key"
cat "$out/crl-int-leaf.pem" "$out/crl-int.pem" >"$out/crl-int-leaf-fullchain.pem"
cat "$certs/ca.pem" "$certs/partner-ca.pem" >"$out/ca-and-partner.pem"
chmod 644 "$out/crl-int-leaf-fullchain.pem" "$out/ca-and-partner.pem"

for name in revoked crl-int aia-revoked; do
  openssl ca -batch -config "$work/ca.cnf" -cert "${ca[0]}" -keyfile "${ca[1]}" \
    -revoke "$out/$name.pem" -crl_reason keyCompromise >>"$log" 2>&1 ||
    fail "revoke $name"
done
# index.txt.attr (unique_subject = no) too: the leaves share a subject, and
# `openssl ocsp -index` refuses duplicate subjects without it.
cp "$work/ca/index.txt" "$out/index.txt"
cp "$work/ca/index.txt.attr" "$out/index.txt.attr"
chmod 644 "$out/index.txt" "$out/index.txt.attr"

# --- OCSP responses ---------------------------------------------------------

# respond OUT CERT [OPTION...]: a response about CERT from the index, by the
# delegated responder unless OPTIONs say otherwise (later options win).
respond() {
  local name=$1 cert=$2
  shift 2
  openssl ocsp -index "$out/index.txt" -CA "$certs/ca.pem" \
    -rsigner "$out/responder.pem" -rkey "$out/responder.key" \
    -issuer "$certs/ca.pem" -cert "$cert" -no_nonce -ndays 1 "$@" \
    -respout "$work/$name.der" >>"$log" 2>&1 || fail "response $name"
  mv "$work/$name.der" "$out/$name.der"
}
# signed_by NAME: -rsigner/-rkey options for OUTDIR/NAME.pem.
signed_by() {
  echo "-rsigner $out/$1.pem -rkey $out/$1.key"
}

respond good           "$out/good.pem"
respond revoked        "$out/revoked.pem"
respond unknown        "$out/unknown.pem"
respond mustaple-good  "$out/mustaple.pem"
respond ca-signed      "$out/good.pem" -rsigner "${ca[0]}" -rkey "${ca[1]}" -resp_no_certs
# shellcheck disable=SC2046 # signed_by prints separate words on purpose
{
  respond bad-signer         "$out/good.pem" $(signed_by rogue-responder)
  respond bad-signer-noeku   "$out/good.pem" $(signed_by noeku-responder)
  respond bad-signer-partner "$out/good.pem" $(signed_by partner-responder)
}
respond bad-serial     "$out/other.pem"
# bad-issuer.der: a response that is valid in itself (signed by partner-ca,
# which ca-and-partner.pem trusts) about good.pem's serial number, but with
# a CertID that names partner-ca (name and key hash) as the issuer. With
# -serial, `openssl ocsp` builds the CertID from -issuer alone (with -cert it
# would take the name hash from the certificate's issuer field); the index
# lookup is by serial, so the status is good.
good_serial=$(openssl x509 -noout -serial -in "$out/good.pem") || fail "serial of good.pem"
openssl ocsp -index "$out/index.txt" -CA "$certs/partner-ca.pem" \
  -rsigner "$certs/partner-ca.pem" -rkey "$certs/partner-ca.key" \
  -issuer "$certs/partner-ca.pem" -serial "0x${good_serial#serial=}" -no_nonce -ndays 1 \
  -respout "$out/bad-issuer.der" >>"$log" 2>&1 || fail "response bad-issuer"
respond no-certs       "$out/good.pem" -resp_no_certs
# revoked-but-good.der: what a responder that has not heard of the
# revocation says (index.txt with revoked.pem's line marked valid).
rserial=$(openssl x509 -noout -serial -in "$out/revoked.pem") || fail "serial of revoked.pem"
awk -F'\t' -v s="${rserial#serial=}" 'BEGIN { OFS = "\t" } $4 == s { $1 = "V"; $3 = "" } { print }' \
  "$out/index.txt" >"$work/stale-index.txt"
cp "$out/index.txt.attr" "$work/stale-index.txt.attr"
openssl ocsp -index "$work/stale-index.txt" -CA "$certs/ca.pem" \
  -rsigner "$out/responder.pem" -rkey "$out/responder.key" \
  -issuer "$certs/ca.pem" -cert "$out/revoked.pem" -no_nonce -ndays 1 \
  -respout "$out/revoked-but-good.der" >>"$log" 2>&1 || fail "response revoked-but-good"
faketime -f '-3d' \
  openssl ocsp -index "$out/index.txt" -CA "$certs/ca.pem" \
  -rsigner "$out/responder.pem" -rkey "$out/responder.key" \
  -issuer "$certs/ca.pem" -cert "$out/good.pem" -no_nonce -ndays 1 \
  -respout "$out/stale.der" >>"$log" 2>&1 || fail "response stale"
faketime -f '+1d' \
  openssl ocsp -index "$out/index.txt" -CA "$certs/ca.pem" \
  -rsigner "$out/responder.pem" -rkey "$out/responder.key" \
  -issuer "$certs/ca.pem" -cert "$out/good.pem" -no_nonce -ndays 1 \
  -respout "$out/future.der" >>"$log" 2>&1 || fail "response future"

# bad-signature.der: good.der (delegated responder, its certificate
# included) with the last byte of the signature changed. The signature is
# the BIT STRING at depth 1 of the BasicOCSPResponse, which is the content
# of the (first) OCTET STRING of the OCSPResponse.
read -r ooff ohl < <(openssl asn1parse -inform DER -in "$out/good.der" |
  sed -n 's/^ *\([0-9]*\):d=3 *hl=\([0-9]*\) .*prim: OCTET STRING.*/\1 \2/p') ||
  fail "no OCTET STRING in good.der"
read -r boff bhl blen < <(openssl asn1parse -inform DER -in "$out/good.der" -strparse "$ooff" |
  sed -n 's/^ *\([0-9]*\):d=1 *hl=\([0-9]*\) *l= *\([0-9]*\) prim: BIT STRING.*/\1 \2 \3/p') ||
  fail "no signature in good.der"
pos=$((ooff + ohl + boff + bhl + blen - 1))
cp "$out/good.der" "$work/bad-signature.der"
last=$(od -An -tu1 -j "$pos" -N1 "$work/bad-signature.der" | tr -d ' ')
# shellcheck disable=SC2059 # the format is the one octal escape we build
printf "\\$(printf %03o $((last ^ 1)))" |
  dd of="$work/bad-signature.der" bs=1 seek="$pos" conv=notrunc status=none
mv "$work/bad-signature.der" "$out/bad-signature.der"
cmp -s "$out/good.der" "$out/bad-signature.der" && fail "bad-signature.der is unchanged"

# OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED tryLater(3) }
printf '\x30\x03\x0a\x01\x03' >"$out/trylater.der"

# garbage.der: random bytes that openssl does not take for a response.
for _ in 1 2 3 4 5; do
  head -c 300 /dev/urandom >"$out/garbage.der"
  openssl ocsp -respin "$out/garbage.der" -resp_text -noverify >/dev/null 2>&1 || break
done
# garbage-inner.der: a well-formed OCSPResponse (successful, responseType
# id-pkix-ocsp-basic) whose BasicOCSPResponse is 300 random bytes. Servers
# parse their staple file (s_server per handshake, nginx at start) and will
# not send garbage.der; this one they send as it is.
{
  printf '\x30\x82\x01\x46\x0a\x01\x00\xa0\x82\x01\x3f\x30\x82\x01\x3b'
  printf '\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x01\x04\x82\x01\x2c'
  head -c 300 /dev/urandom
} >"$out/garbage-inner.der"
chmod 644 "$out"/*.der

# --- CRLs -------------------------------------------------------------------

openssl ca -batch -gencrl -config "$work/ca.cnf" -cert "${ca[0]}" -keyfile "${ca[1]}" \
  -crldays 7 -out "$out/crl.pem" >>"$log" 2>&1 || fail "crl"
faketime -f '-10d' \
  openssl ca -batch -gencrl -config "$work/ca.cnf" -cert "${ca[0]}" -keyfile "${ca[1]}" \
  -crldays 1 -out "$out/crl-expired.pem" >>"$log" 2>&1 || fail "expired crl"
openssl ca -batch -gencrl -config "$work/int.cnf" -cert "$out/crl-int.pem" \
  -keyfile "$out/crl-int.key" -crldays 7 -out "$out/crl-int-crl.pem" >>"$log" 2>&1 ||
  fail "crl-int crl"
openssl ca -batch -gencrl -config "$work/scratch.cnf" -cert "$certs/other-ca.pem" \
  -keyfile "$certs/other-ca.key" -crldays 7 -out "$out/other-ca-crl.pem" >>"$log" 2>&1 ||
  fail "other-ca crl"
cat "$out/crl.pem" "$out/crl-int-crl.pem" >"$out/crl-all.pem"
cat "$out/crl.pem" "$out/other-ca-crl.pem" "$certs/other-ca.pem" >"$out/crl-with-ca.pem"
rm -rf "$out/crl-dir" "$out/crl-dir-with-ca"
mkdir -p "$out/crl-dir" "$out/crl-dir-with-ca"
cp "$out/crl.pem" "$out/crl-int-crl.pem" "$out/crl-dir/"
cp "$out/crl.pem" "$out/other-ca-crl.pem" "$certs/other-ca.pem" "$out/crl-dir-with-ca/"
openssl rehash "$out/crl-dir" >>"$log" 2>&1 || fail "rehash crl-dir"
openssl rehash "$out/crl-dir-with-ca" >>"$log" 2>&1 || fail "rehash crl-dir-with-ca"
chmod 644 "$out"/crl*.pem "$out/other-ca-crl.pem"

# --- check what the tests rely on -----------------------------------------

# status CERT DER [VERIFY-OPTION...]: the `openssl ocsp -respin` report.
status() {
  local cert=$1 der=$2
  shift 2
  openssl ocsp -respin "$out/$der" -issuer "$certs/ca.pem" -cert "$out/$cert" \
    "$@" 2>&1 || true
}
expect() { # DESCRIPTION TEXT REPORT
  case "$3" in
  *"$2"*) ;;
  *)
    echo "$3" >>"$log"
    fail "$1: expected '$2' in the report above"
    ;;
  esac
}
ok="Response verify OK"
expect good.der "$out/good.pem: good" "$(status good.pem good.der -CAfile "$certs/ca.pem")"
expect good.der "$ok" "$(status good.pem good.der -CAfile "$certs/ca.pem")"
expect revoked.der "Reason: keyCompromise" \
  "$(status revoked.pem revoked.der -CAfile "$certs/ca.pem")"
expect revoked.der "$ok" "$(status revoked.pem revoked.der -CAfile "$certs/ca.pem")"
expect unknown.der "$out/unknown.pem: unknown" \
  "$(status unknown.pem unknown.der -CAfile "$certs/ca.pem")"
expect revoked-but-good.der "$out/revoked.pem: good" \
  "$(status revoked.pem revoked-but-good.der -CAfile "$certs/ca.pem")"
expect mustaple-good.der "$out/mustaple.pem: good" \
  "$(status mustaple.pem mustaple-good.der -CAfile "$certs/ca.pem")"
expect ca-signed.der "$ok" "$(status good.pem ca-signed.der -CAfile "$certs/ca.pem")"
openssl x509 -noout -ocsp_uri -in "$out/aia-good.pem" | grep -qx "http://127.0.0.1:$aia_port/" ||
  fail "aia-good.pem names no OCSP responder"
openssl x509 -noout -text -in "$out/mustaple.pem" | grep -q 'TLS Feature' ||
  fail "mustaple.pem has no TLS feature extension"
expect bad-signer.der "Response Verify Failure" \
  "$(status good.pem bad-signer.der -CAfile "$certs/ca.pem")"
expect bad-signer-noeku.der "missing ocspsigning usage" \
  "$(status good.pem bad-signer-noeku.der -CAfile "$certs/ca.pem")"
expect bad-signer-partner.der "Response Verify Failure" \
  "$(status good.pem bad-signer-partner.der -CAfile "$out/ca-and-partner.pem")"
expect bad-serial.der "No Status found" \
  "$(status good.pem bad-serial.der -CAfile "$certs/ca.pem")"
expect bad-issuer.der "$ok" \
  "$(status good.pem bad-issuer.der -CAfile "$out/ca-and-partner.pem")"
expect bad-issuer.der "No Status found" \
  "$(status good.pem bad-issuer.der -CAfile "$out/ca-and-partner.pem")"
expect bad-signature.der "signature failure" \
  "$(status good.pem bad-signature.der -CAfile "$certs/ca.pem")"
expect no-certs.der "signer certificate not found" \
  "$(status good.pem no-certs.der -CAfile "$certs/ca.pem")"
expect no-certs.der "$ok" \
  "$(status good.pem no-certs.der -CAfile "$certs/ca.pem" -VAfile "$out/responder.pem")"
expect stale.der "status expired" "$(status good.pem stale.der -CAfile "$certs/ca.pem")"
expect future.der "status not yet valid" "$(status good.pem future.der -CAfile "$certs/ca.pem")"
expect garbage.der "Error reading OCSP response" "$(status good.pem garbage.der -noverify)"
expect garbage-inner.der "Error parsing response" "$(status good.pem garbage-inner.der -noverify)"
expect trylater.der "Responder Error: trylater" "$(status good.pem trylater.der -noverify)"
expect crl.pem "Key Compromise" "$(openssl crl -noout -text -in "$out/crl.pem" 2>&1)"
openssl verify -crl_check -CAfile "$certs/ca.pem" -CRLfile "$out/crl.pem" \
  "$out/revoked.pem" >>"$log" 2>&1 && fail "revoked.pem passes the CRL check"
openssl verify -crl_check -CAfile "$certs/ca.pem" -CRLfile "$out/crl.pem" \
  "$out/good.pem" >>"$log" 2>&1 || fail "good.pem fails the CRL check"
expect crl-expired.pem "CRL has expired" "$(openssl verify -crl_check -CAfile \
  "$certs/ca.pem" -CRLfile "$out/crl-expired.pem" "$out/good.pem" 2>&1 || true)"
openssl verify -crl_check -CAfile "$certs/ca.pem" -untrusted "$out/crl-int.pem" \
  -CRLfile "$out/crl-all.pem" "$out/crl-int-leaf.pem" >>"$log" 2>&1 ||
  fail "crl-int-leaf.pem fails the leaf CRL check"
expect crl-int "certificate revoked" "$(openssl verify -crl_check_all -CAfile \
  "$certs/ca.pem" -untrusted "$out/crl-int.pem" -CRLfile "$out/crl-all.pem" \
  "$out/crl-int-leaf.pem" 2>&1 || true)"

chmod 755 "$out"
touch "$out/.done"
