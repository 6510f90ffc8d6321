/*
 * log.c: formats events as `key=value` lines and sends them to syslog.
 *
 * The RFC 3164 header is written here, so the program's openlog() ident,
 * facility and options stay untouched.  The socket is non-blocking and one of
 * the shim's hidden descriptors (the program's closefrom() cannot take it);
 * when the daemon is absent or its queue is full the line is dropped and
 * counted, and the count rides on the next line that gets through.
 */
#include "log.h"

#include "conf.h"
#include "fdreg.h"
#include "real.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static atomic_ulong log_dropped;

void log_event_init(struct log_event *ev, int severity, const char *event)
{
	memset(ev, 0, sizeof(*ev));
	ev->severity = severity;
	ev->event = event;
	ev->x509_err = -1;
	ev->depth = -1;
	ev->elapsed_ms = -1;
	ev->resumed = -1;
}

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

static void out_addr(struct out *o, const char *key, const struct sockaddr *sa)
{
	char host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 10];

	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(text, sizeof(text), "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(text, sizeof(text), "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		return;
	}
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

/* Caller holds log_lock. Returns the socket, opening it if needed. */
static int log_socket_locked(void)
{
	struct sockaddr_un sun;
	int fd;

	if (log_fd >= 0)
		return log_fd;
	fd = fdreg_adopt(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
	if (fd < 0)
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", "/dev/log");
	if (real.connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		fdreg_release(fd);
		return -1;
	}
	log_fd = fd;
	return fd;
}

static void log_send_syslog(int severity, const char *line)
{
	char msg[LOG_LINE_MAX + 128];
	char stamp[32];
	struct tm tm;
	time_t now = time(NULL);
	unsigned long dropped;
	int fd, n;

	localtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm);
	dropped = atomic_load(&log_dropped);
	n = snprintf(msg, sizeof(msg), "<%d>%s tlsshim[%ld]: %s",
	             conf_get()->log_facility | severity, stamp, (long)getpid(), line);
	if (dropped > 0 && n > 0 && (size_t)n < sizeof(msg))
		n += snprintf(msg + n, sizeof(msg) - (size_t)n, " dropped=%lu", dropped);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(msg))
		n = (int)sizeof(msg) - 1;

	pthread_mutex_lock(&log_lock);
	fd = log_socket_locked();
	if (fd >= 0 && send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n) {
		atomic_fetch_sub(&log_dropped, dropped);
	} else {
		atomic_fetch_add(&log_dropped, 1);
		/* The daemon may have restarted: reconnect next time. */
		if (fd >= 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			fdreg_release(fd);
			log_fd = -1;
		}
	}
	pthread_mutex_unlock(&log_lock);
}

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

void log_emit(const struct log_event *ev)
{
	char line[LOG_LINE_MAX];
	const struct shim_conf *c = conf_get();

	log_format(ev, line, sizeof(line));
	log_send_syslog(ev->severity, line);
	if (c->log_stderr) {
		char out[LOG_LINE_MAX + 64];
		int n = snprintf(out, sizeof(out), "tlsshim[%ld]: %s\n", (long)getpid(), line);

		if (n > 0)
			log_write_stderr(out,
			                 (size_t)n < sizeof(out) ? (size_t)n : sizeof(out) - 1);
	}
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
	/* fdreg_atfork_child closed the descriptor with the other hidden ones. */
	pthread_mutex_init(&log_lock, NULL);
	log_fd = -1;
}
