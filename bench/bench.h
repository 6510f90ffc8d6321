/*
 * bench.h: what the benchmark's client and server share.
 *
 * The wire protocol (inside TLS, or in the clear for the plaintext ceiling)
 * is a 16-byte request header followed by the workload's bytes:
 *
 *   'U' n   upload: the client sends n bytes, the server answers with the
 *           8-byte count it received, then waits for the client to close;
 *   'D' n   download: the server sends n bytes, then waits for the close;
 *   'E' 0   echo: the server echoes everything until the client closes
 *           (round trips, new connections, idle connections).
 *
 * Nothing here is part of the shim: these are test programs.
 */
#ifndef TLSSHIM_BENCH_H
#define TLSSHIM_BENCH_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define BENCH_MAGIC   0x7462u /* "tb" */
#define BENCH_IO_SIZE (64 * 1024)
#define BENCH_MSG     64

struct bench_hdr {
	uint16_t magic;
	uint8_t op;
	uint8_t pad[5];
	uint64_t arg;
};

static inline double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_hdr_make(struct bench_hdr *h, char op, uint64_t arg)
{
	memset(h, 0, sizeof(*h));
	h->magic = BENCH_MAGIC;
	h->op = (uint8_t)op;
	h->arg = arg;
}

#endif
