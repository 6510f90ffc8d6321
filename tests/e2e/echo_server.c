/*
 * echo_server: a small plaintext line-echo server for the inbound-mode tests
 * (tests/e2e/inbound.bats). It knows nothing of TLS: run under
 * LD_PRELOAD=libtlsshim.so, its clients must speak TLS to it.
 *
 *   echo_server [-m poll|fork] [-g GREETING] [-d] ADDRESS
 *
 *   ADDRESS   127.0.0.1:PORT, [::1]:PORT, *:PORT (IPv4 any), [::]:PORT, or
 *             unix:PATH (a Unix stream socket, which the shim never touches)
 *   -m poll   (default) one process, non-blocking sockets, poll(); clients
 *             are taken with accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)
 *   -m fork   blocking accept(), one child process per client
 *   -g TEXT   send "TEXT\n" to every client as soon as it is accepted
 *             (a server-speaks-first protocol, like SMTP or FTP)
 *   -d        dual stack: an IPv6 ADDRESS (e.g. [::]:PORT) also takes IPv4
 *             clients, as IPv4-mapped addresses (IPV6_V6ONLY off; it is on
 *             otherwise)
 *
 * Protocol: every line received is sent back, except the line "peer?",
 * which is answered with "peer=IP:PORT local=IP:PORT\n" from getpeername()
 * and getsockname() of the accepted descriptor. At end of input the server
 * echoes what is left of a partial line and closes.
 *
 * Log, one line per event on standard output (written with one write(2), so
 * lines of forked children never interleave):
 *   listening addr=ADDRESS pid=PID
 *   accepted fd=N peer=IP:PORT getpeername=IP:PORT local=IP:PORT
 *            family=inet|inet6|unix type=stream nonblock=0|1 cloexec=0|1
 *            (peer= is what accept() wrote into its address argument)
 *   recv peer=IP:PORT n=N data="first 200 bytes, escaped"
 *   closed peer=IP:PORT in=BYTES out=BYTES
 * Build: gcc -O2 -Wall -o echo_server echo_server.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CLIENTS 512
#define BUF         16384

static const char *greeting;
static int dual_stack;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDOUT_FILENO, line, (size_t)n) < 0) {
		/* nothing to do: the log is best effort */
	}
}

static void die(const char *what)
{
	fprintf(stderr, "echo_server: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* addr_str: "IP:PORT", "[IP6]:PORT" or "unix:PATH" (or "unix:" unnamed). */
static void addr_str(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN];

	if (len == 0) {
		snprintf(out, outlen, "none");
	} else if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		snprintf(out, outlen, "%s:%u", ip, ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		snprintf(out, outlen, "[%s]:%u", ip, ntohs(s->sin6_port));
	} else if (ss->ss_family == AF_UNIX) {
		const struct sockaddr_un *s = (const struct sockaddr_un *)ss;
		size_t plen = len > offsetof(struct sockaddr_un, sun_path)
		                      ? len - offsetof(struct sockaddr_un, sun_path)
		                      : 0;
		snprintf(out, outlen, "unix:%.*s", (int)strnlen(s->sun_path, plen), s->sun_path);
	} else {
		snprintf(out, outlen, "family%d", ss->ss_family);
	}
}

static const char *family_name(int fd)
{
	int dom = -1;
	socklen_t l = sizeof(dom);

	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) != 0)
		return "error";
	return dom == AF_INET    ? "inet"
	       : dom == AF_INET6 ? "inet6"
	       : dom == AF_UNIX  ? "unix"
	                         : "other";
}

static void escape(const char *in, size_t n, char *out, size_t outlen)
{
	size_t o = 0, i;

	for (i = 0; i < n && i < 200 && o + 5 < outlen; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
	}
	out[o] = '\0';
}

struct client {
	int fd;
	char peer[160];
	char in[BUF];
	size_t inlen;
	char out[4 * BUF];
	size_t outlen;
	unsigned long long nin, nout;
	int eof;
};

/* Append to the client's output buffer; 0, or -1 when it is full. */
static int queue(struct client *c, const char *p, size_t n)
{
	if (c->outlen + n > sizeof(c->out))
		return -1;
	memcpy(c->out + c->outlen, p, n);
	c->outlen += n;
	return 0;
}

/* Handle the complete lines in c->in (all of it at end of input). */
static int process(struct client *c)
{
	size_t start = 0, i;

	for (i = 0; i < c->inlen; i++) {
		if (c->in[i] != '\n')
			continue;
		size_t len = i + 1 - start;
		const char *line = c->in + start;
		if (len >= 6 && memcmp(line, "peer?", 5) == 0 &&
		    (line[5] == '\n' || (line[5] == '\r' && len == 7))) {
			struct sockaddr_storage ss;
			socklen_t sl = sizeof(ss);
			char p[160], l[160], ans[400];
			if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) != 0)
				snprintf(p, sizeof(p), "error:%s", strerror(errno));
			else
				addr_str(&ss, sl, p, sizeof(p));
			sl = sizeof(ss);
			if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) != 0)
				snprintf(l, sizeof(l), "error:%s", strerror(errno));
			else
				addr_str(&ss, sl, l, sizeof(l));
			int n = snprintf(ans, sizeof(ans), "peer=%s local=%s\n", p, l);
			if (queue(c, ans, (size_t)n) != 0)
				return -1;
		} else if (queue(c, line, len) != 0) {
			return -1;
		}
		start = i + 1;
	}
	if (c->eof && start < c->inlen) {
		if (queue(c, c->in + start, c->inlen - start) != 0)
			return -1;
		start = c->inlen;
	}
	memmove(c->in, c->in + start, c->inlen - start);
	c->inlen -= start;
	if (c->inlen == sizeof(c->in)) { /* a line longer than the buffer: echo it as it is */
		if (queue(c, c->in, c->inlen) != 0)
			return -1;
		c->inlen = 0;
	}
	return 0;
}

/* Read what is there; 1 = keep going, 0 = end of input, -1 = error. */
static int do_read(struct client *c)
{
	char esc[1024];
	size_t room = sizeof(c->in) - c->inlen;
	ssize_t n;

	if (room == 0)
		return 1;
	n = read(c->fd, c->in + c->inlen, room);
	if (n < 0)
		return (errno == EAGAIN || errno == EINTR) ? 1 : -1;
	if (n == 0) {
		c->eof = 1;
		return 0;
	}
	escape(c->in + c->inlen, (size_t)n, esc, sizeof(esc));
	logf_("recv peer=%s n=%zd data=\"%s\"", c->peer, n, esc);
	c->inlen += (size_t)n;
	c->nin += (unsigned long long)n;
	return 1;
}

static int do_write(struct client *c)
{
	while (c->outlen > 0) {
		ssize_t n = write(c->fd, c->out, c->outlen);
		if (n < 0)
			return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
		memmove(c->out, c->out + n, c->outlen - (size_t)n);
		c->outlen -= (size_t)n;
		c->nout += (unsigned long long)n;
	}
	return 0;
}

static void close_client(struct client *c)
{
	logf_("closed peer=%s in=%llu out=%llu", c->peer, c->nin, c->nout);
	close(c->fd);
	c->fd = -1;
}

/* Log the accepted descriptor; fill c. */
static void on_accept(struct client *c, int fd, const struct sockaddr_storage *ss, socklen_t sl)
{
	struct sockaddr_storage gp, gs;
	socklen_t gpl = sizeof(gp), gsl = sizeof(gs);
	char gps[160], gss[160];
	int type = 0;
	socklen_t tl = sizeof(type);

	memset(c, 0, sizeof(*c));
	c->fd = fd;
	addr_str(ss, sl, c->peer, sizeof(c->peer));
	if (getpeername(fd, (struct sockaddr *)&gp, &gpl) != 0)
		snprintf(gps, sizeof(gps), "error:%s", strerror(errno));
	else
		addr_str(&gp, gpl, gps, sizeof(gps));
	if (getsockname(fd, (struct sockaddr *)&gs, &gsl) != 0)
		snprintf(gss, sizeof(gss), "error:%s", strerror(errno));
	else
		addr_str(&gs, gsl, gss, sizeof(gss));
	getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl);
	logf_("accepted fd=%d peer=%s getpeername=%s local=%s family=%s type=%s nonblock=%d "
	      "cloexec=%d",
	      fd, c->peer, gps, gss, family_name(fd), type == SOCK_STREAM ? "stream" : "other",
	      (fcntl(fd, F_GETFL) & O_NONBLOCK) ? 1 : 0, (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 1 : 0);
	if (greeting != NULL) {
		queue(c, greeting, strlen(greeting));
		queue(c, "\n", 1);
	}
}

static int listen_on(const char *spec)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *colon;
	char host[256];
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (strncmp(spec, "unix:", 5) == 0) {
		struct sockaddr_un *su = (struct sockaddr_un *)&ss;
		su->sun_family = AF_UNIX;
		if (strlen(spec + 5) >= sizeof(su->sun_path)) {
			fprintf(stderr, "echo_server: path too long\n");
			exit(2);
		}
		strcpy(su->sun_path, spec + 5);
		unlink(su->sun_path);
		sl = sizeof(*su);
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof(host)) {
			fprintf(stderr, "echo_server: bad address %s\n", spec);
			exit(2);
		}
		memcpy(host, spec, (size_t)(colon - spec));
		host[colon - spec] = '\0';
		int port = atoi(colon + 1);
		if (host[0] == '[') {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			size_t hl = strlen(host);
			if (hl < 2 || host[hl - 1] != ']') {
				fprintf(stderr, "echo_server: bad address %s\n", spec);
				exit(2);
			}
			host[hl - 1] = '\0';
			s6->sin6_family = AF_INET6;
			s6->sin6_port = htons((unsigned short)port);
			if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1) {
				fprintf(stderr, "echo_server: bad address %s\n", spec);
				exit(2);
			}
			sl = sizeof(*s6);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			s4->sin_family = AF_INET;
			s4->sin_port = htons((unsigned short)port);
			if (strcmp(host, "*") == 0)
				s4->sin_addr.s_addr = htonl(INADDR_ANY);
			else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
				fprintf(stderr, "echo_server: bad address %s\n", spec);
				exit(2);
			}
			sl = sizeof(*s4);
		}
	}
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (ss.ss_family != AF_UNIX)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6) {
		int v6only = dual_stack ? 0 : 1;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
	}
	if (bind(fd, (struct sockaddr *)&ss, sl) != 0)
		die("bind");
	if (listen(fd, 128) != 0)
		die("listen");
	logf_("listening addr=%s pid=%d", spec, (int)getpid());
	return fd;
}

static void serve_fork(int lfd)
{
	signal(SIGCHLD, SIG_IGN);
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept(lfd, (struct sockaddr *)&ss, &sl);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept");
		}
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid > 0) {
			close(fd);
			continue;
		}
		close(lfd);
		static struct client c;
		on_accept(&c, fd, &ss, sl);
		for (;;) {
			if (do_write(&c) < 0)
				break;
			int r = do_read(&c);
			if (r < 0 || process(&c) < 0)
				break;
			if (r == 0) {
				do_write(&c);
				break;
			}
		}
		close_client(&c);
		_exit(0);
	}
}

static void serve_poll(int lfd)
{
	static struct client clients[MAX_CLIENTS];
	static struct pollfd pfd[MAX_CLIENTS + 1];
	int i, nclients = 0;

	for (i = 0; i < MAX_CLIENTS; i++)
		clients[i].fd = -1;
	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	for (;;) {
		int map[MAX_CLIENTS + 1], n = 0;

		pfd[n].fd = lfd;
		pfd[n].events = nclients < MAX_CLIENTS ? POLLIN : 0;
		map[n++] = -1;
		for (i = 0; i < MAX_CLIENTS; i++) {
			if (clients[i].fd < 0)
				continue;
			pfd[n].fd = clients[i].fd;
			pfd[n].events =
			        (clients[i].eof ? 0 : POLLIN) | (clients[i].outlen ? POLLOUT : 0);
			map[n++] = i;
		}
		if (poll(pfd, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		for (int k = 1; k < n; k++) {
			struct client *c = &clients[map[k]];
			if (pfd[k].revents == 0)
				continue;
			int r = 1;
			if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
				r = do_read(c);
			if (r >= 0 && process(c) == 0 && do_write(c) == 0 &&
			    !(c->eof && c->outlen == 0))
				continue;
			close_client(c);
			nclients--;
		}
		if (pfd[0].revents & POLLIN) {
			for (;;) {
				struct sockaddr_storage ss;
				socklen_t sl = sizeof(ss);
				int fd = accept4(lfd, (struct sockaddr *)&ss, &sl,
				                 SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0) {
					if (errno == EAGAIN || errno == EINTR ||
					    errno == ECONNABORTED)
						break;
					die("accept4");
				}
				for (i = 0; i < MAX_CLIENTS && clients[i].fd >= 0; i++)
					;
				if (i == MAX_CLIENTS) {
					close(fd);
					break;
				}
				on_accept(&clients[i], fd, &ss, sl);
				nclients++;
				if (do_write(&clients[i]) < 0) {
					close_client(&clients[i]);
					nclients--;
				}
			}
		}
	}
}

int main(int argc, char **argv)
{
	const char *mode = "poll";
	int opt;

	while ((opt = getopt(argc, argv, "m:g:d")) != -1) {
		if (opt == 'm')
			mode = optarg;
		else if (opt == 'g')
			greeting = optarg;
		else if (opt == 'd')
			dual_stack = 1;
		else
			goto usage;
	}
	if (optind != argc - 1 || (strcmp(mode, "poll") != 0 && strcmp(mode, "fork") != 0))
		goto usage;
	signal(SIGPIPE, SIG_IGN);
	int lfd = listen_on(argv[optind]);
	if (strcmp(mode, "fork") == 0)
		serve_fork(lfd);
	else
		serve_poll(lfd);
	return 0;
usage:
	fprintf(stderr, "usage: echo_server [-m poll|fork] [-g GREETING] [-d] ADDRESS\n");
	return 2;
}
