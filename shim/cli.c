/*
 * cli.c: the `tlsshim` command.
 *
 *   tlsshim version
 *   tlsshim run [--ca FILE] -- PROGRAM ARGS...
 *
 * `run` preloads the library that sits beside this binary (or TLSSHIM_LIB)
 * by absolute path and execs the program, after refusing programs that the
 * dynamic loader would run without the preload: setuid/setgid or
 * file-capability binaries (secure-execution mode drops LD_PRELOAD) and
 * statically linked ones (no loader at all).  Running them "protected" would
 * be a lie, so they are not run.
 */
#include "compat.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef TLSSHIM_VERSION
#define TLSSHIM_VERSION "0.1.0"
#endif

#define EXIT_REFUSED  126
#define EXIT_NOTFOUND 127
#define EXIT_USAGE    2

static void usage(FILE *to)
{
	fprintf(to, "usage: tlsshim run [--ca FILE] -- PROGRAM [ARGS...]\n"
	            "       tlsshim version\n");
}

/* Finds `prog` the way execvp would. Returns 0 with `out` filled, or -1. */
static int find_program(const char *prog, char *out, size_t outlen)
{
	const char *path = getenv("PATH");
	const char *p;

	if (strchr(prog, '/') != NULL) {
		if ((size_t)snprintf(out, outlen, "%s", prog) >= outlen)
			return -1;
		return access(out, X_OK);
	}
	if (path == NULL)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (p = path;; p = strchr(p, ':') + 1) {
		const char *end = strchr(p, ':');
		size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
		struct stat st;

		if ((size_t)snprintf(out, outlen, "%.*s/%s", (int)n, n ? p : ".", prog) < outlen &&
		    stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
			return 0;
		if (end == NULL)
			break;
	}
	return -1;
}

enum elf_kind { ELF_DYNAMIC, ELF_STATIC, ELF_SCRIPT, ELF_OTHER };

/* Reads the program's header: dynamic ELF (has PT_INTERP), static, script. */
static enum elf_kind classify(const char *file, char *interp, size_t interplen)
{
	unsigned char buf[4096];
	Elf64_Ehdr eh;
	ssize_t n;
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	enum elf_kind kind = ELF_OTHER;
	int i;

	if (fd < 0)
		return ELF_OTHER;
	n = read(fd, buf, sizeof(buf));
	if (n >= 2 && buf[0] == '#' && buf[1] == '!') {
		size_t j = 2, k = 0;

		while (j < (size_t)n && (buf[j] == ' ' || buf[j] == '\t'))
			j++;
		while (j < (size_t)n && buf[j] != ' ' && buf[j] != '\t' && buf[j] != '\n' &&
		       k + 1 < interplen)
			interp[k++] = (char)buf[j++];
		interp[k] = '\0';
		kind = ELF_SCRIPT;
		goto out;
	}
	if (n < (ssize_t)sizeof(eh) || memcmp(buf, ELFMAG, SELFMAG) != 0 ||
	    buf[EI_CLASS] != ELFCLASS64)
		goto out;
	memcpy(&eh, buf, sizeof(eh));
	kind = ELF_STATIC;
	for (i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		if (pread(fd, &ph, sizeof(ph),
		          (off_t)(eh.e_phoff + (Elf64_Off)i * eh.e_phentsize)) !=
		    (ssize_t)sizeof(ph))
			break;
		if (ph.p_type == PT_INTERP) {
			kind = ELF_DYNAMIC;
			break;
		}
	}
out:
	close(fd);
	return kind;
}

/*
 * Returns NULL when `file` would run with the preload honoured, or why not.
 */
static const char *unprotectable(const char *file, int depth)
{
	char interp[PATH_MAX];
	struct stat st;

	if (stat(file, &st) != 0)
		return "cannot be examined";
	if (st.st_mode & (S_ISUID | S_ISGID))
		return "is setuid/setgid: the loader ignores LD_PRELOAD for it";
	if (getxattr(file, "security.capability", NULL, 0) >= 0)
		return "has file capabilities: the loader ignores LD_PRELOAD for it";
	switch (classify(file, interp, sizeof(interp))) {
	case ELF_DYNAMIC:
		return NULL;
	case ELF_STATIC:
		return "is statically linked: nothing can be preloaded into it";
	case ELF_SCRIPT:
		if (depth > 2)
			return "is a script whose interpreter chain is too deep";
		return interp[0] ? unprotectable(interp, depth + 1)
		                 : "is a script without interpreter";
	default:
		return "is not a 64-bit ELF program or script";
	}
}

/* The library beside this binary, or TLSSHIM_LIB. */
static int find_library(char *out, size_t outlen)
{
	const char *env = getenv("TLSSHIM_LIB");
	char self[PATH_MAX], *slash;
	ssize_t n;

	if (env != NULL && *env != '\0')
		return realpath(env, out) != NULL && strlen(out) < outlen ? 0 : -1;
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -1;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash == NULL)
		return -1;
	*slash = '\0';
	if ((size_t)snprintf(out, outlen, "%s/libtlsshim.so", self) < outlen &&
	    access(out, R_OK) == 0)
		return 0;
	if ((size_t)snprintf(out, outlen, "%s/../lib/tlsshim/libtlsshim.so", self) < outlen &&
	    realpath(out, self) != NULL && strlen(self) < outlen) {
		memcpy(out, self, strlen(self) + 1);
		return 0;
	}
	return -1;
}

static int cmd_run(int argc, char **argv)
{
	char lib[PATH_MAX], prog[PATH_MAX], abs[PATH_MAX], preload[2 * PATH_MAX + 2];
	const char *ca = NULL, *why, *old;
	int i;

	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc) {
			ca = argv[++i];
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "tlsshim run: unknown option %s\n", argv[i]);
			usage(stderr);
			return EXIT_USAGE;
		} else {
			break;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (find_library(lib, sizeof(lib)) != 0) {
		fprintf(stderr,
		        "tlsshim run: cannot find libtlsshim.so beside %s (set TLSSHIM_LIB)\n",
		        "the tlsshim binary");
		return EXIT_REFUSED;
	}
	if (find_program(argv[i], prog, sizeof(prog)) != 0) {
		fprintf(stderr, "tlsshim run: %s: command not found\n", argv[i]);
		return EXIT_NOTFOUND;
	}
	why = unprotectable(prog, 0);
	if (why != NULL) {
		fprintf(stderr,
		        "tlsshim run: refusing to start %s: it %s, so it would run unprotected\n",
		        prog, why);
		return EXIT_REFUSED;
	}
	if (ca != NULL) {
		if (realpath(ca, abs) == NULL) {
			fprintf(stderr, "tlsshim run: --ca %s: %s\n", ca, strerror(errno));
			return EXIT_USAGE;
		}
		setenv("TLSSHIM_CA_FILE", abs, 1);
	}
	old = getenv("LD_PRELOAD");
	if (old != NULL && *old != '\0')
		snprintf(preload, sizeof(preload), "%s:%s", lib, old);
	else
		snprintf(preload, sizeof(preload), "%s", lib);
	setenv("LD_PRELOAD", preload, 1);
	execv(prog, argv + i);
	fprintf(stderr, "tlsshim run: cannot execute %s: %s\n", prog, strerror(errno));
	return EXIT_REFUSED;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "version") == 0) {
		printf("tlsshim %s\n", TLSSHIM_VERSION);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "run") == 0)
		return cmd_run(argc - 2, argv + 2);
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0)) {
		usage(stdout);
		return 0;
	}
	usage(stderr);
	return EXIT_USAGE;
}
