/*
 * log.c: formats events as `key=value` lines and sends them to syslog.
 *
 * Sending.  The RFC 3164 header (`<PRI>Mmm dd hh:mm:ss IDENT[PID]: `) is
 * written here, from log_facility and log_ident, so the program's openlog()
 * ident, facility and options stay untouched.  The socket is a non-blocking
 * AF_UNIX datagram socket connected to log_socket and is one of the shim's
 * hidden descriptors (the program's close()/closefrom() cannot take it);
 * before each send it is checked to still be ours, since a raw close_range
 * syscall or a dup2() onto its number would have replaced it.  A syslog
 * daemon that restarts binds a new socket at the same path and our send
 * fails with ECONNREFUSED (then ENOTCONN): we reconnect once and resend.
 * When the daemon is absent or its queue is full (EAGAIN) the line is
 * dropped and counted, never waited for, and `dropped=N` rides on the next
 * line that gets through.  The count is read, appended and cleared under the
 * channel lock together with the send, so concurrent threads neither lose
 * nor repeat it.  The one wait is at exit (see below).
 *
 * Folding.  Identical events -- same event name, peer and reason -- within
 * log_repeat_window_ms are folded, so a retry loop cannot flood the log (an
 * inbound peer is its address without the port, plus the listener):
 *  - the first occurrence is sent at once and opens a window for its key in
 *    a fixed table of FOLD_SLOTS slots;
 *  - later occurrences inside the window are not sent; the slot counts them
 *    and keeps the text of the latest one;
 *  - when the window has closed, that latest line is sent once more with
 *    ` repeated=N` (N occurrences not sent on their own).  A closed window is
 *    noticed by the next line of any kind (every emit first flushes closed
 *    windows), by log_flush(), and at exit by an atexit handler, which sends
 *    every pending count whether or not its window closed and turns folding
 *    off for whatever is logged later in the exit.  Since no later line
 *    could report those lines dropped, and they may be more than a short
 *    daemon queue holds, the exit flush alone waits for room in the queue,
 *    LOG_EXIT_WAIT_MS at most in all;
 *  - when all slots are busy, a window that has folded nothing for a tenth
 *    of the window gives way to the new key; otherwise the new key's lines
 *    are sent unfolded until a slot frees up (at most a window later).  So
 *    with more than FOLD_SLOTS distinct failures repeating at once, FOLD_SLOTS
 *    of them are folded and the others sent as they come: never lost, never
 *    waited for.
 * So a count is never discarded while the process lives: it is delayed at
 * most until the process logs again or exits.  It is lost only with the
 * process itself (killed by a signal, _exit(), exec) or, like any line, when
 * the socket drops the line that carries it (then `dropped=` says so).
 * Events = lines without `repeated=` + the sum of the `repeated=` values.
 * `connected` audit lines are never folded: each connection is reported.
 *
 * The line, with `repeated=` but without `dropped=` (a syslog matter), is
 * also written to standard error when log_stderr is set.  After fork() the
 * child starts afresh (log_atfork_child): new lock, no socket, no counts.
 */
#include "log.h"

#include "conf.h"
#include "fdreg.h"
#include "real.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096
/* Room for the header (PRI, time, 32-byte ident, pid), suffixes and '\n'. */
#define LOG_MSG_MAX  (LOG_LINE_MAX + 160)
#define FOLD_SLOTS   32
#define FOLD_KEY_MAX 384
/* At exit, how long the last counts may wait for room in the daemon's queue. */
#define LOG_EXIT_WAIT_MS 200

/* --- events and their severity ----------------------------------------------- */

static const struct {
	const char *event;
	int severity;
	bool fold;
} log_events[] = {
        {"handshake_failed", LOG_ERR, true},     {"refused_plaintext", LOG_ERR, true},
        {"relay_failed", LOG_ERR, true},         {"config_error", LOG_ERR, true},
        {"denied", LOG_WARNING, true},           {"insecure_setting", LOG_WARNING, true},
        {"plaintext_allowed", LOG_NOTICE, true}, {"connected", LOG_INFO, false},
        {"staple_failed", LOG_WARNING, true},    {"staple_refreshed", LOG_INFO, false},
};

int log_severity(const char *event)
{
	size_t i;

	for (i = 0; event != NULL && i < sizeof(log_events) / sizeof(log_events[0]); i++)
		if (strcmp(event, log_events[i].event) == 0)
			return log_events[i].severity;
	return LOG_NOTICE;
}

/* Whether identical lines of `event` are folded; unknown names are. */
static bool log_folds(const char *event)
{
	size_t i;

	for (i = 0; event != NULL && i < sizeof(log_events) / sizeof(log_events[0]); i++)
		if (strcmp(event, log_events[i].event) == 0)
			return log_events[i].fold;
	return true;
}

void log_event_init(struct log_event *ev, int severity, const char *event)
{
	memset(ev, 0, sizeof(*ev));
	ev->severity = severity >= 0 ? severity : log_severity(event);
	ev->event = event;
	ev->x509_err = -1;
	ev->depth = -1;
	ev->elapsed_ms = -1;
	ev->resumed = -1;
}

/* --- formatting -------------------------------------------------------------------- */

struct out {
	char *buf;
	size_t len;
	size_t pos;
};

static void out_raw(struct out *o, const char *s, size_t n)
{
	while (n-- > 0 && o->pos + 1 < o->len)
		o->buf[o->pos++] = *s++;
	o->buf[o->pos] = '\0';
}

static void out_str(struct out *o, const char *s)
{
	out_raw(o, s, strlen(s));
}

/* Values with spaces, quotes, '=' or control bytes are quoted and escaped. */
static void out_value(struct out *o, const char *v)
{
	bool quote = *v == '\0';
	const unsigned char *p;

	for (p = (const unsigned char *)v; *p != '\0'; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p >= 0x7f)
			quote = true;
	if (!quote) {
		out_str(o, v);
		return;
	}
	out_raw(o, "\"", 1);
	for (p = (const unsigned char *)v; *p != '\0'; p++) {
		char esc[5];

		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			out_raw(o, esc, 2);
		} else if (*p < ' ' || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
			out_str(o, esc);
		} else {
			out_raw(o, (const char *)p, 1);
		}
	}
	out_raw(o, "\"", 1);
}

static void out_kv(struct out *o, const char *key, const char *value)
{
	if (value == NULL)
		return;
	if (o->pos > 0)
		out_raw(o, " ", 1);
	out_str(o, key);
	out_raw(o, "=", 1);
	out_value(o, value);
}

static void out_kl(struct out *o, const char *key, long value)
{
	char num[24];

	if (value < 0)
		return;
	snprintf(num, sizeof(num), "%ld", value);
	out_kv(o, key, num);
}

/* `ip:port` or `[ipv6]:port` into `text`; false for other families. */
static bool addr_text(const struct sockaddr *sa, char *text, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(text, len, "%s:%u", host, ntohs(in->sin_port));
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(text, len, "[%s]:%u", host, ntohs(in6->sin6_port));
		return true;
	}
	return false;
}

/* `text` without its `:port`. */
static void addr_strip_port(char *text)
{
	char *colon = strrchr(text, ':');

	if (colon != NULL)
		*colon = '\0';
}

static void out_addr(struct out *o, const char *key, const struct sockaddr *sa)
{
	char text[INET6_ADDRSTRLEN + 10];

	if (addr_text(sa, text, sizeof(text)))
		out_kv(o, key, text);
}

static char log_exe_path[512];
static pthread_once_t log_exe_once = PTHREAD_ONCE_INIT;

static void log_exe_load(void)
{
	ssize_t n = readlink("/proc/self/exe", log_exe_path, sizeof(log_exe_path) - 1);

	if (n <= 0)
		snprintf(log_exe_path, sizeof(log_exe_path), "?");
	else
		log_exe_path[n] = '\0';
}

/* The program's path; read once (an exec'd image is a new process). */
static const char *log_exe(void)
{
	pthread_once(&log_exe_once, log_exe_load);
	return log_exe_path;
}

size_t log_format(const struct log_event *ev, char *buf, size_t len)
{
	struct out o = {buf, len, 0};

	if (len == 0)
		return 0;
	buf[0] = '\0';
	out_kv(&o, "event", ev->event);
	out_kv(&o, "dir", ev->dir);
	out_kl(&o, "pid", (long)getpid());
	out_kv(&o, "exe", log_exe());
	out_kl(&o, "uid", (long)getuid());
	out_addr(&o, "peer", ev->peer);
	out_addr(&o, "local", ev->local);
	out_kv(&o, "name", ev->name);
	out_kv(&o, "rule", ev->rule);
	out_kv(&o, "stage", ev->stage);
	out_kv(&o, "reason", ev->reason);
	out_kl(&o, "x509_err", ev->x509_err);
	out_kl(&o, "depth", ev->depth);
	out_kv(&o, "subject", ev->subject);
	out_kv(&o, "issuer", ev->issuer);
	out_kv(&o, "serial", ev->serial);
	out_kv(&o, "sha256", ev->sha256);
	out_kv(&o, "not_after", ev->not_after);
	out_kv(&o, "tls", ev->tls);
	out_kv(&o, "cipher", ev->cipher);
	if (ev->resumed >= 0)
		out_kv(&o, "resumed", ev->resumed ? "yes" : "no");
	out_kv(&o, "alert", ev->alert);
	out_kv(&o, "ocsp", ev->ocsp);
	out_kl(&o, "elapsed_ms", ev->elapsed_ms);
	return o.pos;
}

/* --- the channel: socket, dropped count, folding table ---------------------------- */

struct fold_slot {
	bool used;
	int severity;        /* of the latest folded occurrence */
	uint64_t hash;       /* of the whole key (the stored copy may be cut short) */
	long long start_ms;  /* when the window opened */
	unsigned long count; /* occurrences folded since */
	char key[FOLD_KEY_MAX];
};

struct log_chan {
	pthread_mutex_t lock;
	/* Settings, fixed by chan_setup(). */
	struct sockaddr_un addr;
	bool addr_ok; /* the path fits in sun_path */
	char ident[33];
	int facility;
	int window_ms;
	bool to_stderr;
	/* State, under the lock. */
	int fd;       /* hidden descriptor, or -1 */
	dev_t fd_dev; /* identity of fd, to notice it was replaced */
	ino_t fd_ino;
	bool connected;
	bool exiting;              /* the exit flush ran: nothing is folded any more */
	long long exit_wait_until; /* during the exit flush: wait for a full queue until then */
	unsigned long dropped;
	struct fold_slot slot[FOLD_SLOTS];
	char text[FOLD_SLOTS][LOG_LINE_MAX]; /* the latest folded line of each slot */
};

static void log_write_stderr(const char *text, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, text, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		text += w;
		n -= (size_t)w;
	}
}

/* A lock that cannot be taken is a broken invariant: say where, and stop. */
static void chan_lock_failed(const char *who, int rc)
{
	char msg[160];
	int n = snprintf(msg, sizeof(msg), "tlsshim: %s: log lock: %s\n", who, strerror(rc));

	if (n > 0)
		log_write_stderr(msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
	abort();
}

static void chan_lock(struct log_chan *c, const char *who)
{
	int rc = pthread_mutex_lock(&c->lock);

	if (rc != 0)
		chan_lock_failed(who, rc);
}

static void chan_unlock(struct log_chan *c, const char *who)
{
	int rc = pthread_mutex_unlock(&c->lock);

	if (rc != 0)
		chan_lock_failed(who, rc);
}

static long long log_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fills the settings of `c` (not its lock) and empties its state. */
static void chan_setup(struct log_chan *c, const struct log_chan_opts *o)
{
	size_t n = o->path != NULL ? strlen(o->path) : 0;

	memset(&c->addr, 0, sizeof(c->addr));
	c->addr.sun_family = AF_UNIX;
	c->addr_ok = n > 0 && n < sizeof(c->addr.sun_path);
	if (c->addr_ok)
		memcpy(c->addr.sun_path, o->path, n + 1);
	snprintf(c->ident, sizeof(c->ident), "%s", o->ident != NULL ? o->ident : "tlsshim");
	c->facility = o->facility & LOG_FACMASK;
	c->window_ms = o->window_ms > 0 ? o->window_ms : 0;
	c->to_stderr = o->to_stderr;
	c->fd = -1;
	c->connected = false;
	c->exiting = false;
	c->dropped = 0;
}

/* Caller holds the lock.  False when c->fd is no longer the socket we opened. */
static bool chan_fd_ours(const struct log_chan *c)
{
	struct stat st;

	return fstat(c->fd, &st) == 0 && st.st_dev == c->fd_dev && st.st_ino == c->fd_ino;
}

/* Caller holds the lock.  Returns 0 with c->fd connected, or -1. */
static int chan_connect_locked(struct log_chan *c)
{
	struct stat st;
	int fd;

	/* Bound already in the shim; a unit test may come here first. */
	if (real_init() != 0)
		return -1;
	if (c->fd >= 0 && !chan_fd_ours(c)) {
		/*
		 * Closed behind our back (a raw close_range syscall, a dup2() onto
		 * it): the number may be the program's, or the shim's own again, so
		 * it is neither closed nor unhidden here, only forgotten.
		 */
		c->fd = -1;
		c->connected = false;
	}
	if (c->fd < 0) {
		fd = fdreg_adopt(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
		if (fd < 0)
			return -1;
		if (fstat(fd, &st) != 0) {
			fdreg_release(fd);
			return -1;
		}
		c->fd = fd;
		c->fd_dev = st.st_dev;
		c->fd_ino = st.st_ino;
		c->connected = false;
	}
	if (!c->connected) {
		if (!c->addr_ok ||
		    real.connect(c->fd, (const struct sockaddr *)&c->addr, sizeof(c->addr)) != 0)
			return -1;
		c->connected = true;
	}
	return 0;
}

/*
 * Caller holds the lock.  At exit, a full queue is waited for (bounded by
 * c->exit_wait_until): the exit flush may send up to FOLD_SLOTS lines at once,
 * more than a short queue (net.unix.max_dgram_qlen, 10 by default without
 * systemd) holds, and no later line would report them dropped.  True when
 * the socket became writable in time.
 */
static bool chan_exit_wait_locked(struct log_chan *c)
{
	struct pollfd p = {c->fd, POLLOUT, 0};
	long long left;

	if (c->exit_wait_until == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
		return false;
	left = c->exit_wait_until - log_now_ms();
	return left > 0 && poll(&p, 1, (int)left) == 1 && (p.revents & POLLOUT);
}

/* Caller holds the lock.  Sends one datagram; 0 when the daemon has it. */
static int chan_deliver_locked(struct log_chan *c, const char *msg, size_t n)
{
	bool reconnected = false;

	for (;;) {
		if (chan_connect_locked(c) != 0)
			return -1;
		if (send(c->fd, msg, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
			return 0;
		if (chan_exit_wait_locked(c))
			continue;
		/*
		 * ECONNREFUSED: the daemon's socket is gone, typically because the
		 * daemon restarted and bound a new one at the same path; the kernel
		 * then forgets the peer, and later sends say ENOTCONN.  Connect
		 * again and resend, once.  EAGAIN (its queue is full) and anything
		 * else: drop, without waiting (but at exit, above).
		 */
		if (reconnected ||
		    (errno != ECONNREFUSED && errno != ENOTCONN && errno != ECONNRESET))
			return -1;
		c->connected = false;
		reconnected = true;
	}
}

/*
 * Caller holds the lock.  Sends `body` with ` repeated=N` when `repeated`,
 * and the pending ` dropped=N`, as one syslog datagram; copies the line
 * (without dropped=) to standard error when configured.
 */
static void chan_send_locked(struct log_chan *c, int severity, const char *body,
                             unsigned long repeated)
{
	char msg[LOG_MSG_MAX], stamp[32], num[64];
	struct out o = {msg, sizeof(msg) - 1, 0}; /* a byte kept for the '\n' */
	time_t now = time(NULL);
	struct tm tm;
	size_t tag, end;

	if (localtime_r(&now, &tm) == NULL ||
	    strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm) == 0)
		snprintf(stamp, sizeof(stamp), "Jan  1 00:00:00");
	snprintf(num, sizeof(num), "<%d>", c->facility | (severity & LOG_PRIMASK));
	out_str(&o, num);
	out_str(&o, stamp);
	out_raw(&o, " ", 1);
	tag = o.pos;
	out_str(&o, c->ident);
	snprintf(num, sizeof(num), "[%ld]: ", (long)getpid());
	out_str(&o, num);
	out_str(&o, body);
	if (repeated > 0) {
		snprintf(num, sizeof(num), " repeated=%lu", repeated);
		out_str(&o, num);
	}
	end = o.pos;
	if (c->dropped > 0) {
		snprintf(num, sizeof(num), " dropped=%lu", c->dropped);
		out_str(&o, num);
	}
	if (chan_deliver_locked(c, msg, o.pos) == 0)
		c->dropped = 0;
	else
		c->dropped++;
	if (c->to_stderr) {
		msg[end] = '\n';
		log_write_stderr(msg + tag, end - tag + 1);
	}
}

/* Caller holds the lock.  Sends slot `i`'s count, if any, and frees the slot. */
static void fold_close_locked(struct log_chan *c, size_t i)
{
	struct fold_slot *s = &c->slot[i];

	if (s->count > 0)
		chan_send_locked(c, s->severity, c->text[i], s->count);
	s->used = false;
	s->count = 0;
}

/* Caller holds the lock.  Closes the windows that ended by `now_ms` (all: every one). */
static void chan_flush_locked(struct log_chan *c, long long now_ms, bool all)
{
	size_t i;

	for (i = 0; i < FOLD_SLOTS; i++)
		if (c->slot[i].used && (all || now_ms - c->slot[i].start_ms >= c->window_ms))
			fold_close_locked(c, i);
}

/*
 * The folding key of `ev` into `key`; returns its hash.  The key is the event,
 * the peer and the reason.  An inbound peer comes from a new port with every
 * connection, so there the peer is its address alone, and the listener
 * (`local`) is part of the key instead.
 */
static uint64_t fold_key(const struct log_event *ev, char *key, size_t len)
{
	char peer[INET6_ADDRSTRLEN + 10] = "", local[INET6_ADDRSTRLEN + 10] = "";
	bool in = ev->dir != NULL && strcmp(ev->dir, "in") == 0;
	const char *parts[4];
	struct out o = {key, len, 0};
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */
	const unsigned char *p;
	size_t i;

	if (!addr_text(ev->peer, peer, sizeof(peer)))
		peer[0] = '\0';
	else if (in)
		addr_strip_port(peer);
	if (!in || !addr_text(ev->local, local, sizeof(local)))
		local[0] = '\0';
	parts[0] = ev->event != NULL ? ev->event : "";
	parts[1] = peer;
	parts[2] = local;
	parts[3] = ev->reason != NULL ? ev->reason : "";
	for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		for (p = (const unsigned char *)parts[i]; *p != '\0'; p++)
			h = (h ^ *p) * 1099511628211ULL;
		h = (h ^ 0x1f) * 1099511628211ULL;
		out_str(&o, parts[i]);
		out_raw(&o, "\x1f", 1);
	}
	return h;
}

/* Caller holds the lock.  The open window of `key`, or NULL. */
static struct fold_slot *fold_find_locked(struct log_chan *c, const char *key, uint64_t hash)
{
	size_t i;

	for (i = 0; i < FOLD_SLOTS; i++)
		if (c->slot[i].used && c->slot[i].hash == hash && strcmp(c->slot[i].key, key) == 0)
			return &c->slot[i];
	return NULL;
}

/*
 * Caller holds the lock.  Opens a window for `key` at `now_ms` in a free
 * slot, or else in place of the oldest window that has folded nothing for a
 * tenth of the window (a key seen once, with no count to report).  Windows
 * with a count, and young ones, are kept: a loop over more keys than slots
 * would otherwise evict each key before it came round again, and fold
 * nothing at all.  When nothing can give way, no window is opened and the
 * line is sent unfolded.
 */
static void fold_open_locked(struct log_chan *c, const char *key, uint64_t hash, int severity,
                             long long now_ms)
{
	long long min_age = c->window_ms / 10;
	struct fold_slot *s = NULL;
	size_t i;

	for (i = 0; i < FOLD_SLOTS; i++) {
		struct fold_slot *t = &c->slot[i];

		if (!t->used) {
			s = t;
			break;
		}
		if (t->count == 0 && now_ms - t->start_ms >= min_age &&
		    (s == NULL || t->start_ms < s->start_ms))
			s = t;
	}
	if (s == NULL)
		return;
	s->used = true;
	s->severity = severity;
	s->hash = hash;
	s->start_ms = now_ms;
	s->count = 0;
	snprintf(s->key, sizeof(s->key), "%s", key);
}

void log_chan_emit(struct log_chan *c, const struct log_event *ev, long long now_ms)
{
	char line[LOG_LINE_MAX], key[FOLD_KEY_MAX];
	int saved = errno;
	struct fold_slot *s;
	uint64_t hash;

	log_format(ev, line, sizeof(line));
	hash = fold_key(ev, key, sizeof(key));

	chan_lock(c, __func__);
	chan_flush_locked(c, now_ms, false);
	if (c->window_ms > 0 && !c->exiting && log_folds(ev->event)) {
		s = fold_find_locked(c, key, hash);
		if (s != NULL) {
			s->count++;
			s->severity = ev->severity;
			memcpy(c->text[s - c->slot], line, strlen(line) + 1);
			goto out;
		}
		fold_open_locked(c, key, hash, ev->severity, now_ms);
	}
	chan_send_locked(c, ev->severity, line, 0);
out:
	chan_unlock(c, __func__);
	errno = saved;
}

void log_chan_flush(struct log_chan *c, long long now_ms, bool all)
{
	int saved = errno;

	chan_lock(c, __func__);
	if (all)
		c->exit_wait_until = log_now_ms() + LOG_EXIT_WAIT_MS;
	chan_flush_locked(c, now_ms, all);
	c->exit_wait_until = 0;
	if (all)
		c->exiting = true;
	chan_unlock(c, __func__);
	errno = saved;
}

void log_chan_atfork_child(struct log_chan *c)
{
	size_t i;

	/*
	 * Another thread may have held the lock at fork(): a new lock, and the
	 * state it guarded dropped wholesale.  The socket was closed with the
	 * other hidden descriptors; the parent reports its own counts.
	 */
	pthread_mutex_init(&c->lock, NULL);
	c->fd = -1;
	c->connected = false;
	c->dropped = 0;
	for (i = 0; i < FOLD_SLOTS; i++) {
		c->slot[i].used = false;
		c->slot[i].count = 0;
	}
}

struct log_chan *log_chan_new(const struct log_chan_opts *opts)
{
	struct log_chan *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	if (pthread_mutex_init(&c->lock, NULL) != 0) {
		free(c);
		return NULL;
	}
	chan_setup(c, opts);
	return c;
}

void log_chan_free(struct log_chan *c)
{
	if (c == NULL)
		return;
	if (c->fd >= 0 && chan_fd_ours(c))
		fdreg_release(c->fd);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

int log_chan_fd(struct log_chan *c)
{
	int fd;

	chan_lock(c, __func__);
	fd = c->fd;
	chan_unlock(c, __func__);
	return fd;
}

/* --- the process's channel ------------------------------------------------------- */

/* Zero-initialised (in .bss: the text table is 128 KiB); set up once. */
static struct log_chan log_global;
static pthread_once_t log_global_once = PTHREAD_ONCE_INIT;

/* Sends every pending count before the process ends (see the top of the file). */
static void log_atexit(void)
{
	log_chan_flush(&log_global, log_now_ms(), true);
}

static void log_global_setup(void)
{
	const struct shim_conf *conf = conf_get();
	struct log_chan_opts o = {
	        .path = conf->log_socket,
	        .ident = conf->log_ident,
	        .facility = conf->log_facility,
	        .window_ms = conf->log_repeat_window_ms,
	        .to_stderr = conf->log_stderr,
	};

	pthread_mutex_init(&log_global.lock, NULL);
	/* Without the exit handler a count could be lost: then fold nothing. */
	if (atexit(log_atexit) != 0)
		o.window_ms = 0;
	chan_setup(&log_global, &o);
}

static struct log_chan *log_global_get(void)
{
	pthread_once(&log_global_once, log_global_setup);
	return &log_global;
}

void log_emit(const struct log_event *ev)
{
	log_chan_emit(log_global_get(), ev, log_now_ms());
}

void log_flush(void)
{
	log_chan_flush(log_global_get(), log_now_ms(), false);
}

void log_debug(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n, m;

	if (!conf_get()->debug)
		return;
	n = snprintf(buf, sizeof(buf), "tlsshim[%ld] debug: ", (long)getpid());
	if (n < 0)
		return;
	va_start(ap, fmt);
	m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	log_write_stderr(buf, (size_t)n);
}

void log_atfork_child(void)
{
	/* Not log_global_get(): no set-up work in a fork handler. */
	log_chan_atfork_child(&log_global);
}
