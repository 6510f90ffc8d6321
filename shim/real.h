/*
 * real.h: the C library's own implementations of every function tlsshim
 * interposes, bound once with dlsym(RTLD_NEXT).
 *
 * The shim never calls its own exported symbols (that would recurse or
 * re-enter policy); it calls these.  real_init() is idempotent and safe to
 * call from any thread; every exported wrapper calls it first.
 */
#ifndef TLSSHIM_REAL_H
#define TLSSHIM_REAL_H

#include "compat.h"

#include <netdb.h>
#include <sys/types.h>

struct real_fns {
	int (*connect)(int, const struct sockaddr *, socklen_t);
	int (*listen)(int, int);
	int (*accept)(int, struct sockaddr *, socklen_t *);
	int (*accept4)(int, struct sockaddr *, socklen_t *, int);
	int (*close)(int);
	int (*close_range)(unsigned int, unsigned int, int);
	void (*closefrom)(int);
	int (*getpeername)(int, struct sockaddr *, socklen_t *);
	int (*getsockname)(int, struct sockaddr *, socklen_t *);
	int (*getsockopt)(int, int, int, void *, socklen_t *);
	int (*setsockopt)(int, int, int, const void *, socklen_t);
	ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	ssize_t (*sendmsg)(int, const struct msghdr *, int);
	int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
	int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
	struct hostent *(*gethostbyname)(const char *);
	struct hostent *(*gethostbyname2)(const char *, int);
	int (*gethostbyname_r)(const char *, struct hostent *, char *, size_t, struct hostent **,
	                       int *);
	int (*gethostbyname2_r)(const char *, int, struct hostent *, char *, size_t,
	                        struct hostent **, int *);
};

/* The bound functions; valid after real_init() returned 0. */
extern struct real_fns real;

/*
 * Binds every entry of `real`.  Returns 0, or -1 when a symbol that must
 * exist (connect, close, ...) is missing; optional ones (close_range,
 * closefrom on old glibc) stay NULL.
 */
int real_init(void);

#endif
