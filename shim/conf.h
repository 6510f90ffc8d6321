/*
 * conf.h: the shim's configuration, read once per process and immutable
 * afterwards (house rule 5).
 *
 * Sources, in order: built-in secure defaults, then the environment
 * (TLSSHIM_CA_FILE, TLSSHIM_CA_DIR, TLSSHIM_HANDSHAKE_TIMEOUT,
 * TLSSHIM_LOG_STDERR, TLSSHIM_DEBUG).  A configuration that cannot be used
 * is not an error the program sees at load time: conf_get() still returns a
 * structure, with `usable` false and `error` saying why, and every outbound
 * connection is then refused.
 */
#ifndef TLSSHIM_CONF_H
#define TLSSHIM_CONF_H

#include "compat.h"

#include <stdbool.h>

struct shim_conf {
	bool usable;              /* false: refuse every outbound TCP connection */
	char error[512];          /* why not usable, for the one stderr line */
	const char *ca_file;      /* approved CAs (PEM), or NULL */
	const char *ca_dir;       /* approved CAs (hashed directory), or NULL */
	int handshake_timeout_ms; /* bounds TCP connect + TLS handshake */
	bool log_stderr;          /* copy each log line to standard error */
	bool log_success;         /* also log every successful connection (audit) */
	const char *log_socket;   /* syslog datagram socket, default /dev/log */
	int log_facility;         /* syslog facility (LOG_AUTHPRIV ...), default authpriv */
	char log_ident[33];       /* syslog tag, default "tlsshim" */
	int log_repeat_window_ms; /* identical failures folded within this window */
	bool debug;               /* debug chatter on standard error */
};

/*
 * Returns the process's configuration, reading it on first use.  Never NULL;
 * the structure lives until the process ends and is never modified again.
 */
const struct shim_conf *conf_get(void);

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

#endif
