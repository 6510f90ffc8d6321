/*
 * relay.h: the relay that moves plaintext between the program's end of a
 * socketpair and a TLS connection (DESIGN.md, "The one rule").
 *
 * Up to four relay threads per process, each with its own epoll set and
 * buffers, started with every signal blocked: the first on the first
 * connection, another when every running one carries its share of
 * connections and the CPUs allow (relay.c, RELAY_CONNS_PER_THREAD).  After
 * relay_add() the connection belongs to one relay thread for life: only it
 * touches the SSL object and the two descriptors, and it frees them when
 * both directions are finished or either side goes away.
 */
#ifndef TLSSHIM_RELAY_H
#define TLSSHIM_RELAY_H

#include "compat.h"

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* What a finished handshake hands to the relay. */
struct relay_spec {
	int app_fd; /* relay's end of the socketpair (hidden, non-blocking) */
	int net_fd; /* the TLS connection's socket (hidden, non-blocking) */
	ino_t ino;  /* inode of the program's end, the registry key */
	SSL *ssl;   /* handshaken, verified */
	struct sockaddr_storage peer;
	char name[256]; /* expected name, for log lines ("" for none) */
	/*
	 * Inbound connections (accepted by the program): `ssl` is in accept
	 * state and the handshake runs in the relay, bounded by the deadline
	 * (CLOCK_MONOTONIC milliseconds); until it completes nothing the
	 * program writes is read.  A failed handshake closes the program's end.
	 */
	bool server;
	long handshake_deadline_ms;
	char rule[96]; /* inbound section, for log lines ("" for the default) */
	struct sockaddr_storage local;
};

/*
 * Hands a connection to the relay, starting the thread if needed.  Returns
 * 0; or -1 with errno (ENOMEM, EAGAIN) and nothing taken over, in which case
 * the caller still owns everything in `spec`.
 */
int relay_add(const struct relay_spec *spec) TLSSHIM_WUR;

/*
 * Sizes the program's end of a new socketpair, before it is handed out:
 * room for RELAY_PAIR_SNDBUF bytes of what the program writes, so that a
 * bulk writer blocks (and is woken) once per that many bytes rather than
 * once per 200 KiB or so (a TCP socket would let it buffer up to
 * net.ipv4.tcp_wmem's maximum, 4 MiB by default).  Kernel memory, and only
 * while the data waits for the relay.  Best effort: failure changes nothing.
 */
#define RELAY_PAIR_SNDBUF (1024 * 1024)
void relay_size_pair(int program_fd);

/*
 * Fork handling.  In the child no relay thread exists: their state is
 * forgotten (not freed: another thread may have held OpenSSL locks at the
 * fork), and the next relay_add() starts a first thread again.
 */
void relay_atfork_prepare(void);
void relay_atfork_parent(void);
void relay_atfork_child(void);

/* Number of connections the relay holds, in all threads (tests, benchmark). */
long relay_count(void);

/*
 * Parking (relay.c): an idle connection's two relay descriptors move into
 * the thread's io_uring fixed-file table, so that it holds one descriptor
 * (the program's) instead of three; the first event on either side brings
 * them back.  relay_parked() counts parked connections (tests, benchmark).
 * relay_unpark() brings back the connection whose program end has inode
 * `ino` (for get/setsockopt on its TCP socket, fdreg_tcp_sockopt()) and
 * keeps it unparked for a second: 0 once it is unparked or gone, -1 with
 * errno ETIMEDOUT when its thread did not answer within 2 seconds.
 */
long relay_parked(void);
int relay_unpark(ino_t ino);

/*
 * A woken parked connection that finds no free descriptor (the program
 * holds them all) tries again every 50 ms for this long, then is closed
 * with a relay_failed line.  Tests: 0 or less restores 10 s.
 * relay_unpark_waiting() counts the connections waiting so (tests).
 */
void relay_set_unpark_patience_ms(long ms);
long relay_unpark_waiting(void);

/* Number of relay threads started (tests, benchmark); they run until exit. */
int relay_nthreads(void);

/* Connections that thread `i` (0-based) holds; -1 when it is not running. */
long relay_count_on(int i);

/*
 * Tests: relay_set_conns_per_thread() overrides the number of connections
 * every thread must carry before another starts (RELAY_CONNS_PER_THREAD;
 * 0 or less restores it); relay_set_ncpu() overrides the number of CPUs the
 * process may use, for that choice and the busy-polling bound (0 or less:
 * ask the system again).  Both apply to connections added afterwards.
 */
void relay_set_conns_per_thread(long n);
void relay_set_ncpu(long n);

/*
 * Busy-polling (relay.c, relay_wait).  relay_set_spin_us() overrides the
 * bound that TLSSHIM_RELAY_SPIN_US and the CPU count would give (tests; 0
 * disables); each thread picks it up at its next wait and starts with the
 * full window.  relay_get_spin_stats() reads the counters, which only grow,
 * summed over the threads; window_ns is the largest thread's, and sleeping
 * means every thread sleeps.
 */
struct relay_spin_stats {
	unsigned long armed;  /* waits after a batch that forwarded 1..4096 bytes */
	unsigned long spins;  /* of those, waits that polled first */
	unsigned long hits;   /* spins that found an event */
	unsigned long blocks; /* armed waits that went on to sleep */
	long window_ns;       /* the current window (the largest of the threads') */
	long bound_ns;        /* its upper bound (-1 before the first thread started) */
	bool sleeping;        /* every thread is in a blocking epoll_wait() now */
};
void relay_set_spin_us(long us);
void relay_get_spin_stats(struct relay_spin_stats *st);

/*
 * The next spin window after a wait of `waited_ns` that spinning ended
 * (`hit`) or that blocked: kept after a hit; grown to cover a short blocked
 * wait with a margin; halved (to 0 below 5 us) after a wait longer than
 * `max_ns`.  Never above `max_ns`; 0 when `max_ns` is 0.
 */
long relay_spin_adapt(long window_ns, long max_ns, long waited_ns, bool hit);

/*
 * The bound, in ns, from the relay_spin_us setting (microseconds, 0
 * disables, at most 1000; the configuration checked it) and the number of
 * CPUs the process may use: 0 with fewer than two.
 */
long relay_spin_bound(long spin_us, long ncpu);

/*
 * Whether the wait after a batch spins first: the batch forwarded 1..4096
 * bytes, and it and the batch before served one and the same connection
 * (`only`, its id, 0 when the batch served none; `mixed` when it served
 * more than one).  `*last` is the thread's memory of the batch before; it
 * is updated.
 */
bool relay_spin_arm(size_t moved, uint64_t only, bool mixed, uint64_t *last);

/*
 * The CPUs a cgroup CPU quota leaves this process (ceil(quota / period), the
 * smallest along its cgroup and their ancestors), from `self_cgroup` (the
 * format of /proc/self/cgroup, v2 "0::/path" or v1 "N:cpu,...:/path") and
 * the cgroup file systems under `root` (/sys/fs/cgroup); 0 when no quota is
 * set or nothing could be read.  Used with the affinity mask for the relay
 * thread count and the busy-polling bound.
 */
long relay_cgroup_cpus(const char *self_cgroup, const char *root);

#endif
