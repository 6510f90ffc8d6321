/*
 * uring.h: the little of io_uring that the relay uses to park idle
 * connections (relay.c, "Parking"), on raw system calls: no liburing.
 *
 * A ring's fixed-file table holds open files without a descriptor: a file
 * placed there stays open after its descriptor is closed, a poll request
 * watches it, and IORING_OP_FIXED_FD_INSTALL (Linux 6.8) gives it a
 * descriptor again.  That is all this module offers: a ring with a
 * fixed-file table, poll / poll-remove / install requests, and completions.
 *
 * One thread uses a ring (no locking here).  Every call returns 0 (or a
 * count) on success and -1 with errno on failure; a failed uring_open()
 * leaves the ring closed, and the caller goes on without parking.
 */
#ifndef TLSSHIM_URING_H
#define TLSSHIM_URING_H

#include "compat.h"

#include <stdbool.h>
#include <stdint.h>

struct uring {
	int fd; /* -1 when closed */
	unsigned int sq_entries;
	unsigned int *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
	unsigned int *cq_head, *cq_tail, *cq_mask;
	void *cqes; /* struct io_uring_cqe[] */
	void *sqes; /* struct io_uring_sqe[] */
	void *sq_map, *cq_map;
	size_t sq_map_len, cq_map_len, sqes_len;
	unsigned int queued; /* requests written but not yet submitted */
	unsigned int nfiles; /* size of the fixed-file table, 0 before uring_files() */
};

/* A completion, as read off the ring. */
struct uring_done {
	uint64_t user_data;
	int32_t res;
};

/*
 * Opens a ring with `entries` submission slots and `cq_entries` completion
 * slots (both powers of two), its mappings kept from a forked child
 * (MADV_DONTFORK: a child must never write into the parent's ring), and
 * checks that the kernel knows every request the relay makes.  The ring's
 * descriptor is close-on-exec.  -1 with errno: ENOSYS (no io_uring, or a
 * kernel before 6.13: see uring.c, kernel_new_enough), EPERM (disabled by
 * sysctl or seccomp), ...
 */
int uring_open(struct uring *r, unsigned int entries, unsigned int cq_entries) TLSSHIM_WUR;

/* Unmaps and closes.  Closing drops every file in the table. */
void uring_close(struct uring *r);

/*
 * Forgets the ring without touching it (after fork: the child has no
 * mapping, its copy of the descriptor is someone else's business).
 */
void uring_forget(struct uring *r);

/* Registers an empty fixed-file table of `n` slots (at most RLIMIT_NOFILE). */
int uring_files(struct uring *r, unsigned int n) TLSSHIM_WUR;

/*
 * Sets slots [slot, slot + n) to the open files of descriptors fds[0..n),
 * or empties those whose entry is -1.  The table takes its own reference:
 * the caller may close the descriptors afterwards.
 */
int uring_files_set(struct uring *r, unsigned int slot, const int *fds, unsigned int n) TLSSHIM_WUR;

/*
 * Queue requests (submitted by the next uring_submit()).  Each returns -1
 * with EBUSY when the submission ring is full: submit, then queue again.
 *  - poll: one completion when the file in `slot` is ready for `events`
 *    (POLLIN, ...; POLLERR and POLLHUP always), res = the events;
 *  - poll_remove: cancels the poll that carries `target`; that poll then
 *    completes with -ECANCELED (or has completed already);
 *  - install: a new close-on-exec descriptor for the file in `slot`,
 *    res = the descriptor or -errno (-EMFILE when the table is full).
 */
int uring_poll(struct uring *r, unsigned int slot, unsigned int events, uint64_t user_data);
int uring_poll_remove(struct uring *r, uint64_t target, uint64_t user_data);
int uring_install(struct uring *r, unsigned int slot, uint64_t user_data);

/*
 * Submits what is queued (and whatever an earlier call left unsubmitted)
 * and, with `wait` > 0, waits until at least that many completions are
 * ready, at most URING_WAIT_MS (then -1 with ETIME).  Returns the number
 * submitted.
 */
#define URING_WAIT_MS 1000
int uring_submit(struct uring *r, unsigned int wait);

/*
 * Takes the oldest completion into `out`: true, or false when none is
 * ready.  Completions the kernel held back because the completion ring was
 * full are fetched first (IORING_FEAT_NODROP), so none is lost.
 */
bool uring_next(struct uring *r, struct uring_done *out);

/* True when a completion is ready (or held back by the kernel). */
bool uring_pending(const struct uring *r);

#endif
