/*
 * staple.c: the response an inbound listener staples (see staple.h).
 *
 * Each listener section that staples has one source.  The OpenSSL status
 * callback copies the source's current response under the source's lock
 * (file sources re-read the file first when its modification time changed).
 * Fetching sources are served by one refresher thread per process: it
 * sleeps until the earliest source is due, fetches with a deadline
 * (ocsp_fetch(), cancelled at exit through an eventfd), checks the answer
 * exactly as a client would (ocsp_check() against the issuer in the chain
 * file), installs it, and logs what happened: `staple_refreshed` (info) or
 * `staple_failed` (warning; error when the answer says revoked or unknown).
 *
 * Schedule: a good answer is fetched again halfway between its thisUpdate
 * and nextUpdate (never sooner than REFRESH_MIN_S), one without nextUpdate
 * after REFRESH_NO_NEXT_S; a failure is retried after 5 s, doubling up to
 * RETRY_MAX_S, while the last good answer stays stapled until it is stale.
 */
#include "staple.h"

#include "conf.h"
#include "fdreg.h"
#include "log.h"
#include "ocsp.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REFRESH_MIN_S     10
#define REFRESH_NO_NEXT_S 3600
#define RETRY_FIRST_S     5
#define RETRY_MAX_S       300
#define STAPLE_SKEW_S     60 /* on thisUpdate: a responder's clock a little ahead */

struct staple_src {
	pthread_mutex_t lock; /* guards der, len, next_update, mtime */
	unsigned char *der;   /* the response to staple, or NULL */
	long len;
	time_t next_update; /* 0: none given (file sources) */
	/* file sources */
	const char *path;
	struct timespec mtime; /* of what was read, with its size and inode */
	off_t size;
	ino_t ino;
	/* fetching sources (fields below are the refresher's, set before it runs) */
	bool fetch;
	const char *section;
	X509 *leaf;
	X509 *issuer;
	STACK_OF(X509) * chain;
	X509_STORE *store; /* the issuer, trusted for this purpose only */
	char url[600];
	long timeout_ms;
	time_t due;    /* next fetch (wall clock) */
	int backoff_s; /* 0 after a success */
	bool ever;     /* a response was installed once */
	struct staple_src *next;
};

static pthread_mutex_t refresh_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t refresh_cond = PTHREAD_COND_INITIALIZER;
static struct staple_src *sources; /* append-only, guarded by refresh_lock */
static bool any_fetch;
static bool refresher_running; /* in this process */
static bool refresher_stop;
static bool atexit_set;
static pthread_t refresher;
static int cancel_fd = -1;

/* --- the status callback ----------------------------------------------------- */

/* Caller holds s->lock: re-reads the operator's file when it changed. */
static void reload_file(struct staple_src *s)
{
	struct stat st;
	BIO *in;
	OCSP_RESPONSE *resp;
	OCSP_BASICRESP *basic;
	unsigned char *der = NULL;
	int n;

	/* Any change: a file rewritten twice within one second, or replaced, too. */
	if (stat(s->path, &st) != 0 ||
	    (st.st_mtim.tv_sec == s->mtime.tv_sec && st.st_mtim.tv_nsec == s->mtime.tv_nsec &&
	     st.st_size == s->size && st.st_ino == s->ino))
		return;
	in = BIO_new_file(s->path, "rb");
	resp = in != NULL ? d2i_OCSP_RESPONSE_bio(in, NULL) : NULL;
	basic = resp != NULL ? OCSP_response_get1_basic(resp) : NULL;
	n = resp != NULL ? i2d_OCSP_RESPONSE(resp, &der) : -1;
	OPENSSL_free(s->der);
	s->der = NULL;
	s->len = 0;
	s->next_update = 0;
	if (n > 0 && basic != NULL && OCSP_resp_count(basic) > 0) {
		ASN1_GENERALIZEDTIME *next = NULL;
		struct tm tm;

		OCSP_single_get0_status(OCSP_resp_get0(basic, 0), NULL, NULL, NULL, &next);
		if (next != NULL && ASN1_TIME_to_tm(next, &tm) == 1)
			s->next_update = timegm(&tm);
		s->der = der;
		s->len = n;
		der = NULL;
	}
	OPENSSL_free(der);
	OCSP_BASICRESP_free(basic);
	OCSP_RESPONSE_free(resp);
	BIO_free(in);
	ERR_clear_error();
	s->mtime = st.st_mtim;
	s->size = st.st_size;
	s->ino = st.st_ino;
}

static int status_cb(SSL *ssl, void *arg)
{
	struct staple_src *s = arg;
	unsigned char *copy = NULL;
	long len = 0;

	if (s == NULL)
		return SSL_TLSEXT_ERR_NOACK;
	if (s->fetch)
		staple_start(); /* a forked child serves without its parent's thread */
	pthread_mutex_lock(&s->lock);
	if (s->path != NULL)
		reload_file(s);
	/* A stale response is not stapled (RFC 6960 section 4.2.2.1). */
	if (s->der != NULL && (s->next_update == 0 || s->next_update > time(NULL))) {
		copy = OPENSSL_memdup(s->der, (size_t)s->len);
		len = s->len;
	}
	pthread_mutex_unlock(&s->lock);
	if (copy == NULL)
		return SSL_TLSEXT_ERR_NOACK;
	if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, len) != 1) {
		OPENSSL_free(copy);
		return SSL_TLSEXT_ERR_NOACK;
	}
	return SSL_TLSEXT_ERR_OK;
}

/* --- set-up ---------------------------------------------------------------------- */

/* The certificate in `chain` that issued `leaf`, or NULL. */
static X509 *find_issuer(X509 *leaf, STACK_OF(X509) * chain)
{
	int i;

	for (i = 0; i < sk_X509_num(chain); i++)
		if (X509_check_issued(sk_X509_value(chain, i), leaf) == X509_V_OK)
			return sk_X509_value(chain, i);
	return NULL;
}

static int attach_fetch(SSL_CTX *ctx, struct staple_src *s, char *err, size_t errlen)
{
	STACK_OF(X509) *chain = NULL;
	X509 *leaf = SSL_CTX_get0_certificate(ctx), *issuer;
	char why[256];

	if (leaf == NULL || SSL_CTX_get0_chain_certs(ctx, &chain) != 1) {
		snprintf(err, errlen, "[%s] ocsp_fetch: no certificate", s->section);
		return -1;
	}
	if (ocsp_responder_url(leaf, s->url, sizeof(s->url), why, sizeof(why)) != 0) {
		snprintf(err, errlen, "[%s] ocsp_fetch: %s", s->section, why);
		return -1;
	}
	issuer = find_issuer(leaf, chain);
	if (issuer == NULL) {
		snprintf(err, errlen,
		         "[%s] ocsp_fetch: the issuing CA's certificate must follow the server "
		         "certificate in cert (a chain file)",
		         s->section);
		return -1;
	}
	s->store = X509_STORE_new();
	s->chain = X509_chain_up_ref(chain);
	if (s->store == NULL || s->chain == NULL || X509_STORE_add_cert(s->store, issuer) != 1 ||
	    X509_STORE_set_flags(s->store, X509_V_FLAG_PARTIAL_CHAIN) != 1 ||
	    X509_up_ref(leaf) != 1) {
		snprintf(err, errlen, "[%s] ocsp_fetch: out of memory", s->section);
		return -1;
	}
	s->leaf = leaf;
	if (X509_up_ref(issuer) != 1) {
		snprintf(err, errlen, "[%s] ocsp_fetch: out of memory", s->section);
		return -1;
	}
	s->issuer = issuer;
	return 0;
}

static void src_free(struct staple_src *s)
{
	X509_STORE_free(s->store);
	sk_X509_pop_free(s->chain, X509_free);
	X509_free(s->leaf);
	X509_free(s->issuer);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

int staple_attach(SSL_CTX *ctx, const struct conf_inbound *in, char *err, size_t errlen)
{
	struct staple_src *s;

	if (in->ocsp_response_file == NULL && !in->ocsp_fetch)
		return 0;
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->section = in->section != NULL ? in->section : "tlsshim";
	s->mtime.tv_sec = -1;
	s->timeout_ms = in->ocsp_fetch_timeout_ms > 0 ? in->ocsp_fetch_timeout_ms : 3000;
	if (in->ocsp_fetch) {
		s->fetch = true;
		if (attach_fetch(ctx, s, err, errlen) != 0) {
			src_free(s);
			return -1;
		}
	} else {
		s->path = in->ocsp_response_file;
	}
	SSL_CTX_set_tlsext_status_cb(ctx, status_cb);
	SSL_CTX_set_tlsext_status_arg(ctx, s);
	/* Sources live as long as the process: the refresher may hold one. */
	pthread_mutex_lock(&refresh_lock);
	s->next = sources;
	sources = s;
	any_fetch = any_fetch || s->fetch;
	pthread_cond_broadcast(&refresh_cond); /* a running refresher looks at it now */
	pthread_mutex_unlock(&refresh_lock);
	return 0;
}

/* --- the refresher ------------------------------------------------------------------ */

static void report(const struct staple_src *s, const char *event, int severity, const char *outcome,
                   const char *reason)
{
	struct log_event ev;
	char subject[256] = "", serial[80] = "";
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(s->leaf), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;

	X509_NAME_oneline(X509_get_subject_name(s->leaf), subject, sizeof(subject));
	snprintf(serial, sizeof(serial), "%s", hex != NULL ? hex : "");
	OPENSSL_free(hex);
	BN_free(bn);
	log_event_init(&ev, severity, event);
	ev.dir = "in";
	ev.rule = s->section;
	ev.stage = "ocsp";
	ev.reason = reason;
	ev.subject = subject;
	ev.serial = serial;
	ev.ocsp = outcome;
	log_emit(&ev);
}

static bool refresher_stopping(void)
{
	bool stop;

	pthread_mutex_lock(&refresh_lock);
	stop = refresher_stop;
	pthread_mutex_unlock(&refresh_lock);
	return stop;
}

/* Fetches, checks and installs one source's response; sets its next due time. */
static void refresh(struct staple_src *s)
{
	long deadline = 0;
	unsigned char *der = NULL;
	long len = 0;
	char err[400], reason[560];
	struct ocsp_verdict v = {.status = -1};
	struct timespec ts;
	time_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	deadline = (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + s->timeout_ms;
	if (ocsp_fetch(s->url, s->leaf, s->issuer, deadline, cancel_fd, &der, &len, err,
	               sizeof(err)) != 0) {
		snprintf(v.outcome, sizeof(v.outcome), "none");
		snprintf(reason, sizeof(reason), "%s", err);
	} else if (ocsp_check(der, len, s->leaf, s->issuer, s->chain, s->store, STAPLE_SKEW_S,
	                      time(NULL), &v) != 0) {
		snprintf(reason, sizeof(reason), "bad OCSP response from %.300s: %s", s->url,
		         v.reason);
	} else if (v.next_update != 0 && v.next_update <= time(NULL)) {
		/* Within the skew a client allows, but not worth stapling. */
		v.status = -1;
		snprintf(v.outcome, sizeof(v.outcome), "bad:stale");
		snprintf(reason, sizeof(reason), "bad OCSP response from %.300s: %s", s->url,
		         "nextUpdate has passed");
	} else if (v.status == V_OCSP_CERTSTATUS_UNKNOWN) {
		snprintf(reason, sizeof(reason), "%.300s: OCSP status unknown (not stapled; %s)",
		         s->url,
		         s->ever ? "the last good answer stays stapled until its nextUpdate"
		                 : "nothing is stapled");
	}
	now = time(NULL);
	if (v.status == V_OCSP_CERTSTATUS_GOOD || v.status == V_OCSP_CERTSTATUS_REVOKED) {
		time_t half = v.next_update != 0
		                      ? v.this_update + (v.next_update - v.this_update) / 2
		                      : now + REFRESH_NO_NEXT_S;

		/* Revoked is stapled too: clients must learn it (and refuse). */
		pthread_mutex_lock(&s->lock);
		OPENSSL_free(s->der);
		s->der = der;
		s->len = len;
		s->next_update = v.next_update != 0 ? v.next_update : now + REFRESH_NO_NEXT_S;
		pthread_mutex_unlock(&s->lock);
		der = NULL;
		s->ever = true;
		s->backoff_s = 0;
		s->due = half > now + REFRESH_MIN_S ? half : now + REFRESH_MIN_S;
		if (v.status == V_OCSP_CERTSTATUS_GOOD) {
			report(s, "staple_refreshed", LOG_INFO, v.outcome, s->url);
		} else {
			snprintf(reason, sizeof(reason), "this server's certificate is %s",
			         v.reason);
			report(s, "staple_failed", LOG_ERR, v.outcome, reason);
		}
	} else {
		s->backoff_s = s->backoff_s == 0                ? RETRY_FIRST_S
		               : s->backoff_s * 2 > RETRY_MAX_S ? RETRY_MAX_S
		                                                : s->backoff_s * 2;
		s->due = now + s->backoff_s;
		if (refresher_stopping())
			goto out; /* the process is exiting: nothing to report */
		report(s, "staple_failed",
		       v.status == V_OCSP_CERTSTATUS_UNKNOWN ? LOG_ERR : LOG_WARNING, v.outcome,
		       reason);
	}
out:
	OPENSSL_free(der);
	ERR_clear_error();
}

static void *refresher_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&refresh_lock);
	while (!refresher_stop) {
		struct staple_src *s;
		time_t now = time(NULL), wake = now + REFRESH_NO_NEXT_S;
		struct timespec until = {0, 0};

		for (s = sources; s != NULL && !refresher_stop; s = s->next) {
			if (!s->fetch)
				continue;
			if (s->due <= now) {
				pthread_mutex_unlock(&refresh_lock);
				refresh(s);
				pthread_mutex_lock(&refresh_lock);
				pthread_cond_broadcast(&refresh_cond); /* staple_wait() */
			}
			if (s->due < wake)
				wake = s->due;
		}
		if (refresher_stop)
			break;
		until.tv_sec = wake;
		pthread_cond_timedwait(&refresh_cond, &refresh_lock, &until);
	}
	pthread_mutex_unlock(&refresh_lock);
	return NULL;
}

/* At exit: stop the thread before the process's OpenSSL teardown. */
static void refresher_atexit(void)
{
	uint64_t one = 1;
	bool join;

	pthread_mutex_lock(&refresh_lock);
	join = refresher_running;
	refresher_stop = true;
	refresher_running = false;
	pthread_cond_broadcast(&refresh_cond);
	pthread_mutex_unlock(&refresh_lock);
	if (!join)
		return;
	if (write(cancel_fd, &one, sizeof(one)) < 0)
		log_debug("staple: cancel failed");
	pthread_join(refresher, NULL);
}

void staple_start(void)
{
	sigset_t all, old;
	int rc;

	pthread_mutex_lock(&refresh_lock);
	if (!any_fetch || refresher_running || refresher_stop) {
		pthread_mutex_unlock(&refresh_lock);
		return;
	}
	if (cancel_fd < 0)
		cancel_fd = fdreg_adopt(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
	if (cancel_fd < 0) {
		pthread_mutex_unlock(&refresh_lock);
		log_debug("staple: no eventfd");
		return;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&refresher, NULL, refresher_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc == 0) {
		refresher_running = true;
		if (!atexit_set && atexit(refresher_atexit) == 0)
			atexit_set = true;
	}
	pthread_mutex_unlock(&refresh_lock);
}

int staple_wait(SSL_CTX *ctx, long timeout_ms)
{
	struct staple_src *s = NULL;
	struct timespec until;
	int rc = -1;

	if (SSL_CTX_get_tlsext_status_arg(ctx, (void **)&s) != 1 || s == NULL)
		return -1;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&refresh_lock);
	for (;;) {
		bool have;

		pthread_mutex_lock(&s->lock);
		have = s->der != NULL && (s->next_update == 0 || s->next_update > time(NULL));
		pthread_mutex_unlock(&s->lock);
		if (have) {
			rc = 0;
			break;
		}
		if (pthread_cond_timedwait(&refresh_cond, &refresh_lock, &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&refresh_lock);
	return rc;
}

void staple_atfork_prepare(void)
{
	struct staple_src *s;

	pthread_mutex_lock(&refresh_lock);
	for (s = sources; s != NULL; s = s->next)
		pthread_mutex_lock(&s->lock);
}

void staple_atfork_parent(void)
{
	struct staple_src *s;

	for (s = sources; s != NULL; s = s->next)
		pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&refresh_lock);
}

void staple_atfork_child(void)
{
	struct staple_src *s;

	pthread_mutex_init(&refresh_lock, NULL);
	pthread_cond_init(&refresh_cond, NULL);
	refresher_running = false; /* the thread stayed in the parent */
	cancel_fd = -1; /* closed by fdreg_atfork_child(), with every hidden descriptor */
	for (s = sources; s != NULL; s = s->next)
		pthread_mutex_init(&s->lock, NULL);
}
