/*
 * compat.h: every platform conditional of tlsshim lives here and nowhere else.
 *
 * tlsshim targets Linux with glibc (it interposes glibc's socket and resolver
 * entry points).  Definitions that older kernel headers lack are supplied
 * here so that the rest of the code can use them unconditionally.
 */
#ifndef TLSSHIM_COMPAT_H
#define TLSSHIM_COMPAT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sys/socket.h>
#include <netinet/in.h>

#if !defined(__linux__)
#error "tlsshim supports Linux only"
#endif

#ifndef SO_DOMAIN
#define SO_DOMAIN 39
#endif
#ifndef SO_PROTOCOL
#define SO_PROTOCOL 38
#endif
#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/*
 * io_uring's FIXED_FD_INSTALL request (Linux 6.8): an enum value in newer
 * headers, absent from Debian 12's (6.1), so defined here by number, which
 * is kernel ABI.  uring_open() asks the kernel whether it knows it.
 */
#define TLSSHIM_IORING_OP_FIXED_FD_INSTALL 54

#define TLSSHIM_EXPORT __attribute__((visibility("default")))
#define TLSSHIM_WUR    __attribute__((warn_unused_result))

#endif
