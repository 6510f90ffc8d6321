/*
 * log.h: one structured line per event (DESIGN.md, "Logging").
 *
 * Lines go to the system log over the shim's own non-blocking datagram
 * socket (never openlog()/syslog(), which would change the program's own
 * syslog settings), and optionally to standard error.  A line never holds a
 * key, a session secret or the program's data.
 */
#ifndef TLSSHIM_LOG_H
#define TLSSHIM_LOG_H

#include "compat.h"

#include <stdbool.h>
#include <syslog.h>

/* Fields of one event; NULL strings and negative numbers are left out. */
struct log_event {
	int severity;      /* LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG */
	const char *event; /* handshake_failed, refused_plaintext, denied, ... */
	const char *dir;   /* "out" or "in" */
	const struct sockaddr *peer;
	const struct sockaddr *local;
	const char *name; /* expected name / SNI */
	const char *rule;
	const char *stage; /* policy, tcp, handshake, verify, ocsp, timeout */
	const char *reason;
	int x509_err;
	int depth;
	const char *subject;
	const char *issuer;
	const char *serial;
	const char *sha256;
	const char *not_after;
	const char *tls;
	const char *cipher;
	int resumed; /* 0/1, -1 when not applicable */
	const char *alert;
	const char *ocsp;
	long elapsed_ms;
};

/* Initialises a log_event with everything absent. */
void log_event_init(struct log_event *ev, int severity, const char *event);

/*
 * Formats `ev` as one line into `buf` (size `len`, always terminated).
 * Returns the length written.  Exposed for unit tests and the CLI.
 */
size_t log_format(const struct log_event *ev, char *buf, size_t len);

/* Formats and sends one event. Never blocks, never fails the caller. */
void log_emit(const struct log_event *ev);

/* Debug chatter to standard error when TLSSHIM_DEBUG is set. */
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Fork handling: the child must not reuse the parent's log socket. */
void log_atfork_child(void);

#endif
