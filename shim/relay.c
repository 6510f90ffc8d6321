/*
 * relay.c: the relay threads.
 *
 * Up to RELAY_THREADS_MAX threads, each a struct relay_thread with its own
 * epoll set, wake eventfd, connections, buffers and busy-polling state; a
 * connection is given to one of them by relay_add() and stays there, so
 * everything below runs as before, per thread, with no lock on the data
 * path.  What follows describes one thread.
 *
 * A level-triggered epoll loop over two descriptors per connection: the
 * relay's end of the program's socketpair ("app") and the TLS socket
 * ("net").  Each readiness event runs pump() for its connection, which moves
 * data in the direction(s) the event concerns until nothing more is
 * readable now or something would block, then registers exactly the
 * readiness that is now needed.  Every OpenSSL call is non-blocking and
 * driven by SSL_get_error() (a blocking SSL_read would swallow TLS 1.3
 * tickets and then wait for data that may never come).
 *
 * Cost per message (docs/performance.md): one epoll_wait, one recv and one
 * send each way.  Read-ahead takes a whole record in one recv(), a BIO
 * callback says when a read emptied the socket (so no recv() is spent on
 * EAGAIN), and up to four records go to the program in one send().
 *
 * Buffers: a connection owns no data buffer while idle.  Data goes through
 * one per-thread scratch buffer; what could not be passed on at once stays
 * in that very buffer, which becomes the connection's stash (the thread
 * takes another from a small pool), and the stash stops reading from that
 * side until it drains (backpressure both ways).
 *
 * Half-close: EOF from the program sends close_notify and a TCP FIN while the
 * other direction keeps flowing; close_notify or EOF from the server becomes
 * EOF for the program (shutdown(SHUT_WR) on the socketpair).
 *
 * Adaptive busy-polling (relay_wait): after a batch that forwarded a little
 * data (a request or a response, not bulk) for the same single connection
 * as the batch before (a conversation, relay_spin_arm; when many
 * connections are busy the next event comes soon anyway, and the CPU is
 * better left to the threads that make them), the thread polls epoll without
 * sleeping for a short window before it blocks, because on an interactive
 * connection the answer (the server's response, or the program's next
 * request) usually follows within tens of microseconds, and a thread that
 * slept must be woken: one wake-up saved in each direction of a round trip.
 * The window follows the waits it observes (relay_spin_adapt: it grows when
 * a blocking wait turned out short, halves when a wait was longer than the
 * bound, down to no spinning at all), so an idle or slow connection costs no
 * CPU, and it is never longer than relay_spin_us (configuration key, or
 * TLSSHIM_RELAY_SPIN_US; default 50 us; 0 disables it).  Never where the
 * process may use a single CPU (machine, affinity mask or cgroup CPU quota,
 * relay_ncpu): there the spinning thread would hold the very CPU the peer
 * needs to answer, or burn the quota.  Interactive reads from the program are also
 * peeked before they are consumed (pump_up), to keep a spurious wake-up of
 * the program off the request's path.
 */
#include "relay.h"

#include "conf.h"
#include "fdreg.h"
#include "log.h"
#include "tlsio.h"
#include "real.h"
#include "uring.h"

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <openssl/err.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

/*
 * Four full TLS records (RFC 8446, section 5.1: at most 2^14 bytes of
 * plaintext each): one recv() from the program feeds four records, and up to
 * four decrypted records go to the program in one send().
 */
#define SCRATCH_SIZE  (4 * 16384)
#define PEEK_SIZE     4096 /* a read from the program this short is "interactive" */
#define POOL_MAX      8    /* spare scratch-sized buffers kept by the thread */
#define MAX_EVENTS    256
#define EXIT_FLUSH_MS 3000 /* for all threads together */

/*
 * More than one relay thread (issue #6).  A process starts with one; a new
 * connection starts another only when every running thread already carries
 * RELAY_CONNS_PER_THREAD connections, up to relay_threads_cap(): the
 * relay_threads setting, or by default the CPUs the process may use, at most
 * RELAY_THREADS_MAX.  A new connection goes to the least-loaded thread and
 * stays there for life.
 *
 * Why 64: a thread's cost is fixed (a stack, a 64 KiB scratch buffer and its
 * pool, its own wake-ups), while what one thread gains from many connections
 * is batching: one epoll_wait() collects the events of all of them, and a
 * thread that is busy anyway is never woken.  One thread keeps up with a
 * single bulk transfer at the NIC's or loopback's speed (docs/performance.md)
 * and with dozens of interactive connections, so a second thread pays only
 * when the connections are many enough that their work can exceed one CPU;
 * 64 is also one event batch a quarter full (MAX_EVENTS), and it keeps the
 * few-connection programs that are most of the users on one thread, where
 * busy-polling and the measured costs were tuned.  Threads are counted by
 * connections, not bytes: a connection cannot move once assigned (its SSL
 * object and buffers are the thread's), so a finer balance would need
 * migration, which costs more than it saves at these numbers.
 */
#define RELAY_THREADS_MAX      4
#define RELAY_CONNS_PER_THREAD 64

/*
 * Busy-polling bounds.  The default covers a loopback or LAN round trip
 * through a server that answers at once (20-40 us here); SPIN_US_MAX keeps
 * a misconfiguration from burning a CPU on every wait; a window below
 * SPIN_MIN_NS saves nothing and becomes no spinning.
 */
#define SPIN_US_MAX  1000
#define SPIN_MIN_NS  5000L
#define SPIN_PROBE   16        /* with no window, every 16th armed wait spins */
#define SPIN_ARM_MAX PEEK_SIZE /* a batch that moved more is not interactive */

enum { SIDE_APP = 0, SIDE_NET = 1, SIDE_WAKE = 2, SIDE_RING = 3 };

struct relay_conn;

struct side {
	struct relay_conn *c;
	int which;
};

struct stash {
	unsigned char *buf;
	size_t off;
	size_t len;
};

struct relay_thread;

struct relay_conn {
	struct relay_conn *next; /* the thread's connections, or its zombie list */
	struct relay_conn *prev;
	struct relay_thread *t; /* the thread that serves it, for life */
	uint64_t id;            /* unique in the process, never 0 (relay_spin_arm) */
	struct side sides[2];
	int app_fd;
	int net_fd;
	ino_t ino;
	SSL *ssl;
	struct stash up;   /* program -> server, refused by SSL_write so far */
	struct stash down; /* server -> program, refused by the socketpair so far */
	uint32_t app_mask; /* registered epoll events, ~0 when not registered */
	uint32_t net_mask;
	unsigned int ssl_up_wants;   /* EPOLLIN/EPOLLOUT that SSL_write/shutdown needs */
	unsigned int ssl_down_wants; /* EPOLLIN/EPOLLOUT that SSL_read needs */
	bool app_eof;                /* the program shut its writing side */
	bool app_gone;               /* the program closed its end altogether */
	bool net_eof;                /* close_notify or EOF from the server */
	bool net_dead;               /* the TCP connection failed; nothing more to send */
	bool net_hup;                /* both TCP directions closed: read without epoll */
	bool notify_sent;            /* close_notify sent, FIN sent */
	bool app_shut;               /* EOF delivered to the program */
	bool dead;                   /* torn down, waiting to be freed */
	bool net_drained;            /* the last read of the TLS socket emptied it */
	bool app_peek;               /* SO_PEEK_OFF is set on app_fd: see pump_up() */
	bool up_bulk;                /* the last read from the program was PEEK_SIZE or more */
	struct sockaddr_storage peer;
	char name[256];
	bool server;      /* inbound: accepted by the program */
	bool handshaking; /* inbound: the server handshake is still running */
	long hs_deadline; /* CLOCK_MONOTONIC ms */
	char rule[96];    /* inbound section, for log lines */
	struct sockaddr_storage local;
	struct tls_failure why; /* what the handshake found, for the log */
	/*
	 * Parking (see "Parking"): thread only, except `parked` and
	 * `unpark_req`, which are written under t->lock (relay_unpark() reads
	 * them there).
	 */
	bool parked;                    /* app_fd and net_fd live in the ring's table */
	bool unpark_req;                /* relay_unpark() asks for the descriptors back */
	bool unpark_queued;             /* on the thread's list to unpark */
	bool unparking;                 /* relay_unpark_one() runs for it */
	unsigned char park_armed;       /* bit per side: its poll request is outstanding */
	int park_installs;              /* install completions still due */
	int park_fd[2];                 /* what the installs gave */
	unsigned int park_pair;         /* slots 2 * park_pair (app) and + 1 (net) */
	long no_park_until;             /* CLOCK_MONOTONIC ms; 0: no such bound */
	struct relay_conn *unpark_next; /* the thread's list to unpark */
	bool unpark_waiting;            /* no descriptor was free: retried until one is */
	bool on_retry;                  /* on the thread's retry list now */
	long unpark_since;              /* CLOCK_MONOTONIC ms: the first try that failed */
	struct relay_conn *retry_next;  /* the thread's retry list */
};

/* A pair of fixed-file slots: the connection parked there, and its generation. */
struct park_pair {
	struct relay_conn *c;
	uint32_t gen; /* counts reuses: completions of an older use are ignored */
};

/*
 * One relay thread: its epoll set, wake eventfd, connections, buffers and
 * busy-polling state.  A connection belongs to one instance for life
 * (relay_conn.t), and only that instance's thread touches it after
 * relay_add().  `lock` guards the fields marked so; the rest belongs to the
 * thread alone (or is set before the thread starts).
 */
/* Aligned: one thread's hot counters never share a cache line with another's lock. */
struct relay_thread {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool exiting; /* under lock: atexit, flush and stop */
	bool stopped; /* under lock: the thread left its loop */
	pthread_t thread;
	int epfd;
	int wakefd;
	struct side wake_side;
	struct relay_conn *conns;      /* under lock */
	struct relay_conn *zombies;    /* under lock: torn down this batch, freed after it */
	long nconns;                   /* under lock */
	long nhandshaking;             /* under lock: inbound handshakes in progress */
	unsigned char *scratch;        /* thread only */
	unsigned char *pool[POOL_MAX]; /* thread only */
	int npool;                     /* thread only */
	size_t moved;                  /* thread only: bytes this batch forwarded */
	bool net_more;                 /* thread only: this SSL_write has more records */
	unsigned char sink[PEEK_SIZE]; /* thread only: see app_consume() */
	/* Busy-polling: the current window, and counters for tests and the benchmark. */
	long spin_window;      /* thread only */
	long spin_seen;        /* thread only: the bound it last saw */
	unsigned spin_skipped; /* thread only: armed waits without a window */
	uint64_t spin_conn;    /* thread only: id of the connection the last batch served, or 0 */
	atomic_ulong st_armed, st_spins, st_hits, st_blocks;
	atomic_long st_window;
	atomic_bool st_sleeping;
	/* Parking: thread only, except where marked. */
	enum conf_park park_mode;
	int ring_state; /* 0 not tried, 1 open, -1 unavailable */
	struct uring ring;
	struct side ring_side;
	struct park_pair *pairs; /* ring.nfiles / 2 of them */
	unsigned int npairs;
	unsigned int fresh;       /* pairs [fresh, npairs) never used */
	unsigned int *free_pairs; /* released pairs, a stack */
	unsigned int nfree;
	long nparked;       /* under lock */
	bool unpark_wanted; /* under lock: some connection has unpark_req */
	struct relay_conn *unpark_head;
	struct relay_conn *retry_head; /* parked, woken, waiting for descriptors */
	long retry_ms;                 /* next try of those, CLOCK_MONOTONIC ms */
	atomic_long st_waiting;        /* how many are on it (tests) */
	long park_limit;               /* hidden descriptors at which `auto` parks */
	long sweep_ms;                 /* next sweep of idle connections, CLOCK_MONOTONIC ms */
} __attribute__((aligned(64)));

/*
 * relay_lock guards which instances run (relay_started: instances
 * [0, relay_started) have a thread, and never stop before exit or a fork)
 * and the choice of an instance for a new connection.  Lock order:
 * relay_lock, then an instance's lock, then fdreg's.
 */
static pthread_mutex_t relay_lock = PTHREAD_MUTEX_INITIALIZER;
#define RELAY_THREAD_INIT                                                                        \
	{                                                                                        \
		.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .epfd = -1, \
		.wakefd = -1, .spin_seen = -1, .ring = {.fd = -1},                               \
	}
_Static_assert(RELAY_THREADS_MAX == 4, "one RELAY_THREAD_INIT per instance");
static struct relay_thread relay_threads[RELAY_THREADS_MAX] = {
        RELAY_THREAD_INIT, RELAY_THREAD_INIT, RELAY_THREAD_INIT, RELAY_THREAD_INIT};
static atomic_int relay_started;
static bool relay_exiting;     /* under relay_lock: atexit ran; no more threads */
static int relay_cap;          /* under relay_lock: relay_threads_cap(), 0 until asked */
static long relay_retry_ms;    /* under relay_lock: no new thread before (a start failed) */
static uint64_t relay_next_id; /* under relay_lock */
static bool relay_atexit_set;
static atomic_long relay_per_thread = RELAY_CONNS_PER_THREAD; /* relay_set_conns_per_thread() */
static atomic_long relay_ncpu_override;                       /* relay_set_ncpu(); 0: none */
static BIO_METHOD *relay_wbio_method;
static pthread_once_t relay_wbio_once = PTHREAD_ONCE_INIT;

/*
 * Busy-polling: the bound in ns, shared by every thread (-1 until the first
 * thread start reads the environment; relay_set_spin_us() for tests).
 */
static atomic_long relay_spin_max_ns = -1;

/* --- buffers -------------------------------------------------------------- */

/*
 * Data moves through the thread's scratch buffer.  When one side refuses
 * part of it, the buffer itself (not a copy) becomes the connection's stash
 * and the thread takes another from a small pool: no copy, no malloc on the
 * hot path, and an idle connection still owns no buffer.
 */
static unsigned char *buf_get(struct relay_thread *t)
{
	if (t->npool > 0)
		return t->pool[--t->npool];
	return malloc(SCRATCH_SIZE);
}

/* Returns a buffer to the pool; `used` bytes are wiped if it is freed. */
static void buf_put(struct relay_thread *t, unsigned char *b, size_t used)
{
	if (b == NULL)
		return;
	if (t->npool < POOL_MAX) {
		t->pool[t->npool++] = b;
		return;
	}
	OPENSSL_cleanse(b, used);
	free(b);
}

/* Makes sure the thread has a scratch buffer.  Returns 0 or -1 (ENOMEM). */
static int scratch_ensure(struct relay_thread *t)
{
	if (t->scratch == NULL)
		t->scratch = buf_get(t);
	return t->scratch != NULL ? 0 : -1;
}

static bool stash_empty(const struct stash *s)
{
	return s->len == s->off;
}

static void stash_clear(struct relay_thread *t, struct stash *s)
{
	buf_put(t, s->buf, s->len);
	s->buf = NULL;
	s->off = s->len = 0;
}

/* Teardown: the data will never be sent, wipe it. */
static void stash_discard(struct relay_thread *t, struct stash *s)
{
	if (s->buf != NULL)
		OPENSSL_cleanse(s->buf, s->len);
	stash_clear(t, s);
}

/*
 * The scratch buffer holds `len` bytes of which `off` were passed on: it
 * becomes the stash `s` (empty before), and the thread needs a new one.
 */
static void stash_take_scratch(struct relay_thread *t, struct stash *s, size_t off, size_t len)
{
	s->buf = t->scratch;
	s->off = off;
	s->len = len;
	t->scratch = NULL;
}

/*
 * The TLS socket's BIO reports here after each read: a read that returned
 * less than asked for (or nothing) emptied the socket, so the relay need not
 * ask again until epoll says there is more.  With read-ahead on, this saves
 * the recv() that would only have returned EAGAIN.
 */
static long net_bio_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                       size_t *processed)
{
	struct relay_conn *c = (struct relay_conn *)BIO_get_callback_arg(b);

	(void)argp;
	(void)argi;
	(void)argl;
	if (oper == (BIO_CB_READ | BIO_CB_RETURN) && c != NULL &&
	    (ret <= 0 || processed == NULL || *processed < len))
		c->net_drained = true;
	return ret;
}

/*
 * The TLS socket's write BIO.  It sends like tlsio.c's socket BIO, except
 * that while one SSL_write() call still has more records to produce
 * (the thread's net_more; the BIO's callback argument names the connection)
 * it passes MSG_MORE, so TCP builds one segment from the
 * four records of a 64 KiB read instead of one segment per record: fewer
 * packets through the stack, no copy.  The last record of the batch goes
 * without MSG_MORE, which pushes what was held back.
 */
static int wbio_write(BIO *b, const char *buf, int len)
{
	const struct relay_conn *c = (const struct relay_conn *)BIO_get_callback_arg(b);
	int flags = MSG_NOSIGNAL | MSG_DONTWAIT | (c != NULL && c->t->net_more ? MSG_MORE : 0);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = send(BIO_get_fd(b, NULL), buf, (size_t)len, flags);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		BIO_set_retry_write(b);
	return (int)n;
}

static long wbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_C_SET_FD:
		BIO_set_data(b, (void *)(intptr_t) * (int *)ptr);
		BIO_set_init(b, 1);
		return 1;
	case BIO_C_GET_FD:
		if (ptr != NULL)
			*(int *)ptr = (int)(intptr_t)BIO_get_data(b);
		return (long)(intptr_t)BIO_get_data(b);
	case BIO_CTRL_FLUSH:
		return 1;
	default:
		(void)num;
		return 0;
	}
}

static void wbio_method_init(void)
{
	BIO_METHOD *m =
	        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
	                     "tlsshim relay socket");

	if (m != NULL &&
	    (BIO_meth_set_write(m, wbio_write) != 1 || BIO_meth_set_ctrl(m, wbio_ctrl) != 1)) {
		BIO_meth_free(m);
		m = NULL;
	}
	relay_wbio_method = m;
}

/*
 * A write BIO on c's TLS socket that knows MSG_MORE, or NULL (then the SSL's
 * own stays).  No callback is set on it: the argument only names `c`.
 */
static BIO *wbio_new(struct relay_conn *c)
{
	BIO *b;

	if (pthread_once(&relay_wbio_once, wbio_method_init) != 0 || relay_wbio_method == NULL)
		return NULL;
	b = BIO_new(relay_wbio_method);
	if (b != NULL) {
		BIO_set_fd(b, c->net_fd, BIO_NOCLOSE);
		BIO_set_callback_arg(b, (char *)c);
	}
	return b;
}

/* --- registration ----------------------------------------------------------- */

static void relay_set_mask(struct relay_conn *c, int which, uint32_t want)
{
	uint32_t *mask = which == SIDE_APP ? &c->app_mask : &c->net_mask;
	int fd = which == SIDE_APP ? c->app_fd : c->net_fd;
	struct epoll_event ev = {.events = want, .data.ptr = &c->sides[which]};

	if (*mask == want)
		return;
	if (want == (uint32_t)~0U) {
		/* Unregister: a dead side would report HUP/ERR forever. */
		epoll_ctl(c->t->epfd, EPOLL_CTL_DEL, fd, NULL);
	} else if (*mask == (uint32_t)~0U) {
		return; /* never re-registered once removed */
	} else {
		epoll_ctl(c->t->epfd, EPOLL_CTL_MOD, fd, &ev);
	}
	*mask = want;
}

static void relay_log_failure(struct relay_conn *c, const char *reason)
{
	struct log_event ev;

	log_event_init(&ev, LOG_ERR, "relay_failed");
	ev.dir = c->server ? "in" : "out";
	ev.rule = c->rule[0] != '\0' ? c->rule : NULL;
	ev.peer = (const struct sockaddr *)&c->peer;
	ev.name = c->name[0] != '\0' ? c->name : NULL;
	ev.stage = "relay";
	ev.reason = reason;
	ev.tls = SSL_get_version(c->ssl);
	log_emit(&ev);
}

/* The reason for a fatal SSL error, for the log. */
static const char *ssl_reason(int err)
{
	unsigned long e = ERR_peek_error();

	if (err == SSL_ERROR_SYSCALL)
		return errno != 0 ? strerror(errno) : "connection closed without close_notify";
	if (e != 0 && ERR_reason_error_string(e) != NULL)
		return ERR_reason_error_string(e);
	return "TLS error";
}

static void relay_teardown(struct relay_conn *c)
{
	struct relay_thread *t = c->t;

	if (c->dead)
		return;
	c->dead = true;
	relay_set_mask(c, SIDE_APP, ~0U);
	relay_set_mask(c, SIDE_NET, ~0U);
	/* Registry first, so no getsockopt can reach the TCP socket after close. */
	fdreg_remove(c->ino);
	fdreg_release(c->app_fd);
	fdreg_release(c->net_fd);
	SSL_free(c->ssl);
	c->ssl = NULL;
	stash_discard(t, &c->up);
	stash_discard(t, &c->down);

	pthread_mutex_lock(&t->lock);
	if (c->handshaking) {
		c->handshaking = false;
		t->nhandshaking--;
	}
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		t->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	t->nconns--;
	c->prev = NULL;
	c->next = t->zombies;
	t->zombies = c;
	pthread_mutex_unlock(&t->lock);
}

/* Wakes thread `t` out of its epoll_wait() (its wake eventfd). */
static void relay_wake(struct relay_thread *t)
{
	if (write(t->wakefd, &(uint64_t){1}, sizeof(uint64_t)) < 0)
		log_debug("relay wake failed");
}

/* --- parking ---------------------------------------------------------------- */

/*
 * Parking.  A wrapped connection costs the process three descriptors: the
 * program's end of the socketpair, the relay's end, and the TCP socket.  A
 * program that holds many connections (a pool, a broker client, 10,000 idle
 * sessions) would run out of descriptors three times sooner under the shim
 * than without it.  So an idle connection gives its two relay descriptors
 * up: their open files move into the thread's io_uring fixed-file table
 * (which holds files without descriptors), the descriptors are closed, and
 * one poll request per side waits in the ring.  The first event on either
 * side (the program writes or closes, the server sends or closes) completes
 * a poll, the ring's descriptor becomes readable in the thread's epoll set,
 * and the thread takes both files back as descriptors
 * (IORING_OP_FIXED_FD_INSTALL) and relays as before.  Nothing moves while
 * parked, so nothing can be lost: a connection parks only with no data
 * held anywhere (stashes, OpenSSL's read-ahead, pending writes) and both
 * directions open.
 *
 * When: relay_park `auto` (the default) parks once the shim's hidden
 * descriptors reach a quarter of the soft RLIMIT_NOFILE (park_limit_read),
 * so a program with a few connections never pays the extra system calls
 * (about ten per park and unpark); `always` parks every idle connection
 * (tests, and programs that want the descriptors back early); `off` never.
 * A connection becomes idle at the end of pump(); when pressure first
 * appears, a sweep (at most once a second) parks the connections that were
 * idle already.
 *
 * The program's getsockopt/setsockopt on a parked connection's TCP socket
 * asks the thread to unpark it (relay_unpark) and waits, at most two
 * seconds; it then stays unparked for a second.
 *
 * Where io_uring is missing, too old (before Linux 6.13, uring.c), or forbidden
 * (sysctl kernel.io_uring_disabled, a seccomp profile), nothing parks and
 * one park_unavailable line says so.
 */
#define PARK_SQ_ENTRIES 64
#define PARK_CQ_ENTRIES 4096
#define PARK_SLOTS_MAX  (1U << 17)
#define PARK_SWEEP_MS   1000
#define PARK_HOLD_MS    1000 /* unparked for a getsockopt/setsockopt stays so this long */
#define UNPARK_WAIT_MS  2000
#define UNPARK_RETRY_MS 50 /* a connection waiting for descriptors tries again this often */

/*
 * How long a woken connection may wait for descriptors (the program holds
 * them all) before it is closed: its peer or the program waits meanwhile.
 */
static atomic_long unpark_patience_ms = 10000;

enum { UD_POLL = 1, UD_REMOVE = 2, UD_INSTALL = 3 };

static long relay_now_ms(void);
static void relay_unpark_one(struct relay_conn *c);
static void park_unpark_queued(struct relay_thread *t);
static atomic_bool park_said; /* park_unavailable logged (once per process) */

/* A ring request's tag: what it is, which side, which pair and generation. */
static uint64_t park_ud(unsigned int kind, int side, unsigned int pair, uint32_t gen)
{
	return (uint64_t)gen << 32 | (uint64_t)pair << 3 | (uint64_t)side << 2 | kind;
}

/* Hidden descriptors at which `auto` parks: a quarter of the soft limit. */
static long park_limit_read(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > PARK_SLOTS_MAX)
		return PARK_SLOTS_MAX / 4;
	return rl.rlim_cur / 4 < 16 ? 16 : (long)rl.rlim_cur / 4;
}

static void park_unavailable(const char *why, int err)
{
	struct log_event ev;
	char reason[160];

	if (atomic_exchange(&park_said, true))
		return;
	snprintf(reason, sizeof(reason), "%s: %s: idle connections keep their three descriptors",
	         why, strerror(err));
	log_event_init(&ev, LOG_NOTICE, "park_unavailable");
	ev.stage = "relay";
	ev.reason = reason;
	log_emit(&ev);
}

/*
 * Opens the thread's ring on first use: a fixed-file table as large as the
 * soft descriptor limit allows (the kernel's bound), its descriptor hidden
 * and in the epoll set.  0, or -1 once and for all when io_uring cannot be
 * used here.
 */
static int park_ring_open(struct relay_thread *t)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &t->ring_side};
	struct rlimit rl;
	unsigned int slots;
	const char *step;
	int fd;

	if (t->ring_state != 0)
		return t->ring_state > 0 ? 0 : -1;
	t->ring_state = -1;
	slots = PARK_SLOTS_MAX;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < slots)
		slots = (unsigned int)rl.rlim_cur & ~1U;
	step = "io_uring_setup";
	if (slots < 2 || uring_open(&t->ring, PARK_SQ_ENTRIES, PARK_CQ_ENTRIES) != 0)
		goto err;
	step = "io_uring descriptor";
	fd = fdreg_adopt(t->ring.fd); /* closes the original either way */
	t->ring.fd = fd;
	if (fd < 0)
		goto err_ring;
	step = "io_uring fixed-file table";
	if (uring_files(&t->ring, slots) != 0)
		goto err_ring;
	t->npairs = slots / 2;
	t->pairs = calloc(t->npairs, sizeof(*t->pairs));
	t->free_pairs = malloc(t->npairs * sizeof(*t->free_pairs));
	step = "memory";
	if (t->pairs == NULL || t->free_pairs == NULL) {
		errno = ENOMEM;
		goto err_ring;
	}
	t->ring_side.c = NULL;
	t->ring_side.which = SIDE_RING;
	step = "epoll";
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
		goto err_ring;
	t->fresh = t->nfree = 0;
	t->ring_state = 1;
	return 0;
err_ring : {
	int saved = errno;

	if (t->ring.fd >= 0)
		fdreg_unhide(t->ring.fd);
	uring_close(&t->ring);
	free(t->pairs);
	free(t->free_pairs);
	t->pairs = NULL;
	t->free_pairs = NULL;
	t->npairs = 0;
	errno = saved;
}
err:
	park_unavailable(step, errno);
	return -1;
}

/* Whether parking is due now: `always`, or `auto` under descriptor pressure. */
static bool park_due(const struct relay_thread *t)
{
	if (t->park_mode == PARK_ALWAYS)
		return t->ring_state >= 0;
	return t->park_mode == PARK_AUTO && t->ring_state >= 0 &&
	       fdreg_hidden_count() >= t->park_limit;
}

/*
 * Idle, with both directions open and no data held anywhere: nothing
 * waits to be written, and the only thing OpenSSL waits for is the server's
 * next record (a poll on the socket covers that).
 */
static bool park_candidate(const struct relay_conn *c)
{
	return !c->parked && !c->dead && !c->handshaking && c->app_mask == EPOLLIN &&
	       c->net_mask == EPOLLIN && stash_empty(&c->up) && stash_empty(&c->down) &&
	       c->ssl_up_wants == 0 && (c->ssl_down_wants & ~(unsigned int)EPOLLIN) == 0 &&
	       !c->app_eof && !c->app_gone && !c->net_eof && !c->net_dead && !c->net_hup &&
	       !c->notify_sent && !c->app_shut && SSL_has_pending(c->ssl) == 0;
}

struct park_req {
	unsigned int kind;
	unsigned int slot;
	uint64_t ud;
	uint64_t target;
};

static int park_issue(struct relay_thread *t, const void *arg)
{
	const struct park_req *q = arg;

	switch (q->kind) {
	case UD_POLL:
		return uring_poll(&t->ring, q->slot, POLLIN | POLLRDHUP, q->ud);
	case UD_REMOVE:
		return uring_poll_remove(&t->ring, q->target, q->ud);
	default:
		return uring_install(&t->ring, q->slot, q->ud);
	}
}

/* Queues one request, submitting what is queued first when the ring is full. */
static int park_request(struct relay_thread *t, const struct park_req *q)
{
	if (park_issue(t, q) == 0)
		return 0;
	if (errno != EBUSY || uring_submit(&t->ring, 0) < 0)
		return -1;
	return park_issue(t, q);
}

/* Empties pair `p`'s slots (closing what only the table held) and frees it. */
static void park_release_pair(struct relay_thread *t, unsigned int p)
{
	static const int none[2] = {-1, -1};

	if (uring_files_set(&t->ring, 2 * p, none, 2) != 0)
		log_debug("relay: emptying parked slots failed: %s", strerror(errno));
	t->pairs[p].c = NULL;
	t->pairs[p].gen++;
	t->free_pairs[t->nfree++] = p;
}

/*
 * Parks `c` (a park_candidate) if the ring and a free pair allow; otherwise
 * it simply stays as it is.  `locked`: the caller holds t->lock.
 */
static void relay_park(struct relay_conn *c, bool locked)
{
	struct relay_thread *t = c->t;
	struct park_req q;
	unsigned int p;
	int fds[2] = {c->app_fd, c->net_fd}, side;

	if (c->no_park_until != 0) {
		if (relay_now_ms() < c->no_park_until)
			return;
		c->no_park_until = 0;
	}
	if (park_ring_open(t) != 0)
		return;
	if (t->nfree > 0)
		p = t->free_pairs[--t->nfree];
	else if (t->fresh < t->npairs)
		p = t->fresh++;
	else
		return; /* the table is full: this one keeps its descriptors */
	if (uring_files_set(&t->ring, 2 * p, fds, 2) != 0) {
		log_debug("relay: parking failed: %s", strerror(errno));
		park_release_pair(t, p); /* empties what a partial update may have set */
		return;
	}
	for (side = SIDE_APP; side <= SIDE_NET; side++) {
		q.kind = UD_POLL;
		q.slot = 2 * p + (unsigned int)side;
		q.ud = park_ud(UD_POLL, side, p, t->pairs[p].gen);
		if (park_request(t, &q) != 0)
			break;
	}
	if (side <= SIDE_NET || uring_submit(&t->ring, 0) < 0) {
		/* Whatever was queued completes with an old generation, ignored. */
		log_debug("relay: parking failed: %s", strerror(errno));
		park_release_pair(t, p);
		return;
	}
	/* The registry first: no getsockopt may reach the socket once it is closed. */
	fdreg_set_tcp_fd(c->ino, FDREG_TCP_PARKED);
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->app_fd, NULL);
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->net_fd, NULL);
	fdreg_release(c->app_fd);
	fdreg_release(c->net_fd);
	c->app_fd = c->net_fd = -1;
	t->pairs[p].c = c;
	c->park_pair = p;
	c->park_armed = 3;
	if (!locked)
		pthread_mutex_lock(&t->lock);
	c->parked = true;
	t->nparked++;
	if (!locked)
		pthread_mutex_unlock(&t->lock);
}

/* Puts `c` on the thread's list to unpark (park_unpark_queued), once. */
static void park_queue_unpark(struct relay_thread *t, struct relay_conn *c)
{
	if (c->unpark_queued)
		return;
	c->unpark_queued = true;
	c->unpark_next = t->unpark_head;
	t->unpark_head = c;
}

/* One completion from the ring. */
static void park_complete(struct relay_thread *t, const struct uring_done *d)
{
	unsigned int kind = d->user_data & 3, p = (unsigned int)(d->user_data >> 3) & 0x1fffffffU;
	int side = (int)(d->user_data >> 2) & 1;
	uint32_t gen = (uint32_t)(d->user_data >> 32);
	struct relay_conn *c;

	if (kind == UD_REMOVE)
		return;
	if (p >= t->npairs || t->pairs[p].c == NULL || t->pairs[p].gen != gen) {
		/* An older use of the pair: a descriptor it made is nobody's. */
		if (kind == UD_INSTALL && d->res >= 0)
			real.close(d->res);
		return;
	}
	c = t->pairs[p].c;
	if (kind == UD_INSTALL) {
		c->park_fd[side] = d->res;
		c->park_installs--;
		return;
	}
	c->park_armed &= (unsigned char)~(1U << side);
	if (d->res == -ECANCELED || c->unpark_waiting)
		return; /* removed by relay_unpark_one(), not news */
	if (!c->unparking)
		park_queue_unpark(t, c);
}

static void park_reap(struct relay_thread *t)
{
	struct uring_done d;

	while (uring_next(&t->ring, &d))
		park_complete(t, &d);
}

/*
 * relay_unpark_one() found no free descriptor (the program holds them all).
 * The files stay in the ring, the connection on the thread's retry list, and
 * the loop tries again every UNPARK_RETRY_MS (park_retry): a program that
 * closes something soon loses nothing.  Returns true while within the
 * patience bound; false once it is spent (the caller closes the connection).
 */
static bool park_wait_for_fds(struct relay_conn *c)
{
	struct relay_thread *t = c->t;
	long now = relay_now_ms();
	int side;

	if (!c->unpark_waiting) {
		c->unpark_waiting = true;
		c->unpark_since = now;
		atomic_fetch_add(&t->st_waiting, 1);
		log_debug("relay: no descriptor to resume a parked connection; waiting");
	} else if (now - c->unpark_since >= atomic_load(&unpark_patience_ms)) {
		return false;
	}
	for (side = SIDE_APP; side <= SIDE_NET; side++) {
		fdreg_release(c->park_fd[side]);
		c->park_fd[side] = -1;
	}
	if (t->retry_head == NULL)
		t->retry_ms = now + UNPARK_RETRY_MS;
	if (!c->on_retry) {
		c->on_retry = true;
		c->retry_next = t->retry_head;
		t->retry_head = c;
	}
	c->unparking = false;
	return true;
}

/*
 * Tries again, every UNPARK_RETRY_MS, the connections that waited for
 * descriptors.  Returns the milliseconds until the next try (the thread's
 * wait is bounded by it), or -1 when none waits.
 */
static int park_retry(struct relay_thread *t)
{
	struct relay_conn *c = t->retry_head;
	long now;

	if (c == NULL)
		return -1;
	now = relay_now_ms();
	if (now < t->retry_ms)
		return (int)(t->retry_ms - now);
	t->retry_ms = now + UNPARK_RETRY_MS;
	t->retry_head = NULL;
	while (c != NULL) {
		struct relay_conn *next = c->retry_next;

		c->on_retry = false;
		if (c->parked && !c->dead)
			relay_unpark_one(c); /* back on the list if it fails again */
		c = next;
	}
	/* Those tries reaped the ring: what other connections' polls said is queued. */
	park_unpark_queued(t);
	return t->retry_head != NULL ? UNPARK_RETRY_MS : -1;
}

void relay_set_unpark_patience_ms(long ms)
{
	atomic_store(&unpark_patience_ms, ms > 0 ? ms : 10000);
}

/*
 * Takes c's two files back as hidden descriptors and registers them again.
 * On failure (no descriptor left: the program filled the table) the
 * connection is closed with a relay_failed line; it cannot move a byte
 * without them.
 */
static void relay_unpark_one(struct relay_conn *c)
{
	struct relay_thread *t = c->t;
	unsigned int p = c->park_pair;
	uint32_t gen = t->pairs[p].gen;
	struct epoll_event ev = {.events = EPOLLIN};
	struct park_req q;
	BIO *rbio, *wbio;
	int side, err = 0;
	bool queued = true;

	c->unparking = true;
	c->park_fd[0] = c->park_fd[1] = -1;
	c->park_installs = 0;
	for (side = SIDE_APP; side <= SIDE_NET && queued; side++) {
		if (c->park_armed & (1U << side)) {
			q.kind = UD_REMOVE;
			q.target = park_ud(UD_POLL, side, p, gen);
			q.ud = park_ud(UD_REMOVE, side, p, gen);
			queued = park_request(t, &q) == 0;
		}
	}
	for (side = SIDE_APP; side <= SIDE_NET && queued; side++) {
		q.kind = UD_INSTALL;
		q.slot = 2 * p + (unsigned int)side;
		q.ud = park_ud(UD_INSTALL, side, p, gen);
		queued = park_request(t, &q) == 0;
		if (queued)
			c->park_installs++;
	}
	/*
	 * An install completes while it is submitted (it never waits for
	 * anything), so the wait below returns at once; it only covers a kernel
	 * that would hand the request to a worker.
	 */
	if (!queued || uring_submit(&t->ring, 0) < 0)
		err = errno != 0 ? errno : EIO;
	else
		park_reap(t);
	while (err == 0 && c->park_installs > 0) {
		if (uring_submit(&t->ring, 1) < 0)
			err = errno;
		park_reap(t);
	}
	for (side = SIDE_APP; side <= SIDE_NET; side++) {
		if (c->park_fd[side] < 0 && err == 0)
			err = c->park_fd[side] == -1 ? EIO : -c->park_fd[side];
		else if (c->park_fd[side] >= 0)
			c->park_fd[side] = fdreg_adopt(c->park_fd[side]);
		if (c->park_fd[side] < 0 && err == 0)
			err = errno;
	}
	if ((err == EMFILE || err == ENFILE) && park_wait_for_fds(c))
		return;
	park_release_pair(t, p); /* the descriptors (if any) hold the files now */
	if (c->unpark_waiting) {
		c->unpark_waiting = false;
		atomic_fetch_sub(&t->st_waiting, 1);
		log_debug("relay: a parked connection got its descriptors after %ld ms",
		          relay_now_ms() - c->unpark_since);
	}
	c->app_fd = c->park_fd[SIDE_APP];
	c->net_fd = c->park_fd[SIDE_NET];
	if (err == 0) {
		ev.data.ptr = &c->sides[SIDE_APP];
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->app_fd, &ev) != 0)
			err = errno;
		ev.data.ptr = &c->sides[SIDE_NET];
		if (err == 0 && epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->net_fd, &ev) != 0) {
			err = errno;
			epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->app_fd, NULL);
		}
	}
	if (err == 0) {
		/*
		 * The registry before `parked` is cleared: a relay_unpark() waiter
		 * that sees it cleared finds the socket there.
		 */
		rbio = SSL_get_rbio(c->ssl);
		wbio = SSL_get_wbio(c->ssl);
		BIO_set_fd(rbio, c->net_fd, BIO_NOCLOSE);
		if (wbio != rbio)
			BIO_set_fd(wbio, c->net_fd, BIO_NOCLOSE);
		fdreg_set_tcp_fd(c->ino, c->net_fd);
	}
	pthread_mutex_lock(&t->lock);
	c->parked = false;
	t->nparked--;
	if (c->unpark_req) {
		c->unpark_req = false;
		c->no_park_until = relay_now_ms() + PARK_HOLD_MS;
	}
	pthread_mutex_unlock(&t->lock);
	c->unparking = false;
	if (err != 0) {
		char reason[128];

		snprintf(reason, sizeof(reason), "parked connection not resumed: %s%s",
		         strerror(err),
		         err == EMFILE || err == ENFILE ? " (waited too long for a descriptor)"
		                                        : "");
		relay_log_failure(c, reason);
		c->app_mask = c->net_mask = ~0U; /* not registered */
		relay_teardown(c);
		return;
	}
	/* Registered for EPOLLIN, as park_candidate() found it: the event is reported again. */
}

/* Unparks every connection whose poll completed or that relay_unpark() asked for. */
static void park_unpark_queued(struct relay_thread *t)
{
	struct relay_conn *c;

	while ((c = t->unpark_head) != NULL) {
		t->unpark_head = c->unpark_next;
		c->unpark_queued = false;
		if (c->parked && !c->dead)
			relay_unpark_one(c);
	}
}

/*
 * Caller holds t->lock.  Queues the connections relay_unpark() asked for;
 * the caller unparks them after releasing the lock, then broadcasts.
 */
static bool park_take_requests_locked(struct relay_thread *t)
{
	struct relay_conn *c;

	if (!t->unpark_wanted)
		return false;
	t->unpark_wanted = false;
	for (c = t->conns; c != NULL; c = c->next) {
		/* One waiting for descriptors is retried anyway (park_retry). */
		if (c->unpark_req && c->parked && !c->unpark_waiting)
			park_queue_unpark(t, c);
	}
	return true;
}

/*
 * Under pressure, at most once a second: parks the idle connections that
 * pump() will not see again soon (they were idle before pressure came), and
 * reads the descriptor limit again (the program may have raised it).
 * Returns the milliseconds until a sweep is due that could not run yet (the
 * thread's wait is bounded by it: no event may come), or -1.
 */
static int park_sweep(struct relay_thread *t)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i;
	struct relay_conn *c;
	long now;

	if (!park_due(t))
		return -1;
	now = relay_now_ms();
	if (now < t->sweep_ms)
		return (int)(t->sweep_ms - now);
	t->sweep_ms = now + PARK_SWEEP_MS;
	t->park_limit = park_limit_read();
	pthread_mutex_lock(&t->lock);
	for (c = t->conns; c != NULL && t->ring_state >= 0; c = c->next)
		if (park_candidate(c))
			relay_park(c, true);
	pthread_mutex_unlock(&t->lock);
	/*
	 * The pressure is the process's: the other threads' idle connections
	 * count as much as this one's, and those threads may sleep with no
	 * event to come.  Wake them to sweep too (each at most once a second).
	 */
	for (i = 0; i < n; i++)
		if (&relay_threads[i] != t)
			relay_wake(&relay_threads[i]);
	return -1;
}

long relay_parked(void)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i;
	long sum = 0;

	for (i = 0; i < n; i++) {
		struct relay_thread *t = &relay_threads[i];

		pthread_mutex_lock(&t->lock);
		sum += t->nparked;
		pthread_mutex_unlock(&t->lock);
	}
	return sum;
}

long relay_unpark_waiting(void)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i;
	long sum = 0;

	for (i = 0; i < n; i++)
		sum += atomic_load(&relay_threads[i].st_waiting);
	return sum;
}

/* Caller holds t->lock.  The live connection with program inode `ino`, or NULL. */
static struct relay_conn *conn_by_ino_locked(struct relay_thread *t, ino_t ino)
{
	struct relay_conn *c;

	for (c = t->conns; c != NULL; c = c->next)
		if (c->ino == ino)
			return c;
	return NULL;
}

int relay_unpark(ino_t ino)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i, rc = 0;
	struct timespec until;

	for (i = 0; i < n; i++) {
		struct relay_thread *t = &relay_threads[i];
		struct relay_conn *c;

		pthread_mutex_lock(&t->lock);
		c = conn_by_ino_locked(t, ino);
		if (c == NULL) {
			pthread_mutex_unlock(&t->lock);
			continue;
		}
		if (c->parked) {
			c->unpark_req = true;
			t->unpark_wanted = true;
			relay_wake(t);
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += UNPARK_WAIT_MS / 1000;
			while ((c = conn_by_ino_locked(t, ino)) != NULL && c->parked) {
				if (!c->unpark_req) {
					/* Unparked, then parked again before we looked: ask again. */
					c->unpark_req = true;
					t->unpark_wanted = true;
					relay_wake(t);
				}
				if (pthread_cond_timedwait(&t->cond, &t->lock, &until) ==
				    ETIMEDOUT) {
					rc = -1;
					break;
				}
			}
		}
		pthread_mutex_unlock(&t->lock);
		break;
	}
	if (rc != 0)
		errno = ETIMEDOUT;
	return rc;
}

/* --- the pumps -------------------------------------------------------------- */

/*
 * Hands s->buf[off..len) to SSL_write until it is all accepted or OpenSSL
 * must wait (SSL_MODE_ENABLE_PARTIAL_WRITE: one record per call).  Returns
 * 0 when all was written, 1 when blocked (ssl_up_wants set, s->off
 * advanced), -1 after a fatal error.
 */
static int ssl_write_out(struct relay_conn *c, struct stash *s)
{
	while (s->off < s->len) {
		int w, err;

		ERR_clear_error();
		/* One record per call (partial writes): more follow if this is over one. */
		c->t->net_more = s->len - s->off > SSL3_RT_MAX_PLAIN_LENGTH;
		w = SSL_write(c->ssl, s->buf + s->off, (int)(s->len - s->off));
		c->t->net_more = false;
		if (w > 0) {
			s->off += (size_t)w;
			c->t->moved += (size_t)w;
			continue;
		}
		err = SSL_get_error(c->ssl, w);
		if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) {
			relay_log_failure(c, ssl_reason(err));
			return -1;
		}
		c->ssl_up_wants = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN;
		return 1;
	}
	return 0;
}

/*
 * Takes `n` bytes that were read with MSG_PEEK (and are already passed on)
 * out of the socketpair.  They are there, so a failure means the socket is
 * broken; the caller then tears the connection down rather than risk
 * sending a byte twice.  Returns 0 or -1.
 */
static int app_consume(struct relay_conn *c, size_t n)
{
	unsigned char *sink = c->t->sink;

	while (n > 0) {
		ssize_t r = recv(c->app_fd, sink, n < PEEK_SIZE ? n : PEEK_SIZE, MSG_DONTWAIT);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			relay_log_failure(c, "socketpair read failed");
			return -1;
		}
		OPENSSL_cleanse(sink, (size_t)r); /* a copy we do not need */
		n -= (size_t)r;
	}
	return 0;
}

/*
 * Program -> server.  Returns 0, or -1 after a fatal error (torn down by the
 * caller).
 */
static int pump_up(struct relay_conn *c)
{
	/*
	 * A short read means the socketpair was empty; level-triggered epoll
	 * reports the next data.  Not so once the program's end is gone from
	 * epoll (HUP): then read on until EOF.
	 */
	struct relay_thread *t = c->t;
	bool polled = c->app_mask != (uint32_t)~0U, drained = false;

	c->ssl_up_wants = 0;
	while (!c->net_dead) {
		struct stash cur;
		size_t want = SCRATCH_SIZE;
		ssize_t n;
		int rc, flags = MSG_DONTWAIT;

		if (!stash_empty(&c->up)) {
			rc = ssl_write_out(c, &c->up);
			if (rc != 0)
				return rc < 0 ? -1 : 0;
			stash_clear(t, &c->up);
			continue;
		}
		if (c->app_eof || drained)
			break;
		/*
		 * Interactive traffic is peeked, sent, and only then taken out of
		 * the socketpair: taking data out wakes the program if it already
		 * sleeps in read() (AF_UNIX wakes every waiter when it frees the
		 * sender's buffer space), and that wake-up should not delay the
		 * request on its way to the server.  Bulk data is read directly.
		 */
		if (c->app_peek && !c->up_bulk && polled) {
			want = PEEK_SIZE;
			flags |= MSG_PEEK;
		}
		n = recv(c->app_fd, t->scratch, want, flags);
		if (n > 0)
			c->up_bulk = (size_t)n >= PEEK_SIZE;
		if (n == 0 ||
		    (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			c->app_eof = true;
			break;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		drained = polled && (size_t)n < want;
		cur.buf = t->scratch;
		cur.off = 0;
		cur.len = (size_t)n;
		rc = ssl_write_out(c, &cur);
		if ((flags & MSG_PEEK) && app_consume(c, cur.len) != 0)
			return -1;
		if (rc < 0)
			return -1;
		if (rc > 0) {
			/* The rest waits in this very buffer, which the connection keeps. */
			stash_take_scratch(t, &c->up, cur.off, cur.len);
			return scratch_ensure(t);
		}
	}

	if (c->app_eof && stash_empty(&c->up) && !c->notify_sent && !c->net_dead) {
		int r, err;

		ERR_clear_error();
		r = SSL_shutdown(c->ssl);
		if (r < 0) {
			err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
				c->ssl_up_wants = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN;
				return 0;
			}
		}
		/* close_notify is out (or cannot be); the FIN follows it. */
		c->notify_sent = true;
		shutdown(c->net_fd, SHUT_WR);
	}
	return 0;
}

/*
 * Sends s->buf[off..len) to the program.  Returns 0 when all went (or the
 * program is gone), 1 when the socketpair is full.
 */
static int app_send(struct relay_conn *c, struct stash *s)
{
	while (s->off < s->len && !c->app_gone) {
		ssize_t n = send(c->app_fd, s->buf + s->off, s->len - s->off,
		                 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			s->off += (size_t)n;
			c->t->moved += (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 1;
		} else {
			c->app_gone = true;
		}
	}
	return 0;
}

/* Server -> program.  Returns 0, or -1 after a fatal error. */
static int pump_down(struct relay_conn *c)
{
	struct relay_thread *t = c->t;
	bool more = true;

	c->ssl_down_wants = 0;
	if (!c->app_gone && !stash_empty(&c->down) && app_send(c, &c->down) != 0)
		return 0;
	if (c->app_gone) {
		stash_discard(t, &c->down); /* nobody left to deliver to */
		return 0;
	}
	stash_clear(t, &c->down); /* all sent */

	/*
	 * Decrypt up to SCRATCH_SIZE bytes (several records, read ahead in one
	 * recv()), then pass them on in one send(): fewer system calls, and
	 * fewer wake-ups of the program.  Stop as soon as nothing more is
	 * readable now: the relay never holds data back waiting for more.
	 */
	c->net_drained = false;
	while (more) {
		struct stash cur = {.buf = t->scratch, .off = 0, .len = 0};
		int fatal = 0;

		while (cur.len < SCRATCH_SIZE) {
			int r, err;

			if (c->net_eof || c->net_dead ||
			    (c->net_drained && !c->net_hup && !SSL_has_pending(c->ssl))) {
				more = false;
				break;
			}
			ERR_clear_error();
			errno = 0;
			r = SSL_read(c->ssl, cur.buf + cur.len, (int)(SCRATCH_SIZE - cur.len));
			if (r > 0) {
				cur.len += (size_t)r;
				continue;
			}
			more = false;
			err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
				c->ssl_down_wants = err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
			} else if (err == SSL_ERROR_ZERO_RETURN) {
				/* close_notify, or EOF without it (SSL_OP_IGNORE_UNEXPECTED_EOF). */
				c->net_eof = true;
			} else {
				relay_log_failure(c, ssl_reason(err));
				fatal = 1;
			}
			break;
		}
		/* What was decrypted before an error is still the program's. */
		if (app_send(c, &cur) != 0) {
			stash_take_scratch(t, &c->down, cur.off, cur.len);
			if (fatal)
				return -1;
			c->ssl_down_wants = 0; /* the program's EPOLLOUT comes first */
			return scratch_ensure(t);
		}
		if (fatal)
			return -1;
		if (c->app_gone)
			return 0;
	}

	if ((c->net_eof || c->net_dead) && !c->app_shut) {
		shutdown(c->app_fd, SHUT_WR);
		c->app_shut = true;
	}
	return 0;
}

/* --- inbound handshakes ----------------------------------------------------- */

/* One line about an inbound connection, from what its handshake recorded. */
static void log_inbound(struct relay_conn *c, int severity, const char *event)
{
	struct tls_failure *w = &c->why;
	struct log_event ev;

	log_event_init(&ev, severity, event);
	ev.dir = "in";
	ev.peer = (const struct sockaddr *)&c->peer;
	ev.local = (const struct sockaddr *)&c->local;
	ev.rule = c->rule[0] != '\0' ? c->rule : NULL;
	ev.stage = severity == LOG_INFO ? NULL : w->stage;
	ev.reason = severity == LOG_INFO ? NULL : w->reason;
	ev.x509_err = w->x509_err;
	ev.depth = w->depth;
	ev.subject = w->subject[0] ? w->subject : NULL; /* the client's certificate */
	ev.issuer = w->issuer[0] ? w->issuer : NULL;
	ev.serial = w->serial[0] ? w->serial : NULL;
	ev.sha256 = w->sha256[0] ? w->sha256 : NULL;
	ev.not_after = w->not_after[0] ? w->not_after : NULL;
	if (c->ssl != NULL && SSL_is_init_finished(c->ssl)) {
		ev.tls = SSL_get_version(c->ssl);
		ev.cipher = SSL_get_cipher_name(c->ssl);
		ev.resumed = SSL_session_reused(c->ssl) ? 1 : 0;
	}
	log_emit(&ev);
}

static void handshake_finished(struct relay_conn *c)
{
	pthread_mutex_lock(&c->t->lock);
	if (c->handshaking) {
		c->handshaking = false;
		c->t->nhandshaking--;
	}
	pthread_mutex_unlock(&c->t->lock);
}

/*
 * Drives an inbound server handshake.  Returns 0 once it is complete (the
 * caller goes on to relay), 1 while it waits or after the connection was
 * torn down (a failed handshake closes the program's end: it sees EOF).
 */
static int handshake_step(struct relay_conn *c, uint32_t app_ev)
{
	int r, err, sys_errno;

	if (app_ev & (EPOLLHUP | EPOLLERR)) {
		relay_teardown(c); /* the program closed it before TLS came up */
		return 1;
	}
	ERR_clear_error();
	errno = 0;
	r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		X509 *client = SSL_get0_peer_certificate(c->ssl);

		handshake_finished(c);
		if (client != NULL)
			tlsio_describe_cert(client, &c->why);
		if (conf_get()->log_success)
			log_inbound(c, LOG_INFO, "connected");
		return 0;
	}
	sys_errno = errno;
	err = SSL_get_error(c->ssl, r);
	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
		relay_set_mask(c, SIDE_NET, err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
		relay_set_mask(c, SIDE_APP, 0); /* the program waits; HUP still reported */
		return 1;
	}
	tlsio_server_failure(c->ssl, err, sys_errno, &c->why);
	log_inbound(c, LOG_ERR, c->why.event);
	relay_teardown(c);
	return 1;
}

/*
 * Tears down inbound handshakes past their deadline.  Returns milliseconds
 * to the next deadline, or -1 when no handshake is running.
 */
static int expire_handshakes(struct relay_thread *t)
{
	struct relay_conn *expired[64], *c;
	long now = tlsio_now_ms(), next = -1;
	int n = 0, i;

	pthread_mutex_lock(&t->lock);
	for (c = t->conns; c != NULL && t->nhandshaking > 0; c = c->next) {
		if (!c->handshaking)
			continue;
		if (c->hs_deadline <= now && n < (int)(sizeof(expired) / sizeof(expired[0])))
			expired[n++] = c;
		else if (next < 0 || c->hs_deadline < next)
			next = c->hs_deadline;
	}
	pthread_mutex_unlock(&t->lock);
	for (i = 0; i < n; i++) {
		c = expired[i];
		c->why.stage = "timeout";
		snprintf(c->why.reason, sizeof(c->why.reason), "handshake timed out");
		log_inbound(c, LOG_ERR, "handshake_failed");
		relay_teardown(c);
	}
	if (n == (int)(sizeof(expired) / sizeof(expired[0])))
		return 0; /* more may have expired: come straight back */
	return next < 0 ? -1 : (int)(next > now ? next - now : 0);
}

/*
 * Runs the direction(s) that an event can move, then registers what is
 * needed next, or tears the connection down when both directions are
 * finished.
 */
static void pump(struct relay_conn *c, uint32_t app_ev, uint32_t net_ev)
{
	uint32_t app_want = 0, net_want;
	bool up_done, down_done, run_up, run_down;
	size_t moved0 = c->t->moved;

	if (c->handshaking) {
		if (handshake_step(c, app_ev) != 0)
			return;
		app_ev |= EPOLLIN; /* what the program wrote meanwhile may go now */
		net_ev |= EPOLLIN;
	}

	if (app_ev & (EPOLLHUP | EPOLLERR)) {
		/*
		 * Both directions of the socketpair are shut: the program closed its
		 * end (or shut writing after we delivered EOF).  What it wrote is
		 * still readable without epoll, which would report HUP forever.
		 */
		if (!c->app_shut)
			c->app_gone = true;
		relay_set_mask(c, SIDE_APP, ~0U);
	}
	if (net_ev & EPOLLERR)
		c->net_dead = true; /* reset: nothing more goes either way */
	if (net_ev & EPOLLHUP)
		c->net_hup = true; /* the rest is readable without epoll */

	if (scratch_ensure(c->t) != 0) {
		relay_log_failure(c, "out of memory");
		relay_teardown(c);
		return;
	}
	/*
	 * Only the direction(s) this event concerns: the program's data (or
	 * room for the server's), the server's data (or room for ours).  A HUP
	 * or error concerns both.  What OpenSSL itself waits for (a write that
	 * needs to read, say) is honoured too.
	 */
	run_up = (app_ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) ||
	         (net_ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) || (net_ev & c->ssl_up_wants);
	run_down = (app_ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) ||
	           (net_ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) || (net_ev & c->ssl_down_wants);
	if ((run_up && pump_up(c) != 0) || (run_down && pump_down(c) != 0)) {
		relay_teardown(c);
		return;
	}

	up_done = (c->app_eof && c->notify_sent) || c->net_dead;
	down_done = c->app_gone || ((c->net_eof || c->net_dead) && c->app_shut);
	if (up_done && down_done) {
		relay_teardown(c);
		return;
	}

	if (!c->app_eof && stash_empty(&c->up))
		app_want |= EPOLLIN;
	if (!stash_empty(&c->down))
		app_want |= EPOLLOUT;
	net_want = c->ssl_up_wants | c->ssl_down_wants;
	if (!c->net_eof && !c->app_gone && stash_empty(&c->down))
		net_want |= EPOLLIN;
	if (c->net_dead || c->net_hup)
		net_want = ~0U;
	if (c->app_mask != (uint32_t)~0U)
		relay_set_mask(c, SIDE_APP, app_want);
	relay_set_mask(c, SIDE_NET, net_want);
	if (c->app_mask == (uint32_t)~0U && c->net_mask == (uint32_t)~0U) {
		/* Nothing is left that could wake this connection. */
		relay_teardown(c);
		return;
	}
	/* Held unparked for a getsockopt/setsockopt: until the program uses it. */
	if (c->no_park_until != 0 && c->t->moved != moved0)
		c->no_park_until = 0;
	if (c->t->park_mode != PARK_OFF && park_due(c->t) && park_candidate(c))
		relay_park(c, false);
}

/* --- the thread ------------------------------------------------------------- */

/* True when no connection holds data from the program that is not yet sent. */
static bool relay_all_flushed(struct relay_thread *t)
{
	struct relay_conn *c;
	bool flushed = true;

	pthread_mutex_lock(&t->lock);
	for (c = t->conns; c != NULL && flushed; c = c->next) {
		int pending = 0;

		if (!stash_empty(&c->up) || c->ssl_up_wants != 0)
			flushed = false;
		else if (!c->app_eof && !c->net_dead && ioctl(c->app_fd, FIONREAD, &pending) == 0 &&
		         pending > 0)
			flushed = false;
	}
	pthread_mutex_unlock(&t->lock);
	/* A parked connection's news waits in the ring until it is unparked. */
	return flushed && !uring_pending(&t->ring);
}

static void relay_free_zombies_locked(struct relay_thread *t)
{
	while (t->zombies != NULL) {
		struct relay_conn *z = t->zombies;

		t->zombies = z->next;
		free(z);
	}
}

static long relay_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long relay_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

long relay_spin_adapt(long window_ns, long max_ns, long waited_ns, bool hit)
{
	long want;

	if (max_ns <= 0)
		return 0;
	if (window_ns > max_ns)
		window_ns = max_ns;
	if (hit)
		return window_ns; /* spinning paid off: keep it */
	if (waited_ns > max_ns) {
		/* Longer than we would ever spin: spinning cannot pay off, back off. */
		window_ns /= 2;
		return window_ns < SPIN_MIN_NS ? 0 : window_ns;
	}
	/* A short wait that spinning did not cover: cover it, with a margin. */
	want = waited_ns + waited_ns / 2;
	if (want < 2 * window_ns)
		want = 2 * window_ns;
	if (want < SPIN_MIN_NS)
		want = SPIN_MIN_NS;
	return want < max_ns ? want : max_ns;
}

bool relay_spin_arm(size_t moved, uint64_t only, bool mixed, uint64_t *last)
{
	bool same = !mixed && only != 0 && only == *last;

	*last = mixed ? 0 : only;
	return same && moved > 0 && moved <= SPIN_ARM_MAX;
}

long relay_spin_bound(long spin_us, long ncpu)
{
	long us = spin_us < 0 ? 0 : spin_us < SPIN_US_MAX ? spin_us : SPIN_US_MAX;

	return ncpu < 2 ? 0 : us * 1000L;
}

/*
 * CPUs a CPU quota allows along a cgroup path: the smallest ceil(quota /
 * period) of `dir` and its ancestors up to `root`, or 0 when none is set.
 * `v2`: cpu.max ("max 100000" or "50000 100000"); else cgroup v1's
 * cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
 */
static long cgroup_quota_cpus(const char *root, const char *path, bool v2)
{
	char dir[512], file[600];
	long best = 0;

	if ((size_t)snprintf(dir, sizeof(dir), "%s", path) >= sizeof(dir))
		return 0;
	for (;;) {
		long long quota = -1, period = 0;
		char *slash;
		FILE *f;

		if (v2) {
			char q[32] = "";

			snprintf(file, sizeof(file), "%s%s/cpu.max", root, dir);
			f = fopen(file, "re");
			if (f != NULL) {
				if (fscanf(f, "%31s %lld", q, &period) == 2 && q[0] >= '0' &&
				    q[0] <= '9')
					quota = strtoll(q, NULL, 10);
				fclose(f);
			}
		} else {
			snprintf(file, sizeof(file), "%s%s/cpu.cfs_quota_us", root, dir);
			f = fopen(file, "re");
			if (f != NULL) {
				if (fscanf(f, "%lld", &quota) != 1)
					quota = -1;
				fclose(f);
			}
			snprintf(file, sizeof(file), "%s%s/cpu.cfs_period_us", root, dir);
			f = quota > 0 ? fopen(file, "re") : NULL;
			if (f != NULL) {
				if (fscanf(f, "%lld", &period) != 1)
					period = 0;
				fclose(f);
			}
		}
		if (quota > 0 && period > 0) {
			long n = (long)((quota + period - 1) / period);

			if (best == 0 || n < best)
				best = n;
		}
		slash = strrchr(dir, '/');
		if (slash == NULL || dir[0] == '\0')
			break;
		*slash = '\0'; /* "/a/b" -> "/a" -> "" (the root itself, last) */
	}
	return best;
}

long relay_cgroup_cpus(const char *self_cgroup, const char *root)
{
	FILE *f = fopen(self_cgroup, "re");
	char line[1024], sub[600];
	long best = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *ctl = strchr(line, ':'), *path, *nl;
		long n = 0;

		if (ctl == NULL || (path = strchr(ctl + 1, ':')) == NULL)
			continue;
		*path++ = '\0';
		*ctl++ = '\0'; /* line: the hierarchy number; ctl: the controllers */
		if ((nl = strchr(path, '\n')) != NULL)
			*nl = '\0';
		if (path[0] != '/')
			continue;
		if (strcmp(path, "/") == 0)
			path = "";
		if (strcmp(line, "0") == 0 && ctl[0] == '\0') {
			n = cgroup_quota_cpus(root, path, true);
		} else {
			/* v1: the line whose controllers include "cpu"; its mount point's name varies. */
			static const char *const mounts[] = {"/cpu", "/cpu,cpuacct",
			                                     "/cpuacct,cpu"};
			char *tok, *save = NULL;
			bool cpu = false;
			size_t i;

			for (tok = strtok_r(ctl, ",", &save); tok != NULL;
			     tok = strtok_r(NULL, ",", &save))
				cpu = cpu || strcmp(tok, "cpu") == 0;
			for (i = 0; cpu && i < sizeof(mounts) / sizeof(mounts[0]) && n == 0; i++) {
				snprintf(sub, sizeof(sub), "%s%s", root, mounts[i]);
				n = cgroup_quota_cpus(sub, path, false);
			}
		}
		if (n > 0 && (best == 0 || n < best))
			best = n;
	}
	fclose(f);
	return best;
}

/*
 * CPUs this process may use: online ones, within its affinity mask and its
 * cgroup's CPU quota (a service unit's CPUQuota=, a container's --cpus), or
 * what relay_set_ncpu() said (tests).  A quota of half a CPU counts as one:
 * no second relay thread, and no busy-polling that would only burn quota.
 */
static long relay_ncpu(void)
{
	long n = atomic_load_explicit(&relay_ncpu_override, memory_order_relaxed), q;
	cpu_set_t set;

	if (n > 0)
		return n;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) < n)
		n = CPU_COUNT(&set);
	q = relay_cgroup_cpus("/proc/self/cgroup", "/sys/fs/cgroup");
	if (q > 0 && q < n)
		n = q;
	return n;
}

static void relay_spin_set_window(struct relay_thread *t, long w)
{
	t->spin_window = w;
	atomic_store_explicit(&t->st_window, w, memory_order_relaxed);
}

static void relay_count_up(atomic_ulong *counter)
{
	atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* A blocking epoll_wait(); tests can see that the thread is in it. */
static int relay_sleep(struct relay_thread *t, struct epoll_event *evs, int timeout)
{
	int n;

	atomic_store_explicit(&t->st_sleeping, timeout != 0, memory_order_relaxed);
	n = epoll_wait(t->epfd, evs, MAX_EVENTS, timeout);
	atomic_store_explicit(&t->st_sleeping, false, memory_order_relaxed);
	return n;
}

/*
 * epoll_wait() for the relay loop.  After a batch that forwarded data
 * (`armed`) it first polls without sleeping for the current spin window,
 * then blocks; either way the wait's length adapts the window.  A deadline
 * (`timeout`, ms) slips by at most one window (below a millisecond).  Each
 * thread adapts its own window, to the waits of its own connections.
 */
static int relay_wait(struct relay_thread *t, struct epoll_event *evs, int timeout, bool armed)
{
	long max_ns = atomic_load_explicit(&relay_spin_max_ns, memory_order_relaxed);
	long t0, t1, window;
	bool probe = false;
	int n;

	if (max_ns != t->spin_seen) {
		t->spin_seen = max_ns;
		relay_spin_set_window(t, max_ns > 0 ? max_ns : 0); /* start optimistic */
	}
	if (!armed || max_ns <= 0 || timeout == 0)
		return relay_sleep(t, evs, timeout);

	relay_count_up(&t->st_armed);
	window = t->spin_window;
	if (window == 0 && ++t->spin_skipped >= SPIN_PROBE) {
		/*
		 * A blocking wait also counts the wake-up, which may alone exceed
		 * the bound: now and then spin the full window to find out whether
		 * spinning would pay off again.
		 */
		t->spin_skipped = 0;
		probe = true;
		window = max_ns;
	}
	t0 = relay_now_ns();
	if (window > 0) {
		long until = t0 + window;

		relay_count_up(&t->st_spins);
		do {
			n = epoll_wait(t->epfd, evs, MAX_EVENTS, 0);
			if (n != 0) {
				if (n > 0) {
					relay_count_up(&t->st_hits);
					relay_spin_set_window(
					        t, relay_spin_adapt(window, max_ns,
					                            relay_now_ns() - t0, true));
				}
				return n;
			}
			/*
			 * The thread we wait for may have been woken onto this very
			 * CPU (a synchronous wake-up from our send() puts it here):
			 * let it run now rather than when our time slice ends.
			 */
			sched_yield();
		} while (relay_now_ns() < until);
	}
	relay_count_up(&t->st_blocks);
	n = relay_sleep(t, evs, timeout);
	t1 = relay_now_ns();
	/* A probe that missed leaves things as they were: no window. */
	relay_spin_set_window(t, relay_spin_adapt(probe ? 0 : window, max_ns, t1 - t0, false));
	return n;
}

void relay_set_spin_us(long us)
{
	if (us < 0)
		us = 0;
	atomic_store(&relay_spin_max_ns, (us < SPIN_US_MAX ? us : SPIN_US_MAX) * 1000L);
}

void relay_get_spin_stats(struct relay_spin_stats *st)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i;

	memset(st, 0, sizeof(*st));
	st->bound_ns = atomic_load_explicit(&relay_spin_max_ns, memory_order_relaxed);
	st->sleeping = n > 0;
	for (i = 0; i < n; i++) {
		struct relay_thread *t = &relay_threads[i];
		long w = atomic_load_explicit(&t->st_window, memory_order_relaxed);

		st->armed += atomic_load_explicit(&t->st_armed, memory_order_relaxed);
		st->spins += atomic_load_explicit(&t->st_spins, memory_order_relaxed);
		st->hits += atomic_load_explicit(&t->st_hits, memory_order_relaxed);
		st->blocks += atomic_load_explicit(&t->st_blocks, memory_order_relaxed);
		if (w > st->window_ns)
			st->window_ns = w;
		if (!atomic_load_explicit(&t->st_sleeping, memory_order_relaxed))
			st->sleeping = false;
	}
}

static void *relay_main(void *arg)
{
	struct relay_thread *t = arg;
	struct epoll_event evs[MAX_EVENTS];
	long deadline = 0;
	int timeout = -1;
	bool armed = false, mixed;
	uint64_t only;
	char name[16];

	/* Visible in top -H, ps -L and perf: "tlsshim-relay0" ... */
	snprintf(name, sizeof(name), "tlsshim-relay%d", (int)(t - relay_threads));
	pthread_setname_np(pthread_self(), name);
	for (;;) {
		bool exiting, requests;
		int n, i;

		n = relay_wait(t, evs, timeout, armed);
		if (n < 0 && errno != EINTR)
			break;
		/*
		 * relay_add() initialises a connection and registers it with epoll
		 * under t->lock; taking the lock here, once per batch, orders that
		 * before any use of it (epoll itself promises no ordering that the
		 * memory model or ThreadSanitizer can see).  Connections torn down
		 * in the previous batch are freed here: no event of this batch can
		 * name them, they left epoll before it was collected.
		 */
		pthread_mutex_lock(&t->lock);
		relay_free_zombies_locked(t);
		exiting = t->exiting;
		requests = park_take_requests_locked(t);
		pthread_mutex_unlock(&t->lock);
		if (requests) {
			park_unpark_queued(t);
			pthread_mutex_lock(&t->lock);
			pthread_cond_broadcast(&t->cond);
			pthread_mutex_unlock(&t->lock);
		}

		t->moved = 0;
		only = 0;
		mixed = false;
		for (i = 0; i < n; i++) {
			struct side *s = evs[i].data.ptr;

			if (s->which == SIDE_WAKE) {
				uint64_t v;

				if (read(t->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
					log_debug("relay wake read failed");
				continue;
			}
			if (s->which == SIDE_RING) {
				park_reap(t);
				park_unpark_queued(t);
				continue;
			}
			/*
			 * Parked earlier in this batch: its poll requests see the
			 * readiness this event reports, and bring it back.
			 */
			if (s->c->dead || s->c->parked)
				continue;
			if (only == 0)
				only = s->c->id;
			else if (only != s->c->id)
				mixed = true;
			if (s->which == SIDE_APP)
				pump(s->c, evs[i].events, 0);
			else
				pump(s->c, 0, evs[i].events);
		}
		/*
		 * Spin only after interactive traffic: a bulk transfer has its
		 * next data queued already or waits for a peer that is busy
		 * producing it, and a spinning relay would only take its CPU.
		 * And only for a conversation: this batch and the one before
		 * served the same single connection (a request, then its
		 * answer).  When many connections are busy, consecutive batches
		 * serve different ones, events come soon without spinning, and
		 * the CPU is better left to the threads that make them.
		 */
		armed = relay_spin_arm(t->moved, only, mixed, &t->spin_conn);

		timeout = expire_handshakes(t);
		if (t->park_mode != PARK_OFF) {
			int sweep = park_sweep(t), retry = park_retry(t);

			if (retry >= 0 && (sweep < 0 || retry < sweep))
				sweep = retry;
			if (sweep >= 0 && (timeout < 0 || sweep < timeout))
				timeout = sweep;
		}
		if (exiting) {
			long now = relay_now_ms();

			if (deadline == 0)
				deadline = now + EXIT_FLUSH_MS;
			if (relay_all_flushed(t) || now >= deadline)
				break;
			if (timeout < 0 || deadline - now < timeout)
				timeout = (int)(deadline - now);
		}
	}
	pthread_mutex_lock(&t->lock);
	relay_free_zombies_locked(t);
	t->stopped = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/*
 * atexit: data the program wrote just before exit() is still in the
 * socketpairs; a kernel socket would have sent it after the process ended.
 * Give the relay threads a bounded time to pass it on, all at once (so the
 * bound is that of one thread, not the sum), then stop them, so that none
 * touches OpenSSL while the process's exit handlers tear OpenSSL down.
 */
static void relay_atexit(void)
{
	struct timespec until;
	int n, i;

	pthread_mutex_lock(&relay_lock);
	relay_exiting = true; /* no thread starts after this snapshot */
	n = atomic_load_explicit(&relay_started, memory_order_relaxed);
	pthread_mutex_unlock(&relay_lock);

	for (i = 0; i < n; i++) {
		struct relay_thread *t = &relay_threads[i];

		pthread_mutex_lock(&t->lock);
		t->exiting = true;
		pthread_mutex_unlock(&t->lock);
		relay_wake(t);
	}

	/* One deadline for all of them. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += EXIT_FLUSH_MS / 1000 + 1;
	for (i = 0; i < n; i++) {
		struct relay_thread *t = &relay_threads[i];
		bool stopped;

		pthread_mutex_lock(&t->lock);
		while (!t->stopped)
			if (pthread_cond_timedwait(&t->cond, &t->lock, &until) == ETIMEDOUT)
				break;
		stopped = t->stopped;
		pthread_mutex_unlock(&t->lock);
		/*
		 * Past its loop the thread only runs OpenSSL's thread-exit cleanup;
		 * wait for that too, or the process's OpenSSL teardown races it.
		 */
		if (stopped)
			pthread_join(t->thread, NULL);
	}
}

/*
 * Caller holds relay_lock.  Starts instance relay_started with every signal
 * blocked.  Returns it, or NULL with errno.
 */
static struct relay_thread *relay_start_locked(void)
{
	int idx = atomic_load_explicit(&relay_started, memory_order_relaxed);
	struct relay_thread *t = &relay_threads[idx];
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &t->wake_side};
	sigset_t all, old;
	int epfd, wfd, rc;

	epfd = fdreg_adopt(epoll_create1(EPOLL_CLOEXEC));
	wfd = fdreg_adopt(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
	if (epfd < 0 || wfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, wfd, &ev) != 0)
		goto err;
	/* Not running: nothing else looks at the instance until relay_started says so. */
	t->wake_side.c = NULL;
	t->wake_side.which = SIDE_WAKE;
	t->epfd = epfd;
	t->wakefd = wfd;
	t->exiting = t->stopped = false;
	t->spin_seen = -1;
	t->spin_skipped = 0;
	t->spin_conn = 0;
	t->net_more = false;
	t->park_mode = conf_get()->relay_park;
	t->park_limit = park_limit_read();
	t->sweep_ms = 0;
	if (atomic_load(&relay_spin_max_ns) < 0)
		atomic_store(&relay_spin_max_ns,
		             relay_spin_bound(conf_get()->relay_spin_us, relay_ncpu()));

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&t->thread, NULL, relay_main, t);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		errno = rc;
		goto err;
	}
	atomic_store_explicit(&relay_started, idx + 1, memory_order_release);
	if (!relay_atexit_set && atexit(relay_atexit) == 0)
		relay_atexit_set = true;
	return t;
err:
	fdreg_release(epfd);
	fdreg_release(wfd);
	t->epfd = t->wakefd = -1;
	if (errno == 0)
		errno = EAGAIN;
	return NULL;
}

/*
 * The most threads this process may run: the relay_threads setting, or with
 * `auto` the CPUs it may use (a second thread on one CPU only adds
 * switches), never more than RELAY_THREADS_MAX.  Asked once (caller holds
 * relay_lock), when another thread is first due: sched_getaffinity() is a
 * system call, and the answer is kept until a fork or relay_set_ncpu().
 */
static int relay_threads_cap(void)
{
	int set = conf_get()->relay_threads;
	long ncpu;

	if (relay_cap > 0)
		return relay_cap;
	if (set > 0) {
		relay_cap = set < RELAY_THREADS_MAX ? set : RELAY_THREADS_MAX;
	} else {
		ncpu = relay_ncpu();
		relay_cap = ncpu < 1 ? 1 : ncpu < RELAY_THREADS_MAX ? (int)ncpu : RELAY_THREADS_MAX;
	}
	return relay_cap;
}

/*
 * Caller holds relay_lock.  The thread for a new connection: the
 * least-loaded one, or a new one when every thread carries the threshold
 * and the limits allow (see RELAY_CONNS_PER_THREAD).  NULL with errno when
 * no thread runs and none could be started, or once the process is exiting
 * (relay_atexit ran: a connection given to a stopping thread would never
 * move a byte, and a thread started now would race OpenSSL's teardown).
 */
static struct relay_thread *relay_pick_locked(void)
{
	int n = atomic_load_explicit(&relay_started, memory_order_relaxed), i;
	long per = atomic_load_explicit(&relay_per_thread, memory_order_relaxed);
	struct relay_thread *best = NULL, *t;
	long best_load = 0, now;

	if (relay_exiting) {
		errno = ECONNABORTED;
		return NULL;
	}
	for (i = 0; i < n; i++) {
		long load;

		t = &relay_threads[i];
		pthread_mutex_lock(&t->lock);
		load = t->nconns;
		pthread_mutex_unlock(&t->lock);
		if (best == NULL || load < best_load) {
			best = t;
			best_load = load;
		}
	}
	if (best != NULL && (best_load < per || n >= RELAY_THREADS_MAX))
		return best;
	if (best != NULL && n >= relay_threads_cap())
		return best;
	now = relay_now_ms();
	if (best != NULL && now < relay_retry_ms)
		return best; /* a start failed a moment ago: do not retry on every connection */
	t = relay_start_locked();
	if (t == NULL && best != NULL) {
		log_debug("relay: another thread could not start; retrying in 10 s");
		relay_retry_ms = now + 10000;
		return best; /* the running ones carry on */
	}
	return t;
}

void relay_size_pair(int program_fd)
{
	int size = RELAY_PAIR_SNDBUF;

	/* The kernel doubles the value and caps it at net.core.wmem_max. */
	if (real.setsockopt(program_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) != 0)
		log_debug("socketpair SO_SNDBUF not set");
}

int relay_add(const struct relay_spec *spec)
{
	struct relay_conn *c = calloc(1, sizeof(*c));
	struct relay_thread *t;
	struct epoll_event ev;
	BIO *wbio;

	if (c == NULL) {
		errno = ENOMEM;
		return -1;
	}
	c->sides[SIDE_APP].c = c;
	c->sides[SIDE_APP].which = SIDE_APP;
	c->sides[SIDE_NET].c = c;
	c->sides[SIDE_NET].which = SIDE_NET;
	c->app_fd = spec->app_fd;
	c->net_fd = spec->net_fd;
	c->ino = spec->ino;
	c->ssl = spec->ssl;
	c->peer = spec->peer;
	memcpy(c->name, spec->name, sizeof(c->name));
	if (spec->server) {
		c->server = c->handshaking = true;
		c->hs_deadline = spec->handshake_deadline_ms;
		c->local = spec->local;
		memcpy(c->rule, spec->rule, sizeof(c->rule));
		tlsio_track_failure(c->ssl, &c->why);
	}
	/*
	 * The first pump must run at once: the handshake may have left
	 * application data inside OpenSSL's buffer, which no readiness event
	 * would announce.  An empty socketpair is writable, so EPOLLOUT fires.
	 */
	c->app_mask = c->server ? 0 : EPOLLIN | EPOLLOUT;
	c->net_mask = EPOLLIN;

	/* MSG_PEEK then advances an offset, so a peek never returns a byte twice. */
	c->app_peek =
	        real.setsockopt(c->app_fd, SOL_SOCKET, SO_PEEK_OFF, &(int){0}, sizeof(int)) == 0;
	pthread_mutex_lock(&relay_lock);
	t = relay_pick_locked();
	if (t == NULL) {
		int saved = errno;

		pthread_mutex_unlock(&relay_lock);
		free(c);
		errno = saved;
		return -1;
	}
	c->t = t;
	c->id = ++relay_next_id;
	wbio = wbio_new(c); /* only now: nothing of OpenSSL's is touched when refusing */
	pthread_mutex_lock(&t->lock);
	ev.events = c->net_mask;
	ev.data.ptr = &c->sides[SIDE_NET];
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->net_fd, &ev) != 0)
		goto err;
	ev.events = c->app_mask;
	ev.data.ptr = &c->sides[SIDE_APP];
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->app_fd, &ev) != 0) {
		epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->net_fd, NULL);
		goto err;
	}
	/*
	 * Read-ahead: one recv() takes in a whole record (and whatever follows
	 * it) instead of a header and then a body.  The BIO callback tells the
	 * relay when a read emptied the socket (net_bio_cb).  Set only now that
	 * nothing can fail: on failure the caller keeps the SSL object as it was.
	 * The relay thread cannot look at `c` before t->lock is released.
	 */
	SSL_set_read_ahead(c->ssl, 1);
	if (wbio != NULL)
		SSL_set0_wbio(c->ssl, wbio);
	BIO_set_callback_arg(SSL_get_rbio(c->ssl), (char *)c);
	BIO_set_callback_ex(SSL_get_rbio(c->ssl), net_bio_cb);
	c->next = t->conns;
	if (t->conns != NULL)
		t->conns->prev = c;
	t->conns = c;
	t->nconns++;
	if (c->handshaking) {
		t->nhandshaking++;
		/* A new deadline may be the nearest: have the thread recompute. */
		relay_wake(t);
	}
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_unlock(&relay_lock);
	return 0;
err:
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_unlock(&relay_lock);
	BIO_free(wbio);
	free(c);
	return -1;
}

long relay_count(void)
{
	int n = atomic_load_explicit(&relay_started, memory_order_acquire), i;
	long sum = 0;

	for (i = 0; i < n; i++)
		sum += relay_count_on(i);
	return sum;
}

long relay_count_on(int i)
{
	struct relay_thread *t;
	long n;

	if (i < 0 || i >= atomic_load_explicit(&relay_started, memory_order_acquire))
		return -1;
	t = &relay_threads[i];
	pthread_mutex_lock(&t->lock);
	n = t->nconns;
	pthread_mutex_unlock(&t->lock);
	return n;
}

int relay_nthreads(void)
{
	return atomic_load_explicit(&relay_started, memory_order_acquire);
}

void relay_set_conns_per_thread(long n)
{
	atomic_store(&relay_per_thread, n > 0 ? n : RELAY_CONNS_PER_THREAD);
}

void relay_set_ncpu(long n)
{
	pthread_mutex_lock(&relay_lock);
	atomic_store(&relay_ncpu_override, n > 0 ? n : 0);
	relay_cap = 0; /* ask again */
	pthread_mutex_unlock(&relay_lock);
}

/*
 * Fork: every instance's lock is held across it (relay_lock first, then the
 * instances in order, as relay_add() takes them), so no connection list is
 * half-changed in the child.
 */
void relay_atfork_prepare(void)
{
	int i;

	pthread_mutex_lock(&relay_lock);
	for (i = 0; i < RELAY_THREADS_MAX; i++)
		pthread_mutex_lock(&relay_threads[i].lock);
}

void relay_atfork_parent(void)
{
	int i;

	for (i = RELAY_THREADS_MAX - 1; i >= 0; i--)
		pthread_mutex_unlock(&relay_threads[i].lock);
	pthread_mutex_unlock(&relay_lock);
}

void relay_atfork_child(void)
{
	int i;

	/*
	 * The threads are gone and their descriptors were closed by
	 * fdreg_atfork_child().  The connections' memory is abandoned, not
	 * freed: a relay thread may have been inside OpenSSL at the fork.
	 */
	for (i = 0; i < RELAY_THREADS_MAX; i++) {
		struct relay_thread *t = &relay_threads[i];

		t->exiting = t->stopped = false;
		t->conns = NULL;
		t->zombies = NULL;
		t->nconns = 0;
		t->nhandshaking = 0;
		t->epfd = t->wakefd = -1;
		t->scratch = NULL; /* like the connections: abandoned, not freed */
		t->npool = 0;
		/*
		 * The ring's mappings were not inherited (MADV_DONTFORK) and its
		 * descriptor, a hidden one, is closed: the parent's parked
		 * connections stay the parent's.
		 */
		uring_forget(&t->ring);
		t->ring_state = 0;
		t->pairs = NULL;
		t->free_pairs = NULL;
		t->npairs = t->fresh = t->nfree = 0;
		t->nparked = 0;
		t->unpark_wanted = false;
		t->unpark_head = NULL;
		t->retry_head = NULL;
		t->retry_ms = 0;
		atomic_store(&t->st_waiting, 0);
		atomic_store_explicit(&t->st_sleeping, false, memory_order_relaxed);
		pthread_mutex_init(&t->lock, NULL);
		pthread_cond_init(&t->cond, NULL);
	}
	atomic_store_explicit(&relay_started, 0, memory_order_relaxed);
	relay_exiting = false;
	relay_cap = 0;
	relay_retry_ms = 0;
	pthread_mutex_init(&relay_lock, NULL);
}
