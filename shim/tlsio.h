/*
 * tlsio.h: the TLS side of a wrapped connection: the client context built
 * from the configuration, a socket BIO that can never raise SIGPIPE, the
 * bounded client handshake, and a description of why a handshake failed.
 */
#ifndef TLSSHIM_TLSIO_H
#define TLSSHIM_TLSIO_H

#include "compat.h"

#include <openssl/ssl.h>
#include <stdbool.h>
#include <time.h>

/* Why a handshake failed, filled for the log line. Strings may be empty. */
struct tls_failure {
	const char *event; /* handshake_failed or refused_plaintext */
	const char *stage; /* tcp, handshake, verify, timeout */
	char reason[256];
	int x509_err; /* -1 when not a verification failure */
	int depth;    /* -1 when unknown */
	char subject[256];
	char issuer[256];
	char serial[80];
	char sha256[96];
	char not_after[32];
	char tls[16];
	char alert[64];
	char ocsp[48]; /* good, revoked, unknown, none, bad:<why>, or "" when off */
};

struct conf_tls;

/*
 * Builds a client SSL_CTX for the TLS settings `t` (which must outlive it):
 * trust only t's anchors and approved certificates, pins, client
 * certificate, protocol floor and ciphers.  Returns NULL with `err` saying
 * why (unreadable or empty CA file, key that does not match its certificate,
 * bad cipher string, ...).
 */
SSL_CTX *tlsio_ctx_new(const struct conf_tls *t, char *err, size_t errlen);

/*
 * Runs exactly the certificate decision of a live connection on `leaf` (with
 * `untrusted` intermediates) offline: for host `name` or address `ip`
 * (either may be NULL), at time `at` (0: now).  Returns 0 to accept, or -1
 * with `why` filled.
 */
int tlsio_verify_offline(SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * untrusted, const char *name,
                         const char *ip, time_t at, struct tls_failure *why);

struct conf_inbound;

/*
 * Builds a server SSL_CTX for inbound section `in` (which must outlive it):
 * its certificate and key, client certificate policy and identity allowlist,
 * protocol floor, OCSP stapling from `ocsp_response_file`, session tickets.
 * Returns NULL with `err` saying why.
 */
SSL_CTX *tlsio_server_ctx_new(const struct conf_inbound *in, char *err, size_t errlen);

/*
 * Creates a server SSL object on the accepted, non-blocking socket `fd`.
 * Returns NULL on allocation failure.
 */
SSL *tlsio_server_new(SSL_CTX *ctx, int fd);

/* Records verification failures of `ssl` into `why` (which must outlive it). */
void tlsio_track_failure(SSL *ssl, struct tls_failure *why);

/* Describes a failed server handshake (SSL_do_handshake's error) in `why`. */
void tlsio_server_failure(SSL *ssl, int sslerr, int sys_errno, struct tls_failure *why);

/*
 * Returns the process's client SSL_CTX, built on first use from the
 * configuration, or NULL with `err` (size `errlen`) saying why it cannot be
 * built (unreadable or empty CA file, ...).  The context is shared and never
 * modified after it is built.
 */
SSL_CTX *tlsio_client_ctx(char *err, size_t errlen);

/*
 * Creates an SSL object for the connected, non-blocking socket `fd`, with the
 * expected identity: `name` (sent as SNI and checked against DNS SANs), or
 * when `name` is NULL the literal address `peer` (checked against IP SANs).
 * Returns NULL on allocation failure.
 */
SSL *tlsio_client_new(SSL_CTX *ctx, int fd, const char *name, const struct sockaddr *peer);

/*
 * Runs the client handshake on `ssl` until it completes or `deadline_ms`
 * (CLOCK_MONOTONIC milliseconds) passes.  Returns 0 when the peer is
 * verified; otherwise -1 with errno ECONNREFUSED (or ETIMEDOUT) and `why`
 * filled.
 */
int tlsio_handshake(SSL *ssl, long deadline_ms, struct tls_failure *why) TLSSHIM_WUR;

/* CLOCK_MONOTONIC in milliseconds. */
long tlsio_now_ms(void);

/*
 * Waits until `fd` is ready for `events` (POLLIN/POLLOUT) or the deadline
 * passes, retrying on EINTR.  Returns 1 ready, 0 timed out, -1 error.
 */
int tlsio_wait(int fd, short events, long deadline_ms);

/*
 * Writes `cert`'s SPKI pin, "sha256//BASE64", into `out`.  Returns 0, or -1.
 */
int tlsio_spki_pin(X509 *cert, char *out, size_t outlen);

/* Fills the certificate fields of `why` from `cert` (may be NULL). */
void tlsio_describe_cert(X509 *cert, struct tls_failure *why);

#endif
