/*
 * conf.h: the shim's configuration, read once per process and immutable
 * afterwards (house rule 5).
 *
 * Sources, in order: built-in secure defaults; the configuration file named
 * by TLSSHIM_CONFIG (default /etc/tlsshim/tlsshim.conf when present), in
 * OpenSSL's configuration syntax and read with OpenSSL's NCONF API; then the
 * environment (TLSSHIM_CA_FILE, TLSSHIM_HANDSHAKE_TIMEOUT, TLSSHIM_LOG_*),
 * which overrides single global keys.  A configuration that cannot be used is
 * not an error the program sees at load time: conf_get() still returns a
 * structure, with `usable` false and `error` saying which file, line or key is
 * wrong, and every outbound connection is then refused.  Nothing falls back
 * to weaker settings.
 */
#ifndef TLSSHIM_CONF_H
#define TLSSHIM_CONF_H

#include "compat.h"

#include <stdbool.h>
#include <stddef.h>

#define CONF_MAX_PINS 32
#define CONF_PIN_LEN  32 /* SHA-256 */

enum conf_action { ACTION_TLS, ACTION_PLAINTEXT, ACTION_DENY };
enum conf_ocsp { OCSP_PREFER, OCSP_REQUIRE, OCSP_OFF };

/* TLS settings of the global section or of one rule (after inheritance). */
struct conf_tls {
	const char *ca_file;       /* approved CAs (PEM), or NULL */
	const char *ca_dir;        /* approved CAs (hashed directory), or NULL */
	const char *approved_cert; /* exactly-trusted certificates (PEM), or NULL */
	const char *cert;          /* client certificate chain (PEM), or NULL */
	const char *key;           /* its private key, or NULL */
	const char *ciphers;       /* TLS 1.2 cipher list, or NULL for OpenSSL's */
	const char *ciphersuites;  /* TLS 1.3 suites, or NULL */
	int min_protocol;          /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */
	enum conf_ocsp ocsp;
	int ocsp_skew_s;           /* tolerance on OCSP thisUpdate/nextUpdate, seconds */
	bool ocsp_fetch;           /* require: ask the AIA responder when nothing is stapled */
	int ocsp_fetch_timeout_ms; /* bound on that request (and on inbound refreshes) */
	const char *crl_file;      /* CRLs (PEM), or NULL */
	const char *crl_dir;       /* CRLs (hashed directory), or NULL */
	bool crl_chain;            /* check the whole chain, not only the server's */
	size_t npins;
	unsigned char pins[CONF_MAX_PINS][CONF_PIN_LEN]; /* SPKI SHA-256 */
};

/* One destination pattern of a rule's `match`. */
struct conf_match {
	enum { MATCH_ANY, MATCH_ADDR, MATCH_NAME, MATCH_SUFFIX } kind;
	unsigned char addr[16]; /* IPv4 as IPv4-mapped IPv6 */
	unsigned int prefix;    /* bits of addr that must match, 0..128 */
	char name[254];         /* MATCH_NAME: the name; MATCH_SUFFIX: ".example.com" */
	unsigned int port_lo;
	unsigned int port_hi;
	char text[300]; /* as written, for `tlsshim check` */
};

struct conf_rule {
	const char *section; /* the rule's section name */
	enum conf_action action;
	size_t nmatch;
	struct conf_match *match;
	const char *name; /* expected certificate name, overrides the resolved one */
	struct conf_tls tls;
};

enum conf_client_cert { CLIENT_CERT_NONE, CLIENT_CERT_OPTIONAL, CLIENT_CERT_REQUIRE };

/* One inbound section: how the program's matching listeners are served. */
struct conf_inbound {
	const char *section;
	size_t nlisten;
	struct conf_match *listen; /* the listening socket's local address:port */
	enum conf_action action;   /* tls or plaintext */
	const char *cert;          /* server certificate chain (PEM) */
	const char *key;
	size_t nallow;
	struct conf_match *allow_from; /* sources admitted; none set: any */
	const char *client_ca;         /* anchors for client certificates, or NULL */
	enum conf_client_cert client_cert;
	size_t nallow_client;
	char **allow_client; /* "CN=glob" / "DNS:glob" identity patterns */
	int min_protocol;
	const char *ciphers;
	const char *ciphersuites;
	const char *ocsp_response_file; /* DER response to staple, kept fresh by the operator */
	bool ocsp_fetch; /* staple from the certificate's AIA responder, refreshed in the background */
	int ocsp_fetch_timeout_ms; /* bound on each of those requests */
};

/*
 * relay_park: whether an idle wrapped connection gives up its two relay
 * descriptors (relay.c, "Parking"): `auto` once the shim's descriptors fill
 * a quarter of the soft RLIMIT_NOFILE, `always`, or `off`.
 */
enum conf_park { PARK_AUTO = 0, PARK_ALWAYS, PARK_OFF };

struct shim_conf {
	bool usable;         /* false: refuse every outbound TCP connection */
	char error[512];     /* why not usable, for the one stderr line */
	const char *file;    /* the configuration file read, or NULL */
	struct conf_tls tls; /* global TLS settings (unmatched destinations) */
	size_t nrules;
	struct conf_rule *rules; /* in order; the first match decides */
	size_t ninbound;
	struct conf_inbound *inbound;    /* in order; the first listen match decides */
	struct conf_inbound inbound_dft; /* listeners no section matches */
	const char *ca_file;             /* = tls.ca_file (kept for brevity) */
	const char *ca_dir;              /* = tls.ca_dir */
	int handshake_timeout_ms;        /* bounds TCP connect + TLS handshake */
	int relay_spin_us;         /* relay busy-poll bound after small messages, 0..1000 us */
	int relay_threads;         /* most relay threads, 1..4; 0: auto (CPUs, at most 4) */
	enum conf_park relay_park; /* parking of idle connections' descriptors */
	bool log_stderr;           /* copy each log line to standard error */
	bool log_success;          /* also log every successful connection (audit) */
	char log_socket[108];      /* syslog datagram socket, default /dev/log */
	int log_facility;          /* syslog facility (LOG_AUTHPRIV ...), default authpriv */
	char log_ident[33];        /* syslog tag, default "tlsshim" */
	int log_repeat_window_ms;  /* identical failures folded within this window */
	bool debug;                /* debug chatter on standard error */
};

/*
 * Returns the process's configuration, reading it on first use.  Never NULL;
 * the structure lives until the process ends and is never modified again.
 */
const struct shim_conf *conf_get(void);

/*
 * Reads a configuration into `c`: the file `file` (NULL: TLSSHIM_CONFIG, or
 * /etc/tlsshim/tlsshim.conf when present, or none), then the environment.
 * Always fills `c`; returns 0 when usable, -1 with c->error otherwise.  The
 * strings `c` points to live until the process ends.  (For `tlsshim check`
 * and tests; the shim itself uses conf_get().)
 */
int conf_load(struct shim_conf *c, const char *file);

/*
 * Frees what conf_load() allocated (the fuzzer and tests; the shim keeps its
 * configuration for the life of the process).
 */
void conf_free(struct shim_conf *c);

/*
 * Parses one `match` pattern: "*", "10.0.0.0/8:443", "[::1]:8000-8100",
 * "db.internal:5432", "*.example.com:*", a host without a port (any port).
 * Returns 0, or -1 with a reason in `err`.
 */
int conf_parse_match(const char *text, struct conf_match *m, char *err, size_t errlen);

/* Parses "sha256//BASE64" into 32 bytes. Returns 0, or -1. */
int conf_parse_pin(const char *text, unsigned char out[CONF_PIN_LEN]) TLSSHIM_WUR;

/*
 * Parses `text` as a duration in seconds (decimal fractions allowed, 0.1 to
 * 3600) into milliseconds.  Returns 0 on success, -1 when it is not one.
 */
int conf_parse_seconds(const char *text, int *out_ms) TLSSHIM_WUR;

/*
 * Parses a syslog facility name (user, daemon, auth, authpriv, local0 ..
 * local7, ...) into its LOG_* value.  Returns 0, or -1 when unknown.
 */
int conf_parse_facility(const char *text, int *out) TLSSHIM_WUR;

/* Parses yes/no/true/false/on/off/1/0.  Returns 0, or -1 when it is none. */
int conf_parse_bool(const char *text, bool *out) TLSSHIM_WUR;

/* Names for printing. */
const char *conf_action_name(enum conf_action a);
const char *conf_ocsp_name(enum conf_ocsp o);

#endif
