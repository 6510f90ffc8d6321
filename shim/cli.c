/*
 * cli.c: the `tlsshim` command.
 *
 *   tlsshim version
 *   tlsshim run [--ca FILE | --config FILE] -- PROGRAM ARGS...
 *   tlsshim check [FILE]
 *   tlsshim probe HOST:PORT [--config FILE]
 *   tlsshim verify [--config FILE [--rule NAME] | --ca FILE] [--untrusted FILE]
 *                  [--name NAME | --ip ADDR] [--at UNIX_TIME] CERT.pem
 *
 * check, probe and verify use the library's own modules (configuration,
 * policy, certificate verification), linked in, so what they say is what a
 * live connection would do: the same code path, not a copy.
 *
 * `run` preloads the library that sits beside this binary (or TLSSHIM_LIB)
 * by absolute path and execs the program, after refusing programs that the
 * dynamic loader would run without the preload: setuid/setgid or
 * file-capability binaries (secure-execution mode drops LD_PRELOAD) and
 * statically linked ones (no loader at all).  Running them "protected" would
 * be a lie, so they are not run.
 */
#include "compat.h"

#include "conf.h"
#include "ocsp.h"
#include "names.h"
#include "policy.h"
#include "tlsio.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <poll.h>

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
	fprintf(to, "usage: tlsshim run [--ca FILE | --config FILE] -- PROGRAM [ARGS...]\n"
	            "       tlsshim check [FILE]\n"
	            "       tlsshim probe HOST:PORT [--config FILE]\n"
	            "       tlsshim verify [--config FILE [--rule NAME] | --ca FILE] [--untrusted "
	            "FILE]\n"
	            "                      [--name NAME | --ip ADDR] [--at UNIX_TIME] CERT.pem\n"
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
	const char *ca = NULL, *config = NULL, *why, *old;
	int i;

	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc) {
			ca = argv[++i];
		} else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config = argv[++i];
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
	if (config != NULL) {
		struct shim_conf c = {.usable = false};

		if (realpath(config, abs) == NULL) {
			fprintf(stderr, "tlsshim run: --config %s: %s\n", config, strerror(errno));
			return EXIT_USAGE;
		}
		/* Refuse to start a program whose every connection would be refused. */
		if (conf_load(&c, abs) != 0) {
			fprintf(stderr, "tlsshim run: %s\n", c.error);
			return EXIT_USAGE;
		}
		setenv("TLSSHIM_CONFIG", abs, 1);
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

/* --- check ------------------------------------------------------------------ */

static void print_tls(const struct conf_tls *t, const char *indent)
{
	printf("%strust:", indent);
	if (t->ca_file)
		printf(" ca_file=%s", t->ca_file);
	if (t->ca_dir)
		printf(" ca_dir=%s", t->ca_dir);
	if (t->approved_cert)
		printf(" approved_cert=%s", t->approved_cert);
	if (!t->ca_file && !t->ca_dir && !t->approved_cert)
		printf(" none");
	printf("\n%smin_protocol=%s ocsp=%s ocsp_skew=%ds pins=%zu", indent,
	       t->min_protocol == 0x0304 ? "TLSv1.3" : "TLSv1.2", conf_ocsp_name(t->ocsp),
	       t->ocsp_skew_s, t->npins);
	if (t->ocsp_fetch)
		printf(" ocsp_fetch=yes ocsp_fetch_timeout=%.1fs",
		       t->ocsp_fetch_timeout_ms / 1000.0);
	if (t->crl_file || t->crl_dir)
		printf(" crl=%s crl_check=%s", t->crl_file ? t->crl_file : t->crl_dir,
		       t->crl_chain ? "chain" : "leaf");
	if (t->ciphers)
		printf(" ciphers=%s", t->ciphers);
	if (t->ciphersuites)
		printf(" ciphersuites=%s", t->ciphersuites);
	if (t->cert)
		printf(" cert=%s key=%s", t->cert, t->key);
	printf("\n");
}

static void print_inbound_one(const struct conf_inbound *in, const char *indent)
{
	size_t j;

	if (in->action == ACTION_PLAINTEXT) {
		printf("%splaintext (an explicit exception)\n", indent);
		return;
	}
	printf("%scert=%s key=%s min_protocol=%s client_cert=%s", indent,
	       in->cert ? in->cert : "(none: connections refused)", in->key ? in->key : "-",
	       in->min_protocol == 0x0304 ? "TLSv1.3" : "TLSv1.2",
	       in->client_cert == CLIENT_CERT_REQUIRE    ? "require"
	       : in->client_cert == CLIENT_CERT_OPTIONAL ? "optional"
	                                                 : "none");
	if (in->client_ca)
		printf(" client_ca=%s", in->client_ca);
	if (in->ocsp_response_file)
		printf(" ocsp_response_file=%s", in->ocsp_response_file);
	if (in->ocsp_fetch)
		printf(" ocsp_fetch=yes");
	printf("\n%sallow_from:", indent);
	for (j = 0; j < in->nallow; j++)
		printf("%s %s", j ? "," : "", in->allow_from[j].text);
	if (in->nallow == 0)
		printf(" any source");
	if (in->nallow_client > 0) {
		printf("\n%sallow_client:", indent);
		for (j = 0; j < in->nallow_client; j++)
			printf("%s %s", j ? "," : "", in->allow_client[j]);
	}
	printf("\n");
}

static void print_inbound(const struct shim_conf *c)
{
	size_t i, j;

	if (c->file == NULL) {
		printf("inbound: not protected (no configuration file)\n");
		return;
	}
	printf("inbound (the first listen match decides):\n");
	for (i = 0; i < c->ninbound; i++) {
		printf("  %zu. [%s] listen:", i + 1, c->inbound[i].section);
		for (j = 0; j < c->inbound[i].nlisten; j++)
			printf("%s %s", j ? "," : "", c->inbound[i].listen[j].text);
		printf("\n");
		print_inbound_one(&c->inbound[i], "       ");
	}
	printf("  *. (no section matches): %s\n",
	       c->inbound_dft.action == ACTION_PLAINTEXT ? "inbound_default = plaintext" : "tls");
	print_inbound_one(&c->inbound_dft, "       ");
}

static int cmd_check(int argc, char **argv)
{
	struct shim_conf c = {.usable = false};
	struct policy p;
	size_t i, j;

	if (argc > 1 || (argc == 1 && argv[0][0] == '-')) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (conf_load(&c, argc == 1 ? argv[0] : NULL) != 0 || policy_build(&p, &c) != 0) {
		fprintf(stderr, "tlsshim check: %s\n", c.usable ? p.error : c.error);
		return 1;
	}
	printf("configuration: %s\n", c.file ? c.file : "(environment only)");
	printf("handshake_timeout: %.1f s\n", c.handshake_timeout_ms / 1000.0);
	printf("log: socket=%s ident=%s stderr=%s success=%s\n", c.log_socket, c.log_ident,
	       c.log_stderr ? "yes" : "no", c.log_success ? "yes" : "no");
	printf("rules (the first match decides):\n");
	for (i = 0; i < c.nrules; i++) {
		const struct conf_rule *r = &c.rules[i];

		printf("  %zu. [%s] %s:", i + 1, r->section, conf_action_name(r->action));
		for (j = 0; j < r->nmatch; j++)
			printf("%s %s", j ? "," : "", r->match[j].text);
		printf("\n");
		if (r->action == ACTION_TLS) {
			if (r->name)
				printf("       name=%s\n", r->name);
			print_tls(&r->tls, "       ");
		}
	}
	printf("  *. (no rule matches) tls with the global settings:\n");
	print_tls(&c.tls, "       ");
	if (p.global_ctx == NULL)
		printf("       (no global trust: such connections are refused)\n");
	print_inbound(&c);
	printf("ok\n");
	return 0;
}

/* --- probe and verify: shared printing ------------------------------------- */

static void print_cert(X509 *cert, int depth)
{
	char subject[256], issuer[256], pin[64];
	const ASN1_TIME *nb = X509_get0_notBefore(cert), *na = X509_get0_notAfter(cert);
	BIO *out = BIO_new_fp(stdout, BIO_NOCLOSE);

	X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
	X509_NAME_oneline(X509_get_issuer_name(cert), issuer, sizeof(issuer));
	printf("  %d subject: %s\n    issuer:  %s\n    valid:   ", depth, subject, issuer);
	if (out != NULL) {
		ASN1_TIME_print(out, nb);
		BIO_printf(out, " .. ");
		ASN1_TIME_print(out, na);
		BIO_free(out);
	}
	if (tlsio_spki_pin(cert, pin, sizeof(pin)) == 0)
		printf("\n    pin:     %s\n", pin);
	else
		printf("\n");
}

static void print_failure(const struct tls_failure *why)
{
	printf("verdict: reject: %s", why->reason[0] ? why->reason : "unknown");
	printf(" (stage=%s", why->stage ? why->stage : "?");
	if (why->x509_err >= 0)
		printf(" x509_err=%d depth=%d", why->x509_err, why->depth);
	if (why->subject[0])
		printf(" subject=%s", why->subject);
	printf(")\n");
}

/* --- probe ----------------------------------------------------------------- */

static int split_hostport(const char *arg, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon;

	if (arg[0] == '[') {
		const char *close = strchr(arg, ']');

		if (close == NULL || close[1] != ':')
			return -1;
		snprintf(host, hostlen, "%.*s", (int)(close - arg - 1), arg + 1);
		snprintf(port, portlen, "%s", close + 2);
		return 0;
	}
	colon = strrchr(arg, ':');
	if (colon == NULL || colon == arg || strchr(arg, ':') != colon)
		return -1;
	snprintf(host, hostlen, "%.*s", (int)(colon - arg), arg);
	snprintf(port, portlen, "%s", colon + 1);
	return 0;
}

static int probe_one(const struct policy *p, const struct sockaddr *sa, socklen_t salen,
                     const char *name)
{
	const struct conf_rule *r;
	struct tls_failure why;
	const char *expect = name;
	size_t idx = 0;
	SSL_CTX *ctx;
	SSL *ssl = NULL;
	int fd = -1, rc = 1, i;
	long deadline;

	r = policy_match(p->conf, sa, name, &idx);
	printf("rule: %s\n", r ? r->section : "(none: global settings)");
	if (r != NULL && r->action != ACTION_TLS) {
		printf("decision: %s\nverdict: %s\n", conf_action_name(r->action),
		       r->action == ACTION_DENY ? "reject: denied by rule" : "accept (plaintext)");
		return r->action == ACTION_DENY ? 1 : 0;
	}
	printf("decision: tls\n");
	ctx = r ? p->rule_ctx[idx] : p->global_ctx;
	if (ctx == NULL) {
		printf("verdict: reject: no trust configured for destinations no rule matches\n");
		return 1;
	}
	if (r != NULL && r->name != NULL)
		expect = r->name;
	printf("expected name: %s\n", expect ? expect : "(the address, against IP SANs)");
	deadline = tlsio_now_ms() + p->conf->handshake_timeout_ms;
	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || (connect(fd, sa, salen) != 0 && errno != EINPROGRESS)) {
		printf("verdict: reject: TCP connect: %s\n", strerror(errno));
		goto out;
	}
	if (tlsio_wait(fd, POLLOUT, deadline) != 1) {
		printf("verdict: reject: TCP connect timed out\n");
		goto out;
	} else {
		int soerr = 0;
		socklen_t l = sizeof(soerr);

		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l) != 0 || soerr != 0) {
			printf("verdict: reject: TCP connect: %s\n", strerror(soerr));
			goto out;
		}
	}
	ssl = tlsio_client_new(ctx, fd, expect, sa);
	if (ssl == NULL) {
		printf("verdict: reject: cannot create TLS connection\n");
		goto out;
	}
	rc = tlsio_handshake(ssl, deadline, &why) == 0 ? 0 : 1;
	if (SSL_get_peer_cert_chain(ssl) != NULL) {
		STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);

		printf("protocol: %s\ncipher: %s\nchain:\n", SSL_get_version(ssl),
		       SSL_get_cipher_name(ssl));
		for (i = 0; i < sk_X509_num(chain); i++)
			print_cert(sk_X509_value(chain, i), i);
	}
	printf("ocsp: %s\n", why.ocsp[0] ? why.ocsp : "not checked (ocsp = off)");
	if (rc == 0)
		printf("verdict: accept\n");
	else
		print_failure(&why);
out:
	SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int cmd_probe(int argc, char **argv)
{
	const char *target = NULL, *config = NULL;
	char host[256], port[16];
	struct addrinfo hints, *res = NULL, *ai;
	struct shim_conf c = {.usable = false};
	struct policy p;
	int i, rc = 1;

	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			config = argv[++i];
		else if (argv[i][0] != '-' && target == NULL)
			target = argv[i];
		else
			target = NULL, i = argc;
	}
	if (target == NULL || split_hostport(target, host, sizeof(host), port, sizeof(port)) != 0) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (conf_load(&c, config) != 0 || policy_build(&p, &c) != 0) {
		fprintf(stderr, "tlsshim probe: %s\n", c.usable ? p.error : c.error);
		return EXIT_USAGE;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) {
		fprintf(stderr, "tlsshim probe: cannot resolve %s\n", host);
		return EXIT_USAGE;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		char addr[INET6_ADDRSTRLEN], norm[256];
		const char *name = names_normalise(host, norm, sizeof(norm)) == 0 ? norm : NULL;

		getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr), NULL, 0,
		            NI_NUMERICHOST);
		printf("destination: %s port %s%s%s\n", addr, port, name ? " name " : "",
		       name ? name : "");
		rc = probe_one(&p, ai->ai_addr, ai->ai_addrlen, name);
		if (ai->ai_next != NULL)
			printf("\n");
		if (rc != 0)
			break; /* every address must pass for the policy to accept */
	}
	freeaddrinfo(res);
	return rc;
}

/* --- verify ---------------------------------------------------------------- */

static STACK_OF(X509) * read_certs(const char *file)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	BIO *in = BIO_new_file(file, "r");
	X509 *x;

	if (sk == NULL || in == NULL) {
		BIO_free(in);
		sk_X509_free(sk);
		return NULL;
	}
	while ((x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL)
		sk_X509_push(sk, x);
	ERR_clear_error();
	BIO_free(in);
	if (sk_X509_num(sk) == 0) {
		sk_X509_free(sk);
		return NULL;
	}
	return sk;
}

static int cmd_verify(int argc, char **argv)
{
	const char *config = NULL, *rule = NULL, *ca = NULL, *untrusted_file = NULL;
	const char *name = NULL, *ip = NULL, *certfile = NULL;
	STACK_OF(X509) *certs = NULL, *untrusted = NULL;
	static struct conf_tls ca_only;
	struct tls_failure why;
	struct shim_conf c = {.usable = false};
	struct policy p;
	char err[400], *end;
	SSL_CTX *ctx = NULL;
	time_t at = 0;
	int i, rc;
	size_t j;

	for (i = 0; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (a[0] != '-' && certfile == NULL) {
			certfile = a;
			continue;
		}
		if (v == NULL)
			goto usage;
		if (strcmp(a, "--config") == 0)
			config = v;
		else if (strcmp(a, "--rule") == 0)
			rule = v;
		else if (strcmp(a, "--ca") == 0)
			ca = v;
		else if (strcmp(a, "--untrusted") == 0)
			untrusted_file = v;
		else if (strcmp(a, "--name") == 0)
			name = v;
		else if (strcmp(a, "--ip") == 0)
			ip = v;
		else if (strcmp(a, "--at") == 0) {
			errno = 0;
			at = (time_t)strtoll(v, &end, 10);
			if (errno != 0 || *end != '\0' || at <= 0)
				goto usage;
		} else
			goto usage;
		i++;
	}
	if (certfile == NULL || (config != NULL) == (ca != NULL) ||
	    (rule != NULL && config == NULL) || (name != NULL && ip != NULL))
		goto usage;

	if (ca != NULL) {
		ca_only.ca_file = ca;
		ca_only.min_protocol = 0x0303;
		ctx = tlsio_ctx_new(&ca_only, err, sizeof(err));
		if (ctx == NULL) {
			fprintf(stderr, "tlsshim verify: %s\n", err);
			return EXIT_USAGE;
		}
	} else {
		if (conf_load(&c, config) != 0 || policy_build(&p, &c) != 0) {
			fprintf(stderr, "tlsshim verify: %s\n", c.usable ? p.error : c.error);
			return EXIT_USAGE;
		}
		ctx = p.global_ctx;
		if (rule != NULL) {
			ctx = NULL;
			for (j = 0; j < c.nrules; j++)
				if (strcmp(c.rules[j].section, rule) == 0)
					ctx = p.rule_ctx[j];
			if (ctx == NULL) {
				fprintf(stderr, "tlsshim verify: no tls rule [%s] in %s\n", rule,
				        config);
				return EXIT_USAGE;
			}
			for (j = 0; j < c.nrules; j++)
				if (strcmp(c.rules[j].section, rule) == 0 && c.rules[j].name &&
				    !name && !ip)
					name = c.rules[j].name;
		} else if (ctx == NULL) {
			fprintf(stderr, "tlsshim verify: %s has no global trust; name a --rule\n",
			        config);
			return EXIT_USAGE;
		}
	}
	certs = read_certs(certfile);
	if (certs == NULL) {
		fprintf(stderr, "tlsshim verify: %s: no certificate could be read\n", certfile);
		return EXIT_USAGE;
	}
	if (untrusted_file != NULL && (untrusted = read_certs(untrusted_file)) == NULL) {
		fprintf(stderr, "tlsshim verify: %s: no certificate could be read\n",
		        untrusted_file);
		sk_X509_pop_free(certs, X509_free);
		return EXIT_USAGE;
	}
	/* Certificates after the first in CERT.pem count as sent by the server. */
	if (untrusted == NULL)
		untrusted = sk_X509_new_null();
	for (i = 1; untrusted != NULL && i < sk_X509_num(certs); i++)
		sk_X509_push(untrusted, X509_dup(sk_X509_value(certs, i)));
	print_cert(sk_X509_value(certs, 0), 0);
	rc = tlsio_verify_offline(ctx, sk_X509_value(certs, 0), untrusted, name, ip, at, &why);
	if (rc == 0)
		printf("verdict: accept\n");
	else
		print_failure(&why);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(untrusted, X509_free);
	return rc == 0 ? 0 : 1;
usage:
	usage(stderr);
	return EXIT_USAGE;
}

static int fd_itself(int fd)
{
	return fd;
}

static void fd_close(int fd)
{
	close(fd);
}

int main(int argc, char **argv)
{
	/* The command is not interposed: its OCSP requests use libc directly. */
	struct ocsp_net net = {connect, getsockopt, getaddrinfo, fd_itself, fd_close};

	ocsp_set_net(&net);
	if (argc >= 2 && strcmp(argv[1], "check") == 0)
		return cmd_check(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "probe") == 0)
		return cmd_probe(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "verify") == 0)
		return cmd_verify(argc - 2, argv + 2);
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
