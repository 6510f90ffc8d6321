/*
 * policy.c: first-match rules over destinations, and the contexts per rule.
 *
 * Matching works on the destination address (IPv4 compared as IPv4-mapped
 * IPv6, so a v4 CIDR also matches a mapped address on an IPv6 socket), the
 * port, and the host name the program resolved for that address.  Rules are
 * few and checked once per connect(); a linear scan is the right structure.
 */
#include "policy.h"

#include "tlsio.h"

#include <arpa/inet.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct policy the_policy;
static pthread_once_t policy_once = PTHREAD_ONCE_INIT;

/* The destination as a 16-byte key and a port. */
static bool dest_key(const struct sockaddr *sa, unsigned char key[16], unsigned int *port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		memset(key, 0, 10);
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &in->sin_addr, 4);
		*port = ntohs(in->sin_port);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		memcpy(key, &in6->sin6_addr, 16);
		*port = ntohs(in6->sin6_port);
		return true;
	}
	return false;
}

static bool prefix_matches(const unsigned char *a, const unsigned char *b, unsigned int bits)
{
	unsigned int whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[whole] ^ b[whole]) & (0xff << (8 - rest))) == 0;
}

bool policy_match_one(const struct conf_match *m, const struct sockaddr *addr, const char *name)
{
	unsigned char key[16];
	unsigned int port;
	size_t n, s;

	if (!dest_key(addr, key, &port) || port < m->port_lo || port > m->port_hi)
		return false;
	switch (m->kind) {
	case MATCH_ANY:
		return true;
	case MATCH_ADDR:
		return prefix_matches(key, m->addr, m->prefix);
	case MATCH_NAME:
		return name != NULL && strcmp(name, m->name) == 0;
	case MATCH_SUFFIX:
		/* "*.example.com" matches a.example.com and a.b.example.com, not example.com. */
		if (name == NULL)
			return false;
		n = strlen(name);
		s = strlen(m->name);
		return n > s && strcmp(name + n - s, m->name) == 0;
	}
	return false;
}

const struct conf_rule *policy_match(const struct shim_conf *c, const struct sockaddr *addr,
                                     const char *name, size_t *index)
{
	size_t i, j;

	for (i = 0; i < c->nrules; i++) {
		const struct conf_rule *r = &c->rules[i];

		for (j = 0; j < r->nmatch; j++) {
			if (policy_match_one(&r->match[j], addr, name)) {
				if (index != NULL)
					*index = i;
				return r;
			}
		}
	}
	return NULL;
}

const struct conf_inbound *policy_inbound(const struct policy *p, const struct sockaddr *local,
                                          SSL_CTX **ctx)
{
	const struct shim_conf *c = p->conf;
	size_t i, j;

	for (i = 0; i < c->ninbound; i++) {
		for (j = 0; j < c->inbound[i].nlisten; j++) {
			const struct conf_match *m = &c->inbound[i].listen[j];

			/* Listeners have addresses, not names. */
			if (m->kind == MATCH_NAME || m->kind == MATCH_SUFFIX)
				continue;
			if (policy_match_one(m, local, NULL)) {
				*ctx = p->inbound_ctx[i];
				return &c->inbound[i];
			}
		}
	}
	*ctx = p->inbound_dft_ctx;
	return &c->inbound_dft;
}

bool policy_admits(const struct conf_inbound *in, const struct sockaddr *peer)
{
	size_t i;

	if (in->nallow == 0)
		return true;
	for (i = 0; i < in->nallow; i++)
		if (policy_match_one(&in->allow_from[i], peer, NULL))
			return true;
	return false;
}

bool policy_is_loopback(const struct sockaddr *addr)
{
	static const unsigned char v6_loop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
	unsigned char key[16];
	unsigned int port;

	if (!dest_key(addr, key, &port))
		return false;
	if (memcmp(key, v6_loop, 16) == 0)
		return true;
	/* IPv4 (mapped) 127.0.0.0/8 */
	return key[10] == 0xff && key[11] == 0xff && key[12] == 127 &&
	       memcmp(key, "\0\0\0\0\0\0\0\0\0\0", 10) == 0;
}

int policy_build(struct policy *p, const struct shim_conf *c)
{
	char err[400];
	size_t i;

	memset(p, 0, sizeof(*p));
	p->conf = c;
	if (!c->usable) {
		snprintf(p->error, sizeof(p->error), "%s", c->error);
		return -1;
	}
	p->rule_ctx = calloc(c->nrules > 0 ? c->nrules : 1, sizeof(SSL_CTX *));
	if (p->rule_ctx == NULL) {
		snprintf(p->error, sizeof(p->error), "out of memory");
		return -1;
	}
	if (c->tls.ca_file != NULL || c->tls.ca_dir != NULL || c->tls.approved_cert != NULL) {
		p->global_ctx = tlsio_ctx_new(&c->tls, err, sizeof(err));
		if (p->global_ctx == NULL)
			goto fail_global;
	}
	for (i = 0; i < c->nrules; i++) {
		if (c->rules[i].action != ACTION_TLS)
			continue;
		p->rule_ctx[i] = tlsio_ctx_new(&c->rules[i].tls, err, sizeof(err));
		if (p->rule_ctx[i] == NULL) {
			snprintf(p->error, sizeof(p->error), "%s%s[%s]: %s", c->file ? c->file : "",
			         c->file ? ": " : "", c->rules[i].section, err);
			return -1;
		}
	}
	if (c->ninbound > 0) {
		p->inbound_ctx = calloc(c->ninbound, sizeof(SSL_CTX *));
		if (p->inbound_ctx == NULL) {
			snprintf(p->error, sizeof(p->error), "out of memory");
			return -1;
		}
	}
	for (i = 0; i < c->ninbound; i++) {
		const struct conf_inbound *in = &c->inbound[i];

		if (in->action != ACTION_TLS || in->cert == NULL)
			continue;
		p->inbound_ctx[i] = tlsio_server_ctx_new(in, err, sizeof(err));
		if (p->inbound_ctx[i] == NULL) {
			snprintf(p->error, sizeof(p->error), "%s%s[%s]: %s", c->file ? c->file : "",
			         c->file ? ": " : "", in->section, err);
			return -1;
		}
	}
	if (c->inbound_dft.cert != NULL) {
		p->inbound_dft_ctx = tlsio_server_ctx_new(&c->inbound_dft, err, sizeof(err));
		if (p->inbound_dft_ctx == NULL)
			goto fail_global;
	}
	p->usable = true;
	return 0;
fail_global:
	snprintf(p->error, sizeof(p->error), "%s%s[tlsshim]: %s", c->file ? c->file : "",
	         c->file ? ": " : "", err);
	return -1;
}

void policy_free(struct policy *p)
{
	size_t i;

	for (i = 0; p->inbound_ctx != NULL && p->conf != NULL && i < p->conf->ninbound; i++)
		SSL_CTX_free(p->inbound_ctx[i]);
	free(p->inbound_ctx);
	SSL_CTX_free(p->inbound_dft_ctx);
	for (i = 0; p->rule_ctx != NULL && p->conf != NULL && i < p->conf->nrules; i++)
		SSL_CTX_free(p->rule_ctx[i]);
	free(p->rule_ctx);
	SSL_CTX_free(p->global_ctx);
	memset(p, 0, sizeof(*p));
}

static void policy_build_once(void)
{
	(void)policy_build(&the_policy, conf_get());
}

const struct policy *policy_get(void)
{
	pthread_once(&policy_once, policy_build_once);
	return &the_policy;
}
