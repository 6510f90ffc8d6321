#!/usr/bin/env bash
# test.sh: the README's test command.  On a fresh Debian 12 machine (root)
# it installs what it needs, builds, and runs every test:
#   lint, unit tests, in-process semantics tests, end-to-end tests with stock
#   clients and real servers, then the unit and in-process tests again under
#   AddressSanitizer+UBSan and the relay's tests under ThreadSanitizer.
# Exits non-zero when anything fails; the last line counts the suites.
#
#   bash scripts/test.sh            everything
#   QUICK=1 bash scripts/test.sh    skip the sanitizer builds
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || { echo "test.sh: dependency installation failed" >&2; exit 1; }

jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0
failures=()

step() {
	local name=$1
	shift
	echo
	echo "=============== $name"
	local start=$SECONDS
	if "$@"; then
		passed=$((passed + 1))
		echo "=============== $name: ok ($((SECONDS - start)) s)"
	else
		failed=$((failed + 1))
		failures+=("$name")
		echo "=============== $name: FAILED ($((SECONDS - start)) s)"
	fi
}

step "build" make -j"$jobs" all
step "lint" make lint
step "unit tests" make -j"$jobs" test-unit
step "in-process semantics tests" make test-inproc
step "end-to-end tests" make test-e2e
step "fuzz the configuration loader (libFuzzer, ${FUZZ_SECONDS:-30} s)" make fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

if [ -z "${QUICK:-}" ]; then
	export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
	export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
	# die_after_fork=0: the fork tests start a relay thread in the child,
	# which TSan otherwise refuses; tests/tsan.supp says what it hides and why.
	export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:suppressions=$PWD/tests/tsan.supp"
	step "ASan+UBSan unit tests" make -j"$jobs" SANITIZE=address test-unit
	step "ASan+UBSan in-process tests" make SANITIZE=address test-inproc
	# Stock programs cannot take the ASan runtime by preload here (curl
	# hangs in setlocale under it); the UBSan library preloads cleanly.
	# The core files only: the policy, OCSP and inbound files run above,
	# and twice would cost the suite's time budget.
	step "UBSan end-to-end tests (core)" make -j"$jobs" SANITIZE=undefined test-e2e \
		E2E="tests/e2e/clients.bats tests/e2e/refusals.bats tests/e2e/noplaintext.bats"
	step "TSan relay and in-process tests" make SANITIZE=thread test-unit test-inproc
fi

echo
if [ "$failed" -gt 0 ]; then
	echo "failed: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
