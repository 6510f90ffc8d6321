/*
 * relay.h: the relay that moves plaintext between the program's end of a
 * socketpair and a TLS connection (DESIGN.md, "The one rule").
 *
 * One relay thread per process, started on the first connection, with every
 * signal blocked.  After relay_add() the connection belongs to the relay
 * thread: only it touches the SSL object and the two descriptors, and it
 * frees them when both directions are finished or either side goes away.
 */
#ifndef TLSSHIM_RELAY_H
#define TLSSHIM_RELAY_H

#include "compat.h"

#include <openssl/ssl.h>
#include <stdbool.h>
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
 * Fork handling.  In the child the relay thread does not exist: its state is
 * forgotten (not freed: another thread may have held OpenSSL locks at the
 * fork), and the next relay_add() starts a new thread.
 */
void relay_atfork_prepare(void);
void relay_atfork_parent(void);
void relay_atfork_child(void);

/* Number of connections the relay holds (tests, benchmark). */
long relay_count(void);

#endif
