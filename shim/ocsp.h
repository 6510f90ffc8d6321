/*
 * ocsp.h: OCSP responses (RFC 6960) for both directions: checking a response
 * against a certificate, fetching one from the responder the certificate
 * names (its Authority Information Access extension, over plain HTTP as RFC
 * 6960 appendix A.1 describes), and a small per-process cache of fetched
 * responses, each kept no longer than its nextUpdate.
 *
 * The fetch is the shim's own traffic: it connects with the hook set by
 * ocsp_set_net() (the shim passes the C library's connect, so the request is
 * not itself subject to the rules), on a hidden descriptor, never raises
 * SIGPIPE, and is bounded by a deadline in every step, name resolution
 * included.  What it brings back is only trusted after ocsp_check().
 */
#ifndef TLSSHIM_OCSP_H
#define TLSSHIM_OCSP_H

#include "compat.h"

#include <openssl/x509.h>
#include <stdbool.h>
#include <netdb.h>
#include <sys/socket.h>
#include <time.h>

/* The verdict on one response. */
struct ocsp_verdict {
	int status;       /* V_OCSP_CERTSTATUS_GOOD/REVOKED/UNKNOWN, or -1: bad response */
	char outcome[48]; /* good, revoked, unknown, bad:<why> */
	char reason[200]; /* for the log: "revoked (keyCompromise)", "signature does not verify" */
	time_t this_update;
	time_t next_update; /* 0: the response gives none */
};

/*
 * Checks the DER response `der` (`len` bytes) about `leaf`, issued by
 * `issuer`: a successful basic response, signed by the issuer or by a
 * responder certificate it delegated to (id-kp-OCSPSigning), verified
 * against `store` with `untrusted` as extra certificates; a single response
 * for the leaf's CertID (whatever hash it uses); thisUpdate not after
 * now + skew_s, nextUpdate not before now - skew_s.  Returns 0 with
 * v->status the certificate's status, or -1 with v->status -1 and v->outcome
 * "bad:parse|status|signature|signer|serial|future|stale".
 */
int ocsp_check(const unsigned char *der, long len, X509 *leaf, X509 *issuer,
               STACK_OF(X509) * untrusted, X509_STORE *store, long skew_s, time_t now,
               struct ocsp_verdict *v);

/* True when `cert` carries the TLS feature status_request (RFC 7633 must-staple). */
bool ocsp_must_staple(X509 *cert);

/*
 * Writes the first http:// OCSP responder URL of `cert`'s AIA extension into
 * `url`.  Returns 0, or -1 with `err` saying why not (none named, only
 * https or other schemes, too long).
 */
int ocsp_responder_url(X509 *cert, char *url, size_t urllen, char *err, size_t errlen);

/*
 * How the fetch reaches the network.  The shim passes the C library's own
 * functions (real.*) and its hidden-descriptor helpers, so that its request
 * never goes through its own interposed symbols (which would apply the rules
 * to it and record the responder's name as a name the program resolved).
 * The command-line tool and tests pass libc's.  Until it is set, every fetch
 * fails.
 */
struct ocsp_net {
	int (*connect)(int, const struct sockaddr *, socklen_t);
	int (*getsockopt)(int, int, int, void *, socklen_t *);
	int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
	int (*adopt)(int fd);    /* takes a new descriptor over (returns it, or -1) */
	void (*release)(int fd); /* closes an adopted descriptor */
};

/* Sets the network hooks (once, before the first fetch). */
void ocsp_set_net(const struct ocsp_net *net);

/*
 * Asks the responder at `url` about `leaf` (issued by `issuer`): one POST of
 * an OCSP request without a nonce (so that responders may answer from
 * pre-signed responses, RFC 5019), response at most 64 KiB.  Every step ends
 * by `deadline_ms` (CLOCK_MONOTONIC milliseconds); a readable `cancel_fd`
 * (-1: none) stops it early.  Returns 0 with the response's DER in *der
 * (OPENSSL_free it) and its length in *len, or -1 with `err` saying why.
 * The response is not checked: use ocsp_check().
 */
int ocsp_fetch(const char *url, X509 *leaf, X509 *issuer, long deadline_ms, int cancel_fd,
               unsigned char **der, long *len, char *err, size_t errlen) TLSSHIM_WUR;

/*
 * The per-process cache of fetched responses, by leaf certificate.
 * ocsp_cache_get() returns 0 with a copy (OPENSSL_free it) of a response
 * stored for `leaf` whose expiry is still ahead of `now`, or -1.
 * ocsp_cache_put() stores a copy until `expires` (at most
 * OCSP_CACHE_SLOTS entries: the one expiring first makes room).
 */
#define OCSP_CACHE_SLOTS 64
int ocsp_cache_get(X509 *leaf, time_t now, unsigned char **der, long *len);
void ocsp_cache_put(X509 *leaf, const unsigned char *der, long len, time_t expires);

/*
 * Like ocsp_cache_put(), for an answer about `leaf` with `status`
 * (V_OCSP_CERTSTATUS_*) made at `this_update`: an entry that says revoked is
 * never replaced by one that does not, and an older answer (earlier
 * thisUpdate) never replaces a newer one, so that a replayed old "good"
 * cannot undo a fresher "revoked".
 */
void ocsp_cache_put_answer(X509 *leaf, const unsigned char *der, long len, time_t expires,
                           int status, time_t this_update);

/* Forgets `leaf`'s entry (an answer that no longer passes its check). */
void ocsp_cache_drop(X509 *leaf);

/* Empties the cache (tests). */
void ocsp_cache_clear(void);

/* Fork handling: the cache lock is held across fork, then released (child: made anew). */
void ocsp_atfork_prepare(void);
void ocsp_atfork_parent(void);
void ocsp_atfork_child(void);

#endif
