/*
 * conf_fuzz.c: libFuzzer target for the configuration loader.
 *
 * Each input is written to a memory file and loaded exactly as the shim
 * loads TLSSHIM_CONFIG (NCONF parse, keys, rules, patterns, pins), then the
 * policy (TLS contexts) is built from it when it is usable.  Crashes, leaks
 * and undefined behaviour fail the run.
 */
#include "conf.h"
#include "policy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const vars[] = {"TLSSHIM_CA_FILE", "TLSSHIM_CA_DIR", "TLSSHIM_CONFIG",
	                                   "TLSSHIM_HANDSHAKE_TIMEOUT", "TLSSHIM_LOG_SOCKET"};
	size_t i;

	(void)argc;
	(void)argv;
	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct shim_conf c;
	struct policy p;
	char path[64];
	int fd = memfd_create("tlsshim-fuzz", MFD_CLOEXEC);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (conf_load(&c, path) == 0) {
		(void)policy_build(&p, &c);
		policy_free(&p);
	}
	conf_free(&c);
	close(fd);
	return 0;
}
