/*
 * tlsio.c: TLS for wrapped connections.
 *
 * Trust is only what the operator configured: the X509_STORE is filled from
 * ca_file/ca_dir and the system default paths are never loaded.  TLS 1.2 is
 * the floor, renegotiation and compression are off, security level 2.
 *
 * All socket I/O goes through a small BIO that uses send(MSG_NOSIGNAL) and
 * recv(), so neither the program's thread (during the handshake) nor the
 * relay can raise SIGPIPE, and so the first bytes a server sends can be
 * inspected to tell "not TLS at all" from "a TLS failure".
 */
#include "tlsio.h"

#include "conf.h"
#include "ocsp.h"
#include "staple.h"

#include <openssl/evp.h>

#include <errno.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <fnmatch.h>
#include <limits.h>
#include <sys/stat.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define CLIENT_CERT_VERDICT_MS 1000

static void sess_state_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp);
static int sess_new_cb(SSL *ssl, SSL_SESSION *sess);

/* --- the socket BIO ------------------------------------------------------- */

/* What the BIO saw first from the server, to recognise non-TLS peers. */
struct tlsio_peek {
	unsigned char first[5];
	size_t n;
	unsigned long total; /* bytes received so far */
	bool cert_requested; /* the server sent a CertificateRequest */
};

static BIO_METHOD *sock_method;
static int ex_peek = -1;      /* SSL ex_data: struct tlsio_peek * */
static int ex_verify = -1;    /* SSL ex_data: struct tls_failure * being filled */
static int ex_store_why = -1; /* X509_STORE_CTX ex_data: struct tls_failure * */
static int ex_ctx_tls = -1;   /* SSL_CTX ex_data: const struct conf_tls * */
static int ex_srv_conf = -1;  /* SSL_CTX ex_data: const struct conf_inbound * */
static int ex_sess = -1;      /* SSL ex_data: struct sess_state * (client sessions) */

static int sock_write(BIO *b, const char *buf, int len)
{
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = send(BIO_get_fd(b, NULL), buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		BIO_set_retry_write(b);
	return (int)n;
}

static int sock_read(BIO *b, char *buf, int len)
{
	struct tlsio_peek *pk = BIO_get_app_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = recv(BIO_get_fd(b, NULL), buf, (size_t)len, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		BIO_set_retry_read(b);
	if (n > 0 && pk != NULL)
		pk->total += (unsigned long)n;
	if (n > 0 && pk != NULL && pk->n < sizeof(pk->first)) {
		size_t take = sizeof(pk->first) - pk->n;

		if (take > (size_t)n)
			take = (size_t)n;
		memcpy(pk->first + pk->n, buf, take);
		pk->n += take;
	}
	return (int)n;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_C_SET_FD:
		BIO_set_data(b, (void *)(intptr_t) * (int *)ptr);
		BIO_set_init(b, 1);
		(void)num;
		return 1;
	case BIO_C_GET_FD:
		if (ptr != NULL)
			*(int *)ptr = (int)(intptr_t)BIO_get_data(b);
		return (long)(intptr_t)BIO_get_data(b);
	case BIO_CTRL_FLUSH:
	case BIO_CTRL_DUP:
		return 1;
	default:
		return 0;
	}
}

static int sock_create(BIO *b)
{
	BIO_set_data(b, (void *)(intptr_t)-1);
	return 1;
}

static pthread_once_t tlsio_once = PTHREAD_ONCE_INIT;

static void tlsio_init_once(void)
{
	/* Our own atexit handling (relay.c) decides when OpenSSL may go away. */
	OPENSSL_init_ssl(OPENSSL_INIT_NO_ATEXIT | OPENSSL_INIT_LOAD_SSL_STRINGS |
	                         OPENSSL_INIT_LOAD_CRYPTO_STRINGS,
	                 NULL);
	ex_peek = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_verify = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_store_why = X509_STORE_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_ctx_tls = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_srv_conf = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_sess = SSL_get_ex_new_index(0, NULL, NULL, NULL, sess_state_free);
	sock_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
	                           "tlsshim socket");
	if (sock_method == NULL)
		return;
	BIO_meth_set_write(sock_method, sock_write);
	BIO_meth_set_read(sock_method, sock_read);
	BIO_meth_set_ctrl(sock_method, sock_ctrl);
	BIO_meth_set_create(sock_method, sock_create);
}

static void failure_init(struct tls_failure *why);

/* --- certificate verification ------------------------------------------------ */

/* Marks the chain as failed by one of our own checks. Returns 0. */
static int own_failure(X509_STORE_CTX *store, struct tls_failure *why, X509 *cert, int depth,
                       const char *reason)
{
	X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
	if (why != NULL && why->x509_err < 0) {
		why->x509_err = X509_V_ERR_APPLICATION_VERIFICATION;
		why->depth = depth;
		snprintf(why->reason, sizeof(why->reason), "%s", reason);
		tlsio_describe_cert(cert, why);
	}
	return 0;
}

/*
 * Called by X509_verify_cert for every certificate (ok = 1) and every error
 * (ok = 0).  Records the first error with its certificate, so the log names
 * the certificate that failed, and adds the checks OpenSSL does not make:
 * no X.509 v1 certificate below the trust anchor, and never a CA
 * certificate as the server's own (RFC 5280 4.2.1.9; CA/B BR 7.1.2.3).
 */
static int verify_cb(int ok, X509_STORE_CTX *store)
{
	struct tls_failure *why = X509_STORE_CTX_get_ex_data(store, ex_store_why);
	X509 *cert = X509_STORE_CTX_get_current_cert(store);
	int depth = X509_STORE_CTX_get_error_depth(store);
	STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(store);
	int top = chain != NULL ? sk_X509_num(chain) - 1 : 0;

	if (!ok) {
		if (why != NULL && why->x509_err < 0) {
			why->x509_err = X509_STORE_CTX_get_error(store);
			why->depth = depth;
			tlsio_describe_cert(cert, why);
		}
		return 0;
	}
	if (cert != NULL && X509_get_version(cert) == X509_VERSION_1 && (depth == 0 || depth < top))
		return own_failure(store, why, cert, depth, "X.509 v1 certificate");
	if (cert != NULL && depth == 0 && X509_check_ca(cert) != 0)
		return own_failure(store, why, cert, depth,
		                   "certificate is a CA, not a server certificate");
	return 1;
}

/* SHA-256 of `cert`'s SubjectPublicKeyInfo (RFC 7469 section 2.4). */
static int spki_sha256(X509 *cert, unsigned char md[SHA256_DIGEST_LENGTH])
{
	unsigned char *der = NULL;
	int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);

	if (len <= 0)
		return -1;
	SHA256(der, (size_t)len, md);
	OPENSSL_free(der);
	return 0;
}

int tlsio_spki_pin(X509 *cert, char *out, size_t outlen)
{
	unsigned char md[SHA256_DIGEST_LENGTH], b64[64];

	if (outlen < 8 + 45 || spki_sha256(cert, md) != 0)
		return -1;
	EVP_EncodeBlock(b64, md, sizeof(md));
	snprintf(out, outlen, "sha256//%s", (const char *)b64);
	return 0;
}

/* True when the SHA-256 of `cert`'s SubjectPublicKeyInfo is one of the pins. */
static bool pin_matches(X509 *cert, const struct conf_tls *t)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	bool found = false;
	size_t i;

	if (spki_sha256(cert, md) != 0)
		return false;
	for (i = 0; i < t->npins && !found; i++)
		found = CRYPTO_memcmp(md, t->pins[i], sizeof(md)) == 0;
	return found;
}

/*
 * The whole certificate decision, shared by live connections (as OpenSSL's
 * certificate verification callback) and by `tlsshim verify`: chain to the
 * configured anchors with our extra checks, then the pins (chain AND pin).
 */
static int verify_chain(X509_STORE_CTX *store, const struct conf_tls *t, struct tls_failure *why)
{
	STACK_OF(X509) * chain;
	int i;

	X509 *leaf = X509_STORE_CTX_get0_cert(store);

	X509_STORE_CTX_set_ex_data(store, ex_store_why, why);
	X509_STORE_CTX_set_verify_cb(store, verify_cb);
	/*
	 * The server's own certificate first: OpenSSL checks the name before it
	 * calls back per certificate, and a v1 or CA certificate would otherwise
	 * be reported as a name mismatch instead of what it is.
	 */
	if (leaf != NULL && X509_get_version(leaf) == X509_VERSION_1)
		return own_failure(store, why, leaf, 0, "X.509 v1 certificate");
	if (leaf != NULL && X509_check_ca(leaf) != 0)
		return own_failure(store, why, leaf, 0,
		                   "certificate is a CA, not a server certificate");
	if (X509_verify_cert(store) != 1)
		return 0;
	if (t == NULL || t->npins == 0)
		return 1;
	chain = X509_STORE_CTX_get0_chain(store);
	for (i = 0; chain != NULL && i < sk_X509_num(chain); i++)
		if (pin_matches(sk_X509_value(chain, i), t))
			return 1;
	return own_failure(store, why, X509_STORE_CTX_get0_cert(store), 0, "pin mismatch");
}

static int ssl_verify_callback(X509_STORE_CTX *store, void *arg)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_failure *why = ssl != NULL ? SSL_get_ex_data(ssl, ex_verify) : NULL;
	const struct conf_tls *t =
	        ssl != NULL ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_ctx_tls) : NULL;

	(void)arg;
	return verify_chain(store, t, why);
}

/* --- contexts ------------------------------------------------------------------ */

static void ctx_error(char *err, size_t errlen, const char *fmt, const char *what)
        __attribute__((format(printf, 3, 0)));

static void ctx_error(char *err, size_t errlen, const char *fmt, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	char detail[160] = "";

	if (e != 0)
		ERR_error_string_n(e, detail, sizeof(detail));
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(err, errlen, fmt, what);
#pragma GCC diagnostic pop
	if (e != 0 && strlen(err) + 2 < errlen)
		snprintf(err + strlen(err), errlen - strlen(err), ": %s", detail);
	ERR_clear_error();
}

static bool store_is_empty(SSL_CTX *ctx)
{
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));

	return objs == NULL || sk_X509_OBJECT_num(objs) == 0;
}

/*
 * Loads only the CRLs of crl_file and of every file in crl_dir (read once,
 * when the context is built).  Certificates that happen to sit in those
 * files are ignored: trust anchors come from ca_file/ca_dir alone.
 */
static int load_crls(X509_STORE *store, const struct conf_tls *t, char *err, size_t errlen)
{
	X509_LOOKUP *lk = X509_STORE_add_lookup(store, X509_LOOKUP_file());
	struct dirent *de;
	DIR *dir;
	int total = 0;

	if (lk == NULL) {
		ctx_error(err, errlen, "%s", "out of memory");
		return -1;
	}
	if (t->crl_file != NULL) {
		total = X509_load_crl_file(lk, t->crl_file, X509_FILETYPE_PEM);
		if (total <= 0) {
			ctx_error(err, errlen, "crl_file %s holds no CRL", t->crl_file);
			return -1;
		}
	}
	if (t->crl_dir == NULL)
		return 0;
	dir = opendir(t->crl_dir);
	if (dir == NULL) {
		ctx_error(err, errlen, "cannot read crl_dir %s", t->crl_dir);
		return -1;
	}
	total = 0;
	while ((de = readdir(dir)) != NULL) {
		char path[PATH_MAX];
		struct stat st;
		int n;

		if (de->d_name[0] == '.' ||
		    (size_t)snprintf(path, sizeof(path), "%s/%s", t->crl_dir, de->d_name) >=
		            sizeof(path) ||
		    stat(path, &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		n = X509_load_crl_file(lk, path, X509_FILETYPE_PEM);
		if (n > 0)
			total += n;
		ERR_clear_error(); /* a file without a CRL is skipped */
	}
	closedir(dir);
	if (total == 0) {
		ctx_error(err, errlen, "crl_dir %s holds no CRL", t->crl_dir);
		return -1;
	}
	return 0;
}

SSL_CTX *tlsio_ctx_new(const struct conf_tls *t, char *err, size_t errlen)
{
	X509_VERIFY_PARAM *vp;
	SSL_CTX *ctx;

	pthread_once(&tlsio_once, tlsio_init_once);
	if (sock_method == NULL || ex_peek < 0 || ex_verify < 0 || ex_store_why < 0 ||
	    ex_ctx_tls < 0) {
		ctx_error(err, errlen, "%s", "OpenSSL initialisation failed");
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		ctx_error(err, errlen, "%s", "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_ex_data(ctx, ex_ctx_tls, (void *)t);
	SSL_CTX_set_min_proto_version(ctx, t->min_protocol > 0 ? t->min_protocol : TLS1_2_VERSION);
	SSL_CTX_set_security_level(ctx, 2);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                              SSL_MODE_ENABLE_PARTIAL_WRITE);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_cert_verify_callback(ctx, ssl_verify_callback, NULL);
	/* Always ask for a staple (RFC 6066 section 8), whatever the mode. */
	SSL_CTX_set_tlsext_status_type(ctx, TLSEXT_STATUSTYPE_ocsp);
	/* Resumption through our own cache (keyed by rule and destination). */
	SSL_CTX_set_session_cache_mode(ctx,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, sess_new_cb);
	if (t->ciphers != NULL && SSL_CTX_set_cipher_list(ctx, t->ciphers) != 1) {
		ctx_error(err, errlen, "ciphers = %s: no usable cipher", t->ciphers);
		goto err;
	}
	if (t->ciphersuites != NULL && SSL_CTX_set_ciphersuites(ctx, t->ciphersuites) != 1) {
		ctx_error(err, errlen, "ciphersuites = %s: no usable suite", t->ciphersuites);
		goto err;
	}
	/* Only the operator's anchors: no SSL_CTX_set_default_verify_paths(). */
	if ((t->ca_file != NULL || t->ca_dir != NULL) &&
	    SSL_CTX_load_verify_locations(ctx, t->ca_file, t->ca_dir) != 1) {
		ctx_error(err, errlen, "cannot load CA %s",
		          t->ca_file != NULL ? t->ca_file : t->ca_dir);
		goto err;
	}
	if (t->ca_file != NULL && store_is_empty(ctx)) {
		ctx_error(err, errlen, "CA file %s holds no certificate", t->ca_file);
		goto err;
	}
	vp = SSL_CTX_get0_param(ctx);
	X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_X509_STRICT);
	if (t->approved_cert != NULL) {
		/*
		 * Approved certificates are trust anchors in their own right:
		 * PARTIAL_CHAIN lets a chain end at one of them (matched as the
		 * whole certificate), even when it is not self-signed.
		 */
		if (X509_STORE_load_file(SSL_CTX_get_cert_store(ctx), t->approved_cert) != 1 ||
		    store_is_empty(ctx)) {
			ctx_error(err, errlen, "cannot load approved_cert %s", t->approved_cert);
			goto err;
		}
		X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_PARTIAL_CHAIN);
	}
	if (t->crl_file != NULL || t->crl_dir != NULL) {
		if (load_crls(SSL_CTX_get_cert_store(ctx), t, err, errlen) != 0)
			goto err;
		X509_VERIFY_PARAM_set_flags(
		        vp, X509_V_FLAG_CRL_CHECK | (t->crl_chain ? X509_V_FLAG_CRL_CHECK_ALL : 0));
	}
	/* RFC 6125 as browsers apply it: SANs only, whole-label wildcards. */
	X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	                                            X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	X509_VERIFY_PARAM_set_purpose(vp, X509_PURPOSE_SSL_SERVER);
	if (t->cert != NULL) {
		if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
			ctx_error(err, errlen, "cannot load cert %s", t->cert);
			goto err;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1) {
			if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
				ctx_error(err, errlen, "key %s does not match its certificate",
				          t->key);
			else
				ctx_error(err, errlen, "cannot load key %s", t->key);
			goto err;
		}
		if (SSL_CTX_check_private_key(ctx) != 1) {
			ctx_error(err, errlen, "key %s does not match its certificate", t->key);
			goto err;
		}
	}
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *client_ctx;
static char client_ctx_err[256];
static pthread_once_t client_ctx_once = PTHREAD_ONCE_INIT;

static void client_ctx_build(void)
{
	client_ctx = tlsio_ctx_new(&conf_get()->tls, client_ctx_err, sizeof(client_ctx_err));
}

SSL_CTX *tlsio_client_ctx(char *err, size_t errlen)
{
	pthread_once(&client_ctx_once, client_ctx_build);
	if (client_ctx == NULL && err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", client_ctx_err);
	return client_ctx;
}

int tlsio_verify_offline(SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * untrusted, const char *name,
                         const char *ip, time_t at, struct tls_failure *why)
{
	X509_STORE_CTX *store = X509_STORE_CTX_new();
	X509_VERIFY_PARAM *vp;
	int ok = 0;

	failure_init(why);
	why->stage = "verify";
	if (store == NULL ||
	    X509_STORE_CTX_init(store, SSL_CTX_get_cert_store(ctx), leaf, untrusted) != 1) {
		snprintf(why->reason, sizeof(why->reason), "out of memory");
		goto out;
	}
	/* What libssl's ssl_verify_cert_chain() does for a client, then the same check. */
	X509_STORE_CTX_set_default(store, "ssl_server");
	vp = X509_STORE_CTX_get0_param(store);
	X509_VERIFY_PARAM_set1(vp, SSL_CTX_get0_param(ctx));
	X509_VERIFY_PARAM_set_auth_level(vp, SSL_CTX_get_security_level(ctx));
	if (name != NULL && X509_VERIFY_PARAM_set1_host(vp, name, 0) != 1)
		goto out;
	if (ip != NULL && X509_VERIFY_PARAM_set1_ip_asc(vp, ip) != 1) {
		snprintf(why->reason, sizeof(why->reason), "bad IP address %s", ip);
		goto out;
	}
	if (at > 0)
		X509_VERIFY_PARAM_set_time(vp, at);
	ok = verify_chain(store, SSL_CTX_get_ex_data(ctx, ex_ctx_tls), why);
	if (!ok && why->reason[0] == '\0')
		snprintf(why->reason, sizeof(why->reason), "%s",
		         X509_verify_cert_error_string(X509_STORE_CTX_get_error(store)));
	if (!ok && why->x509_err < 0)
		why->x509_err = X509_STORE_CTX_get_error(store);
out:
	X509_STORE_CTX_free(store);
	return ok ? 0 : -1;
}

/* An SSL object of `ctx` on socket `fd`, through the no-SIGPIPE socket BIO. */
static SSL *ssl_on_socket(SSL_CTX *ctx, int fd)
{
	SSL *ssl = SSL_new(ctx);
	BIO *bio;

	if (ssl == NULL)
		return NULL;
	bio = BIO_new(sock_method);
	if (bio == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	BIO_set_fd(bio, fd, BIO_NOCLOSE);
	SSL_set_bio(ssl, bio, bio);
	return ssl;
}

/* --- client session cache ------------------------------------------------------ */

/*
 * Resumption for outbound connections: a small per-process cache of sessions
 * keyed by the context (that is, the rule that matched: a session never
 * crosses rules), the expected name or address, and the port.  A session is
 * stored only after its full handshake passed every check (chain, pins,
 * OCSP), with the OCSP outcome it had; entries live at most SESS_MAX_AGE_S,
 * which bounds how long a revocation can go unseen on resumed connections.
 */
#define SESS_SLOTS     256
#define SESS_MAX_AGE_S 300

struct sess_state {
	char key[300];
	char ocsp[48]; /* the outcome of the full handshake */
	bool verified; /* all checks passed: sessions may be stored */
	bool offered;  /* a cached session was offered */
};

struct sess_slot {
	SSL_CTX *ctx;
	char key[300];
	char ocsp[48];
	SSL_SESSION *sess;
	time_t stored;
};

static struct sess_slot sess_cache[SESS_SLOTS];
static pthread_mutex_t sess_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned int sess_hash(const SSL_CTX *ctx, const char *key)
{
	unsigned long h = (unsigned long)(uintptr_t)ctx * 0x9E3779B97F4A7C15UL;

	while (*key != '\0')
		h = (h ^ (unsigned char)*key++) * 0x100000001B3UL;
	return (unsigned int)(h % SESS_SLOTS);
}

static void sess_state_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	OPENSSL_free(ptr);
}

/* Stores `sess` (a reference is taken) for the connection `ssl`. */
static void sess_store(SSL *ssl, SSL_SESSION *sess)
{
	struct sess_state *st = SSL_get_ex_data(ssl, ex_sess);
	SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
	struct sess_slot *slot;

	const struct conf_tls *t = SSL_CTX_get_ex_data(ctx, ex_ctx_tls);
	X509 *leaf = SSL_get0_peer_certificate(ssl);

	if (st == NULL || !st->verified || sess == NULL || !SSL_SESSION_is_resumable(sess))
		return;
	/* A resumed handshake carries no staple: where one is demanded, never resume. */
	if ((t != NULL && t->ocsp == OCSP_REQUIRE) || (leaf != NULL && ocsp_must_staple(leaf)))
		return;
	SSL_SESSION_up_ref(sess);
	pthread_mutex_lock(&sess_lock);
	slot = &sess_cache[sess_hash(ctx, st->key)];
	SSL_SESSION_free(slot->sess);
	slot->ctx = ctx;
	memcpy(slot->key, st->key, sizeof(slot->key));
	memcpy(slot->ocsp, st->ocsp, sizeof(slot->ocsp));
	slot->sess = sess;
	slot->stored = time(NULL);
	pthread_mutex_unlock(&sess_lock);
}

/* OpenSSL's new-session callback: TLS 1.3 tickets arrive after the handshake. */
static int sess_new_cb(SSL *ssl, SSL_SESSION *sess)
{
	sess_store(ssl, sess);
	return 0; /* we took our own reference */
}

/* Offers a cached session for `key` under `ctx`, if a fresh one exists. */
static void sess_offer(SSL *ssl, struct sess_state *st)
{
	SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
	struct sess_slot *slot;

	pthread_mutex_lock(&sess_lock);
	slot = &sess_cache[sess_hash(ctx, st->key)];
	if (slot->sess != NULL && slot->ctx == ctx && strcmp(slot->key, st->key) == 0) {
		if (time(NULL) - slot->stored < SESS_MAX_AGE_S &&
		    SSL_SESSION_is_resumable(slot->sess) && SSL_set_session(ssl, slot->sess) == 1) {
			memcpy(st->ocsp, slot->ocsp, sizeof(st->ocsp));
			st->offered = true;
		}
		/*
		 * Used once (RFC 8446 appendix C.4: a ticket reused would link
		 * connections); the new connection's own tickets take its place.
		 */
		SSL_SESSION_free(slot->sess);
		slot->sess = NULL;
	}
	pthread_mutex_unlock(&sess_lock);
}

SSL *tlsio_client_new(SSL_CTX *ctx, int fd, const char *name, const struct sockaddr *peer)
{
	SSL *ssl = ssl_on_socket(ctx, fd);
	X509_VERIFY_PARAM *vp;
	struct sess_state *st;

	if (ssl == NULL)
		return NULL;
	vp = SSL_get0_param(ssl);
	if (name != NULL) {
		/* RFC 6066 section 3: SNI carries host names, never literals. */
		if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
			goto err;
	} else if (peer->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)peer;

		if (X509_VERIFY_PARAM_set1_ip(vp, (const unsigned char *)&in->sin_addr, 4) != 1)
			goto err;
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
		const unsigned char *a = in6->sin6_addr.s6_addr;

		/* An IPv4-mapped address is checked as the IPv4 address it is. */
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			if (X509_VERIFY_PARAM_set1_ip(vp, a + 12, 4) != 1)
				goto err;
		} else if (X509_VERIFY_PARAM_set1_ip(vp, a, 16) != 1) {
			goto err;
		}
	}
	st = OPENSSL_zalloc(sizeof(*st));
	if (st == NULL || SSL_set_ex_data(ssl, ex_sess, st) != 1) {
		OPENSSL_free(st);
		goto err;
	}
	if (peer->sa_family == AF_INET || peer->sa_family == AF_INET6) {
		char host[INET6_ADDRSTRLEN] = "?";
		unsigned int port;

		if (peer->sa_family == AF_INET) {
			inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, host,
			          sizeof(host));
			port = ntohs(((const struct sockaddr_in *)peer)->sin_port);
		} else {
			inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, host,
			          sizeof(host));
			port = ntohs(((const struct sockaddr_in6 *)peer)->sin6_port);
		}
		/* The name and the address: one name may have several servers. */
		snprintf(st->key, sizeof(st->key), "%s|%s|%u", name != NULL ? name : "", host,
		         port);
		sess_offer(ssl, st);
	}
	return ssl;
err:
	SSL_free(ssl);
	return NULL;
}

/* --- the handshake -------------------------------------------------------- */

long tlsio_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int tlsio_wait(int fd, short events, long deadline_ms)
{
	struct pollfd p = {.fd = fd, .events = events};

	for (;;) {
		long left = deadline_ms - tlsio_now_ms();
		int r;

		if (left <= 0)
			return 0;
		r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

static void fmt_time(const ASN1_TIME *t, char *out, size_t len)
{
	struct tm tm;

	out[0] = '\0';
	if (t != NULL && ASN1_TIME_to_tm(t, &tm) == 1)
		strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void tlsio_describe_cert(X509 *cert, struct tls_failure *why)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;
	BIGNUM *bn;
	char *hex;

	if (cert == NULL)
		return;
	X509_NAME_oneline(X509_get_subject_name(cert), why->subject, sizeof(why->subject));
	X509_NAME_oneline(X509_get_issuer_name(cert), why->issuer, sizeof(why->issuer));
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	if (bn != NULL) {
		hex = BN_bn2hex(bn);
		if (hex != NULL)
			snprintf(why->serial, sizeof(why->serial), "%s", hex);
		OPENSSL_free(hex);
		BN_free(bn);
	}
	if (X509_digest(cert, EVP_sha256(), md, &mdlen) == 1) {
		for (i = 0; i < mdlen && 2 * i + 2 < sizeof(why->sha256); i++)
			snprintf(why->sha256 + 2 * i, 3, "%02x", md[i]);
	}
	fmt_time(X509_get0_notAfter(cert), why->not_after, sizeof(why->not_after));
}

/* The first bytes of a TLS server's reply: a record of type 20..24, v3.x. */
static bool looks_like_tls(const struct tlsio_peek *pk)
{
	if (pk->n == 0)
		return true; /* nothing seen: cannot tell */
	if (pk->first[0] < 20 || pk->first[0] > 24)
		return false;
	return pk->n < 2 || pk->first[1] == 3;
}

static void failure_init(struct tls_failure *why)
{
	memset(why, 0, sizeof(*why));
	why->event = "handshake_failed";
	why->stage = "handshake";
	why->x509_err = -1;
	why->depth = -1;
}

static void alert_cb(const SSL *ssl, int where, int ret)
{
	struct tlsio_peek *pk = BIO_get_app_data(SSL_get_rbio(ssl));

	if (pk != NULL && (where & SSL_CB_LOOP) && SSL_get_state(ssl) == TLS_ST_CR_CERT_REQ)
		pk->cert_requested = true;
	struct tls_failure *why = SSL_get_ex_data(ssl, ex_verify);

	if (why != NULL && (where & SSL_CB_ALERT) && (where & SSL_CB_READ) && why->alert[0] == '\0')
		snprintf(why->alert, sizeof(why->alert), "received:%s",
		         SSL_alert_desc_string_long(ret));
	else if (why != NULL && (where & SSL_CB_ALERT) && (where & SSL_CB_WRITE) &&
	         why->alert[0] == '\0')
		snprintf(why->alert, sizeof(why->alert), "sent:%s",
		         SSL_alert_desc_string_long(ret));
}

/* Turns a failed SSL_connect into an event, stage and reason. */
static void classify(SSL *ssl, int sslerr, int sys_errno, const struct tlsio_peek *pk,
                     struct tls_failure *why)
{
	unsigned long e = ERR_peek_error();
	long vr = SSL_get_verify_result(ssl);

	/* Before the server's certificate, SSL_get_version() names our offer. */
	if (SSL_get0_peer_certificate(ssl) != NULL)
		snprintf(why->tls, sizeof(why->tls), "%s", SSL_get_version(ssl));
	if (!looks_like_tls(pk)) {
		why->event = "refused_plaintext";
		why->stage = "handshake";
		snprintf(why->reason, sizeof(why->reason), "server did not speak TLS");
		return;
	}
	if (vr != X509_V_OK) {
		why->stage = "verify";
		if (why->x509_err < 0) {
			why->x509_err = (int)vr;
			tlsio_describe_cert(SSL_get0_peer_certificate(ssl), why);
		}
		if (why->reason[0] == '\0') /* else one of our own checks said why */
			snprintf(why->reason, sizeof(why->reason), "%s",
			         X509_verify_cert_error_string(why->x509_err));
		return;
	}
	if (sslerr == SSL_ERROR_SYSCALL || (sslerr == SSL_ERROR_SSL && e == 0)) {
		if (sys_errno == 0 && pk->n == 0)
			snprintf(why->reason, sizeof(why->reason),
			         "connection closed by server before handshake");
		else if (sys_errno == 0)
			snprintf(why->reason, sizeof(why->reason),
			         "connection closed by server during handshake");
		else
			snprintf(why->reason, sizeof(why->reason), "%s", strerror(sys_errno));
		return;
	}
	if (e != 0) {
		const char *r = ERR_reason_error_string(e);

		switch (ERR_GET_REASON(e)) {
		case SSL_R_UNSUPPORTED_PROTOCOL:
		case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
			/* We offer up to the newest version: the server wants an older one. */
			snprintf(why->reason, sizeof(why->reason), "protocol version too low");
			break;
		case SSL_R_WRONG_VERSION_NUMBER:
		case SSL_R_PACKET_LENGTH_TOO_LONG:
		case SSL_R_RECORD_LENGTH_MISMATCH:
			why->event = "refused_plaintext";
			snprintf(why->reason, sizeof(why->reason), "server did not speak TLS");
			break;
		default:
			if (why->alert[0] != '\0' && strncmp(why->alert, "received:", 9) == 0)
				snprintf(why->reason, sizeof(why->reason), "server sent alert: %s",
				         why->alert + 9);
			else
				snprintf(why->reason, sizeof(why->reason), "%s",
				         r != NULL ? r : "TLS handshake failed");
		}
		return;
	}
	snprintf(why->reason, sizeof(why->reason), "TLS handshake failed");
}

/* --- OCSP staples ---------------------------------------------------------- */

static int ocsp_fail(struct tls_failure *why, const char *outcome, const char *fmt,
                     const char *detail) __attribute__((format(printf, 3, 0)));

static int ocsp_fail(struct tls_failure *why, const char *outcome, const char *fmt,
                     const char *detail)
{
	why->stage = "ocsp";
	snprintf(why->ocsp, sizeof(why->ocsp), "%s", outcome);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(why->reason, sizeof(why->reason), fmt, detail);
#pragma GCC diagnostic pop
	ERR_clear_error();
	return -1;
}

/*
 * With ocsp_fetch, a server that staples nothing is not the end: ask the
 * responder the certificate names, the per-process cache first.  An answer
 * from the cache that no longer passes the check (another rule's anchors, a
 * smaller skew) is dropped and asked for afresh, once.  Returns 0 to accept,
 * -1 with `why` filled, as check_staple().
 */
static int check_fetched(SSL *ssl, const struct conf_tls *t, X509 *leaf, X509 *issuer,
                         long deadline_ms, const char *none, struct tls_failure *why)
{
	STACK_OF(X509) *chain = SSL_get0_verified_chain(ssl);
	X509_STORE *store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
	long until = tlsio_now_ms() + t->ocsp_fetch_timeout_ms;
	unsigned char *der = NULL;
	long len = 0;
	char url[600], err[256], text[sizeof(why->reason)];
	struct ocsp_verdict v;
	bool cached;
	time_t now = time(NULL);
	int rc = -1;

	if (issuer == leaf) {
		snprintf(text, sizeof(text), "%s; %s", none,
		         "no issuer in the verified chain to ask a responder about");
		return ocsp_fail(why, "none", "%s", text);
	}
	if (ocsp_responder_url(leaf, url, sizeof(url), err, sizeof(err)) != 0) {
		snprintf(text, sizeof(text), "%s; %.200s", none, err);
		return ocsp_fail(why, "none", "%s", text);
	}
	if (until > deadline_ms)
		until = deadline_ms;
	cached = ocsp_cache_get(leaf, now, &der, &len) == 0;
	if (cached &&
	    ocsp_check(der, len, leaf, issuer, chain, store, t->ocsp_skew_s, now, &v) != 0) {
		ocsp_cache_drop(leaf);
		OPENSSL_free(der);
		der = NULL;
		cached = false;
	}
	if (!cached) {
		if (ocsp_fetch(url, leaf, issuer, until, -1, &der, &len, err, sizeof(err)) != 0) {
			snprintf(text, sizeof(text), "%s; %.200s", none, err);
			return ocsp_fail(why, "none", "%s", text);
		}
		if (ocsp_check(der, len, leaf, issuer, chain, store, t->ocsp_skew_s, now, &v) !=
		    0) {
			snprintf(text, sizeof(text),
			         "bad OCSP response (fetched from %.120s): %.90s", url, v.reason);
			ocsp_fail(why, v.outcome, "%s", text);
			goto out;
		}
		/* Kept until nextUpdate (revoked ones too); unknown is asked again. */
		if (v.status != V_OCSP_CERTSTATUS_UNKNOWN && v.next_update > now)
			ocsp_cache_put_answer(leaf, der, len, v.next_update, v.status,
			                      v.this_update);
	}
	snprintf(why->ocsp, sizeof(why->ocsp), "%s", v.outcome);
	if (v.status == V_OCSP_CERTSTATUS_GOOD) {
		rc = 0;
	} else {
		/* Say where a verdict came from: a staple says it plainly, this does not. */
		snprintf(text, sizeof(text), "%.90s (%s %.120s)", v.reason,
		         cached ? "cached answer of" : "answer of", url);
		ocsp_fail(why, v.outcome, "%s", text);
	}
out:
	OPENSSL_free(der);
	return rc;
}

/*
 * Checks the OCSP response of a verified connection against the mode of `t`
 * (RFC 6960 section 3.2): the staple, or with ocsp_fetch under require one
 * from the responder.  Signed by the issuer or a responder it delegated to,
 * about this certificate, current within the skew, and good.  Returns 0 to
 * accept, -1 with `why` filled.
 */
static int check_staple(SSL *ssl, const struct conf_tls *t, long deadline_ms,
                        struct tls_failure *why)
{
	const unsigned char *staple = NULL;
	STACK_OF(X509) *chain = SSL_get0_verified_chain(ssl);
	X509 *leaf = SSL_get0_peer_certificate(ssl), *issuer;
	enum conf_ocsp mode = t != NULL ? t->ocsp : OCSP_PREFER;
	long skew = t != NULL ? t->ocsp_skew_s : 300;
	bool must = leaf != NULL && ocsp_must_staple(leaf);
	long len = SSL_get_tlsext_status_ocsp_resp(ssl, &staple);
	struct ocsp_verdict v;
	char text[sizeof(why->reason)];

	if (must)
		mode = OCSP_REQUIRE; /* RFC 7633: the certificate demands it */
	if (mode == OCSP_OFF) {
		why->ocsp[0] = '\0';
		return 0;
	}
	if (leaf == NULL || chain == NULL || sk_X509_num(chain) < 1)
		return ocsp_fail(why, "bad:parse", "bad OCSP staple: %s", "no verified chain");
	issuer = sk_X509_num(chain) > 1 ? sk_X509_value(chain, 1) : leaf;
	if (staple == NULL || len <= 0) {
		const char *none =
		        must ? "must-staple certificate without OCSP staple" : "no OCSP staple";

		snprintf(why->ocsp, sizeof(why->ocsp), "none");
		if (mode != OCSP_REQUIRE)
			return 0;
		if (t == NULL || !t->ocsp_fetch)
			return ocsp_fail(why, "none", "%s", none);
		return check_fetched(ssl, t, leaf, issuer, deadline_ms, none, why);
	}
	if (ocsp_check(staple, len, leaf, issuer, chain,
	               SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl)), skew, time(NULL), &v) != 0) {
		snprintf(text, sizeof(text), "bad OCSP staple: %s", v.reason);
		return ocsp_fail(why, v.outcome, "%s", text);
	}
	snprintf(why->ocsp, sizeof(why->ocsp), "%s", v.outcome);
	if (v.status == V_OCSP_CERTSTATUS_GOOD)
		return 0;
	return ocsp_fail(why, v.outcome, "%s", v.reason);
}

/*
 * TLS 1.3 ends the client's handshake before the server has looked at the
 * client certificate it asked for (RFC 8446 section 4.4.2): a rejection
 * arrives as an alert afterwards.  So that connect() does not report success
 * for a connection the server is about to refuse, wait, briefly and within
 * the deadline, for the server's first record: a session ticket (accepted)
 * or an alert (refused).  A server that sends neither within the bound is
 * taken as accepting.  Returns 0, or -1 with `why` filled.
 */
static int await_client_cert_verdict(SSL *ssl, int fd, long deadline_ms, struct tlsio_peek *pk,
                                     struct tls_failure *why)
{
	long until = tlsio_now_ms() + CLIENT_CERT_VERDICT_MS;
	unsigned long seen = pk->total;
	char b;

	if (until > deadline_ms)
		until = deadline_ms;
	for (;;) {
		int r, err;

		ERR_clear_error();
		errno = 0;
		r = SSL_peek(ssl, &b, 1);
		if (r > 0)
			return 0;
		err = SSL_get_error(ssl, r);
		if (err == SSL_ERROR_ZERO_RETURN)
			return 0; /* closed cleanly; the relay passes the EOF on */
		if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
			classify(ssl, err, errno, pk, why);
			return -1;
		}
		if (pk->total > seen)
			return 0; /* a record other than an alert: the server went on */
		if (tlsio_wait(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, until) <= 0)
			return 0;
	}
}

int tlsio_handshake(SSL *ssl, long deadline_ms, struct tls_failure *why)
{
	struct tlsio_peek pk = {.n = 0};
	BIO *bio = SSL_get_rbio(ssl);
	int rc = -1, fd = SSL_get_fd(ssl);

	failure_init(why);
	BIO_set_app_data(bio, &pk);
	SSL_set_ex_data(ssl, ex_verify, why);
	SSL_set_info_callback(ssl, alert_cb);
	for (;;) {
		int r, err, sys_errno, ready;
		short ev;

		ERR_clear_error();
		errno = 0;
		r = SSL_connect(ssl);
		if (r == 1) {
			rc = 0;
			if (pk.cert_requested && SSL_version(ssl) >= TLS1_3_VERSION &&
			    await_client_cert_verdict(ssl, fd, deadline_ms, &pk, why) != 0) {
				rc = -1;
				errno = ECONNREFUSED;
			} else if (SSL_session_reused(ssl)) {
				/* Checked in full when the session was made, minutes ago at most. */
				struct sess_state *st = SSL_get_ex_data(ssl, ex_sess);

				if (st != NULL)
					snprintf(why->ocsp, sizeof(why->ocsp), "%s", st->ocsp);
			} else if (check_staple(
			                   ssl,
			                   SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_ctx_tls),
			                   deadline_ms, why) != 0) {
				tlsio_describe_cert(SSL_get0_peer_certificate(ssl), why);
				snprintf(why->tls, sizeof(why->tls), "%s", SSL_get_version(ssl));
				rc = -1;
				errno = ECONNREFUSED;
			}
			break;
		}
		sys_errno = errno;
		err = SSL_get_error(ssl, r);
		if (err == SSL_ERROR_WANT_READ) {
			ev = POLLIN;
		} else if (err == SSL_ERROR_WANT_WRITE) {
			ev = POLLOUT;
		} else {
			classify(ssl, err, sys_errno, &pk, why);
			errno = ECONNREFUSED;
			break;
		}
		ready = tlsio_wait(fd, ev, deadline_ms);
		if (ready <= 0) {
			why->stage = "timeout";
			snprintf(why->reason, sizeof(why->reason), "%s",
			         ready == 0 ? "handshake timed out" : strerror(errno));
			tlsio_describe_cert(SSL_get0_peer_certificate(ssl), why);
			if (!looks_like_tls(&pk)) {
				why->event = "refused_plaintext";
				why->stage = "handshake";
				snprintf(why->reason, sizeof(why->reason),
				         "server did not speak TLS");
				errno = ECONNREFUSED;
			} else {
				errno = ready == 0 ? ETIMEDOUT : ECONNREFUSED;
			}
			break;
		}
	}
	ERR_clear_error();
	BIO_set_app_data(bio, NULL);
	SSL_set_ex_data(ssl, ex_verify, NULL);
	SSL_set_info_callback(ssl, NULL);
	if (rc == 0) {
		struct sess_state *st = SSL_get_ex_data(ssl, ex_sess);

		snprintf(why->tls, sizeof(why->tls), "%s", SSL_get_version(ssl));
		/* Every check passed: this connection's sessions may be reused. */
		if (st != NULL) {
			st->verified = true;
			memcpy(st->ocsp, why->ocsp, sizeof(st->ocsp));
			/* TLS 1.2 sessions are stored here; TLS 1.3 tickets come later. */
			if (SSL_version(ssl) < TLS1_3_VERSION)
				sess_store(ssl, SSL_get0_session(ssl));
		}
	}
	return rc;
}

/* --- the server side (inbound mode) ----------------------------------------- */

static bool pattern_matches(const char *pattern, const char *value)
{
	return fnmatch(pattern, value, FNM_CASEFOLD) == 0;
}

/* True when the client certificate's identity matches one allow_client pattern. */
static bool client_allowed(X509 *cert, const struct conf_inbound *in)
{
	X509_NAME *subj = X509_get_subject_name(cert);
	GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	bool ok = false;
	size_t p;
	int i;

	for (p = 0; p < in->nallow_client && !ok; p++) {
		const char *pat = in->allow_client[p];

		if (strncmp(pat, "CN=", 3) == 0) {
			for (i = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
			     i >= 0 && !ok;
			     i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) {
				ASN1_STRING *d =
				        X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));
				unsigned char *utf8 = NULL;

				int n = ASN1_STRING_to_UTF8(&utf8, d);

				/* A NUL inside the name would hide the rest of it from fnmatch. */
				if (n >= 0 && utf8 != NULL &&
				    strlen((const char *)utf8) == (size_t)n)
					ok = pattern_matches(pat + 3, (const char *)utf8);
				OPENSSL_free(utf8);
			}
		} else {
			for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans) && !ok; i++) {
				GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);

				const char *dns;

				if (gn->type != GEN_DNS)
					continue;
				dns = (const char *)ASN1_STRING_get0_data(gn->d.dNSName);
				/* "ops.mgmt.internal\0.evil.example" is not ops.mgmt.internal. */
				if (strlen(dns) == (size_t)ASN1_STRING_length(gn->d.dNSName))
					ok = pattern_matches(pat + 4, dns);
			}
		}
	}
	GENERAL_NAMES_free(sans);
	return ok;
}

static int server_verify_cb(int ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct conf_inbound *in =
	        ssl != NULL ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_srv_conf) : NULL;
	struct tls_failure *why = ssl != NULL ? SSL_get_ex_data(ssl, ex_verify) : NULL;
	X509 *cert = X509_STORE_CTX_get_current_cert(store);
	int depth = X509_STORE_CTX_get_error_depth(store);

	if (!ok) {
		if (why != NULL && why->x509_err < 0) {
			why->x509_err = X509_STORE_CTX_get_error(store);
			why->depth = depth;
			tlsio_describe_cert(cert, why);
		}
		return 0;
	}
	if (depth == 0 && in != NULL && in->nallow_client > 0 && cert != NULL &&
	    !client_allowed(cert, in))
		return own_failure(store, why, cert, 0, "client certificate not in allow_client");
	return 1;
}

/*
 * Session tickets (RFC 5077) under keys that exist only in this process's
 * memory and rotate: a key encrypts new tickets for TICKET_KEY_LIFETIME_S,
 * then only decrypts (renewing the ticket) for as long again, then is gone.
 * A restart forgets every key, so a stolen ticket is worthless after at most
 * two lifetimes.
 */
#define TICKET_KEY_LIFETIME_S 3600

struct ticket_key {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
	time_t created; /* 0: unused */
};

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ticket_key ticket_keys[2]; /* [0] current, [1] previous */

/* Caller holds ticket_lock. Returns 0, or -1 when no randomness is to be had. */
static int ticket_rotate_locked(time_t now)
{
	if (ticket_keys[0].created != 0 && now - ticket_keys[0].created < TICKET_KEY_LIFETIME_S)
		return 0;
	ticket_keys[1] = ticket_keys[0];
	if (RAND_bytes(ticket_keys[0].name, sizeof(ticket_keys[0].name)) != 1 ||
	    RAND_priv_bytes(ticket_keys[0].aes, sizeof(ticket_keys[0].aes)) != 1 ||
	    RAND_priv_bytes(ticket_keys[0].hmac, sizeof(ticket_keys[0].hmac)) != 1) {
		OPENSSL_cleanse(&ticket_keys[0], sizeof(ticket_keys[0]));
		return -1;
	}
	ticket_keys[0].created = now;
	return 0;
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
	struct ticket_key k;
	OSSL_PARAM params[2];
	time_t now = time(NULL);
	int rc = 0, which = -1, i;

	(void)ssl;
	pthread_mutex_lock(&ticket_lock);
	if (ticket_rotate_locked(now) == 0) {
		if (enc) {
			which = 0;
		} else {
			for (i = 0; i < 2; i++)
				if (ticket_keys[i].created != 0 &&
				    now - ticket_keys[i].created < 2 * TICKET_KEY_LIFETIME_S &&
				    memcmp(name, ticket_keys[i].name, 16) == 0)
					which = i;
		}
	}
	if (which >= 0)
		k = ticket_keys[which];
	pthread_mutex_unlock(&ticket_lock);
	if (which < 0)
		return 0; /* unknown or expired key: a full handshake */
	params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (enc) {
		memcpy(name, k.name, 16);
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) == 1 &&
		    EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 &&
		    EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) == 1)
			rc = 1;
	} else if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 &&
	           EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) == 1) {
		rc = which == 0 ? 1 : 2; /* 2: valid, but issue a ticket under the new key */
	}
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}

SSL_CTX *tlsio_server_ctx_new(const struct conf_inbound *in, char *err, size_t errlen)
{
	static const unsigned char sid_ctx[] = "tlsshim";
	SSL_CTX *ctx;

	pthread_once(&tlsio_once, tlsio_init_once);
	if (ex_srv_conf < 0 || ex_verify < 0) {
		ctx_error(err, errlen, "%s", "OpenSSL initialisation failed");
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		ctx_error(err, errlen, "%s", "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_ex_data(ctx, ex_srv_conf, (void *)in);
	SSL_CTX_set_min_proto_version(ctx,
	                              in->min_protocol > 0 ? in->min_protocol : TLS1_2_VERSION);
	SSL_CTX_set_security_level(ctx, 2);
	/* Clients that close without close_notify are common: EOF, not an error. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
	                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                              SSL_MODE_ENABLE_PARTIAL_WRITE);
	/* Resumption: tickets under rotating keys that exist only in memory. */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
	if (in->ciphers != NULL && SSL_CTX_set_cipher_list(ctx, in->ciphers) != 1) {
		ctx_error(err, errlen, "ciphers = %s: no usable cipher", in->ciphers);
		goto err;
	}
	if (in->ciphersuites != NULL && SSL_CTX_set_ciphersuites(ctx, in->ciphersuites) != 1) {
		ctx_error(err, errlen, "ciphersuites = %s: no usable suite", in->ciphersuites);
		goto err;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, in->cert) != 1) {
		ctx_error(err, errlen, "cannot load cert %s", in->cert);
		goto err;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, in->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		ctx_error(err, errlen, "key %s does not match its certificate (or cannot be read)",
		          in->key);
		goto err;
	}
	if (in->client_ca != NULL) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(in->client_ca);

		if (names == NULL || SSL_CTX_load_verify_locations(ctx, in->client_ca, NULL) != 1) {
			sk_X509_NAME_pop_free(names, X509_NAME_free);
			ctx_error(err, errlen, "cannot load client_ca %s", in->client_ca);
			goto err;
		}
		SSL_CTX_set_client_CA_list(ctx, names);
		X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_X509_STRICT);
		X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(ctx), X509_PURPOSE_SSL_CLIENT);
	}
	if (in->client_cert != CLIENT_CERT_NONE)
		SSL_CTX_set_verify(ctx,
		                   SSL_VERIFY_PEER | (in->client_cert == CLIENT_CERT_REQUIRE
		                                              ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
		                                              : 0),
		                   server_verify_cb);
	else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if (staple_attach(ctx, in, err, errlen) != 0)
		goto err;
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

void tlsio_track_failure(SSL *ssl, struct tls_failure *why)
{
	failure_init(why);
	SSL_set_ex_data(ssl, ex_verify, why);
}

SSL *tlsio_server_new(SSL_CTX *ctx, int fd)
{
	SSL *ssl = ssl_on_socket(ctx, fd);

	if (ssl != NULL)
		SSL_set_accept_state(ssl);
	return ssl;
}

void tlsio_server_failure(SSL *ssl, int sslerr, int sys_errno, struct tls_failure *why)
{
	unsigned long e = ERR_peek_error();
	int r = e != 0 ? ERR_GET_REASON(e) : 0;
	X509 *client = SSL_get0_peer_certificate(ssl);

	if (why->x509_err >= 0) {
		why->stage = "verify";
		if (why->reason[0] == '\0')
			snprintf(why->reason, sizeof(why->reason), "client certificate: %s",
			         X509_verify_cert_error_string(why->x509_err));
	} else if (r == SSL_R_HTTP_REQUEST || r == SSL_R_HTTPS_PROXY_REQUEST ||
	           r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_UNKNOWN_PROTOCOL ||
	           r == SSL_R_PACKET_LENGTH_TOO_LONG || r == SSL_R_RECORD_LENGTH_MISMATCH) {
		why->event = "refused_plaintext";
		snprintf(why->reason, sizeof(why->reason), "client did not speak TLS");
	} else if (r == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		why->stage = "verify";
		snprintf(why->reason, sizeof(why->reason), "client certificate required");
	} else if (r == SSL_R_UNSUPPORTED_PROTOCOL || r == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION) {
		snprintf(why->reason, sizeof(why->reason), "protocol version too low");
	} else if (sslerr == SSL_ERROR_SYSCALL || (sslerr == SSL_ERROR_SSL && e == 0)) {
		snprintf(why->reason, sizeof(why->reason), "%s",
		         sys_errno != 0 ? strerror(sys_errno)
		                        : "connection closed by client during handshake");
	} else {
		snprintf(why->reason, sizeof(why->reason), "%s",
		         e != 0 && ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
		                                                      : "TLS handshake failed");
	}
	if (client != NULL && why->subject[0] == '\0')
		tlsio_describe_cert(client, why);
	ERR_clear_error();
}
