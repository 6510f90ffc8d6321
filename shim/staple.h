/*
 * staple.h: OCSP stapling for inbound mode (RFC 6066 section 8, RFC 6961).
 *
 * A listener's server certificate gets its OCSP response stapled from one of
 * two sources: a file the operator keeps fresh (`ocsp_response_file`, read
 * again when it changes), or the responder named in the certificate's AIA
 * extension (`ocsp_fetch = yes`), asked by a background thread of the
 * process (started at its first handshake) and asked again halfway to the
 * response's nextUpdate, sooner after a failure.  A handshake never waits for a fetch, and a stale response
 * (nextUpdate passed) is never stapled (RFC 6960 section 4.2.2.1).
 */
#ifndef TLSSHIM_STAPLE_H
#define TLSSHIM_STAPLE_H

#include "compat.h"

#include <openssl/ssl.h>

struct conf_inbound;

/*
 * Sets up stapling on the server context `ctx` (its certificate already
 * loaded) for section `in`, when `in` asks for it.  With ocsp_fetch the
 * certificate must name an http:// OCSP responder and its chain file must
 * hold the issuing CA's certificate; each fetch is bounded by
 * in->ocsp_fetch_timeout_ms.  Nothing is fetched until staple_start().  Returns 0,
 * or -1 with `err` saying why.
 */
int staple_attach(SSL_CTX *ctx, const struct conf_inbound *in, char *err,
                  size_t errlen) TLSSHIM_WUR;

/*
 * Starts this process's refresher thread when a source needs one and it is
 * not running (real_init() must have succeeded: the shim's constructor sees
 * to it).  The status callback calls it at each process's first
 * handshake (so a server that forks its workers after listen() forks no
 * thread); never blocks on the network.
 */
void staple_start(void);

/*
 * Waits until the source of `ctx` holds a current fetched response, at most
 * `timeout_ms`.  Returns 0 when it does, -1 otherwise (tests).
 */
int staple_wait(SSL_CTX *ctx, long timeout_ms);

/*
 * Fork handling: the refresher's lock and every source's lock are held
 * across fork (so no half-replaced response is copied), then released; the
 * child gets fresh locks and no refresher thread.
 */
void staple_atfork_prepare(void);
void staple_atfork_parent(void);
void staple_atfork_child(void);

#endif
