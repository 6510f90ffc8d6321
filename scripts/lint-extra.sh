#!/usr/bin/env bash
# Cheap grep rules (s2n-tls and curl style), run by `make lint`:
#  - banned C functions in shim/ (unbounded copies, non-reentrant parsers);
#  - the shim must not call openlog/closelog/syslog (the program's settings);
#  - no fixed sleeps standing in for synchronisation in tests;
#  - no private key committed anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

banned='\b(strcpy|strcat|sprintf|vsprintf|gets|strtok|atoi|atol|atoll|tmpnam|mktemp|system|openlog|closelog|syslog|vsyslog)[[:space:]]*\('
# Comment lines may name them (" * never openlog()"); code may not.
if grep -nE "$banned" shim/*.c shim/*.h | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(\*|/\*|//)'; then
	echo "lint: banned function in shim/ (see scripts/lint-extra.sh)" >&2
	fail=1
fi

# Tests wait for conditions (tests/e2e/waitfor), never for a fixed time.
if git ls-files 'tests/*' | xargs -r grep -nE '(^|[^._[:alnum:]])sleep [0-9]' ; then
	echo "lint: fixed sleep in tests; wait for the condition instead" >&2
	fail=1
fi

keys=$(git ls-files -z | xargs -0 -r grep -l -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' || true)
if [ -n "$keys" ]; then
	echo "lint: private keys committed: $keys" >&2
	fail=1
fi

interposed='connect|listen|accept|accept4|getpeername|getsockname|getsockopt|setsockopt|sendto|sendmsg|sendmmsg|close|close_range|closefrom|getaddrinfo|gethostbyname|gethostbyname2|gethostbyname_r|gethostbyname2_r'

# Only the interposed libc functions may be exported.
if [ -f build/libtlsshim.so ]; then
	extra=$(nm -D --defined-only build/libtlsshim.so | awk '{print $3}' |
		grep -vxE "$interposed" || true)
	if [ -n "$extra" ]; then
		echo "lint: unexpected exported symbols: $extra" >&2
		fail=1
	fi
fi
# The library never calls its own interposed symbols (STYLE rule 3): none of
# them may appear among its relocations, which would bind them to its own
# exports under LD_PRELOAD (calls go through real.* instead).
if [ -f build/libtlsshim.so ]; then
	self=$(readelf -rW build/libtlsshim.so | awk '{print $5}' | sed 's/@.*//' |
		grep -xE "$interposed" | sort -u || true)
	if [ -n "$self" ]; then
		echo "lint: libtlsshim.so calls its own interposed symbols: $self (use real.*)" >&2
		fail=1
	fi
fi
exit $fail
