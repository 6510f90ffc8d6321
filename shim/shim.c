/*
 * shim.c: the interposed C library entry points and the connect() policy.
 *
 * Three layers per call (as socket_wrapper does): the real function in
 * real.c, the logic here (shim_<call>), and a one-line exported symbol at the
 * bottom of this file.  Descriptors that are not ours pass straight through,
 * first thing, and every failure leaves an errno the real call may return.
 *
 * connect() to an IPv4/IPv6 address on a TCP socket is where the work is:
 * the program's own socket object is connected (so bind(), SO_MARK, IP_TOS,
 * keepalive set before connect are kept), moved to a hidden descriptor, the
 * TLS handshake is run and verified within a bound, and only then does the
 * program's descriptor become the plaintext end of a socketpair served by
 * the relay.  A failure at any point leaves no path for plaintext.
 */
#include "compat.h"

#include "conf.h"
#include "fdreg.h"
#include "log.h"
#include "names.h"
#include "ocsp.h"
#include "policy.h"
#include "real.h"
#include "relay.h"
#include "staple.h"
#include "tlsio.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- refusing everything when the configuration cannot be used ------------ */

static atomic_int config_error_said;

/* Says once per process, on stderr and in the log, why nothing connects. */
static void say_config_error(const char *why)
{
	struct log_event ev;
	char line[700];
	int n;

	if (atomic_exchange(&config_error_said, 1) != 0)
		return;
	n = snprintf(line, sizeof(line),
	             "tlsshim: %s; refusing every TCP connection of this process (outbound, and "
	             "inbound where configured)\n",
	             why);
	if (n > 0 &&
	    write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1) < 0)
		n = 0;
	log_event_init(&ev, LOG_ERR, "config_error");
	ev.stage = "policy";
	ev.reason = why;
	log_emit(&ev);
}

/* Warns once per process about settings that weaken the policy. */
static void say_insecure_settings(const struct shim_conf *c)
{
	static atomic_int said;
	struct log_event ev;
	size_t i;

	if (atomic_exchange(&said, 1) != 0)
		return;
	if (c->tls.ocsp == OCSP_OFF) {
		log_event_init(&ev, LOG_WARNING, "insecure_setting");
		ev.stage = "policy";
		ev.reason = "ocsp = off: revocation is not checked";
		log_emit(&ev);
	}
	for (i = 0; i < c->nrules; i++) {
		if (c->rules[i].action != ACTION_TLS || c->rules[i].tls.ocsp != OCSP_OFF ||
		    c->tls.ocsp == OCSP_OFF)
			continue;
		log_event_init(&ev, LOG_WARNING, "insecure_setting");
		ev.rule = c->rules[i].section;
		ev.stage = "policy";
		ev.reason = "ocsp = off: revocation is not checked";
		log_emit(&ev);
	}
}

/* --- connect ---------------------------------------------------------------- */

struct sock_id {
	int domain;
	int type;
	int protocol;
};

/* Reads the socket's domain, type and protocol. Returns 0, or -1. */
static int sock_identify(int fd, struct sock_id *id)
{
	socklen_t l = sizeof(int);

	if (real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &id->type, &l) != 0)
		return -1;
	l = sizeof(int);
	if (real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &id->domain, &l) != 0)
		return -1;
	l = sizeof(int);
	if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &id->protocol, &l) != 0)
		return -1;
	return 0;
}

static void log_failure(const struct tls_failure *why, const struct sockaddr *peer,
                        const char *name, const char *rule, long elapsed_ms)
{
	struct log_event ev;

	log_event_init(&ev, LOG_ERR, why->event);
	ev.dir = "out";
	ev.peer = peer;
	ev.name = name;
	ev.rule = rule;
	ev.stage = why->stage;
	ev.reason = why->reason;
	ev.x509_err = why->x509_err;
	ev.depth = why->depth;
	ev.subject = why->subject[0] ? why->subject : NULL;
	ev.issuer = why->issuer[0] ? why->issuer : NULL;
	ev.serial = why->serial[0] ? why->serial : NULL;
	ev.sha256 = why->sha256[0] ? why->sha256 : NULL;
	ev.not_after = why->not_after[0] ? why->not_after : NULL;
	ev.tls = why->tls[0] && strcmp(why->tls, "unknown") != 0 ? why->tls : NULL;
	ev.alert = why->alert[0] ? why->alert : NULL;
	ev.ocsp = why->ocsp[0] ? why->ocsp : NULL;
	ev.elapsed_ms = elapsed_ms;
	log_emit(&ev);
}

/* The audit line for a verified connection (log_success = yes). */
static void log_connected(SSL *ssl, const struct sockaddr *peer, const char *name, const char *rule,
                          const char *ocsp, long elapsed_ms)
{
	struct tls_failure cert;
	struct log_event ev;

	log_debug("connected to %s with %s %s", name != NULL ? name : "(address)",
	          SSL_get_version(ssl), SSL_get_cipher_name(ssl));
	if (!conf_get()->log_success)
		return;
	memset(&cert, 0, sizeof(cert));
	tlsio_describe_cert(SSL_get0_peer_certificate(ssl), &cert);
	log_event_init(&ev, LOG_INFO, "connected");
	ev.dir = "out";
	ev.peer = peer;
	ev.name = name;
	ev.rule = rule;
	ev.subject = cert.subject[0] ? cert.subject : NULL;
	ev.issuer = cert.issuer[0] ? cert.issuer : NULL;
	ev.serial = cert.serial[0] ? cert.serial : NULL;
	ev.sha256 = cert.sha256[0] ? cert.sha256 : NULL;
	ev.not_after = cert.not_after[0] ? cert.not_after : NULL;
	ev.tls = SSL_get_version(ssl);
	ev.cipher = SSL_get_cipher_name(ssl);
	ev.resumed = SSL_session_reused(ssl) ? 1 : 0;
	ev.ocsp = ocsp[0] ? ocsp : NULL;
	ev.elapsed_ms = elapsed_ms;
	log_emit(&ev);
}

/*
 * Connects the hidden descriptor `tcp` (the program's socket object) within
 * the deadline.  Returns 0, or -1 with errno and `why` filled.
 */
static int tcp_connect(int tcp, const struct sockaddr *addr, socklen_t len, long deadline,
                       struct tls_failure *why)
{
	socklen_t l = sizeof(int);
	int soerr = 0, r;

	if (real.connect(tcp, addr, len) == 0)
		return 0;
	if (errno != EINPROGRESS) {
		soerr = errno;
		goto fail;
	}
	r = tlsio_wait(tcp, POLLOUT, deadline);
	if (r == 0) {
		soerr = ETIMEDOUT;
		why->stage = "timeout";
		snprintf(why->reason, sizeof(why->reason), "TCP connect timed out");
		errno = ETIMEDOUT;
		return -1;
	}
	if (r < 0 || real.getsockopt(tcp, SOL_SOCKET, SO_ERROR, &soerr, &l) != 0)
		soerr = errno;
	if (soerr == 0)
		return 0;
fail:
	why->stage = "tcp";
	snprintf(why->reason, sizeof(why->reason), "%s", strerror(soerr));
	errno = soerr;
	return -1;
}

/*
 * After a failed handshake the program's socket object is connected to a
 * server that must not get a byte: shut it, and give the program a fresh,
 * unconnected socket of the same kind in its place.
 */
static void neutralise(int fd, int tcp, const struct sock_id *id, int fl, int fdfl)
{
	int fresh;

	shutdown(tcp, SHUT_RDWR);
	fresh = socket(id->domain, id->type | ((fl & O_NONBLOCK) ? SOCK_NONBLOCK : 0),
	               id->protocol);
	if (fresh >= 0) {
		dup3(fresh, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0);
		real.close(fresh);
	}
}

/* Copies the program's read/write timeouts onto its new descriptor. */
static void copy_timeouts(int from, int to)
{
	static const int opts[] = {SO_RCVTIMEO, SO_SNDTIMEO};
	size_t i;

	for (i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		struct timeval tv;
		socklen_t l = sizeof(tv);

		if (real.getsockopt(from, SOL_SOCKET, opts[i], &tv, &l) == 0 &&
		    (tv.tv_sec != 0 || tv.tv_usec != 0))
			real.setsockopt(to, SOL_SOCKET, opts[i], &tv, l);
	}
}

/*
 * Makes `fd` the program's end of a socketpair whose other end the relay
 * serves over `ssl`.  Returns 0, or -1 with errno (nothing taken over).
 */
static int hand_to_relay(int fd, int tcp, SSL *ssl, const struct sock_id *id, int fl, int fdfl,
                         const char *name)
{
	struct relay_spec spec;
	struct wrapped_info info;
	struct stat st;
	int sv[2], saved;

	memset(&spec, 0, sizeof(spec));
	memset(&info, 0, sizeof(info));
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	spec.app_fd = fdreg_adopt(sv[1]);
	if (spec.app_fd < 0) {
		saved = errno;
		real.close(sv[0]);
		errno = saved;
		return -1;
	}
	if (fcntl(spec.app_fd, F_SETFL, O_NONBLOCK) != 0 || fstat(sv[0], &st) != 0)
		goto err;
	copy_timeouts(tcp, sv[0]);
	relay_size_pair(sv[0]);

	info.domain = id->domain;
	info.protocol = id->protocol;
	info.tcp_fd = tcp;
	info.peer_len = sizeof(info.peer);
	info.local_len = sizeof(info.local);
	if (real.getpeername(tcp, (struct sockaddr *)&info.peer, &info.peer_len) != 0 ||
	    real.getsockname(tcp, (struct sockaddr *)&info.local, &info.local_len) != 0)
		goto err;
	if (fdreg_add(st.st_ino, &info) != 0)
		goto err;

	/* From here the program's descriptor is the socketpair end. */
	if (dup3(sv[0], fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
		saved = errno;
		fdreg_remove(st.st_ino);
		errno = saved;
		goto err;
	}
	real.close(sv[0]);
	sv[0] = -1;
	fcntl(fd, F_SETFL, fl);

	spec.net_fd = tcp;
	spec.ino = st.st_ino;
	spec.ssl = ssl;
	spec.peer = info.peer;
	if (name != NULL)
		snprintf(spec.name, sizeof(spec.name), "%s", name);
	if (relay_add(&spec) != 0) {
		saved = errno;
		fdreg_remove(st.st_ino);
		fdreg_release(spec.app_fd);
		errno = saved;
		return -2; /* the program's fd is already replaced */
	}
	return 0;
err:
	saved = errno;
	if (sv[0] >= 0)
		real.close(sv[0]);
	fdreg_release(spec.app_fd);
	errno = saved;
	return -1;
}

/*
 * The TLS path of connect(): `fd` is an unconnected TCP socket of `id`; the
 * server must prove `name` (NULL: the address) under `ctx`.
 */
static int wrap_connect(int fd, const struct sockaddr *addr, socklen_t len,
                        const struct sock_id *id, SSL_CTX *ctx, const char *name, const char *rule)
{
	const struct shim_conf *c = conf_get();
	long start = tlsio_now_ms(), deadline = start + c->handshake_timeout_ms;
	struct tls_failure why;
	SSL *ssl = NULL;
	int fl, fdfl, tcp, saved, r;

	memset(&why, 0, sizeof(why));
	why.event = "handshake_failed";
	why.x509_err = why.depth = -1;

	fl = fcntl(fd, F_GETFL);
	fdfl = fcntl(fd, F_GETFD);
	if (fl < 0 || fdfl < 0)
		return -1;
	tcp = fdreg_adopt(fcntl(fd, F_DUPFD_CLOEXEC, 3));
	if (tcp < 0)
		return -1;
	/* The flag is on the shared open file description; restored below. */
	fcntl(tcp, F_SETFL, fl | O_NONBLOCK);

	if (tcp_connect(tcp, addr, len, deadline, &why) != 0) {
		saved = errno;
		fcntl(tcp, F_SETFL, fl);
		fdreg_release(tcp);
		/*
		 * The kernel's own answer (refused, unreachable) is what the program
		 * would have seen without the shim: not a TLS event.  A connect that
		 * outlives the bound is ours, and logged.
		 */
		if (saved == ETIMEDOUT && strcmp(why.stage, "timeout") == 0)
			log_failure(&why, addr, name, rule, tlsio_now_ms() - start);
		else
			log_debug("TCP connect failed: %s", why.reason);
		errno = saved;
		return -1;
	}

	ssl = tlsio_client_new(ctx, tcp, name, addr);
	if (ssl == NULL) {
		why.stage = "handshake";
		snprintf(why.reason, sizeof(why.reason), "cannot create TLS connection");
		errno = ENOMEM;
		goto refuse;
	}
	if (tlsio_handshake(ssl, deadline, &why) != 0)
		goto refuse;
	log_connected(ssl, addr, name, rule, why.ocsp, tlsio_now_ms() - start);

	r = hand_to_relay(fd, tcp, ssl, id, fl, fdfl, name);
	if (r == 0)
		return 0;
	why.stage = "handshake";
	snprintf(why.reason, sizeof(why.reason), "cannot start relay: %s", strerror(errno));
	if (r == -2) {
		/* The program's descriptor is a dead socketpair end: EOF, EPIPE. */
		saved = errno;
		SSL_free(ssl);
		fdreg_release(tcp);
		log_failure(&why, addr, name, rule, tlsio_now_ms() - start);
		errno = saved;
		return -1;
	}
refuse:
	saved = errno;
	neutralise(fd, tcp, id, fl, fdfl);
	SSL_free(ssl);
	fdreg_release(tcp);
	log_failure(&why, addr, name, rule, tlsio_now_ms() - start);
	errno = saved;
	return -1;
}

/* Logs a policy event: denied, plaintext_allowed, or a refusal by policy. */
static void log_policy(int severity, const char *event, const struct sockaddr *peer,
                       const char *name, const char *rule, const char *reason)
{
	struct log_event ev;

	log_event_init(&ev, severity, event);
	ev.dir = "out";
	ev.peer = peer;
	ev.name = name;
	ev.rule = rule;
	ev.stage = "policy";
	ev.reason = reason;
	log_emit(&ev);
}

/*
 * UDP, raw and other non-TCP sockets aimed at the network: allowed only to
 * loopback or by a `plaintext` rule (they cannot be wrapped in TLS).
 * Returns 0 to let the call through, or -1 with EPERM.
 */
static int datagram_policy(const struct sockaddr *addr, int type)
{
	const struct policy *p = policy_get();
	char namebuf[NAMES_MAXLEN + 1];
	const char *name = NULL;
	const struct conf_rule *r = NULL;

	if (policy_is_loopback(addr))
		return 0;
	if (names_lookup(addr, namebuf, sizeof(namebuf)))
		name = namebuf;
	if (p->usable)
		r = policy_match(p->conf, addr, name, NULL);
	if (r != NULL && r->action == ACTION_PLAINTEXT) {
		log_policy(LOG_NOTICE, "plaintext_allowed", addr, name, r->section,
		           type == SOCK_DGRAM ? "datagram socket" : "non-TCP socket");
		return 0;
	}
	log_policy(LOG_WARNING, "denied", addr, name, r != NULL ? r->section : NULL,
	           type == SOCK_DGRAM ? "datagram socket to the network without a plaintext rule"
	                              : "non-TCP socket to the network without a plaintext rule");
	errno = EPERM;
	return -1;
}

static bool is_ip(const struct sockaddr *addr, socklen_t len)
{
	return addr != NULL && len >= sizeof(sa_family_t) &&
	       ((addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
	        (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)));
}

static int shim_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	const struct policy *p;
	const struct conf_rule *r;
	char namebuf[NAMES_MAXLEN + 1];
	const char *name = NULL;
	struct sock_id id;
	SSL_CTX *ctx;
	size_t idx = 0;

	if (!is_ip(addr, len))
		return real.connect(fd, addr, len);
	if (sock_identify(fd, &id) != 0)
		return real.connect(fd, addr, len); /* EBADF, ENOTSOCK from the kernel */
	if (id.domain == AF_UNIX && fdreg_lookup(fd, NULL)) {
		errno = EISCONN; /* already wrapped and connected */
		return -1;
	}
	if (id.domain != AF_INET && id.domain != AF_INET6)
		return real.connect(fd, addr, len);
	if (id.domain == AF_INET && addr->sa_family != AF_INET)
		return real.connect(fd, addr, len); /* EAFNOSUPPORT from the kernel */
	if (id.type != SOCK_STREAM ||
	    (id.protocol != IPPROTO_TCP && id.protocol != IPPROTO_MPTCP && id.protocol != 0)) {
		if (datagram_policy(addr, id.type) != 0)
			return -1;
		return real.connect(fd, addr, len);
	}

	p = policy_get();
	if (!p->usable) {
		say_config_error(p->error);
		errno = ECONNREFUSED;
		return -1;
	}
	say_insecure_settings(p->conf);
	if (names_lookup(addr, namebuf, sizeof(namebuf)))
		name = namebuf;
	r = policy_match(p->conf, addr, name, &idx);
	if (r != NULL && r->action == ACTION_DENY) {
		log_policy(LOG_WARNING, "denied", addr, name, r->section, "denied by rule");
		errno = EPERM;
		return -1;
	}
	if (r != NULL && r->action == ACTION_PLAINTEXT) {
		log_policy(LOG_NOTICE, "plaintext_allowed", addr, name, r->section,
		           "plaintext exception");
		return real.connect(fd, addr, len);
	}
	ctx = r != NULL ? p->rule_ctx[idx] : p->global_ctx;
	if (ctx == NULL) {
		log_policy(LOG_ERR, "handshake_failed", addr, name, NULL,
		           "no trust configured for destinations that no rule matches");
		errno = ECONNREFUSED;
		return -1;
	}
	/* The operator's name for this destination wins over the resolved one. */
	if (r != NULL && r->name != NULL)
		name = r->name;
	return wrap_connect(fd, addr, len, &id, ctx, name, r != NULL ? r->section : NULL);
}

static int copy_addr(const struct sockaddr_storage *from, socklen_t from_len, struct sockaddr *to,
                     socklen_t *to_len);

/* --- accept (inbound mode) ---------------------------------------------------- */

/* Closes an accepted connection at once, with a reset: it is not admitted. */
static void drop_client(int fd)
{
	struct linger lg = {1, 0};

	real.setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	real.close(fd);
}

static void log_inbound(int severity, const char *event, const struct sockaddr *peer,
                        const struct sockaddr *local, const struct conf_inbound *in,
                        const char *reason)
{
	struct log_event ev;

	log_event_init(&ev, severity, event);
	ev.dir = "in";
	ev.peer = peer;
	ev.local = local;
	ev.rule = in != NULL ? in->section : NULL;
	ev.stage = "policy";
	ev.reason = reason;
	log_emit(&ev);
}

/* Env-only quick start: outbound trust only; say once that listeners are not protected. */
static void say_inbound_unprotected(void)
{
	static atomic_int said;
	struct log_event ev;

	if (atomic_exchange(&said, 1) != 0)
		return;
	log_event_init(&ev, LOG_WARNING, "insecure_setting");
	ev.dir = "in";
	ev.stage = "policy";
	ev.reason = "no configuration file: inbound connections are not protected (configure "
	            "inbound sections in TLSSHIM_CONFIG)";
	log_emit(&ev);
}

/*
 * Makes the accepted TCP connection `tcp` the relay's, handing the program a
 * socketpair end with `flags`.  Returns the program's descriptor, or -1.
 */
static int hand_inbound(int tcp, SSL_CTX *ctx, const struct conf_inbound *in,
                        const struct sockaddr_storage *peer, socklen_t peer_len,
                        const struct sockaddr_storage *local, socklen_t local_len, int flags)
{
	const struct shim_conf *c = conf_get();
	struct relay_spec spec;
	struct wrapped_info info;
	struct stat st;
	int sv[2], saved, type = SOCK_STREAM;

	memset(&spec, 0, sizeof(spec));
	memset(&info, 0, sizeof(info));
	if (flags & SOCK_NONBLOCK)
		type |= SOCK_NONBLOCK;
	if (flags & SOCK_CLOEXEC)
		type |= SOCK_CLOEXEC;
	if (socketpair(AF_UNIX, type, 0, sv) != 0)
		return -1;
	spec.app_fd = fdreg_adopt(sv[1]);
	if (spec.app_fd < 0 || fcntl(spec.app_fd, F_SETFL, O_NONBLOCK) != 0 ||
	    fstat(sv[0], &st) != 0)
		goto err;
	relay_size_pair(sv[0]);
	info.domain = local->ss_family;
	info.protocol = IPPROTO_TCP;
	info.tcp_fd = tcp;
	info.peer = *peer;
	info.peer_len = peer_len;
	info.local = *local;
	info.local_len = local_len;
	if (fdreg_add(st.st_ino, &info) != 0)
		goto err;
	spec.ssl = tlsio_server_new(ctx, tcp);
	if (spec.ssl == NULL) {
		fdreg_remove(st.st_ino);
		errno = ENOMEM;
		goto err;
	}
	spec.net_fd = tcp;
	spec.ino = st.st_ino;
	spec.peer = *peer;
	spec.local = *local;
	spec.server = true;
	spec.handshake_deadline_ms = tlsio_now_ms() + c->handshake_timeout_ms;
	if (in->section != NULL)
		snprintf(spec.rule, sizeof(spec.rule), "%s", in->section);
	if (relay_add(&spec) != 0) {
		saved = errno;
		SSL_free(spec.ssl);
		fdreg_remove(st.st_ino);
		errno = saved;
		goto err;
	}
	return sv[0];
err:
	saved = errno;
	real.close(sv[0]);
	fdreg_release(spec.app_fd);
	errno = saved;
	return -1;
}

static int shim_accept4(int lfd, struct sockaddr *addr, socklen_t *addrlen, int flags)
{
	struct sockaddr_storage local, peer, conn_local;
	socklen_t local_len = sizeof(local), peer_len, conn_local_len;
	const struct conf_inbound *in;
	const struct policy *p;
	SSL_CTX *ctx = NULL;
	int tcp, fd;

	if (real.getsockname(lfd, (struct sockaddr *)&local, &local_len) != 0 ||
	    (local.ss_family != AF_INET && local.ss_family != AF_INET6))
		return real.accept4(lfd, addr, addrlen, flags);
	p = policy_get();
	if (p->usable && p->conf->file == NULL) {
		say_inbound_unprotected();
		return real.accept4(lfd, addr, addrlen, flags);
	}
	if (p->usable) {
		in = policy_inbound(p, (struct sockaddr *)&local, &ctx);
		if (in->action == ACTION_PLAINTEXT) {
			peer_len = sizeof(peer);
			fd = real.accept4(lfd, (struct sockaddr *)&peer, &peer_len, flags);
			if (fd < 0)
				return -1;
			log_inbound(LOG_NOTICE, "plaintext_allowed", (struct sockaddr *)&peer,
			            (struct sockaddr *)&local, in, "plaintext exception");
			if (addr != NULL && addrlen != NULL)
				copy_addr(&peer, peer_len, addr, addrlen);
			return fd;
		}
	} else {
		in = NULL;
		say_config_error(p->error);
	}
	for (;;) {
		peer_len = sizeof(peer);
		tcp = real.accept4(lfd, (struct sockaddr *)&peer, &peer_len,
		                   SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (tcp < 0)
			return -1;
		if (in == NULL) {
			drop_client(tcp); /* unusable configuration: nothing is admitted */
			continue;
		}
		if (!policy_admits(in, (struct sockaddr *)&peer)) {
			log_inbound(LOG_WARNING, "denied", (struct sockaddr *)&peer,
			            (struct sockaddr *)&local, in, "source not in allow_from");
			drop_client(tcp);
			continue;
		}
		if (ctx == NULL) {
			log_inbound(LOG_ERR, "denied", (struct sockaddr *)&peer,
			            (struct sockaddr *)&local, in,
			            "no server certificate for this listener: set cert and key in "
			            "[tlsshim] or in an inbound section (or inbound_default = "
			            "plaintext)");
			drop_client(tcp);
			continue;
		}
		/* The connection's own address, not the listener's (a wildcard). */
		conn_local_len = sizeof(conn_local);
		if (real.getsockname(tcp, (struct sockaddr *)&conn_local, &conn_local_len) != 0) {
			drop_client(tcp);
			continue;
		}
		tcp = fdreg_adopt(tcp);
		if (tcp < 0)
			return -1;
		fd = hand_inbound(tcp, ctx, in, &peer, peer_len, &conn_local, conn_local_len,
		                  flags);
		if (fd < 0) {
			int saved = errno;

			fdreg_release(tcp);
			errno = saved;
			return -1;
		}
		if (addr != NULL && addrlen != NULL)
			copy_addr(&peer, peer_len, addr, addrlen);
		return fd;
	}
}

/* --- the descriptor's identity ---------------------------------------------- */

static int copy_addr(const struct sockaddr_storage *from, socklen_t from_len, struct sockaddr *to,
                     socklen_t *to_len)
{
	if (to == NULL || to_len == NULL) {
		errno = EFAULT;
		return -1;
	}
	memcpy(to, from, *to_len < from_len ? *to_len : from_len);
	*to_len = from_len;
	return 0;
}

static int shim_getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct wrapped_info info;

	if (fdreg_lookup(fd, &info))
		return copy_addr(&info.peer, info.peer_len, addr, len);
	return real.getpeername(fd, addr, len);
}

static int shim_getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct wrapped_info info;

	if (fdreg_lookup(fd, &info))
		return copy_addr(&info.local, info.local_len, addr, len);
	return real.getsockname(fd, addr, len);
}

/* SOL_SOCKET options that belong to the network socket, not the socketpair. */
static bool sockopt_is_network(int level, int name)
{
	if (level == IPPROTO_TCP || level == IPPROTO_IP || level == IPPROTO_IPV6)
		return true;
	if (level != SOL_SOCKET)
		return false;
	switch (name) {
	case SO_KEEPALIVE:
	case SO_MARK:
	case SO_PRIORITY:
	case SO_BINDTODEVICE:
	case SO_LINGER:
	case SO_REUSEADDR:
	case SO_REUSEPORT:
	case SO_MAX_PACING_RATE:
	case SO_INCOMING_CPU:
		return true;
	default:
		return false;
	}
}

static int answer_int(int v, void *val, socklen_t *len)
{
	if (val == NULL || len == NULL || *len < sizeof(int)) {
		errno = EINVAL;
		return -1;
	}
	memcpy(val, &v, sizeof(int));
	*len = sizeof(int);
	return 0;
}

/*
 * get/setsockopt on the TCP socket behind wrapped `fd` (false: not wrapped
 * here).  A parked connection (relay.c, "Parking") is first taken back by
 * its relay thread; it stays unparked for a while, so the second try finds
 * the socket unless something odd happens, and then the call fails with
 * ENOBUFS rather than waiting.
 */
static bool tcp_sockopt(int fd, bool set, int level, int name, void *val, socklen_t *len, int *ret)
{
	ino_t ino = 0;
	int tries;

	for (tries = 0; tries < 3; tries++) {
		switch (fdreg_tcp_sockopt(fd, set, level, name, val, len, ret, &ino)) {
		case FDREG_SOCKOPT_NO:
			return false;
		case FDREG_SOCKOPT_DONE:
			return true;
		case FDREG_SOCKOPT_PARKED:
			if (relay_unpark(ino) != 0)
				tries = 3;
			break;
		}
	}
	*ret = -1;
	errno = ENOBUFS;
	return true;
}

static int shim_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	struct wrapped_info info;
	int ret;

	if (level == SOL_SOCKET && (name == SO_DOMAIN || name == SO_PROTOCOL)) {
		if (fdreg_lookup(fd, &info))
			return answer_int(name == SO_DOMAIN ? info.domain : info.protocol, val,
			                  len);
		return real.getsockopt(fd, level, name, val, len);
	}
	if (sockopt_is_network(level, name) && len != NULL &&
	    tcp_sockopt(fd, false, level, name, val, len, &ret))
		return ret;
	return real.getsockopt(fd, level, name, val, len);
}

static int shim_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	int ret;

	if (sockopt_is_network(level, name) &&
	    tcp_sockopt(fd, true, level, name, (void *)(uintptr_t)val, &len, &ret))
		return ret;
	return real.setsockopt(fd, level, name, val, len);
}

/* --- sending with a destination --------------------------------------------- */

/*
 * A datagram with its own destination: the same policy as connect() on a
 * datagram socket.  Loopback is decided without a system call.
 */
static int datagram_check(int fd, const struct sockaddr *to)
{
	struct sock_id id;

	if (policy_is_loopback(to) || sock_identify(fd, &id) != 0 ||
	    (id.domain != AF_INET && id.domain != AF_INET6) ||
	    (id.type == SOCK_STREAM && id.protocol != IPPROTO_SCTP))
		return 0;
	return datagram_policy(to, id.type);
}

static int shim_sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	unsigned int i;

	for (i = 0; vec != NULL && i < vlen; i++)
		if (is_ip(vec[i].msg_hdr.msg_name, vec[i].msg_hdr.msg_namelen) &&
		    datagram_check(fd, vec[i].msg_hdr.msg_name) != 0)
			return -1;
	return real.sendmmsg(fd, vec, vlen, flags);
}

/*
 * MSG_FASTOPEN connects and sends in one call; done by the kernel it would
 * put the program's first bytes on the wire in the clear.  It becomes
 * connect() (so the policy applies) followed by a plain send.  A destination
 * given on an already wrapped descriptor is ignored, as TCP ignores it.
 */
static ssize_t shim_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
                           socklen_t tolen)
{
	if (to != NULL && (flags & MSG_FASTOPEN)) {
		if (shim_connect(fd, to, tolen) != 0 && errno != EISCONN)
			return -1;
		return real.sendto(fd, buf, n, flags & ~MSG_FASTOPEN, NULL, 0);
	}
	if (to != NULL && fdreg_lookup(fd, NULL))
		return real.sendto(fd, buf, n, flags, NULL, 0);
	if (is_ip(to, tolen) && datagram_check(fd, to) != 0)
		return -1;
	return real.sendto(fd, buf, n, flags, to, tolen);
}

static ssize_t shim_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct msghdr m;

	if (msg == NULL || msg->msg_name == NULL)
		return real.sendmsg(fd, msg, flags);
	if (flags & MSG_FASTOPEN) {
		if (shim_connect(fd, msg->msg_name, msg->msg_namelen) != 0 && errno != EISCONN)
			return -1;
		flags &= ~MSG_FASTOPEN;
	} else if (!fdreg_lookup(fd, NULL)) {
		if (is_ip(msg->msg_name, msg->msg_namelen) &&
		    datagram_check(fd, msg->msg_name) != 0)
			return -1;
		return real.sendmsg(fd, msg, flags);
	}
	m = *msg;
	m.msg_name = NULL;
	m.msg_namelen = 0;
	return real.sendmsg(fd, &m, flags);
}

/* --- closing ---------------------------------------------------------------- */

static int shim_close(int fd)
{
	if (fdreg_is_hidden(fd)) {
		errno = EBADF; /* not the program's descriptor */
		return -1;
	}
	return real.close(fd);
}

/* --- the resolver ----------------------------------------------------------- */

static int shim_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                            struct addrinfo **res)
{
	int rc = real.getaddrinfo(node, service, hints, res);

	if (rc == 0 && node != NULL && res != NULL &&
	    (hints == NULL || !(hints->ai_flags & AI_NUMERICHOST)))
		names_remember_addrinfo(node, *res);
	return rc;
}

/* --- process-wide set-up ----------------------------------------------------- */

static void atfork_prepare(void)
{
	/* First: staple_start() holds the refresher's lock while adopting a descriptor. */
	staple_atfork_prepare();
	ocsp_atfork_prepare();
	names_atfork_prepare();
	relay_atfork_prepare();
	fdreg_atfork_prepare();
}

static void atfork_parent(void)
{
	fdreg_atfork_parent();
	relay_atfork_parent();
	names_atfork_release();
	ocsp_atfork_parent();
	staple_atfork_parent();
}

static void atfork_child(void)
{
	fdreg_atfork_child();
	relay_atfork_child();
	log_atfork_child();
	ocsp_atfork_child();
	staple_atfork_child();
	names_atfork_release();
}

static pthread_once_t shim_once = PTHREAD_ONCE_INIT;
static bool shim_ok;

static void shim_init_once(void)
{
	shim_ok = real_init() == 0;
	if (shim_ok) {
		/* The shim's own OCSP requests: not subject to the rules, on hidden descriptors. */
		struct ocsp_net net = {real.connect, real.getsockopt, real.getaddrinfo, fdreg_adopt,
		                       fdreg_release};

		ocsp_set_net(&net);
		pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	}
}

__attribute__((constructor)) static void shim_constructor(void)
{
	pthread_once(&shim_once, shim_init_once);
}

/* Every export calls this first: another constructor may run before ours. */
static bool shim_ready(void)
{
	pthread_once(&shim_once, shim_init_once);
	return shim_ok;
}

/* --- the exported symbols ------------------------------------------------------ */

#define NOT_READY(ret)                  \
	do {                            \
		if (!shim_ready()) {    \
			errno = ENOSYS; \
			return ret;     \
		}                       \
	} while (0)

TLSSHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	NOT_READY(-1);
	return shim_connect(fd, addr, len);
}

/*
 * A server that drops privileges (nginx's workers, most daemons) would read
 * the configuration, certificates and keys too late, as the unprivileged
 * user.  listen() on an IP socket is done while still privileged, and the
 * workers are forked after it: load the policy there, once.
 */
TLSSHIM_EXPORT int listen(int fd, int backlog)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);

	NOT_READY(-1);
	if (real.getsockname(fd, (struct sockaddr *)&ss, &l) == 0 &&
	    (ss.ss_family == AF_INET || ss.ss_family == AF_INET6))
		(void)policy_get();
	return real.listen(fd, backlog);
}

TLSSHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	NOT_READY(-1);
	return shim_accept4(fd, addr, len, 0);
}

TLSSHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	NOT_READY(-1);
	return shim_accept4(fd, addr, len, flags);
}

TLSSHIM_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	NOT_READY(-1);
	return shim_getpeername(fd, addr, len);
}

TLSSHIM_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	NOT_READY(-1);
	return shim_getsockname(fd, addr, len);
}

TLSSHIM_EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	NOT_READY(-1);
	return shim_getsockopt(fd, level, name, val, len);
}

TLSSHIM_EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	NOT_READY(-1);
	return shim_setsockopt(fd, level, name, val, len);
}

TLSSHIM_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                              const struct sockaddr *to, socklen_t tolen)
{
	NOT_READY(-1);
	return shim_sendto(fd, buf, n, flags, to, tolen);
}

TLSSHIM_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	NOT_READY(-1);
	return shim_sendmsg(fd, msg, flags);
}

TLSSHIM_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	NOT_READY(-1);
	return shim_sendmmsg(fd, vec, vlen, flags);
}

TLSSHIM_EXPORT int close(int fd)
{
	NOT_READY(-1);
	return shim_close(fd);
}

TLSSHIM_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	NOT_READY(-1);
	return fdreg_close_range(first, last, flags);
}

TLSSHIM_EXPORT void closefrom(int low)
{
	if (!shim_ready() || low < 0)
		return;
	(void)fdreg_close_range((unsigned int)low, ~0U, 0);
}

TLSSHIM_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                               struct addrinfo **res)
{
	NOT_READY(EAI_SYSTEM);
	return shim_getaddrinfo(node, service, hints, res);
}

TLSSHIM_EXPORT struct hostent *gethostbyname(const char *name)
{
	struct hostent *he;

	NOT_READY(NULL);
	he = real.gethostbyname(name);
	names_remember_hostent(name, he);
	return he;
}

TLSSHIM_EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
	struct hostent *he;

	NOT_READY(NULL);
	he = real.gethostbyname2(name, af);
	names_remember_hostent(name, he);
	return he;
}

TLSSHIM_EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                                   struct hostent **result, int *h_errnop)
{
	int rc;

	NOT_READY(ENOSYS);
	rc = real.gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
	if (rc == 0 && result != NULL)
		names_remember_hostent(name, *result);
	return rc;
}

TLSSHIM_EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf,
                                    size_t buflen, struct hostent **result, int *h_errnop)
{
	int rc;

	NOT_READY(ENOSYS);
	rc = real.gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
	if (rc == 0 && result != NULL)
		names_remember_hostent(name, *result);
	return rc;
}
