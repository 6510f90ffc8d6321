/*
 * fdreg.h: what the shim knows about descriptors.
 *
 * Two registries:
 *  - hidden descriptors: the shim's own (TCP sockets behind the relay, the
 *    relay's socketpair ends, its epoll and eventfd descriptors).  The
 *    program's close()/close_range()/closefrom() must not close them.
 *    Lookups are lock-free, because close() is on every program's hot path.
 *  - wrapped connections: metadata of each program socket that the shim has
 *    replaced by a socketpair end, keyed by that socket's inode (so dup()ed
 *    descriptors and descriptors inherited across fork/exec are found too),
 *    for getpeername/getsockname/getsockopt/setsockopt.
 */
#ifndef TLSSHIM_FDREG_H
#define TLSSHIM_FDREG_H

#include "compat.h"

#include <stdbool.h>
#include <sys/types.h>

struct wrapped_info {
	struct sockaddr_storage peer;
	struct sockaddr_storage local;
	socklen_t peer_len;
	socklen_t local_len;
	int domain;   /* AF_INET or AF_INET6 */
	int protocol; /* IPPROTO_TCP (or MPTCP) */
	int tcp_fd;   /* hidden TCP descriptor, -1 after fork, FDREG_TCP_PARKED */
};

/*
 * tcp_fd of a connection whose relay descriptors are parked (relay.c,
 * "Parking"): the socket is open but has no descriptor until the relay
 * takes it back (relay_unpark()).
 */
#define FDREG_TCP_PARKED (-2)

/* Marks `fd` as the shim's own. Returns 0, or -1 (ENOMEM, EBADF). */
int fdreg_hide(int fd) TLSSHIM_WUR;

/*
 * Takes `fd` over as a hidden descriptor: moves it to a high number (away
 * from the low numbers programs expect to own, and from select()'s range when
 * the limit allows), close-on-exec, and hides it.  Returns the new descriptor,
 * or -1 with errno; either way `fd` itself is closed.
 */
int fdreg_adopt(int fd) TLSSHIM_WUR;

/* Unhides and closes a hidden descriptor. */
void fdreg_release(int fd);

/* Unmarks `fd`; call before closing it with real.close. */
void fdreg_unhide(int fd);

/* True when `fd` is one of the shim's hidden descriptors. */
bool fdreg_is_hidden(int fd);

/* True when any descriptor is hidden (cheap early-out for close paths). */
bool fdreg_any_hidden(void);

/* How many descriptors are hidden now (the relay's measure of its own share). */
long fdreg_hidden_count(void);

/*
 * close_range() that leaves hidden descriptors open: the range is split
 * around them.  Same contract and errno as close_range(2).
 */
int fdreg_close_range(unsigned int first, unsigned int last, int flags);

/*
 * Records `info` for the socket whose inode is `ino`.  Returns 0 or -1
 * (ENOMEM).
 */
int fdreg_add(ino_t ino, const struct wrapped_info *info) TLSSHIM_WUR;

/* Forgets the connection with inode `ino`, returning its tcp_fd (or -1). */
int fdreg_remove(ino_t ino);

/*
 * If `fd` is a program descriptor of a wrapped connection, copies its
 * metadata to `out` (may be NULL) and returns true.
 */
bool fdreg_lookup(int fd, struct wrapped_info *out);

/* Sets the tcp_fd of the connection with inode `ino` (the relay parks it). */
void fdreg_set_tcp_fd(ino_t ino, int tcp_fd);

/*
 * Runs get/setsockopt on the hidden TCP socket of wrapped `fd`, under the
 * registry lock so the socket cannot be closed meanwhile.  Returns
 * FDREG_SOCKOPT_NO if `fd` is not wrapped or has no TCP socket here (after
 * fork); FDREG_SOCKOPT_PARKED, with the connection's inode in *ino, when its
 * socket is parked (nothing was done: relay_unpark() it and ask again);
 * otherwise FDREG_SOCKOPT_DONE with the call's result in *ret (errno set by
 * it).
 */
enum fdreg_sockopt { FDREG_SOCKOPT_NO = 0, FDREG_SOCKOPT_DONE, FDREG_SOCKOPT_PARKED };
enum fdreg_sockopt fdreg_tcp_sockopt(int fd, bool set, int level, int name, void *val,
                                     socklen_t *len, int *ret, ino_t *ino);

/*
 * Fork handling: before fork, take the locks; after, release them.  In the
 * child every hidden descriptor is closed (the child keeps no copy of the
 * relay's descriptors) and the metadata's tcp_fd becomes -1.
 */
void fdreg_atfork_prepare(void);
void fdreg_atfork_parent(void);
void fdreg_atfork_child(void);

#endif
