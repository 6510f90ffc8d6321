/*
 * ocsp.c: checking, fetching and caching OCSP responses (see ocsp.h).
 *
 * The HTTP exchange uses OpenSSL's own client (OSSL_HTTP_REQ_CTX), fed
 * through memory BIOs: this file moves the bytes between them and the socket
 * with send(MSG_NOSIGNAL) and recv(), so that no write can raise SIGPIPE in
 * the program, and so that one poll() on the socket and the cancel
 * descriptor bounds every wait by the deadline.
 */
#include "ocsp.h"

#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/http.h>
#include <openssl/ocsp.h>
#include <openssl/tls1.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define OCSP_MAX_RESPONSE (64 * 1024)
#define OCSP_URL_MAX      512

/* --- checking ------------------------------------------------------------ */

bool ocsp_must_staple(X509 *cert)
{
	TLS_FEATURE *features = X509_get_ext_d2i(cert, NID_tlsfeature, NULL, NULL);
	bool found = false;
	int i;

	for (i = 0; features != NULL && i < sk_ASN1_INTEGER_num(features) && !found; i++)
		found = ASN1_INTEGER_get(sk_ASN1_INTEGER_value(features, i)) ==
		        TLSEXT_TYPE_status_request;
	TLS_FEATURE_free(features);
	return found;
}

static int bad(struct ocsp_verdict *v, const char *outcome, const char *reason)
{
	v->status = -1;
	snprintf(v->outcome, sizeof(v->outcome), "%s", outcome);
	snprintf(v->reason, sizeof(v->reason), "%s", reason);
	ERR_clear_error();
	return -1;
}

/* Finds the single response about `leaf` (issued by `issuer`), whatever hash its CertID uses. */
static OCSP_SINGLERESP *find_single(OCSP_BASICRESP *basic, X509 *leaf, X509 *issuer)
{
	int i;

	for (i = 0; i < OCSP_resp_count(basic); i++) {
		OCSP_SINGLERESP *single = OCSP_resp_get0(basic, i);
		const OCSP_CERTID *id = OCSP_SINGLERESP_get0_id(single);
		ASN1_OBJECT *md_oid = NULL;
		OCSP_CERTID *mine;
		const EVP_MD *md;
		int same;

		if (OCSP_id_get0_info(NULL, &md_oid, NULL, NULL, (OCSP_CERTID *)id) != 1)
			continue;
		md = EVP_get_digestbyobj(md_oid);
		if (md != NULL && EVP_MD_get_type(md) == NID_md5)
			continue; /* a CertID under MD5 identifies nothing for certain */
		mine = md != NULL ? OCSP_cert_to_id(md, leaf, issuer) : NULL;
		same = mine != NULL && OCSP_id_cmp(mine, id) == 0;
		OCSP_CERTID_free(mine);
		if (same)
			return single;
	}
	return NULL;
}

static time_t to_time(const ASN1_GENERALIZEDTIME *t)
{
	struct tm tm;

	return t != NULL && ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
}

/* Why OCSP_basic_verify() failed: a bad signature, or a signer we do not accept. */
static int verify_failure(struct ocsp_verdict *v)
{
	unsigned long e, first_ocsp = 0;
	bool bad_signature = false;

	/*
	 * The first OCSP error says most ("missing ocspsigning usage"); a
	 * signature failure may sit behind an EVP one.
	 */
	while ((e = ERR_get_error()) != 0) {
		if (ERR_GET_LIB(e) != ERR_LIB_OCSP)
			continue;
		if (ERR_GET_REASON(e) == OCSP_R_SIGNATURE_FAILURE)
			bad_signature = true;
		if (first_ocsp == 0)
			first_ocsp = e;
	}
	if (bad_signature)
		return bad(v, "bad:signature", "signature does not verify");
	return bad(v, "bad:signer",
	           first_ocsp != 0 && ERR_reason_error_string(first_ocsp) != NULL
	                   ? ERR_reason_error_string(first_ocsp)
	                   : "signer not authorised");
}

int ocsp_check(const unsigned char *der, long len, X509 *leaf, X509 *issuer,
               STACK_OF(X509) * untrusted, X509_STORE *store, long skew_s, time_t now,
               struct ocsp_verdict *v)
{
	const unsigned char *p = der;
	OCSP_RESPONSE *resp;
	OCSP_BASICRESP *basic = NULL;
	OCSP_SINGLERESP *single;
	ASN1_GENERALIZEDTIME *this_upd = NULL, *next_upd = NULL;
	time_t edge;
	int status, reason = -1, rc = -1;

	memset(v, 0, sizeof(*v));
	v->status = -1;
	if (der == NULL || len <= 0 || leaf == NULL || issuer == NULL)
		return bad(v, "bad:parse", "no response or no verified chain");
	resp = d2i_OCSP_RESPONSE(NULL, &p, len);
	if (resp == NULL || p != der + len) {
		OCSP_RESPONSE_free(resp);
		return bad(v, "bad:parse", "cannot be parsed");
	}
	if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
		char text[80];

		snprintf(text, sizeof(text), "responder said %s",
		         OCSP_response_status_str(OCSP_response_status(resp)));
		bad(v, "bad:status", text);
		goto out;
	}
	basic = OCSP_response_get1_basic(resp);
	if (basic == NULL) {
		bad(v, "bad:parse", "no basic response");
		goto out;
	}
	/* The signer must chain to `store` and be the issuer or carry id-kp-OCSPSigning from it. */
	if (OCSP_basic_verify(basic, untrusted, store, 0) != 1) {
		verify_failure(v);
		goto out;
	}
	single = find_single(basic, leaf, issuer);
	if (single == NULL) {
		bad(v, "bad:serial", "not about this certificate");
		goto out;
	}
	status = OCSP_single_get0_status(single, &reason, NULL, &this_upd, &next_upd);
	edge = now + skew_s;
	if (this_upd == NULL || X509_cmp_time(this_upd, &edge) > 0) {
		bad(v, "bad:future", "thisUpdate is in the future");
		goto out;
	}
	/* RFC 6960 section 4.2.2.1: stale once nextUpdate is earlier than now. */
	if (next_upd != NULL && to_time(next_upd) < now - skew_s) {
		bad(v, "bad:stale", "nextUpdate has passed");
		goto out;
	}
	v->this_update = to_time(this_upd);
	v->next_update = to_time(next_upd);
	v->status = status;
	if (status == V_OCSP_CERTSTATUS_GOOD) {
		snprintf(v->outcome, sizeof(v->outcome), "good");
	} else if (status == V_OCSP_CERTSTATUS_REVOKED) {
		snprintf(v->outcome, sizeof(v->outcome), "revoked");
		snprintf(v->reason, sizeof(v->reason), "revoked (%s)",
		         reason >= 0 ? OCSP_crl_reason_str(reason) : "unspecified");
	} else {
		snprintf(v->outcome, sizeof(v->outcome), "unknown");
		snprintf(v->reason, sizeof(v->reason), "OCSP status unknown");
	}
	rc = 0;
out:
	ERR_clear_error();
	OCSP_BASICRESP_free(basic);
	OCSP_RESPONSE_free(resp);
	return rc;
}

/* --- the responder's address ------------------------------------------------ */

/* A URL we are willing to put into a request line: printable, no spaces. */
static bool url_is_clean(const char *u)
{
	for (; *u != '\0'; u++)
		if ((unsigned char)*u <= ' ' || (unsigned char)*u >= 0x7f)
			return false;
	return true;
}

int ocsp_responder_url(X509 *cert, char *url, size_t urllen, char *err, size_t errlen)
{
	STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(cert);
	const char *other = NULL;
	bool bad_http = false;
	int i, rc = -1;

	for (i = 0; i < sk_OPENSSL_STRING_num(urls); i++) {
		const char *u = sk_OPENSSL_STRING_value(urls, i);

		if (strncasecmp(u, "http://", 7) != 0) {
			other = u;
			continue;
		}
		if (strlen(u) >= urllen || strlen(u) > OCSP_URL_MAX || !url_is_clean(u)) {
			bad_http =
			        true; /* too long, or spaces or control characters: try the next */
			continue;
		}
		snprintf(url, urllen, "http://%s",
		         u + 7); /* OpenSSL's URL parser wants it lower case */
		rc = 0;
		goto out;
	}
	if (bad_http)
		snprintf(err, errlen, "%s",
		         "certificate names no usable OCSP responder (an http:// URL that is too "
		         "long or holds spaces or control characters)");
	else if (other != NULL && url_is_clean(other))
		snprintf(err, errlen, "certificate names no http:// OCSP responder (only %.100s)",
		         other);
	else if (other != NULL)
		snprintf(err, errlen, "%s", "certificate names no usable OCSP responder");
	else
		snprintf(err, errlen, "certificate names no OCSP responder");
out:
	X509_email_free(urls);
	return rc;
}

/* --- fetching ------------------------------------------------------------------ */

static struct ocsp_net net; /* all NULL until ocsp_set_net() */

void ocsp_set_net(const struct ocsp_net *n)
{
	net = *n;
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits for `events` on `fd` until `deadline_ms`, or until `cancel_fd` is
 * readable.  Returns 1 ready, 0 timed out, -1 cancelled or failed.
 */
static int wait_fd(int fd, short events, int cancel_fd, long deadline_ms)
{
	for (;;) {
		struct pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
		long left = deadline_ms - now_ms();
		int r;

		if (left <= 0)
			return 0;
		r = poll(p, cancel_fd >= 0 ? 2 : 1, (int)(left > 60000 ? 60000 : left));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r > 0 && cancel_fd >= 0 && p[1].revents != 0) {
			errno = ECANCELED;
			return -1;
		}
		if (r > 0)
			return 1;
	}
}

/*
 * A name lookup on a thread of its own, so that the caller can stop waiting
 * at its deadline or when cancelled: whichever of the two lets go last frees
 * it.  The thread says it is done through an eventfd the caller polls.
 */
struct lookup {
	pthread_mutex_t lock;
	int refs; /* 2 while both the caller and the thread hold it */
	bool done;
	int rc;
	int done_fd;
	struct addrinfo *result;
	char host[256];
	char port[16];
};

#define LOOKUPS_MAX 8 /* lookups in flight per process; more fail at once */
static pthread_mutex_t lookups_lock = PTHREAD_MUTEX_INITIALIZER;
static int lookups;

static void lookup_free(struct lookup *l)
{
	if (l->result != NULL)
		freeaddrinfo(l->result); /* the caller gave up on it */
	net.release(l->done_fd);
	pthread_mutex_destroy(&l->lock);
	free(l);
	pthread_mutex_lock(&lookups_lock);
	lookups--;
	pthread_mutex_unlock(&lookups_lock);
}

/* The caller lets go. */
static void lookup_put(struct lookup *l)
{
	bool last;

	pthread_mutex_lock(&l->lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&l->lock);
	if (last)
		lookup_free(l);
}

/*
 * The thread lets go before it says it is done, so that a caller who sees
 * the answer is always the last holder (and frees everything before
 * ocsp_fetch() returns); a caller who already gave up left it to the thread.
 */
static void *lookup_main(void *arg)
{
	struct lookup *l = arg;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res = NULL;
	uint64_t one = 1;
	int rc = net.getaddrinfo(l->host, l->port, &hints, &res);
	bool last;

	pthread_mutex_lock(&l->lock);
	l->rc = rc;
	l->result = rc == 0 ? res : NULL;
	l->done = true;
	last = --l->refs == 0;
	if (!last && write(l->done_fd, &one, sizeof(one)) < 0) {
		/* cannot happen on an eventfd below its maximum; the caller times out */
	}
	pthread_mutex_unlock(&l->lock);
	if (last)
		lookup_free(l);
	return NULL;
}

/* Starts the lookup thread. Returns the lookup (two references), or NULL with `err`. */
static struct lookup *lookup_start(const char *host, const char *port, char *err, size_t errlen)
{
	struct lookup *l;
	pthread_attr_t attr;
	pthread_t t;
	sigset_t all, old;
	int rc, fd;

	pthread_mutex_lock(&lookups_lock);
	rc = lookups < LOOKUPS_MAX ? 0 : -1;
	lookups += rc == 0;
	pthread_mutex_unlock(&lookups_lock);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve %s: resolver busy (%d lookups pending)", host,
		         LOOKUPS_MAX);
		return NULL;
	}
	l = calloc(1, sizeof(*l));
	fd = l != NULL ? net.adopt(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) : -1;
	if (fd < 0) {
		free(l);
		pthread_mutex_lock(&lookups_lock);
		lookups--;
		pthread_mutex_unlock(&lookups_lock);
		snprintf(err, errlen, "cannot resolve %s: out of resources", host);
		return NULL;
	}
	pthread_mutex_init(&l->lock, NULL);
	l->refs = 2;
	l->done_fd = fd;
	snprintf(l->host, sizeof(l->host), "%s", host);
	snprintf(l->port, sizeof(l->port), "%s", port);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* the program's signals are not for it */
	rc = pthread_create(&t, &attr, lookup_main, l);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		l->refs = 1;
		lookup_put(l);
		snprintf(err, errlen, "cannot resolve %s: %s", host, strerror(rc));
		return NULL;
	}
	return l;
}

/*
 * Resolves `host`:`port` by the deadline or until `cancel_fd` is readable:
 * literal addresses at once, names with getaddrinfo() on a detached thread
 * that the caller stops waiting for (the system resolver has no bound of its
 * own that we could set).
 */
static int resolve(const char *host, const char *port, long deadline_ms, int cancel_fd,
                   struct addrinfo **out, char *err, size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
	struct lookup *l;
	int r, rc = -1;

	if (net.getaddrinfo(host, port, &hints, out) == 0)
		return 0;
	if (strlen(host) >= sizeof(((struct lookup *)0)->host) ||
	    strlen(port) >= sizeof(((struct lookup *)0)->port)) {
		snprintf(err, errlen, "host name too long");
		return -1;
	}
	if (deadline_ms - now_ms() <= 0) {
		snprintf(err, errlen, "resolving %s timed out", host);
		return -1;
	}
	l = lookup_start(host, port, err, errlen);
	if (l == NULL)
		return -1;
	r = wait_fd(l->done_fd, POLLIN, cancel_fd, deadline_ms);
	pthread_mutex_lock(&l->lock);
	if (l->done && l->rc == 0) {
		*out = l->result;
		l->result = NULL;
		rc = 0;
	} else if (l->done) {
		snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(l->rc));
	} else if (r < 0) {
		snprintf(err, errlen, "resolving %s: %s", host, strerror(errno));
	} else {
		snprintf(err, errlen, "resolving %s timed out", host);
	}
	pthread_mutex_unlock(&l->lock);
	lookup_put(l);
	return rc;
}

/* Connects a non-blocking socket to one of `ai` within the deadline. */
static int open_conn(struct addrinfo *ai, long deadline_ms, int cancel_fd, char *err, size_t errlen)
{
	int last = ECONNREFUSED;

	for (; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int soerr = 0, r;
		socklen_t l = sizeof(soerr);

		if (fd < 0) {
			last = errno;
			continue;
		}
		fd = net.adopt(fd);
		if (fd < 0) {
			last = errno;
			continue;
		}
		if (net.connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			return fd;
		if (errno != EINPROGRESS) {
			last = errno;
			net.release(fd);
			continue;
		}
		r = wait_fd(fd, POLLOUT, cancel_fd, deadline_ms);
		if (r == 1 && net.getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l) != 0)
			soerr = errno;
		if (r == 1 && soerr == 0)
			return fd;
		last = r == 0 ? ETIMEDOUT : r < 0 ? errno : soerr != 0 ? soerr : ECONNREFUSED;
		net.release(fd);
		if (r <= 0)
			break;
	}
	snprintf(err, errlen, "cannot connect: %s", strerror(last));
	return -1;
}

/* Sends what the HTTP client wrote into `wbio`. Returns 0, or -1. */
static int flush_out(int fd, BIO *wbio, int cancel_fd, long deadline_ms)
{
	char *data;
	long n = BIO_get_mem_data(wbio, &data);
	long off = 0;

	while (off < n) {
		ssize_t w = send(fd, data + off, (size_t)(n - off), MSG_NOSIGNAL);

		if (w > 0) {
			off += w;
		} else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			int r = wait_fd(fd, POLLOUT, cancel_fd, deadline_ms);

			if (r <= 0) {
				if (r == 0)
					errno = ETIMEDOUT;
				return -1;
			}
		} else {
			return -1;
		}
	}
	(void)BIO_reset(wbio);
	return 0;
}

/* The exchange on connected `fd`. Returns the response, or NULL with `err`. */
static OCSP_RESPONSE *exchange(int fd, const char *hostport, const char *path, OCSP_REQUEST *req,
                               long deadline_ms, int cancel_fd, char *err, size_t errlen)
{
	BIO *wbio = BIO_new(BIO_s_mem()), *rbio = BIO_new(BIO_s_mem());
	OSSL_HTTP_REQ_CTX *rctx = NULL;
	OCSP_RESPONSE *resp = NULL;
	const char *why = "cannot set up the request";
	char detail[160];

	if (wbio == NULL || rbio == NULL)
		goto out;
	BIO_set_mem_eof_return(rbio, -1); /* empty: "retry", not end of stream */
	rctx = OSSL_HTTP_REQ_CTX_new(wbio, rbio, 4096);
	if (rctx == NULL || OSSL_HTTP_REQ_CTX_set_request_line(rctx, 1, NULL, NULL, path) != 1 ||
	    OSSL_HTTP_REQ_CTX_add1_header(rctx, "Host", hostport) != 1 ||
	    OSSL_HTTP_REQ_CTX_set_expected(rctx, NULL, 1, 0, 0) != 1 ||
	    OSSL_HTTP_REQ_CTX_set1_req(rctx, "application/ocsp-request",
	                               ASN1_ITEM_rptr(OCSP_REQUEST), (const ASN1_VALUE *)req) != 1)
		goto out;
	OSSL_HTTP_REQ_CTX_set_max_response_length(rctx, OCSP_MAX_RESPONSE);
	for (;;) {
		char buf[4096];
		ssize_t n;
		int r = OSSL_HTTP_REQ_CTX_nbio_d2i(rctx, (ASN1_VALUE **)&resp,
		                                   ASN1_ITEM_rptr(OCSP_RESPONSE));

		if (flush_out(fd, wbio, cancel_fd, deadline_ms) != 0) {
			why = errno == ETIMEDOUT ? "timed out" : strerror(errno);
			goto out;
		}
		if (r == 1)
			break;
		if (r == 0) {
			const char *data = NULL;
			int flags = 0;
			unsigned long e = ERR_peek_last_error_data(&data, &flags);
			const char *text = e != 0 ? ERR_reason_error_string(e) : NULL;

			/* OpenSSL's HTTP client puts the status line in the error data. */
			snprintf(detail, sizeof(detail), "%s%s%s",
			         text != NULL ? text : "bad HTTP response",
			         data != NULL && (flags & ERR_TXT_STRING) && *data ? ": " : "",
			         data != NULL && (flags & ERR_TXT_STRING) ? data : "");
			why = detail;
			goto out;
		}
		r = wait_fd(fd, POLLIN, cancel_fd, deadline_ms);
		if (r <= 0) {
			why = r == 0 ? "timed out" : strerror(errno);
			goto out;
		}
		n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0) {
			why = strerror(errno);
			goto out;
		}
		if (n == 0)
			BIO_set_mem_eof_return(rbio, 0); /* the responder closed */
		else if (BIO_write(rbio, buf, (int)n) != n)
			goto out;
	}
	why = NULL;
out:
	if (why != NULL) {
		snprintf(err, errlen, "%s", why);
		OCSP_RESPONSE_free(resp);
		resp = NULL;
	}
	OSSL_HTTP_REQ_CTX_free(rctx); /* frees neither BIO given to OSSL_HTTP_REQ_CTX_new() */
	BIO_free(wbio);
	BIO_free(rbio);
	ERR_clear_error();
	return resp;
}

int ocsp_fetch(const char *url, X509 *leaf, X509 *issuer, long deadline_ms, int cancel_fd,
               unsigned char **der, long *len, char *err, size_t errlen)
{
	char *host = NULL, *port = NULL, *path = NULL, *query = NULL, hostport[300];
	char fullpath[OCSP_URL_MAX + 2];
	char lower[OCSP_URL_MAX + 1];
	struct addrinfo *ai = NULL;
	OCSP_REQUEST *req = NULL;
	OCSP_CERTID *id;
	OCSP_RESPONSE *resp = NULL;
	int ssl = 0, fd = -1, n, rc = -1, cancel_state;
	char why[160] = "";

	*der = NULL;
	*len = 0;
	/* A thread cancelled here would leave a hidden descriptor or a lookup behind. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	if (net.connect == NULL || net.getaddrinfo == NULL || net.getsockopt == NULL ||
	    net.adopt == NULL || net.release == NULL) {
		snprintf(why, sizeof(why), "no network access set up");
		goto out;
	}
	if (!url_is_clean(url)) {
		snprintf(why, sizeof(why), "URL holds spaces or control characters");
		goto out;
	}
	/* The scheme is case-insensitive (RFC 3986 section 3.1); OpenSSL's parser is not. */
	if (strncasecmp(url, "http://", 7) != 0 || strlen(url) > OCSP_URL_MAX) {
		snprintf(why, sizeof(why), "not an http:// URL");
		goto out;
	}
	snprintf(lower, sizeof(lower), "http://%s", url + 7);
	if (OSSL_HTTP_parse_url(lower, &ssl, NULL, &host, &port, NULL, &path, &query, NULL) != 1 ||
	    ssl || host == NULL || *host == '\0') {
		snprintf(why, sizeof(why), "not an http:// URL");
		goto out;
	}
	snprintf(fullpath, sizeof(fullpath), "%s%s%s", path,
	         query != NULL && *query != '\0' ? "?" : "", query != NULL ? query : "");
	snprintf(hostport, sizeof(hostport), strchr(host, ':') != NULL ? "[%s]:%s" : "%s:%s", host,
	         port);
	req = OCSP_REQUEST_new();
	id = OCSP_cert_to_id(NULL, leaf, issuer);
	if (req == NULL || id == NULL || OCSP_request_add0_id(req, id) == NULL) {
		OCSP_CERTID_free(id);
		snprintf(why, sizeof(why), "cannot build the request");
		goto out;
	}
	if (resolve(host, port, deadline_ms, cancel_fd, &ai, why, sizeof(why)) != 0)
		goto out;
	fd = open_conn(ai, deadline_ms, cancel_fd, why, sizeof(why));
	if (fd < 0)
		goto out;
	resp = exchange(fd, hostport, fullpath, req, deadline_ms, cancel_fd, why, sizeof(why));
	if (resp == NULL)
		goto out;
	n = i2d_OCSP_RESPONSE(resp, der);
	if (n <= 0) {
		*der = NULL;
		snprintf(why, sizeof(why), "cannot encode the response");
		goto out;
	}
	*len = n;
	rc = 0;
out:
	if (rc != 0)
		snprintf(err, errlen, "OCSP responder %.200s: %s",
		         url_is_clean(url) ? url : "(malformed URL)", why);
	if (fd >= 0)
		net.release(fd);
	freeaddrinfo(ai);
	OCSP_RESPONSE_free(resp);
	OCSP_REQUEST_free(req);
	OPENSSL_free(host);
	OPENSSL_free(port);
	OPENSSL_free(path);
	OPENSSL_free(query);
	ERR_clear_error();
	pthread_setcancelstate(cancel_state, NULL);
	return rc;
}

/* --- the cache ----------------------------------------------------------------- */

struct cache_slot {
	unsigned char leaf[32]; /* SHA-256 of the leaf certificate */
	unsigned char *der;     /* NULL: free slot */
	long len;
	time_t expires;
	int status;         /* V_OCSP_CERTSTATUS_*, or -1 when not said */
	time_t this_update; /* of the answer */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache_slot cache[OCSP_CACHE_SLOTS];

static bool leaf_digest(X509 *leaf, unsigned char md[32])
{
	unsigned int n = 0;

	return X509_digest(leaf, EVP_sha256(), md, &n) == 1 && n == 32;
}

int ocsp_cache_get(X509 *leaf, time_t now, unsigned char **der, long *len)
{
	unsigned char md[32];
	int i, rc = -1;

	*der = NULL;
	if (!leaf_digest(leaf, md))
		return -1;
	pthread_mutex_lock(&cache_lock);
	for (i = 0; i < OCSP_CACHE_SLOTS; i++) {
		struct cache_slot *s = &cache[i];

		if (s->der == NULL || memcmp(s->leaf, md, sizeof(md)) != 0)
			continue;
		if (s->expires <= now) {
			OPENSSL_free(s->der);
			s->der = NULL;
			break;
		}
		*der = OPENSSL_memdup(s->der, (size_t)s->len);
		*len = s->len;
		rc = *der != NULL ? 0 : -1;
		break;
	}
	pthread_mutex_unlock(&cache_lock);
	return rc;
}

/* Caller holds cache_lock: the slot for `md`, or NULL. */
static struct cache_slot *cache_find(const unsigned char md[32])
{
	int i;

	for (i = 0; i < OCSP_CACHE_SLOTS; i++)
		if (cache[i].der != NULL && memcmp(cache[i].leaf, md, 32) == 0)
			return &cache[i];
	return NULL;
}

void ocsp_cache_put_answer(X509 *leaf, const unsigned char *der, long len, time_t expires,
                           int status, time_t this_update)
{
	unsigned char md[32], *copy;
	struct cache_slot *victim;
	int i;

	if (len <= 0 || !leaf_digest(leaf, md) || (copy = OPENSSL_memdup(der, (size_t)len)) == NULL)
		return;
	pthread_mutex_lock(&cache_lock);
	victim = cache_find(md);
	if (victim != NULL &&
	    ((victim->status == V_OCSP_CERTSTATUS_REVOKED && status != V_OCSP_CERTSTATUS_REVOKED) ||
	     this_update < victim->this_update)) {
		/* Revoked stays revoked; an older answer never replaces a newer one. */
		pthread_mutex_unlock(&cache_lock);
		OPENSSL_free(copy);
		return;
	}
	for (i = 0; victim == NULL && i < OCSP_CACHE_SLOTS; i++)
		if (cache[i].der == NULL)
			victim = &cache[i];
	if (victim == NULL) {
		/* Full: the entry that expires first makes room. */
		victim = &cache[0];
		for (i = 1; i < OCSP_CACHE_SLOTS; i++)
			if (cache[i].expires < victim->expires)
				victim = &cache[i];
	}
	OPENSSL_free(victim->der);
	memcpy(victim->leaf, md, sizeof(md));
	victim->der = copy;
	victim->len = len;
	victim->expires = expires;
	victim->status = status;
	victim->this_update = this_update;
	pthread_mutex_unlock(&cache_lock);
}

void ocsp_cache_put(X509 *leaf, const unsigned char *der, long len, time_t expires)
{
	ocsp_cache_put_answer(leaf, der, len, expires, -1, 0);
}

void ocsp_cache_drop(X509 *leaf)
{
	unsigned char md[32];
	struct cache_slot *s;

	if (!leaf_digest(leaf, md))
		return;
	pthread_mutex_lock(&cache_lock);
	s = cache_find(md);
	if (s != NULL) {
		OPENSSL_free(s->der);
		s->der = NULL;
	}
	pthread_mutex_unlock(&cache_lock);
}

void ocsp_cache_clear(void)
{
	int i;

	pthread_mutex_lock(&cache_lock);
	for (i = 0; i < OCSP_CACHE_SLOTS; i++) {
		OPENSSL_free(cache[i].der);
		cache[i].der = NULL;
	}
	pthread_mutex_unlock(&cache_lock);
}

void ocsp_atfork_prepare(void)
{
	pthread_mutex_lock(&cache_lock);
}

void ocsp_atfork_parent(void)
{
	pthread_mutex_unlock(&cache_lock);
}

void ocsp_atfork_child(void)
{
	/* No lookup thread came along: their count and its lock start afresh. */
	pthread_mutex_init(&cache_lock, NULL);
	pthread_mutex_init(&lookups_lock, NULL);
	lookups = 0;
}
