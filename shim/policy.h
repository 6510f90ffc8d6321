/*
 * policy.h: the decision for each destination, and the TLS contexts that
 * carry it out.
 *
 * policy_get() reads the configuration once and builds one SSL_CTX for the
 * global settings and one for every `tls` rule, so that every configuration
 * error (a key that does not match its certificate, an unreadable CA file, a
 * bad cipher string) is found before the first connection and refuses them
 * all, rather than surfacing on the connection that needed that rule.
 */
#ifndef TLSSHIM_POLICY_H
#define TLSSHIM_POLICY_H

#include "compat.h"

#include "conf.h"

#include <openssl/ssl.h>
#include <stdbool.h>

struct policy {
	const struct shim_conf *conf;
	bool usable;
	char error[600];
	SSL_CTX *global_ctx;      /* NULL when no global trust: unmatched TLS is refused */
	SSL_CTX **rule_ctx;       /* per rule; NULL for plaintext and deny rules */
	SSL_CTX *inbound_dft_ctx; /* listeners no section matches; NULL: no cert */
	SSL_CTX **inbound_ctx;    /* per inbound section; NULL for plaintext ones */
};

/* The process's policy, built on first use. Never NULL; immutable. */
const struct policy *policy_get(void);

/*
 * Builds a policy for configuration `c` into `p` (for `tlsshim check` and
 * tests).  Returns 0 when usable, -1 with p->error otherwise.
 */
int policy_build(struct policy *p, const struct shim_conf *c);

/* Frees what policy_build() made (the fuzzer and tests). */
void policy_free(struct policy *p);

/*
 * The first rule whose patterns match the destination `addr` (with its
 * port) and the resolved host name `name` (NULL when the program connected
 * by address), or NULL when none does.  *index gets the rule's position.
 */
const struct conf_rule *policy_match(const struct shim_conf *c, const struct sockaddr *addr,
                                     const char *name, size_t *index);

/*
 * The inbound section for a listening socket bound to `local`: the first
 * whose `listen` matches, or &c->inbound_dft when none does.  *ctx gets its
 * server context (NULL for plaintext, or when no certificate is configured).
 */
const struct conf_inbound *policy_inbound(const struct policy *p, const struct sockaddr *local,
                                          SSL_CTX **ctx);

/* True when `peer` may connect to `in` (allow_from unset, or a CIDR matches). */
bool policy_admits(const struct conf_inbound *in, const struct sockaddr *peer);

/* True when one pattern matches. */
bool policy_match_one(const struct conf_match *m, const struct sockaddr *addr, const char *name);

/* True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
bool policy_is_loopback(const struct sockaddr *addr);

#endif
