/*
 * conf.c: builds the immutable process configuration from the environment.
 *
 * Secure defaults: no trust at all (every connection refused), a 10 second
 * handshake bound, no stderr output.  A malformed value never falls back to a
 * default: it makes the configuration unusable, so the operator notices.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#define DEFAULT_HANDSHAKE_TIMEOUT_MS 10000
#define DEFAULT_REPEAT_WINDOW_MS     10000

static struct shim_conf the_conf;
static pthread_once_t conf_once = PTHREAD_ONCE_INIT;

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
static int conf_parse_ident(const char *text, char *out, size_t outlen)
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

static void conf_fail(struct shim_conf *c, const char *what, const char *value)
{
	c->usable = false;
	snprintf(c->error, sizeof(c->error), "invalid %s=\"%.200s\"", what, value);
}

/* An empty environment value counts as unset. */
static const char *conf_env(const char *name)
{
	const char *v = secure_getenv(name);

	return (v != NULL && *v != '\0') ? v : NULL;
}

static void conf_load(void)
{
	struct shim_conf *c = &the_conf;
	const char *v;

	c->handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
	c->usable = true;
	c->log_socket = "/dev/log";
	c->log_facility = LOG_AUTHPRIV;
	snprintf(c->log_ident, sizeof(c->log_ident), "tlsshim");
	c->log_repeat_window_ms = DEFAULT_REPEAT_WINDOW_MS;

	if ((v = conf_env("TLSSHIM_LOG_SOCKET")) != NULL)
		c->log_socket = v;
	if ((v = conf_env("TLSSHIM_LOG_FACILITY")) != NULL &&
	    conf_parse_facility(v, &c->log_facility) != 0)
		conf_fail(c, "TLSSHIM_LOG_FACILITY", v);
	if ((v = conf_env("TLSSHIM_LOG_IDENT")) != NULL &&
	    conf_parse_ident(v, c->log_ident, sizeof(c->log_ident)) != 0)
		conf_fail(c, "TLSSHIM_LOG_IDENT", v);
	if ((v = conf_env("TLSSHIM_LOG_SUCCESS")) != NULL &&
	    conf_parse_bool(v, &c->log_success) != 0)
		conf_fail(c, "TLSSHIM_LOG_SUCCESS", v);

	if ((v = conf_env("TLSSHIM_DEBUG")) != NULL && conf_parse_bool(v, &c->debug) != 0)
		c->debug = true;
	if ((v = conf_env("TLSSHIM_LOG_STDERR")) != NULL && conf_parse_bool(v, &c->log_stderr) != 0)
		conf_fail(c, "TLSSHIM_LOG_STDERR", v);
	if ((v = conf_env("TLSSHIM_HANDSHAKE_TIMEOUT")) != NULL &&
	    conf_parse_seconds(v, &c->handshake_timeout_ms) != 0)
		conf_fail(c, "TLSSHIM_HANDSHAKE_TIMEOUT (seconds, 0.1 to 3600)", v);

	c->ca_file = conf_env("TLSSHIM_CA_FILE");
	c->ca_dir = conf_env("TLSSHIM_CA_DIR");
	if (c->ca_file != NULL && access(c->ca_file, R_OK) != 0)
		conf_fail(c, "TLSSHIM_CA_FILE (not readable)", c->ca_file);
	if (c->ca_dir != NULL && access(c->ca_dir, R_OK | X_OK) != 0)
		conf_fail(c, "TLSSHIM_CA_DIR (not a readable directory)", c->ca_dir);

	if ((v = conf_env("TLSSHIM_CONFIG")) != NULL) {
		c->usable = false;
		snprintf(c->error, sizeof(c->error),
		         "TLSSHIM_CONFIG=\"%.200s\": configuration files are not supported by this "
		         "build; use TLSSHIM_CA_FILE",
		         v);
	}
	if (c->usable && c->ca_file == NULL && c->ca_dir == NULL) {
		c->usable = false;
		snprintf(c->error, sizeof(c->error),
		         "no trust configured: set TLSSHIM_CA_FILE=/path/to/approved-ca.pem "
		         "(or TLSSHIM_CA_DIR)");
	}
}

const struct shim_conf *conf_get(void)
{
	pthread_once(&conf_once, conf_load);
	return &the_conf;
}
