/*
 * log.h: one structured line per event (DESIGN.md, "Logging").
 *
 * Lines go to the system log over the shim's own non-blocking datagram
 * socket (never openlog()/syslog(), which would change the program's own
 * syslog settings), and optionally to standard error.  A line never holds a
 * key, a session secret or the program's data.
 *
 * Identical events (same event, peer and reason) within the repeat window
 * are folded: the first is sent at once, the others are counted and sent as
 * one more line with `repeated=N` when the window closes (log.c says when
 * exactly).  Lines the socket cannot take are dropped, never waited for, and
 * counted as `dropped=N` on the next line that gets through.
 */
#ifndef TLSSHIM_LOG_H
#define TLSSHIM_LOG_H

#include "compat.h"

#include <stdbool.h>
#include <syslog.h>

/* For log_event_init(): the event's documented severity (log_severity()). */
#define LOG_SEVERITY_DEFAULT (-1)

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

/*
 * Initialises a log_event with everything absent.  `severity` is a LOG_*
 * level, or LOG_SEVERITY_DEFAULT for the event's documented one.
 */
void log_event_init(struct log_event *ev, int severity, const char *event);

/*
 * The documented severity of an event: LOG_ERR for failures
 * (handshake_failed, refused_plaintext, relay_failed, config_error),
 * LOG_WARNING for denied and insecure_setting, LOG_NOTICE for
 * plaintext_allowed, LOG_INFO for connected; LOG_NOTICE for any other name.
 */
int log_severity(const char *event);

/*
 * Formats `ev` as one line into `buf` (size `len`, always terminated).
 * Returns the length written.  Exposed for unit tests and the CLI.
 */
size_t log_format(const struct log_event *ev, char *buf, size_t len);

/*
 * Formats and sends one event (folded with identical ones, see above).
 * Never blocks on the log socket, never fails the caller; any thread.
 */
void log_emit(const struct log_event *ev);

/*
 * Sends the `repeated=N` lines of windows that have closed.  log_emit() does
 * this itself, and an exit handler sends every pending count; a long-lived
 * thread of the shim may call this periodically so that an idle process
 * reports its counts without waiting for its next line.
 */
void log_flush(void);

/* Debug chatter to standard error when TLSSHIM_DEBUG is set. */
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Fork handling, in the child: forgets the parent's socket (closed by
 * fdreg_atfork_child), lock, pending counts and dropped count (the parent
 * reports its own).
 */
void log_atfork_child(void);

/*
 * --- A log channel as an object, for unit tests ------------------------------
 *
 * log_emit() uses one process-wide channel configured from conf_get().  These
 * functions run the same code on a separate channel with explicit settings
 * and an explicit clock, so that tests can drive the folding and the socket
 * handling deterministically.
 */
struct log_chan;

struct log_chan_opts {
	const char *path;  /* datagram socket to send to */
	const char *ident; /* syslog tag */
	int facility;      /* LOG_AUTHPRIV, LOG_LOCAL0, ... */
	int window_ms;     /* repeat window; 0 folds nothing */
	bool to_stderr;    /* copy each line to standard error */
};

/* A new channel (no socket yet), or NULL when out of memory. */
struct log_chan *log_chan_new(const struct log_chan_opts *opts);

/* Closes the channel's socket and frees it; pending counts are discarded. */
void log_chan_free(struct log_chan *c);

/* log_emit() on `c` at time `now_ms` (any monotonic clock, milliseconds). */
void log_chan_emit(struct log_chan *c, const struct log_event *ev, long long now_ms);

/*
 * Sends the pending counts of windows closed at `now_ms`, or of every window
 * when `all` (what the exit handler does; after it nothing is folded).
 */
void log_chan_flush(struct log_chan *c, long long now_ms, bool all);

/* log_atfork_child() on `c`. */
void log_chan_atfork_child(struct log_chan *c);

/* The channel's socket descriptor, or -1 (tests only). */
int log_chan_fd(struct log_chan *c);

#endif
