/*
 * client.c: the benchmark's client, one program for every contender.
 *
 *   bench-client [--tls CA] [--resume] --port P [--watch PID] MODE ARGS
 *
 * Without --tls it speaks the protocol of bench.h in the clear over plain
 * BSD sockets: that one program is measured against the plaintext server
 * (the ceiling), under LD_PRELOAD=libtlsshim.so, and pointed at stunnel's
 * or socat's local port.  With --tls it is the in-process OpenSSL client,
 * the reference: it verifies the server against CA (IP SAN 127.0.0.1) as
 * tlsshim does, with blocking I/O, as a program that speaks TLS itself
 * would; --resume makes it resume each new connection's session.
 *
 * Modes (each prints one line of key=value figures on stdout):
 *   up BYTES            upload BYTES, wait for the server's count
 *   down BYTES          download BYTES
 *   rtt COUNT SECONDS   64-byte request/response round trips: median, p99
 *   conns SECONDS MAX   new connection + one 64-byte round trip, per second
 *   idle N              hold N connections after one round trip each;
 *                       memory per connection from this process's RSS (and
 *                       the proportional set size of --watch PID and its
 *                       children: stunnel, socat)
 *   many N SECONDS SIZE N connections at once, a thread each, SIZE-byte
 *                       echo round trips for SECONDS: requests per second
 *                       in all, CPU per request (this process and --watch's)
 *   files COUNT         COUNT 4 KiB file writes (no socket at all)
 * Every loop is bounded in count and in time.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL_CTX *ctx; /* NULL: plaintext */
static bool resume;
static SSL_SESSION *last_session;
static long resumed;
static int port;
static long watch; /* stunnel's or socat's pid, for its memory and CPU */
static unsigned char iobuf[BENCH_IO_SIZE];

struct conn {
	int fd;
	SSL *ssl;
};

static void die(const char *what)
{
	fprintf(stderr, "bench-client: %s: %s\n", what, errno ? strerror(errno) : "failed");
	ERR_print_errors_fp(stderr);
	exit(1);
}

static int conn_open(struct conn *c)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	struct timeval tv = {.tv_sec = 30};
	int one = 1, saved;

	c->ssl = NULL;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	/* A helper that stops answering makes the run fail, not hang. */
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
		saved = errno;
		close(c->fd);
		errno = saved;
		return -1;
	}
	/* As a latency-minded program would; tlsshim passes it to the TCP socket. */
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (ctx == NULL)
		return 0;
	c->ssl = SSL_new(ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1 ||
	    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), "127.0.0.1") != 1)
		return -1;
	if (resume && last_session != NULL)
		SSL_set_session(c->ssl, last_session);
	if (SSL_connect(c->ssl) != 1)
		return -1;
	if (SSL_session_reused(c->ssl))
		resumed++;
	return 0;
}

static void conn_close(struct conn *c)
{
	if (c->ssl != NULL) {
		if (resume) {
			SSL_SESSION *s = SSL_get1_session(c->ssl);

			if (s != NULL && SSL_SESSION_is_resumable(s)) {
				SSL_SESSION_free(last_session);
				last_session = s;
			} else {
				SSL_SESSION_free(s);
			}
		}
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	close(c->fd);
}

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

/* Header and first message in one write, as a request-per-connection client does. */
static int echo_start(struct conn *c)
{
	unsigned char msg[sizeof(struct bench_hdr) + BENCH_MSG];
	struct bench_hdr h;

	bench_hdr_make(&h, 'E', 0);
	memcpy(msg, &h, sizeof(h));
	memset(msg + sizeof(h), 'q', BENCH_MSG);
	if (conn_write_all(c, msg, sizeof(msg)) != 0)
		return -1;
	return conn_read_exact(c, msg, BENCH_MSG);
}

/* CPU seconds (user + system) of this process, all threads. */
static double cpu_self(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds in a /proc stat file: a process's and its reaped children's, or a thread's. */
static double cpu_in(const char *path)
{
	unsigned long long ut = 0, st = 0, cut = 0, cst = 0;
	char buf[1024], *p;
	size_t n;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the command name may hold spaces */
	if (p == NULL ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &ut,
	           &st, &cut, &cst) != 4)
		return 0;
	return (double)(ut + st + cut + cst) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds of process `pid` and its reaped children (socat's forks). */
static double cpu_of(long pid)
{
	char path[64];

	if (pid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	return cpu_in(path);
}

static int mode_bulk(bool up, uint64_t bytes)
{
	double cpu0 = cpu_self(), hcpu0 = cpu_of(watch), cpu1, hcpu1;
	struct bench_hdr h;
	struct conn c;
	uint64_t left, ack = 0;
	double t0, t1;

	if (conn_open(&c) != 0)
		die("connect");
	memset(iobuf, 'u', sizeof(iobuf));
	bench_hdr_make(&h, up ? 'U' : 'D', bytes);
	t0 = bench_now();
	if (conn_write_all(&c, &h, sizeof(h)) != 0)
		die("write");
	for (left = bytes; left > 0;) {
		size_t n = left < BENCH_IO_SIZE ? left : BENCH_IO_SIZE;
		long r;

		if (up) {
			if (conn_write_all(&c, iobuf, n) != 0)
				die("write");
			r = (long)n;
		} else {
			r = conn_read(&c, iobuf, n);
			if (r <= 0)
				die("read");
		}
		left -= (uint64_t)r;
	}
	if (up && (conn_read_exact(&c, &ack, sizeof(ack)) != 0 || ack != bytes))
		die("upload count");
	t1 = bench_now();
	conn_close(&c);
	if (watch > 0)
		usleep(300000); /* socat's child exits and is reaped */
	cpu1 = cpu_self();
	hcpu1 = cpu_of(watch);
	printf("MBps=%.1f secs=%.4f bytes=%llu cpu_s_per_GiB=%.3f helper_cpu_s_per_GiB=%.3f\n",
	       (double)bytes / (t1 - t0) / 1e6, t1 - t0, (unsigned long long)bytes,
	       (cpu1 - cpu0 + hcpu1 - hcpu0) * 1073741824.0 / (double)bytes,
	       (hcpu1 - hcpu0) * 1073741824.0 / (double)bytes);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int mode_rtt(long count, double seconds)
{
	unsigned char msg[BENCH_MSG];
	double *t = calloc((size_t)count, sizeof(double)), deadline;
	struct conn c;
	long i, n = 0;

	if (t == NULL)
		die("memory");
	if (conn_open(&c) != 0 || echo_start(&c) != 0)
		die("connect");
	memset(msg, 'r', sizeof(msg));
	for (i = 0; i < 200; i++) /* warm up */
		if (conn_write_all(&c, msg, sizeof(msg)) != 0 ||
		    conn_read_exact(&c, msg, sizeof(msg)) != 0)
			die("round trip");
	deadline = bench_now() + seconds;
	while (n < count) {
		double t0 = bench_now(), t1;

		if (conn_write_all(&c, msg, sizeof(msg)) != 0 ||
		    conn_read_exact(&c, msg, sizeof(msg)) != 0)
			die("round trip");
		t1 = bench_now();
		t[n++] = (t1 - t0) * 1e6;
		if (t1 > deadline)
			break;
	}
	conn_close(&c);
	qsort(t, (size_t)n, sizeof(double), cmp_double);
	printf("median_us=%.2f p99_us=%.2f count=%ld\n", t[n / 2], t[(n * 99) / 100], n);
	free(t);
	return 0;
}

static int mode_conns(double seconds, long max)
{
	double t0 = bench_now(), t1;
	long n = 0;

	while (n < max) {
		struct conn c;

		if (conn_open(&c) != 0 || echo_start(&c) != 0)
			die("connection");
		conn_close(&c);
		n++;
		if (bench_now() - t0 > seconds)
			break;
	}
	t1 = bench_now();
	printf("cps=%.1f count=%ld resumed=%ld\n", (double)n / (t1 - t0), n, resumed);
	return 0;
}

/* A field of /proc/PID/FILE in kB, or -1. */
static long proc_kb(long pid, const char *file, const char *field)
{
	char path[64], line[256];
	size_t flen = strlen(field);
	long v = -1;
	FILE *f;

	if (pid > 0)
		snprintf(path, sizeof(path), "/proc/%ld/%s", pid, file);
	else
		snprintf(path, sizeof(path), "/proc/self/%s", file);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
			v = strtol(line + flen + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* `of(pid)` summed over `pid` and all its descendants (negative: pid gone). */
static double tree_sum(long pid, int depth, double (*of)(long pid))
{
	char path[64], buf[4096];
	double total = of(pid);
	DIR *d;
	struct dirent *e;

	if (total < 0)
		return 0;
	if (depth > 4)
		return total;
	snprintf(path, sizeof(path), "/proc/%ld/task", pid);
	d = opendir(path);
	while (d != NULL && (e = readdir(d)) != NULL) {
		char cpath[128];
		char *p, *end;
		FILE *f;
		size_t len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(cpath, sizeof(cpath), "/proc/%ld/task/%.20s/children", pid, e->d_name);
		f = fopen(cpath, "r");
		if (f == NULL)
			continue;
		len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = '\0';
		for (p = buf;; p = end) {
			long child = strtol(p, &end, 10);

			if (end == p)
				break;
			total += tree_sum(child, depth + 1, of);
		}
	}
	if (d != NULL)
		closedir(d);
	return total;
}

static double pss_kb_of(long pid)
{
	return (double)proc_kb(pid, "smaps_rollup", "Pss");
}

/* Proportional set size of `pid` and all its descendants, in kB. */
static long tree_pss_kb(long pid, int depth)
{
	return (long)tree_sum(pid, depth, pss_kb_of);
}

/*
 * Raises the descriptor limit to `need`, or as far as the hard limit goes
 * when raising that is not permitted (no CAP_SYS_RESOURCE).  Returns the
 * limit in force.
 */
static long raise_nofile(long need)
{
	struct rlimit rl = {.rlim_cur = (rlim_t)need, .rlim_max = (rlim_t)need};
	struct rlimit cur;

	if (getrlimit(RLIMIT_NOFILE, &cur) != 0)
		return -1;
	if (cur.rlim_cur >= (rlim_t)need)
		return (long)cur.rlim_cur;
	if (cur.rlim_max < (rlim_t)need && setrlimit(RLIMIT_NOFILE, &rl) == 0)
		return need;
	rl.rlim_cur = cur.rlim_max < (rlim_t)need ? cur.rlim_max : (rlim_t)need;
	rl.rlim_max = cur.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		return (long)cur.rlim_cur;
	return (long)rl.rlim_cur;
}

/* Descriptors open in this process now. */
static long open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	long n = 0;

	if (d == NULL)
		return -1;
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

static int mode_idle(long n)
{
	struct conn *c = calloc((size_t)n + 1, sizeof(*c));
	long rss0, rss1, pss0 = 0, pss1 = 0, fds0, fds1, i, held, limit;
	const char *why = "none";
	double t0, t1;

	if (c == NULL)
		die("memory");
	/* Three descriptors a connection under tlsshim, and room to spare. */
	limit = raise_nofile(3 * n + 1024);
	/* One connection first, so one-time set-up (OpenSSL, threads) is not counted. */
	if (conn_open(&c[n]) != 0 || echo_start(&c[n]) != 0)
		die("first connection");
	usleep(200000);
	rss0 = proc_kb(0, "status", "VmRSS");
	fds0 = open_fds();
	if (watch > 0)
		pss0 = tree_pss_kb(watch, 0);
	t0 = bench_now();
	/*
	 * Hold as many as can be held: where the descriptor limit cannot be
	 * raised far enough, report how many were held and why the next failed.
	 */
	for (held = 0; held < n; held++) {
		errno = 0;
		if (conn_open(&c[held]) != 0) {
			why = errno == EMFILE || errno == ENFILE ? "descriptor_limit" : "connect";
			break;
		}
		if (echo_start(&c[held]) != 0) {
			why = errno == EMFILE || errno == ENFILE ? "descriptor_limit" : "no_reply";
			conn_close(&c[held]);
			break;
		}
		if (bench_now() - t0 > 300) {
			why = "time_bound";
			held++;
			break;
		}
	}
	if (held == 0)
		die("idle connections: none could be opened");
	n = held;
	t1 = bench_now();
	usleep(500000); /* let relays and helpers settle (session tickets, buffers) */
	rss1 = proc_kb(0, "status", "VmRSS");
	fds1 = open_fds();
	if (watch > 0)
		pss1 = tree_pss_kb(watch, 0);
	/* fds_per_conn: descriptors this process holds per connection (tlsshim's parking). */
	printf("KiB_per_conn=%.1f client_KiB=%.1f helper_KiB=%.1f held=%ld open_secs=%.2f "
	       "nofile=%ld stopped_by=%s fds_per_conn=%.2f\n",
	       (double)((rss1 - rss0) + (pss1 - pss0)) / (double)n,
	       (double)(rss1 - rss0) / (double)n, (double)(pss1 - pss0) / (double)n, n, t1 - t0,
	       limit, why, (double)(fds1 - fds0) / (double)n);
	fflush(stdout);
	for (i = 0; i <= n; i++)
		conn_close(&c[i]);
	free(c);
	return 0;
}

static int mode_files(long count, const char *path)
{
	unsigned char buf[4096];
	double t0, t1;
	long i;
	int fd = -1;

	memset(buf, 'f', sizeof(buf));
	t0 = bench_now();
	for (i = 0; i < count; i++) {
		/* Reopen now and then, so close() (which the shim does interpose) counts too. */
		if (i % 256 == 0) {
			if (fd >= 0)
				close(fd);
			fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (fd < 0)
				die("open");
		}
		if (pwrite(fd, buf, sizeof(buf), (off_t)(i % 256) * (off_t)sizeof(buf)) !=
		    (ssize_t)sizeof(buf))
			die("pwrite");
	}
	t1 = bench_now();
	close(fd);
	unlink(path);
	printf("kops=%.1f ns_per_write=%.1f count=%ld\n", (double)count / (t1 - t0) / 1e3,
	       (t1 - t0) * 1e9 / (double)count, count);
	return 0;
}

/* --- many: concurrent interactive connections -------------------------------- */

struct many_arg {
	struct conn c;
	size_t size;
	double deadline;
	long reqs;
	int failed;
	pthread_barrier_t *start;
};

static void *many_main(void *p)
{
	struct many_arg *a = p;
	unsigned char *buf = malloc(a->size);

	if (buf == NULL) {
		a->failed = 1;
		return NULL;
	}
	memset(buf, 'm', a->size);
	pthread_barrier_wait(a->start);
	while (bench_now() < a->deadline) {
		if (conn_write_all(&a->c, buf, a->size) != 0 ||
		    conn_read_exact(&a->c, buf, a->size) != 0) {
			a->failed = 1;
			break;
		}
		a->reqs++;
	}
	free(buf);
	return NULL;
}

/* CPU seconds of this process's threads whose name starts with `prefix`. */
static double cpu_of_threads(const char *prefix)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	double sum = 0;

	while (d != NULL && (e = readdir(d)) != NULL) {
		char path[96], name[32] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%.20s/comm", e->d_name);
		f = fopen(path, "r");
		if (f == NULL)
			continue;
		if (fgets(name, sizeof(name), f) == NULL)
			name[0] = '\0';
		fclose(f);
		snprintf(path, sizeof(path), "/proc/self/task/%.20s/stat", e->d_name);
		if (strncmp(name, prefix, strlen(prefix)) == 0)
			sum += cpu_in(path);
	}
	if (d != NULL)
		closedir(d);
	return sum;
}

/* Threads of this process, from /proc/self/task. */
static long count_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	long n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/*
 * N connections, each with its own thread doing SIZE-byte echo round trips
 * in a closed loop for SECONDS, all at once: a busy server-side program's
 * many clients, or a worker pool.  Requests per second over all of them,
 * and the CPU (this process plus --watch's) per request.
 */
static int mode_many(long n, double seconds, size_t size)
{
	struct many_arg *a = calloc((size_t)n, sizeof(*a));
	pthread_t *th = calloc((size_t)n, sizeof(*th));
	pthread_barrier_t start;
	double cpu0, hcpu0, cpu1, hcpu1, rcpu0, t0, t1;
	long i, reqs = 0, failed = 0, extra;

	if (a == NULL || th == NULL || n < 1 || size < 1 || size > (1 << 20))
		die("many: arguments");
	raise_nofile(3 * n + 1024);
	for (i = 0; i < n; i++)
		if (conn_open(&a[i].c) != 0 || echo_start(&a[i].c) != 0)
			die("many: connection");
	if (pthread_barrier_init(&start, NULL, (unsigned)n + 1) != 0)
		die("barrier");
	for (i = 0; i < n; i++) {
		a[i].size = size;
		a[i].start = &start;
		a[i].deadline = 1e300;
		if (pthread_create(&th[i], NULL, many_main, &a[i]) != 0)
			die("thread");
	}
	/* Threads besides the program's own: tlsshim's relay threads. */
	extra = count_tasks() - (n + 1);
	cpu0 = cpu_self();
	rcpu0 = cpu_of_threads("tlsshim-relay");
	/* socat's children live as long as their connections: count them too. */
	hcpu0 = watch > 0 ? tree_sum(watch, 0, cpu_of) : 0;
	t0 = bench_now();
	for (i = 0; i < n; i++)
		a[i].deadline = t0 + seconds;
	pthread_barrier_wait(&start);
	for (i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		reqs += a[i].reqs;
		failed += a[i].failed;
	}
	t1 = bench_now();
	hcpu1 = watch > 0 ? tree_sum(watch, 0, cpu_of) : 0;
	cpu1 = cpu_self();
	if (failed > 0)
		die("many: a connection failed");
	printf("rps=%.1f MBps=%.1f cpu_us_per_req=%.2f helper_cpu_us_per_req=%.2f "
	       "relay_cpu_us_per_req=%.2f reqs=%ld conns=%ld size=%zu other_threads=%ld\n",
	       (double)reqs / (t1 - t0), (double)reqs * (double)size * 2 / (t1 - t0) / 1e6,
	       (cpu1 - cpu0 + hcpu1 - hcpu0) * 1e6 / (double)(reqs ? reqs : 1),
	       (hcpu1 - hcpu0) * 1e6 / (double)(reqs ? reqs : 1),
	       (cpu_of_threads("tlsshim-relay") - rcpu0) * 1e6 / (double)(reqs ? reqs : 1), reqs, n,
	       size, extra);
	for (i = 0; i < n; i++)
		conn_close(&a[i].c);
	pthread_barrier_destroy(&start);
	free(a);
	free(th);
	return 0;
}

static SSL_CTX *make_ctx(const char *ca)
{
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());

	if (c == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(c, ca, NULL) != 1) {
		SSL_CTX_free(c);
		return NULL;
	}
	/* The client keeps its own session (last_session); no internal cache needed. */
	SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
	return c;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
	        "usage: %s [--tls CA] [--resume] --port P [--watch PID] MODE ARGS\n"
	        "modes: up BYTES | down BYTES | rtt COUNT SECONDS | conns SECONDS MAX |\n"
	        "       idle N | many N SECONDS SIZE | files COUNT PATH\n",
	        argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *ca = NULL, *mode;
	int i;

	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--tls") == 0 && i + 1 < argc)
			ca = argv[++i];
		else if (strcmp(argv[i], "--resume") == 0)
			resume = true;
		else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (strcmp(argv[i], "--watch") == 0 && i + 1 < argc)
			watch = strtol(argv[++i], NULL, 10);
		else
			usage(argv[0]);
	}
	if (i >= argc)
		usage(argv[0]);
	mode = argv[i++];
	signal(SIGPIPE, SIG_IGN);
	if (ca != NULL && (ctx = make_ctx(ca)) == NULL)
		die("TLS context");

	if ((strcmp(mode, "up") == 0 || strcmp(mode, "down") == 0) && i + 1 == argc)
		return mode_bulk(mode[0] == 'u', strtoull(argv[i], NULL, 10));
	if (strcmp(mode, "rtt") == 0 && i + 2 == argc)
		return mode_rtt(strtol(argv[i], NULL, 10), strtod(argv[i + 1], NULL));
	if (strcmp(mode, "conns") == 0 && i + 2 == argc)
		return mode_conns(strtod(argv[i], NULL), strtol(argv[i + 1], NULL, 10));
	if (strcmp(mode, "idle") == 0 && i + 1 == argc)
		return mode_idle(strtol(argv[i], NULL, 10));
	if (strcmp(mode, "many") == 0 && i + 3 == argc)
		return mode_many(strtol(argv[i], NULL, 10), strtod(argv[i + 1], NULL),
		                 strtoul(argv[i + 2], NULL, 10));
	if (strcmp(mode, "files") == 0 && i + 2 == argc)
		return mode_files(strtol(argv[i], NULL, 10), argv[i + 1]);
	usage(argv[0]);
	return 2;
}
