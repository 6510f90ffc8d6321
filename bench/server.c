/*
 * server.c: the benchmark's sink/source, TLS (OpenSSL) or plaintext.
 *
 *   bench-server --port-file FILE [--tls CERT KEY] [--max-seconds N]
 *
 * Listens on 127.0.0.1 (an ephemeral port, written to FILE), and serves each
 * connection on its own thread with blocking I/O (bench.h has the protocol).
 * A thread per connection keeps the server simple and lets it hold 10,000
 * idle connections (small stacks; OpenSSL buffers released when idle).  It
 * exits by itself after --max-seconds (default 1800), so a benchmark that
 * dies cannot leave it behind for long.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL_CTX *ctx; /* NULL: plaintext */
static unsigned char source[BENCH_IO_SIZE];

struct conn {
	int fd;
	SSL *ssl;
};

/* Returns bytes read, 0 at EOF, -1 on error. */
static long conn_read(struct conn *c, void *buf, size_t len)
{
	if (c->ssl != NULL) {
		int r = SSL_read(c->ssl, buf, (int)len);

		if (r > 0)
			return r;
		return SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
	}
	for (;;) {
		ssize_t n = read(c->fd, buf, len);

		if (n >= 0 || errno != EINTR)
			return n;
	}
}

static int conn_write_all(struct conn *c, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len > 0) {
		long n;

		if (c->ssl != NULL) {
			int w = SSL_write(c->ssl, p, (int)len);

			n = w > 0 ? w : -1;
		} else {
			n = write(c->fd, p, len);
			if (n < 0 && errno == EINTR)
				continue;
		}
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int conn_read_exact(struct conn *c, void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len > 0) {
		long n = conn_read(c, p, len);

		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void drain_to_eof(struct conn *c, unsigned char *buf)
{
	while (conn_read(c, buf, BENCH_IO_SIZE) > 0)
		;
}

static void serve(struct conn *c, unsigned char *buf)
{
	struct bench_hdr h;
	uint64_t left;

	if (conn_read_exact(c, &h, sizeof(h)) != 0 || h.magic != BENCH_MAGIC)
		return;
	switch (h.op) {
	case 'U':
		for (left = h.arg; left > 0;) {
			long n = conn_read(c, buf, left < BENCH_IO_SIZE ? left : BENCH_IO_SIZE);

			if (n <= 0)
				return;
			left -= (uint64_t)n;
		}
		if (conn_write_all(c, &h.arg, sizeof(h.arg)) != 0)
			return;
		drain_to_eof(c, buf);
		break;
	case 'D':
		for (left = h.arg; left > 0;) {
			size_t n = left < BENCH_IO_SIZE ? left : BENCH_IO_SIZE;

			if (conn_write_all(c, source, n) != 0)
				return;
			left -= n;
		}
		drain_to_eof(c, buf);
		break;
	case 'E':
		for (;;) {
			long n = conn_read(c, buf, BENCH_IO_SIZE);

			if (n <= 0 || conn_write_all(c, buf, (size_t)n) != 0)
				break;
		}
		break;
	default:
		break;
	}
}

static void *conn_thread(void *arg)
{
	struct conn c = {.fd = (int)(intptr_t)arg, .ssl = NULL};
	unsigned char *buf = malloc(BENCH_IO_SIZE);
	int one = 1;

	setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (buf == NULL)
		goto out;
	if (ctx != NULL) {
		c.ssl = SSL_new(ctx);
		if (c.ssl == NULL || SSL_set_fd(c.ssl, c.fd) != 1 || SSL_accept(c.ssl) != 1)
			goto out;
	}
	serve(&c, buf);
	if (c.ssl != NULL)
		SSL_shutdown(c.ssl);
out:
	SSL_free(c.ssl);
	ERR_clear_error();
	close(c.fd);
	free(buf);
	return NULL;
}

static void raise_nofile(void)
{
	struct rlimit rl = {.rlim_cur = 65536, .rlim_max = 65536};

	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static SSL_CTX *make_ctx(const char *cert, const char *key)
{
	SSL_CTX *c = SSL_CTX_new(TLS_server_method());

	if (c == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
	SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_use_certificate_chain_file(c, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(c);
		return NULL;
	}
	return c;
}

int main(int argc, char **argv)
{
	const char *port_file = NULL, *cert = NULL, *key = NULL;
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t slen = sizeof(sin);
	pthread_attr_t attr;
	unsigned max_seconds = 1800;
	int lfd, one = 1, i;
	FILE *f;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc) {
			port_file = argv[++i];
		} else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
			cert = argv[++i];
			key = argv[++i];
		} else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc) {
			max_seconds = (unsigned)strtoul(argv[++i], NULL, 10);
		} else {
			fprintf(stderr,
			        "usage: %s --port-file FILE [--tls CERT KEY] [--max-seconds N]\n",
			        argv[0]);
			return 2;
		}
	}
	if (port_file == NULL)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (cert != NULL && (ctx = make_ctx(cert, key)) == NULL)
		return 1;
	memset(source, 'x', sizeof(source));

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
	    listen(lfd, 4096) != 0 || getsockname(lfd, (struct sockaddr *)&sin, &slen) != 0) {
		perror("bench-server: listen");
		return 1;
	}
	f = fopen(port_file, "w");
	if (f == NULL || fprintf(f, "%u\n", ntohs(sin.sin_port)) < 0 || fclose(f) != 0) {
		perror("bench-server: port file");
		return 1;
	}
	alarm(max_seconds); /* SIGALRM's default action ends the process */

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 128 * 1024);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		pthread_t t;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
			    errno == ENOBUFS) {
				usleep(10000);
				continue;
			}
			perror("bench-server: accept");
			return 1;
		}
		if (pthread_create(&t, &attr, conn_thread, (void *)(intptr_t)fd) != 0)
			close(fd);
	}
}
