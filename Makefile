# tlsshim build.  `make` builds build/libtlsshim.so and build/tlsshim.
#
#   make test           every test: unit, in-process, end-to-end
#   make test-unit      GoogleTest unit tests of each module
#   make test-inproc    in-process semantics tests against the built library
#   make test-e2e       BATS tests with stock clients and real servers
#   make lint           clang-format check, cppcheck, banned functions
#   make SANITIZE=address|undefined|thread ...   sanitizer build in build-<name>/
#   make demo           the README's demo

SANITIZE ?=
BUILD ?= $(if $(SANITIZE),build-$(SANITIZE),build)
VERSION := 0.1.0

CC ?= gcc
CXX ?= g++
WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes -Werror
HARDEN := -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fPIC
SAN_address := -fsanitize=address,undefined -fno-sanitize-recover=undefined
SAN_undefined := -fsanitize=undefined -fno-sanitize-recover=undefined
SAN_thread := -fsanitize=thread
SANFLAGS := $(if $(SANITIZE),$(SAN_$(SANITIZE)) -fno-omit-frame-pointer,)
OPT := $(if $(filter thread,$(SANITIZE)),-O1,-O2)

CFLAGS_ALL := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) $(HARDEN) $(SANFLAGS) \
	-fvisibility=hidden -DTLSSHIM_VERSION='"$(VERSION)"' $(CFLAGS)
CXXFLAGS_ALL := -std=c++17 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Werror $(SANFLAGS) \
	-Ishim $(CXXFLAGS)
LDHARDEN := -Wl,-z,relro,-z,now
LIBS := -lssl -lcrypto -ldl -lpthread

LIB_MODULES := real conf names fdreg log ocsp staple tlsio policy uring relay shim
LIB_OBJS := $(LIB_MODULES:%=$(BUILD)/obj/%.o)
HEADERS := $(wildcard shim/*.h)

all: $(BUILD)/libtlsshim.so $(BUILD)/tlsshim

$(BUILD)/obj/%.o: shim/%.c $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/libtlsshim.so: $(LIB_OBJS) shim/exports.map
	@echo "  LD      $@"
	@$(CC) -shared $(SANFLAGS) $(LDHARDEN) -Wl,--version-script=shim/exports.map \
		-Wl,--no-undefined -o $@ $(LIB_OBJS) $(LIBS)

# The command links the library's own modules (not shim.o, whose exports
# would interpose the command itself), so check/probe/verify run the same code.
CLI_OBJS := $(addprefix $(BUILD)/obj/,cli.o conf.o names.o ocsp.o staple.o log.o fdreg.o real.o \
	tlsio.o policy.o)
$(BUILD)/tlsshim: $(CLI_OBJS)
	@echo "  LD      $@"
	@$(CC) $(SANFLAGS) $(LDHARDEN) -pie -o $@ $^ -lssl -lcrypto -lpthread

# --- tests -------------------------------------------------------------------

CERTS := $(BUILD)/test-certs
GTEST_LIBS := -lgtest -lgtest_main -lpthread

# Unit tests link only the module under test and what it needs, never shim.o
# (whose exported connect() etc. would interpose the test binary itself).
UNIT_DEPS_names := names
UNIT_DEPS_conf := conf names
UNIT_DEPS_fdreg := fdreg real
UNIT_DEPS_log := log conf names fdreg real
UNIT_DEPS_tlsio := tlsio ocsp staple log fdreg real conf names
UNIT_DEPS_policy := policy conf names tlsio ocsp staple log fdreg real
UNIT_DEPS_relay := relay uring log conf names fdreg real tlsio ocsp staple
UNIT_DEPS_ocsp := ocsp staple tlsio log conf names fdreg real
UNIT_DEPS_staple := staple ocsp tlsio log conf names fdreg real
UNIT_DEPS_uring := uring real
UNIT_TESTS := $(patsubst tests/unit/%_test.cc,%,$(wildcard tests/unit/*_test.cc))
UNIT_BINS := $(UNIT_TESTS:%=$(BUILD)/tests/%_test)

$(BUILD)/tests/%_test: tests/unit/%_test.cc $(HEADERS) $(wildcard tests/unit/*.h) $(BUILD)/libtlsshim.so
	@mkdir -p $(dir $@)
	@echo "  CXX     $@"
	@$(CXX) $(CXXFLAGS_ALL) -o $@ $< $(foreach m,$(UNIT_DEPS_$*),$(BUILD)/obj/$(m).o) \
		$(GTEST_LIBS) $(LIBS)

# The semantics tests are linked against the built library, placed before
# libc, so every connect() of the test process goes through the shim.
INPROC_SRCS := $(wildcard tests/inproc/*.cc)
$(BUILD)/tests/semantics_test: $(INPROC_SRCS) $(wildcard tests/inproc/*.h) $(BUILD)/libtlsshim.so
	@mkdir -p $(dir $@)
	@echo "  CXX     $@"
	@$(CXX) $(CXXFLAGS_ALL) -Itests/inproc -o $@ $(INPROC_SRCS) \
		-L$(BUILD) -Wl,--no-as-needed -ltlsshim -Wl,-rpath,$(abspath $(BUILD)) \
		$(GTEST_LIBS) -lssl -lcrypto -lpthread

certs: $(CERTS)/.done
$(CERTS)/.done: scripts/gen-certs.sh
	bash scripts/gen-certs.sh $(CERTS)

# The OCSP test bed (responses, responders, CRLs) that tests/unit/ocsp_test.cc
# reads; gen-ocsp.sh does nothing when it is fresh, and locks.
OCSP_BED := $(BUILD)/test-ocsp
ocsp-bed: certs
	bash scripts/gen-ocsp.sh $(OCSP_BED) $(CERTS)

test-unit: $(UNIT_BINS) certs ocsp-bed
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; \
		TLSSHIM_CERTS=$(abspath $(CERTS)) TLSSHIM_OCSP=$(abspath $(OCSP_BED)) \
		$$t --gtest_brief=1; done

test-inproc: $(BUILD)/tests/semantics_test certs
	TLSSHIM_CA_FILE=$(abspath $(CERTS))/ca.pem TLSSHIM_CERTS=$(abspath $(CERTS)) \
		$(BUILD)/tests/semantics_test --gtest_brief=1

# E2E selects files (default: all of tests/e2e).
E2E ?= tests/e2e
test-e2e: all certs
	TLSSHIM_LIB=$(abspath $(BUILD))/libtlsshim.so TLSSHIM_BIN=$(abspath $(BUILD))/tlsshim \
		TLSSHIM_CERTS=$(abspath $(CERTS)) bats --timing $(E2E)

test: test-unit test-inproc test-e2e

# Fuzz the configuration loader with libFuzzer for a bounded time.
FUZZ_SECONDS ?= 30
FUZZ_SRCS := tests/fuzz/conf_fuzz.c $(addprefix shim/,conf.c names.c tlsio.c policy.c ocsp.c \
	staple.c log.c fdreg.c real.c)
build-fuzz/conf_fuzz: $(FUZZ_SRCS) $(HEADERS)
	@mkdir -p build-fuzz
	@echo "  CLANG   $@"
	@clang -std=c11 -D_GNU_SOURCE -g -O1 -Ishim -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -o $@ $(FUZZ_SRCS) -lssl -lcrypto -lpthread

fuzz: build-fuzz/conf_fuzz
	@mkdir -p build-fuzz/corpus
	build-fuzz/conf_fuzz -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix=build-fuzz/ \
		-print_final_stats=1 build-fuzz/corpus tests/fuzz/corpus

# --- lint --------------------------------------------------------------------

C_SOURCES := $(wildcard shim/*.c shim/*.h tests/fuzz/*.c)
CXX_SOURCES := $(wildcard tests/unit/*.cc tests/inproc/*.cc tests/inproc/*.h)

lint:
	clang-format --dry-run -Werror $(C_SOURCES) $(CXX_SOURCES)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance \
		--std=c11 -D_GNU_SOURCE -D__linux__ --suppress=missingIncludeSystem \
		--inline-suppr shim/
	bash scripts/lint-extra.sh

format:
	clang-format -i $(C_SOURCES) $(CXX_SOURCES)

demo:
	bash scripts/demo.sh

clean:
	rm -rf build build-address build-undefined build-thread build-fuzz

.PHONY: all certs ocsp-bed test test-unit test-inproc test-e2e fuzz lint format demo clean
.DELETE_ON_ERROR:

# Benchmark against stunnel, socat and in-process OpenSSL (docs/performance.md).
.PHONY: bench
bench: all
	bash bench/run.sh
