/*
 * names.h: remembers which host name the program resolved to which address,
 * so that a later connect() to that address can send the name as SNI and
 * verify the certificate against it (DESIGN.md, "Trust").
 *
 * A bounded table (the newest NAMES_CAPACITY resolutions); the newest
 * resolution of an address wins.  Thread-safe.
 */
#ifndef TLSSHIM_NAMES_H
#define TLSSHIM_NAMES_H

#include "compat.h"

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>

#define NAMES_CAPACITY 1024
#define NAMES_MAXLEN   253 /* RFC 1035 presentation length without the root dot */

/*
 * Records that `name` resolved to `addr`.  Literal addresses, names that are
 * not valid DNS host names, and non-IP families are ignored.
 */
void names_remember(const char *name, const struct sockaddr *addr);

/* Records every AF_INET/AF_INET6 result of a getaddrinfo() call for `name`. */
void names_remember_addrinfo(const char *name, const struct addrinfo *res);

/* Records every address of a hostent returned for `name`. */
void names_remember_hostent(const char *name, const struct hostent *he);

/*
 * Copies into `out` (size `outlen`) the name last resolved to `addr`.
 * IPv4-mapped IPv6 addresses match their IPv4 form.  Returns true if found.
 */
bool names_lookup(const struct sockaddr *addr, char *out, size_t outlen);

/*
 * Normalises a host name for matching: lower case, one trailing dot removed.
 * Returns 0, or -1 when `name` is a literal IP address, is empty, too long,
 * or has characters no DNS host name has.
 */
int names_normalise(const char *name, char *out, size_t outlen) TLSSHIM_WUR;

/* Fork handling: the lock is taken around fork() and released on both sides. */
void names_atfork_prepare(void);
void names_atfork_release(void);

/* Forgets everything (unit tests). */
void names_reset(void);

#endif
