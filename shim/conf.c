/*
 * conf.c: builds the immutable process configuration from the configuration
 * file and the environment.
 *
 * The file is parsed by OpenSSL's NCONF (no parser of our own): `[tlsshim]`
 * holds the global keys, `rules = SECTION` names a section whose values are
 * rule section names in order.  Every key is known and checked; an unknown
 * key, a bad value or an unreadable file makes the configuration unusable
 * with a message that names the file and the key.  Secure defaults: no trust
 * at all, TLS 1.2 minimum, OCSP `prefer`, a 10 second handshake bound.
 */
#include "conf.h"

#include "names.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <openssl/conf.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#define DEFAULT_HANDSHAKE_TIMEOUT_MS  10000
#define DEFAULT_REPEAT_WINDOW_MS      10000
#define DEFAULT_OCSP_SKEW_S           300
#define DEFAULT_OCSP_FETCH_TIMEOUT_MS 3000
#define DEFAULT_RELAY_SPIN_US         50
#define DEFAULT_CONFIG_FILE           "/etc/tlsshim/tlsshim.conf"
#define TLS12                         0x0303
#define TLS13                         0x0304
#define MAX_RULES                     1024
#define MAX_MATCHES                   256

static struct shim_conf the_conf;
static pthread_once_t conf_once = PTHREAD_ONCE_INIT;

/* --- value parsers ------------------------------------------------------------ */

int conf_parse_seconds(const char *text, int *out_ms)
{
	char *end = NULL;
	double v;

	if (text == NULL || *text == '\0')
		return -1;
	errno = 0;
	v = strtod(text, &end);
	if (errno != 0 || end == text || *end != '\0' || !isfinite(v) || v < 0.1 || v > 3600.0)
		return -1;
	*out_ms = (int)(v * 1000.0 + 0.5);
	return 0;
}

int conf_parse_bool(const char *text, bool *out)
{
	static const char *const yes[] = {"1", "yes", "true", "on"};
	static const char *const no[] = {"0", "no", "false", "off"};
	size_t i;

	if (text == NULL)
		return -1;
	for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(text, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(text, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

int conf_parse_facility(const char *text, int *out)
{
	static const struct {
		const char *name;
		int value;
	} names[] = {
	        {"user", LOG_USER},         {"daemon", LOG_DAEMON}, {"auth", LOG_AUTH},
	        {"authpriv", LOG_AUTHPRIV}, {"security", LOG_AUTH}, {"local0", LOG_LOCAL0},
	        {"local1", LOG_LOCAL1},     {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},
	        {"local4", LOG_LOCAL4},     {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
	        {"local7", LOG_LOCAL7},
	};
	size_t i;

	if (text == NULL)
		return -1;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(text, names[i].name) == 0) {
			*out = names[i].value;
			return 0;
		}
	}
	return -1;
}

/* A syslog tag: 1 to 32 characters of [A-Za-z0-9_.-]. */
static int parse_ident(const char *text, char *out, size_t outlen)
{
	size_t n = strlen(text), i;

	if (n == 0 || n > 32 || n >= outlen)
		return -1;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)text[i]) && strchr("_.-", text[i]) == NULL)
			return -1;
	memcpy(out, text, n + 1);
	return 0;
}

static int parse_protocol(const char *text, int *out)
{
	if (strcasecmp(text, "TLSv1.2") == 0)
		*out = TLS12;
	else if (strcasecmp(text, "TLSv1.3") == 0)
		*out = TLS13;
	else
		return -1;
	return 0;
}

/* Microseconds, 0 to 1000, digits only. */
static int parse_spin_us(const char *text, int *out)
{
	long v = 0;
	const char *p;

	if (*text == '\0' || strlen(text) > 4)
		return -1;
	for (p = text; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (*p - '0');
	}
	if (v > 1000)
		return -1;
	*out = (int)v;
	return 0;
}

/* relay_threads: `auto` (0) or 1 to 4. */
static int parse_relay_threads(const char *text, int *out)
{
	if (strcasecmp(text, "auto") == 0) {
		*out = 0;
		return 0;
	}
	if (text[0] < '1' || text[0] > '4' || text[1] != '\0')
		return -1;
	*out = text[0] - '0';
	return 0;
}

/* relay_park: auto, always or off. */
static int parse_relay_park(const char *text, enum conf_park *out)
{
	if (strcasecmp(text, "auto") == 0)
		*out = PARK_AUTO;
	else if (strcasecmp(text, "always") == 0)
		*out = PARK_ALWAYS;
	else if (strcasecmp(text, "off") == 0)
		*out = PARK_OFF;
	else
		return -1;
	return 0;
}

static int parse_ocsp(const char *text, enum conf_ocsp *out)
{
	if (strcasecmp(text, "prefer") == 0)
		*out = OCSP_PREFER;
	else if (strcasecmp(text, "require") == 0)
		*out = OCSP_REQUIRE;
	else if (strcasecmp(text, "off") == 0)
		*out = OCSP_OFF;
	else
		return -1;
	return 0;
}

static int parse_action(const char *text, enum conf_action *out)
{
	if (strcasecmp(text, "tls") == 0)
		*out = ACTION_TLS;
	else if (strcasecmp(text, "plaintext") == 0)
		*out = ACTION_PLAINTEXT;
	else if (strcasecmp(text, "deny") == 0)
		*out = ACTION_DENY;
	else
		return -1;
	return 0;
}

const char *conf_action_name(enum conf_action a)
{
	return a == ACTION_TLS ? "tls" : a == ACTION_PLAINTEXT ? "plaintext" : "deny";
}

const char *conf_ocsp_name(enum conf_ocsp o)
{
	return o == OCSP_REQUIRE ? "require" : o == OCSP_OFF ? "off" : "prefer";
}

int conf_parse_pin(const char *text, unsigned char out[CONF_PIN_LEN])
{
	static const char prefix[] = "sha256//";
	unsigned char buf[64];
	size_t len;
	int n;

	if (strncmp(text, prefix, sizeof(prefix) - 1) != 0)
		return -1;
	text += sizeof(prefix) - 1;
	len = strlen(text);
	/* 32 bytes are 44 base64 characters, the last one '='. */
	if (len != 44 || text[43] != '=' || text[42] == '=')
		return -1;
	n = EVP_DecodeBlock(buf, (const unsigned char *)text, (int)len);
	if (n != 33) /* EVP_DecodeBlock counts the padding as a byte */
		return -1;
	memcpy(out, buf, CONF_PIN_LEN);
	return 0;
}

/* "N", "N-M" or "*" into an inclusive range. */
static int parse_ports(const char *text, unsigned int *lo, unsigned int *hi)
{
	char *end;
	unsigned long a, b;

	if (strcmp(text, "*") == 0) {
		*lo = 0;
		*hi = 65535;
		return 0;
	}
	if (!isdigit((unsigned char)*text))
		return -1;
	errno = 0;
	a = strtoul(text, &end, 10);
	b = a;
	if (errno == 0 && *end == '-' && isdigit((unsigned char)end[1]))
		b = strtoul(end + 1, &end, 10);
	if (errno != 0 || *end != '\0' || a > 65535 || b > 65535 || a > b)
		return -1;
	*lo = (unsigned int)a;
	*hi = (unsigned int)b;
	return 0;
}

/* An address or CIDR ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"). */
static int parse_cidr(const char *text, struct conf_match *m)
{
	char host[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(text, '/');
	unsigned long bits = 0;
	struct in_addr a4;
	bool v4;
	char *end;

	if (strlen(text) >= sizeof(host))
		return -1;
	snprintf(host, sizeof(host), "%.*s", slash ? (int)(slash - text) : (int)strlen(text), text);
	if (inet_pton(AF_INET, host, &a4) == 1) {
		memset(m->addr, 0, 10);
		m->addr[10] = m->addr[11] = 0xff;
		memcpy(m->addr + 12, &a4, 4);
		v4 = true;
	} else if (inet_pton(AF_INET6, host, m->addr) == 1) {
		v4 = false;
	} else {
		return -1;
	}
	if (slash != NULL) {
		if (!isdigit((unsigned char)slash[1]))
			return -1;
		errno = 0;
		bits = strtoul(slash + 1, &end, 10);
		if (errno != 0 || *end != '\0' || bits > (v4 ? 32UL : 128UL))
			return -1;
	} else {
		bits = v4 ? 32 : 128;
	}
	m->prefix = (unsigned int)bits + (v4 ? 96 : 0);
	m->kind = MATCH_ADDR;
	return 0;
}

int conf_parse_match(const char *text, struct conf_match *m, char *err, size_t errlen)
{
	char host[300];
	const char *port = NULL;
	const char *colon;

	memset(m, 0, sizeof(*m));
	m->port_lo = 0;
	m->port_hi = 65535;
	snprintf(m->text, sizeof(m->text), "%s", text);
	if (strlen(text) >= sizeof(host)) {
		snprintf(err, errlen, "pattern too long");
		return -1;
	}
	if (text[0] == '[') {
		const char *close = strchr(text, ']');

		if (close == NULL || (close[1] != '\0' && close[1] != ':')) {
			snprintf(err, errlen, "bad bracketed address");
			return -1;
		}
		snprintf(host, sizeof(host), "%.*s", (int)(close - text - 1), text + 1);
		if (close[1] == ':')
			port = close + 2;
	} else {
		colon = strrchr(text, ':');
		/* More than one colon without brackets: a bare IPv6 address. */
		if (colon != NULL && strchr(text, ':') == colon) {
			snprintf(host, sizeof(host), "%.*s", (int)(colon - text), text);
			port = colon + 1;
		} else {
			snprintf(host, sizeof(host), "%s", text);
		}
	}
	if (port != NULL && parse_ports(port, &m->port_lo, &m->port_hi) != 0) {
		snprintf(err, errlen, "bad port \"%s\" (N, N-M or *)", port);
		return -1;
	}
	if (strcmp(host, "*") == 0) {
		m->kind = MATCH_ANY;
		return 0;
	}
	if (strchr(host, ':') != NULL || strchr(host, '/') != NULL ||
	    strspn(host, "0123456789.") == strlen(host)) {
		if (parse_cidr(host, m) != 0) {
			snprintf(err, errlen, "bad address or CIDR \"%s\"", host);
			return -1;
		}
		return 0;
	}
	if (strncmp(host, "*.", 2) == 0) {
		if (names_normalise(host + 2, m->name + 1, sizeof(m->name) - 1) != 0 ||
		    strchr(m->name + 1, '*') != NULL) {
			snprintf(err, errlen, "bad wildcard name \"%s\"", host);
			return -1;
		}
		m->name[0] = '.';
		m->kind = MATCH_SUFFIX;
		return 0;
	}
	if (names_normalise(host, m->name, sizeof(m->name)) != 0) {
		snprintf(err, errlen, "bad host name \"%s\"", host);
		return -1;
	}
	m->kind = MATCH_NAME;
	return 0;
}

/* --- loading ------------------------------------------------------------------ */

struct loader {
	struct shim_conf *c;
	const char *file;
	CONF *nc;                    /* the parsed file, between the two passes */
	const char *rules_section;   /* [tlsshim] rules = ... */
	const char *inbound_section; /* [tlsshim] inbound = ... */
	char dir[PATH_MAX];          /* the file's directory, for relative paths */
	bool failed;
};

static void fail(struct loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct loader *ld, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	if (ld->failed)
		return; /* the first error is the one to fix */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ld->failed = true;
	ld->c->usable = false;
	if (ld->file != NULL)
		snprintf(ld->c->error, sizeof(ld->c->error), "%s: %s", ld->file, msg);
	else
		snprintf(ld->c->error, sizeof(ld->c->error), "%s", msg);
}

/* Sets a string owned by the configuration, freeing the one it replaces. */
static void replace(const char **slot, const char *value)
{
	free((void *)(uintptr_t)*slot);
	*slot = value;
}

/* A path from the file, made absolute against the file's directory. */
static const char *keep_path(struct loader *ld, const char *value)
{
	char buf[PATH_MAX];

	if (value[0] == '/' || ld->file == NULL || ld->dir[0] == '\0')
		return strdup(value);
	if ((size_t)snprintf(buf, sizeof(buf), "%s/%s", ld->dir, value) >= sizeof(buf))
		return NULL;
	return strdup(buf);
}

static void check_readable(struct loader *ld, const char *where, const char *key, const char *path,
                           bool dir)
{
	if (path != NULL && access(path, dir ? (R_OK | X_OK) : R_OK) != 0)
		fail(ld, "%s %s = %s: %s", where, key, path, strerror(errno));
}

/* Splits a comma list in place; calls `each` on every trimmed item. */
static int each_item(char *list, int (*each)(void *arg, const char *item), void *arg)
{
	char *save = NULL, *item;

	for (item = strtok_r(list, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
		char *end;

		while (isspace((unsigned char)*item))
			item++;
		end = item + strlen(item);
		while (end > item && isspace((unsigned char)end[-1]))
			*--end = '\0';
		if (*item == '\0' || each(arg, item) != 0)
			return -1;
	}
	return 0;
}

struct pin_ctx {
	struct conf_tls *t;
	const char *bad;
};

static int add_pin(void *arg, const char *item)
{
	struct pin_ctx *pc = arg;

	if (pc->t->npins >= CONF_MAX_PINS || conf_parse_pin(item, pc->t->pins[pc->t->npins]) != 0) {
		pc->bad = item;
		return -1;
	}
	pc->t->npins++;
	return 0;
}

/* Which TLS keys a section set, for inheritance. */
struct tls_set {
	bool trust, min_protocol, ciphers, ciphersuites, ocsp, cert, pins, skew, crl, crl_check;
	bool fetch, fetch_timeout;
};

/*
 * Applies one TLS key to `t`.  Returns 1 when `key` is a TLS key (handled,
 * maybe failed), 0 when it is not one.
 */
static int tls_key(struct loader *ld, const char *where, struct conf_tls *t, struct tls_set *set,
                   const char *key, const char *value)
{
	if (strcmp(key, "crl_file") == 0 || strcmp(key, "crl_dir") == 0) {
		const char *p = keep_path(ld, value);
		bool is_dir = strcmp(key, "crl_dir") == 0;

		if (p == NULL) {
			fail(ld, "%s %s: path too long", where, key);
			return 1;
		}
		check_readable(ld, where, key, p, is_dir);
		replace(is_dir ? &t->crl_dir : &t->crl_file, p);
		set->crl = true;
	} else if (strcmp(key, "crl_check") == 0) {
		if (strcasecmp(value, "leaf") == 0)
			t->crl_chain = false;
		else if (strcasecmp(value, "chain") == 0)
			t->crl_chain = true;
		else
			fail(ld, "%s crl_check = %s: expected leaf or chain", where, value);
		set->crl_check = true;
	} else if (strcmp(key, "ocsp_fetch") == 0) {
		if (conf_parse_bool(value, &t->ocsp_fetch) != 0)
			fail(ld, "%s ocsp_fetch = %s: expected yes or no", where, value);
		set->fetch = true;
	} else if (strcmp(key, "ocsp_fetch_timeout") == 0) {
		if (conf_parse_seconds(value, &t->ocsp_fetch_timeout_ms) != 0)
			fail(ld, "%s ocsp_fetch_timeout = %s: expected seconds, 0.1 to 3600", where,
			     value);
		set->fetch_timeout = true;
	} else if (strcmp(key, "ocsp_skew") == 0) {
		int ms = 0;

		if (strcmp(value, "0") == 0)
			t->ocsp_skew_s = 0;
		else if (conf_parse_seconds(value, &ms) != 0)
			fail(ld, "%s ocsp_skew = %s: expected seconds, 0 to 3600", where, value);
		else
			t->ocsp_skew_s = ms / 1000;
		set->skew = true;
	} else if (strcmp(key, "ca_file") == 0 || strcmp(key, "ca_dir") == 0 ||
	           strcmp(key, "approved_cert") == 0 || strcmp(key, "cert") == 0 ||
	           strcmp(key, "key") == 0) {
		const char *p = keep_path(ld, value);
		bool is_dir = strcmp(key, "ca_dir") == 0;

		if (p == NULL) {
			fail(ld, "%s %s: path too long", where, key);
			return 1;
		}
		check_readable(ld, where, key, p, is_dir);
		if (key[0] == 'c' && key[1] == 'a' && key[3] == 'f')
			replace(&t->ca_file, p), set->trust = true;
		else if (is_dir)
			replace(&t->ca_dir, p), set->trust = true;
		else if (key[0] == 'a')
			replace(&t->approved_cert, p), set->trust = true;
		else if (strcmp(key, "cert") == 0)
			replace(&t->cert, p), set->cert = true;
		else
			replace(&t->key, p), set->cert = true;
	} else if (strcmp(key, "min_protocol") == 0) {
		if (parse_protocol(value, &t->min_protocol) != 0)
			fail(ld, "%s min_protocol = %s: expected TLSv1.2 or TLSv1.3", where, value);
		set->min_protocol = true;
	} else if (strcmp(key, "ciphers") == 0) {
		replace(&t->ciphers, strdup(value));
		set->ciphers = true;
	} else if (strcmp(key, "ciphersuites") == 0) {
		replace(&t->ciphersuites, strdup(value));
		set->ciphersuites = true;
	} else if (strcmp(key, "ocsp") == 0) {
		if (parse_ocsp(value, &t->ocsp) != 0)
			fail(ld, "%s ocsp = %s: expected require, prefer or off", where, value);
		set->ocsp = true;
	} else if (strcmp(key, "pin") == 0) {
		char *copy = strdup(value);
		struct pin_ctx pc = {t, NULL};

		t->npins = 0;
		if (copy == NULL || each_item(copy, add_pin, &pc) != 0)
			fail(ld,
			     "%s pin: bad pin \"%s\" (expected sha256//BASE64 of 32 bytes, at most "
			     "%d)",
			     where, pc.bad != NULL ? pc.bad : value, CONF_MAX_PINS);
		free(copy);
		set->pins = true;
	} else {
		return 0;
	}
	return 1;
}

static void global_key(struct loader *ld, struct tls_set *set, const char *key, const char *value,
                       const char **rules_section)
{
	struct shim_conf *c = ld->c;

	/*
	 * In [tlsshim], cert/key are the inbound server certificate for listeners
	 * no inbound section matches; the outbound client certificate for every
	 * destination is client_cert/client_key.
	 */
	if (strcmp(key, "cert") == 0 || strcmp(key, "key") == 0) {
		const char *p = keep_path(ld, value);

		if (p == NULL) {
			fail(ld, "[tlsshim] %s: path too long", key);
			return;
		}
		check_readable(ld, "[tlsshim]", key, p, false);
		replace(key[0] == 'c' ? &c->inbound_dft.cert : &c->inbound_dft.key, p);
		return;
	}
	if (strcmp(key, "inbound") == 0) {
		ld->inbound_section = value;
		return;
	}
	if (strcmp(key, "inbound_default") == 0) {
		if (strcasecmp(value, "tls") == 0)
			c->inbound_dft.action = ACTION_TLS;
		else if (strcasecmp(value, "plaintext") == 0)
			c->inbound_dft.action = ACTION_PLAINTEXT;
		else
			fail(ld, "[tlsshim] inbound_default = %s: expected tls or plaintext",
			     value);
		return;
	}
	if (strcmp(key, "client_cert") == 0 || strcmp(key, "client_key") == 0)
		key += strlen("client_");
	if (tls_key(ld, "[tlsshim]", &c->tls, set, key, value))
		return;
	if (strcmp(key, "handshake_timeout") == 0) {
		if (conf_parse_seconds(value, &c->handshake_timeout_ms) != 0)
			fail(ld, "[tlsshim] handshake_timeout = %s: expected seconds, 0.1 to 3600",
			     value);
	} else if (strcmp(key, "relay_spin_us") == 0) {
		if (parse_spin_us(value, &c->relay_spin_us) != 0)
			fail(ld, "[tlsshim] relay_spin_us = %s: expected microseconds, 0 to 1000",
			     value);
	} else if (strcmp(key, "relay_threads") == 0) {
		if (parse_relay_threads(value, &c->relay_threads) != 0)
			fail(ld, "[tlsshim] relay_threads = %s: expected auto or 1 to 4", value);
	} else if (strcmp(key, "relay_park") == 0) {
		if (parse_relay_park(value, &c->relay_park) != 0)
			fail(ld, "[tlsshim] relay_park = %s: expected auto, always or off", value);
	} else if (strcmp(key, "rules") == 0) {
		*rules_section = value;
	} else if (strcmp(key, "log_stderr") == 0 || strcmp(key, "log_success") == 0) {
		if (conf_parse_bool(value, key[4] == 's' && key[5] == 't' ? &c->log_stderr
		                                                          : &c->log_success) != 0)
			fail(ld, "[tlsshim] %s = %s: expected yes or no", key, value);
	} else if (strcmp(key, "log_socket") == 0) {
		if ((size_t)snprintf(c->log_socket, sizeof(c->log_socket), "%s", value) >=
		    sizeof(c->log_socket))
			fail(ld, "[tlsshim] log_socket = %s: path too long", value);
	} else if (strcmp(key, "log_facility") == 0) {
		if (conf_parse_facility(value, &c->log_facility) != 0)
			fail(ld, "[tlsshim] log_facility = %s: unknown facility", value);
	} else if (strcmp(key, "log_ident") == 0) {
		if (parse_ident(value, c->log_ident, sizeof(c->log_ident)) != 0)
			fail(ld, "[tlsshim] log_ident = %s: 1 to 32 of [A-Za-z0-9_.-]", value);
	} else if (strcmp(key, "log_repeat_window") == 0) {
		if (conf_parse_seconds(value, &c->log_repeat_window_ms) != 0)
			fail(ld, "[tlsshim] log_repeat_window = %s: expected seconds", value);
	} else {
		fail(ld, "[tlsshim] unknown key \"%s\"", key);
	}
}

struct match_ctx {
	struct conf_rule *r;
	char err[160];
	const char *bad;
};

static int add_match(void *arg, const char *item)
{
	struct match_ctx *mc = arg;
	struct conf_match *grown;

	if (mc->r->nmatch >= MAX_MATCHES) {
		snprintf(mc->err, sizeof(mc->err), "more than %d patterns", MAX_MATCHES);
		mc->bad = item;
		return -1;
	}
	grown = realloc(mc->r->match, (mc->r->nmatch + 1) * sizeof(*grown));
	if (grown == NULL)
		return -1;
	mc->r->match = grown;
	if (conf_parse_match(item, &grown[mc->r->nmatch], mc->err, sizeof(mc->err)) != 0) {
		mc->bad = item;
		return -1;
	}
	mc->r->nmatch++;
	return 0;
}

/* Fills the TLS settings a rule did not set from the global ones. */
static void inherit(struct conf_tls *t, const struct tls_set *set, const struct conf_tls *g)
{
	if (!set->trust) {
		t->ca_file = g->ca_file;
		t->ca_dir = g->ca_dir;
		t->approved_cert = g->approved_cert;
	}
	if (!set->min_protocol)
		t->min_protocol = g->min_protocol;
	if (!set->ciphers)
		t->ciphers = g->ciphers;
	if (!set->ciphersuites)
		t->ciphersuites = g->ciphersuites;
	if (!set->ocsp)
		t->ocsp = g->ocsp;
	if (!set->skew)
		t->ocsp_skew_s = g->ocsp_skew_s;
	if (!set->fetch)
		t->ocsp_fetch = g->ocsp_fetch;
	if (!set->fetch_timeout)
		t->ocsp_fetch_timeout_ms = g->ocsp_fetch_timeout_ms;
	if (!set->crl) {
		t->crl_file = g->crl_file;
		t->crl_dir = g->crl_dir;
	}
	if (!set->crl_check)
		t->crl_chain = g->crl_chain;
	if (!set->cert) {
		t->cert = g->cert;
		t->key = g->key;
	}
	if (!set->pins) {
		t->npins = g->npins;
		memcpy(t->pins, g->pins, sizeof(t->pins));
	}
}

static void load_rule(struct loader *ld, CONF *nc, const char *section, struct conf_rule *r)
{
	STACK_OF(CONF_VALUE) *sect = NCONF_get_section(nc, section);
	struct tls_set set = {0};
	char where[96];
	bool have_action = false;
	int i;

	snprintf(where, sizeof(where), "[%.80s]", section);
	r->section = strdup(section);
	r->tls.min_protocol = TLS12;
	if (sect == NULL) {
		fail(ld, "rule section [%s] does not exist", section);
		return;
	}
	for (i = 0; i < sk_CONF_VALUE_num(sect) && !ld->failed; i++) {
		const CONF_VALUE *v = sk_CONF_VALUE_value(sect, i);

		if (strcmp(v->name, "match") == 0) {
			char *copy = strdup(v->value);
			struct match_ctx mc = {r, "", NULL};

			if (copy == NULL || each_item(copy, add_match, &mc) != 0)
				fail(ld, "%s match: \"%s\": %s", where, mc.bad ? mc.bad : v->value,
				     mc.err[0] ? mc.err : "empty pattern");
			free(copy);
		} else if (strcmp(v->name, "action") == 0) {
			if (parse_action(v->value, &r->action) != 0)
				fail(ld, "%s action = %s: expected tls, plaintext or deny", where,
				     v->value);
			have_action = true;
		} else if (strcmp(v->name, "name") == 0) {
			char norm[NAMES_MAXLEN + 1];

			if (names_normalise(v->value, norm, sizeof(norm)) != 0)
				fail(ld, "%s name = %s: not a DNS host name", where, v->value);
			replace(&r->name, strdup(norm));
		} else if (!tls_key(ld, where, &r->tls, &set, v->name, v->value)) {
			fail(ld, "%s unknown key \"%s\"", where, v->name);
		}
	}
	if (ld->failed)
		return;
	if (r->nmatch == 0)
		fail(ld, "%s has no match", where);
	else if (!have_action)
		fail(ld, "%s has no action (tls, plaintext or deny)", where);
	else if (r->action != ACTION_TLS &&
	         (set.trust || set.cert || set.pins || set.ciphers || set.ciphersuites ||
	          set.ocsp || set.fetch || set.fetch_timeout || set.min_protocol ||
	          r->name != NULL))
		fail(ld, "%s: action %s takes no TLS settings", where, conf_action_name(r->action));
	else if ((r->tls.cert == NULL) != (r->tls.key == NULL))
		fail(ld, "%s: cert and key go together", where);
	inherit(&r->tls, &set, &ld->c->tls);
	if (!ld->failed && set.crl_check && r->tls.crl_file == NULL && r->tls.crl_dir == NULL)
		fail(ld, "%s crl_check without crl_file or crl_dir checks nothing", where);
	if (!ld->failed && r->action == ACTION_TLS && r->tls.ca_file == NULL &&
	    r->tls.ca_dir == NULL && r->tls.approved_cert == NULL)
		fail(ld,
		     "%s: no trust anchors (ca_file, ca_dir or approved_cert, here or in "
		     "[tlsshim])",
		     where);
}

/* First pass: parse the file and its [tlsshim] section. */
static void load_file(struct loader *ld)
{
	STACK_OF(CONF_VALUE) * sect;
	struct tls_set set = {0};
	const char *slash;
	long eline = -1;
	int i;

	slash = strrchr(ld->file, '/');
	if (slash != NULL)
		snprintf(ld->dir, sizeof(ld->dir), "%.*s", (int)(slash - ld->file), ld->file);
	if (access(ld->file, R_OK) != 0) {
		fail(ld, "%s", strerror(errno));
		return;
	}
	ld->nc = NCONF_new(NULL);
	if (ld->nc == NULL) {
		fail(ld, "out of memory");
		return;
	}
	if (NCONF_load(ld->nc, ld->file, &eline) <= 0) {
		if (eline > 0)
			fail(ld, "line %ld: syntax error", eline);
		else
			fail(ld, "cannot be read as a configuration file");
		return;
	}
	sect = NCONF_get_section(ld->nc, "tlsshim");
	if (sect == NULL) {
		fail(ld, "no [tlsshim] section");
		return;
	}
	for (i = 0; i < sk_CONF_VALUE_num(sect) && !ld->failed; i++) {
		const CONF_VALUE *v = sk_CONF_VALUE_value(sect, i);

		global_key(ld, &set, v->name, v->value, &ld->rules_section);
	}
	if (!ld->failed && set.crl_check && ld->c->tls.crl_file == NULL &&
	    ld->c->tls.crl_dir == NULL)
		fail(ld, "[tlsshim] crl_check without crl_file or crl_dir checks nothing");
	if (!ld->failed && (ld->c->tls.cert == NULL) != (ld->c->tls.key == NULL))
		fail(ld, "[tlsshim]: client_cert and client_key go together");
}

struct list_ctx {
	struct conf_match **arr;
	size_t *n;
	bool cidr_only;
	char err[160];
	const char *bad;
};

static int add_to_list(void *arg, const char *item)
{
	struct list_ctx *lc = arg;
	struct conf_match *grown;

	if (*lc->n >= MAX_MATCHES) {
		snprintf(lc->err, sizeof(lc->err), "more than %d patterns", MAX_MATCHES);
		lc->bad = item;
		return -1;
	}
	grown = realloc(*lc->arr, (*lc->n + 1) * sizeof(*grown));
	if (grown == NULL)
		return -1;
	*lc->arr = grown;
	if (conf_parse_match(item, &grown[*lc->n], lc->err, sizeof(lc->err)) != 0 ||
	    (lc->cidr_only && grown[*lc->n].kind != MATCH_ADDR) ||
	    grown[*lc->n].kind == MATCH_NAME || grown[*lc->n].kind == MATCH_SUFFIX) {
		if (lc->err[0] == '\0')
			snprintf(lc->err, sizeof(lc->err), "%s",
			         lc->cidr_only ? "expected an address or CIDR"
			                       : "expected address:port, [address]:port or *:port");
		lc->bad = item;
		return -1;
	}
	(*lc->n)++;
	return 0;
}

struct ident_ctx {
	struct conf_inbound *in;
	const char *bad;
};

static int add_ident(void *arg, const char *item)
{
	struct ident_ctx *ic = arg;
	char **grown;

	if ((strncmp(item, "CN=", 3) != 0 && strncmp(item, "DNS:", 4) != 0) ||
	    item[item[0] == 'C' ? 3 : 4] == '\0' || ic->in->nallow_client >= MAX_MATCHES) {
		ic->bad = item;
		return -1;
	}
	grown = realloc(ic->in->allow_client, (ic->in->nallow_client + 1) * sizeof(*grown));
	if (grown == NULL)
		return -1;
	ic->in->allow_client = grown;
	grown[ic->in->nallow_client] = strdup(item);
	if (grown[ic->in->nallow_client] == NULL)
		return -1;
	ic->in->nallow_client++;
	return 0;
}

static int parse_client_cert(const char *v, enum conf_client_cert *out)
{
	if (strcasecmp(v, "none") == 0)
		*out = CLIENT_CERT_NONE;
	else if (strcasecmp(v, "optional") == 0)
		*out = CLIENT_CERT_OPTIONAL;
	else if (strcasecmp(v, "require") == 0)
		*out = CLIENT_CERT_REQUIRE;
	else
		return -1;
	return 0;
}

static void inbound_path(struct loader *ld, const char *where, struct conf_inbound *in,
                         const char *k, const char *value)
{
	const char *p = keep_path(ld, value);

	if (p == NULL) {
		fail(ld, "%s %s: path too long", where, k);
		return;
	}
	check_readable(ld, where, k, p, false);
	replace(strcmp(k, "cert") == 0        ? &in->cert
	        : strcmp(k, "key") == 0       ? &in->key
	        : strcmp(k, "client_ca") == 0 ? &in->client_ca
	                                      : &in->ocsp_response_file,
	        p);
}

static void inbound_list(struct loader *ld, const char *where, struct conf_inbound *in,
                         const char *k, const char *value)
{
	bool listen = k[0] == 'l';
	struct list_ctx lc = {listen ? &in->listen : &in->allow_from,
	                      listen ? &in->nlisten : &in->nallow, !listen, "", NULL};
	char *copy = strdup(value);

	if (copy == NULL || each_item(copy, add_to_list, &lc) != 0)
		fail(ld, "%s %s: \"%s\": %s", where, k, lc.bad ? lc.bad : value,
		     lc.err[0] ? lc.err : "empty pattern");
	free(copy);
}

static void inbound_check(struct loader *ld, const char *where, struct conf_inbound *in)
{
	if (in->nlisten == 0)
		fail(ld, "%s has no listen", where);
	else if (in->action == ACTION_PLAINTEXT &&
	         (in->cert || in->key || in->client_ca || in->nallow_client ||
	          in->ocsp_response_file || in->ocsp_fetch))
		fail(ld, "%s: action plaintext takes no TLS settings", where);
	else if (in->ocsp_fetch && in->ocsp_response_file != NULL)
		fail(ld,
		     "%s: ocsp_fetch and ocsp_response_file are two sources of one staple: "
		     "choose one",
		     where);
	else if ((in->cert == NULL) != (in->key == NULL))
		fail(ld, "%s: cert and key go together", where);
	else if (in->client_cert != CLIENT_CERT_NONE && in->client_ca == NULL)
		fail(ld, "%s: client_cert = %s needs client_ca", where,
		     in->client_cert == CLIENT_CERT_REQUIRE ? "require" : "optional");
	else if (in->nallow_client > 0 && in->client_cert == CLIENT_CERT_NONE)
		fail(ld, "%s: allow_client needs client_cert = optional or require", where);
}

static void load_inbound(struct loader *ld, const char *section, struct conf_inbound *in)
{
	STACK_OF(CONF_VALUE) *sect = NCONF_get_section(ld->nc, section);
	char where[96];
	int i;

	snprintf(where, sizeof(where), "[%.80s]", section);
	in->section = strdup(section);
	in->action = ACTION_TLS;
	in->min_protocol = TLS12;
	in->ocsp_fetch_timeout_ms = ld->c->tls.ocsp_fetch_timeout_ms;
	if (sect == NULL) {
		fail(ld, "inbound section [%s] does not exist", section);
		return;
	}
	for (i = 0; i < sk_CONF_VALUE_num(sect) && !ld->failed; i++) {
		const CONF_VALUE *v = sk_CONF_VALUE_value(sect, i);
		const char *k = v->name;

		if (strcmp(k, "listen") == 0 || strcmp(k, "allow_from") == 0) {
			inbound_list(ld, where, in, k, v->value);
		} else if (strcmp(k, "action") == 0) {
			if (parse_action(v->value, &in->action) != 0 || in->action == ACTION_DENY)
				fail(ld, "%s action = %s: expected tls or plaintext", where,
				     v->value);
		} else if (strcmp(k, "cert") == 0 || strcmp(k, "key") == 0 ||
		           strcmp(k, "client_ca") == 0 || strcmp(k, "ocsp_response_file") == 0) {
			inbound_path(ld, where, in, k, v->value);
		} else if (strcmp(k, "ocsp_fetch") == 0) {
			if (conf_parse_bool(v->value, &in->ocsp_fetch) != 0)
				fail(ld, "%s ocsp_fetch = %s: expected yes or no", where, v->value);
		} else if (strcmp(k, "ocsp_fetch_timeout") == 0) {
			if (conf_parse_seconds(v->value, &in->ocsp_fetch_timeout_ms) != 0)
				fail(ld,
				     "%s ocsp_fetch_timeout = %s: expected seconds, 0.1 to 3600",
				     where, v->value);
		} else if (strcmp(k, "client_cert") == 0) {
			if (parse_client_cert(v->value, &in->client_cert) != 0)
				fail(ld, "%s client_cert = %s: expected none, optional or require",
				     where, v->value);
		} else if (strcmp(k, "allow_client") == 0) {
			struct ident_ctx ic = {in, NULL};
			char *copy = strdup(v->value);

			if (copy == NULL || each_item(copy, add_ident, &ic) != 0)
				fail(ld,
				     "%s allow_client: \"%s\": expected CN=pattern or DNS:pattern",
				     where, ic.bad ? ic.bad : v->value);
			free(copy);
		} else if (strcmp(k, "min_protocol") == 0) {
			if (parse_protocol(v->value, &in->min_protocol) != 0)
				fail(ld, "%s min_protocol = %s: expected TLSv1.2 or TLSv1.3", where,
				     v->value);
		} else if (strcmp(k, "ciphers") == 0) {
			replace(&in->ciphers, strdup(v->value));
		} else if (strcmp(k, "ciphersuites") == 0) {
			replace(&in->ciphersuites, strdup(v->value));
		} else {
			fail(ld, "%s unknown key \"%s\"", where, k);
		}
	}
	if (!ld->failed)
		inbound_check(ld, where, in);
	if (!ld->failed && in->action == ACTION_TLS && in->cert == NULL) {
		/* The global certificate serves sections that name none. */
		in->cert = ld->c->inbound_dft.cert;
		in->key = ld->c->inbound_dft.key;
	}
}

static void load_inbounds(struct loader *ld)
{
	STACK_OF(CONF_VALUE) * list;
	int i, n;

	if (ld->inbound_section == NULL)
		return;
	list = NCONF_get_section(ld->nc, ld->inbound_section);
	if (list == NULL) {
		fail(ld, "[tlsshim] inbound = %s: no such section", ld->inbound_section);
		return;
	}
	n = sk_CONF_VALUE_num(list);
	if (n > MAX_RULES) {
		fail(ld, "[%s]: more than %d inbound sections", ld->inbound_section, MAX_RULES);
		return;
	}
	ld->c->inbound = calloc((size_t)(n > 0 ? n : 1), sizeof(struct conf_inbound));
	if (ld->c->inbound == NULL) {
		fail(ld, "out of memory");
		return;
	}
	for (i = 0; i < n && !ld->failed; i++) {
		load_inbound(ld, sk_CONF_VALUE_value(list, i)->value, &ld->c->inbound[i]);
		ld->c->ninbound = (size_t)i + 1;
	}
}

/* Second pass, after the environment's overrides: the rules, in order. */
static void load_rules(struct loader *ld)
{
	STACK_OF(CONF_VALUE) *rules = NULL;
	int i, n;

	if (ld->rules_section != NULL) {
		rules = NCONF_get_section(ld->nc, ld->rules_section);
		if (rules == NULL) {
			fail(ld, "[tlsshim] rules = %s: no such section", ld->rules_section);
			return;
		}
	}
	n = rules != NULL ? sk_CONF_VALUE_num(rules) : 0;
	if (n > MAX_RULES) {
		fail(ld, "[%s]: more than %d rules", ld->rules_section, MAX_RULES);
		return;
	}
	ld->c->rules = calloc((size_t)(n > 0 ? n : 1), sizeof(struct conf_rule));
	if (ld->c->rules == NULL) {
		fail(ld, "out of memory");
		return;
	}
	for (i = 0; i < n && !ld->failed; i++) {
		const CONF_VALUE *v = sk_CONF_VALUE_value(rules, i);

		load_rule(ld, ld->nc, v->value, &ld->c->rules[i]);
		ld->c->nrules = (size_t)i + 1;
	}
}

/* An empty environment value counts as unset. */
static const char *conf_env(const char *name)
{
	const char *v = secure_getenv(name);

	return (v != NULL && *v != '\0') ? v : NULL;
}

static void load_env(struct loader *ld)
{
	struct shim_conf *c = ld->c;
	const char *v;

	if ((v = conf_env("TLSSHIM_DEBUG")) != NULL && conf_parse_bool(v, &c->debug) != 0)
		c->debug = true;
	if ((v = conf_env("TLSSHIM_LOG_STDERR")) != NULL && conf_parse_bool(v, &c->log_stderr) != 0)
		fail(ld, "invalid TLSSHIM_LOG_STDERR=\"%.200s\"", v);
	if ((v = conf_env("TLSSHIM_LOG_SUCCESS")) != NULL &&
	    conf_parse_bool(v, &c->log_success) != 0)
		fail(ld, "invalid TLSSHIM_LOG_SUCCESS=\"%.200s\"", v);
	if ((v = conf_env("TLSSHIM_LOG_SOCKET")) != NULL &&
	    (size_t)snprintf(c->log_socket, sizeof(c->log_socket), "%s", v) >=
	            sizeof(c->log_socket))
		fail(ld, "invalid TLSSHIM_LOG_SOCKET=\"%.200s\" (path too long)", v);
	if ((v = conf_env("TLSSHIM_LOG_FACILITY")) != NULL &&
	    conf_parse_facility(v, &c->log_facility) != 0)
		fail(ld, "invalid TLSSHIM_LOG_FACILITY=\"%.200s\"", v);
	if ((v = conf_env("TLSSHIM_LOG_IDENT")) != NULL &&
	    parse_ident(v, c->log_ident, sizeof(c->log_ident)) != 0)
		fail(ld, "invalid TLSSHIM_LOG_IDENT=\"%.200s\"", v);
	if ((v = conf_env("TLSSHIM_RELAY_SPIN_US")) != NULL &&
	    parse_spin_us(v, &c->relay_spin_us) != 0)
		fail(ld, "invalid TLSSHIM_RELAY_SPIN_US=\"%.200s\" (microseconds, 0 to 1000)", v);
	if ((v = conf_env("TLSSHIM_RELAY_THREADS")) != NULL &&
	    parse_relay_threads(v, &c->relay_threads) != 0)
		fail(ld, "invalid TLSSHIM_RELAY_THREADS=\"%.200s\" (auto or 1 to 4)", v);
	if ((v = conf_env("TLSSHIM_RELAY_PARK")) != NULL &&
	    parse_relay_park(v, &c->relay_park) != 0)
		fail(ld, "invalid TLSSHIM_RELAY_PARK=\"%.200s\" (auto, always or off)", v);
	if ((v = conf_env("TLSSHIM_HANDSHAKE_TIMEOUT")) != NULL &&
	    conf_parse_seconds(v, &c->handshake_timeout_ms) != 0)
		fail(ld, "invalid TLSSHIM_HANDSHAKE_TIMEOUT=\"%.200s\" (seconds, 0.1 to 3600)", v);
	if ((v = conf_env("TLSSHIM_CA_FILE")) != NULL) {
		replace(&c->tls.ca_file, strdup(v));
		if (access(v, R_OK) != 0)
			fail(ld, "invalid TLSSHIM_CA_FILE=\"%.200s\" (not readable)", v);
	}
	if ((v = conf_env("TLSSHIM_CA_DIR")) != NULL) {
		replace(&c->tls.ca_dir, strdup(v));
		if (access(v, R_OK | X_OK) != 0)
			fail(ld, "invalid TLSSHIM_CA_DIR=\"%.200s\" (not a readable directory)", v);
	}
}

int conf_load(struct shim_conf *c, const char *file)
{
	struct loader ld = {c, NULL, NULL, NULL, NULL, "", false};

	memset(c, 0, sizeof(*c));
	c->usable = true;
	c->handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
	c->relay_spin_us = DEFAULT_RELAY_SPIN_US;
	c->tls.min_protocol = TLS12;
	c->tls.ocsp = OCSP_PREFER;
	c->inbound_dft.action = ACTION_TLS;
	c->inbound_dft.min_protocol = TLS12;
	c->tls.ocsp_skew_s = DEFAULT_OCSP_SKEW_S;
	c->tls.ocsp_fetch_timeout_ms = DEFAULT_OCSP_FETCH_TIMEOUT_MS;
	snprintf(c->log_socket, sizeof(c->log_socket), "/dev/log");
	c->log_facility = LOG_AUTHPRIV;
	snprintf(c->log_ident, sizeof(c->log_ident), "tlsshim");
	c->log_repeat_window_ms = DEFAULT_REPEAT_WINDOW_MS;

	if (file == NULL)
		file = conf_env("TLSSHIM_CONFIG");
	if (file == NULL && access(DEFAULT_CONFIG_FILE, F_OK) == 0)
		file = DEFAULT_CONFIG_FILE;
	if (file != NULL) {
		c->file = strdup(file);
		ld.file = c->file;
		load_file(&ld);
	}
	/* The environment overrides single global keys; rules inherit the result. */
	ld.file = NULL; /* its errors name the variable */
	load_env(&ld);
	ld.file = c->file;
	if (ld.nc != NULL && !ld.failed)
		load_rules(&ld);
	if (ld.nc != NULL && !ld.failed)
		load_inbounds(&ld);
	if (!ld.failed && (c->inbound_dft.cert == NULL) != (c->inbound_dft.key == NULL))
		fail(&ld, "[tlsshim]: cert and key go together");
	NCONF_free(ld.nc);
	c->ca_file = c->tls.ca_file;
	c->ca_dir = c->tls.ca_dir;
	if (!ld.failed && c->file == NULL && c->ca_file == NULL && c->ca_dir == NULL)
		fail(&ld, "no trust configured: set TLSSHIM_CA_FILE=/path/to/approved-ca.pem "
		          "(or TLSSHIM_CA_DIR, or a configuration file in TLSSHIM_CONFIG)");
	return ld.failed ? -1 : 0;
}

static void free_tls(struct conf_tls *t, const struct conf_tls *shared)
{
	const char **own[] = {&t->ca_file, &t->ca_dir,       &t->approved_cert, &t->cert,   &t->key,
	                      &t->ciphers, &t->ciphersuites, &t->crl_file,      &t->crl_dir};
	const char *const *theirs[] = {
	        &shared->ca_file,      &shared->ca_dir,   &shared->approved_cert,
	        &shared->cert,         &shared->key,      &shared->ciphers,
	        &shared->ciphersuites, &shared->crl_file, &shared->crl_dir};
	size_t i;

	for (i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		/* Inherited settings point at the global strings: freed once, there. */
		if (t == shared || *own[i] != *theirs[i])
			free((void *)(uintptr_t)*own[i]);
		*own[i] = NULL;
	}
}

static void free_inbound(struct conf_inbound *in, const struct conf_inbound *dft)
{
	size_t i;

	free((void *)(uintptr_t)in->section);
	free(in->listen);
	free(in->allow_from);
	for (i = 0; i < in->nallow_client; i++)
		free(in->allow_client[i]);
	free(in->allow_client);
	if (in == dft || in->cert != dft->cert)
		free((void *)(uintptr_t)in->cert);
	if (in == dft || in->key != dft->key)
		free((void *)(uintptr_t)in->key);
	free((void *)(uintptr_t)in->client_ca);
	free((void *)(uintptr_t)in->ciphers);
	free((void *)(uintptr_t)in->ciphersuites);
	free((void *)(uintptr_t)in->ocsp_response_file);
}

void conf_free(struct shim_conf *c)
{
	size_t i;

	for (i = 0; c->rules != NULL && i < c->nrules; i++) {
		free_tls(&c->rules[i].tls, &c->tls);
		free((void *)(uintptr_t)c->rules[i].section);
		free((void *)(uintptr_t)c->rules[i].name);
		free(c->rules[i].match);
	}
	/* A rule that failed half way is counted too (nrules is set before it loads). */
	free(c->rules);
	for (i = 0; c->inbound != NULL && i < c->ninbound; i++)
		free_inbound(&c->inbound[i], &c->inbound_dft);
	free(c->inbound);
	free_inbound(&c->inbound_dft, &c->inbound_dft);
	free_tls(&c->tls, &c->tls);
	free((void *)(uintptr_t)c->file);
	memset(c, 0, sizeof(*c));
}

static void conf_load_once(void)
{
	(void)conf_load(&the_conf, NULL);
}

const struct shim_conf *conf_get(void)
{
	pthread_once(&conf_once, conf_load_once);
	return &the_conf;
}
