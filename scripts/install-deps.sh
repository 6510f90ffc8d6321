#!/usr/bin/env bash
# install-deps.sh: install every Debian package that tlsshim's build, lint,
# tests and demo need. Idempotent: if all packages are already installed,
# apt is not touched at all (no network, no lock). Run as root on Debian 12.
#
#   scripts/install-deps.sh           # build + test + demo dependencies
#   scripts/install-deps.sh --bench   # also stunnel4, socat, valgrind
set -euo pipefail

pkgs=(
  build-essential make gcc g++ pkg-config libssl-dev openssl
  libgtest-dev googletest bats clang-format clang-tidy cppcheck
  curl wget netcat-openbsd python3 nginx-light redis-server redis-tools
  tcpdump iproute2 procps psmisc file libcap2-bin rsyslog faketime
  ca-certificates clang libclang-rt-14-dev sslscan
)

for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(stunnel4 socat valgrind) ;;
    -h | --help)
      sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install-deps: unknown option: $arg" >&2
      exit 2
      ;;
  esac
done

# A package counts as present only when dpkg says "install ok installed";
# a removed-but-configured package ("deinstall ok config-files") does not.
missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages already installed; skipping apt"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}) and not root; run as root" >&2
  exit 1
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
