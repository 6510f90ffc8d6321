/*
 * uring.c: a minimal io_uring on raw system calls (uring.h).
 *
 * The layout is the kernel's ABI (io_uring_setup(2)): a submission ring of
 * indexes into an array of request entries, a completion ring, both mapped
 * from the ring's descriptor.  The producer of each ring publishes its tail
 * with a release store and the consumer reads it with an acquire load; the
 * kernel does the same on its side.
 */
#include "uring.h"

#include "real.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static int sys_setup(unsigned int entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned int submit, unsigned int wait, unsigned int flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

/* io_uring_enter() that waits at most `ms` for `wait` completions (ETIME). */
static int sys_enter_timed(int fd, unsigned int submit, unsigned int wait, long ms)
{
	struct __kernel_timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	struct io_uring_getevents_arg arg;

	memset(&arg, 0, sizeof(arg));
	arg.ts = (uint64_t)(uintptr_t)&ts;
	return (int)syscall(__NR_io_uring_enter, fd, submit, wait,
	                    IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof(arg));
}

static int sys_register(int fd, unsigned int op, void *arg, unsigned int n)
{
	return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

static void *map(int fd, size_t len, off_t what)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, what);

	if (p == MAP_FAILED)
		return NULL;
	/* A forked child must not inherit (and so cannot scribble on) the parent's ring. */
	if (madvise(p, len, MADV_DONTFORK) != 0) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

/*
 * Linux 6.13 or later.  Before it, a ring's fixed files were released in
 * order through per-ring resource nodes: a file removed from the table was
 * closed only once every request older than the removal had finished, so one
 * poll waiting for hours on an idle connection would keep every connection
 * parked and closed after it open (no FIN to the server, no EOF to the
 * program).  6.13 gave each file its own reference.
 */
static bool kernel_new_enough(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major > 6 || (major == 6 && minor >= 13);
}

/* Whether the kernel knows every request the relay makes. */
static bool probe_ops(int fd)
{
	static const unsigned char need[] = {IORING_OP_POLL_ADD, IORING_OP_POLL_REMOVE,
	                                     TLSSHIM_IORING_OP_FIXED_FD_INSTALL};
	size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
	struct io_uring_probe *pr = calloc(1, len);
	bool ok = pr != NULL && sys_register(fd, IORING_REGISTER_PROBE, pr, 256) == 0;
	size_t i;

	for (i = 0; ok && i < sizeof(need); i++)
		ok = need[i] <= pr->last_op && (pr->ops[need[i]].flags & IO_URING_OP_SUPPORTED);
	free(pr);
	return ok;
}

int uring_open(struct uring *r, unsigned int entries, unsigned int cq_entries)
{
	struct io_uring_params p;
	unsigned char *sq, *cq;
	int fd, saved;

	memset(r, 0, sizeof(*r));
	r->fd = -1;
	if (!kernel_new_enough()) {
		errno = ENOSYS;
		return -1;
	}
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE;
	p.cq_entries = cq_entries;
	fd = sys_setup(entries, &p);
	if (fd < 0)
		return -1;
	r->fd = fd;
	if (!(p.features & IORING_FEAT_NODROP) || !probe_ops(fd)) {
		errno = ENOSYS;
		goto err;
	}
	r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned int);
	r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
	r->sq_map = map(fd, r->sq_map_len, IORING_OFF_SQ_RING);
	r->cq_map = map(fd, r->cq_map_len, IORING_OFF_CQ_RING);
	r->sqes = map(fd, r->sqes_len, IORING_OFF_SQES);
	if (r->sq_map == NULL || r->cq_map == NULL || r->sqes == NULL)
		goto err;
	sq = r->sq_map;
	cq = r->cq_map;
	r->sq_entries = p.sq_entries;
	r->sq_head = (unsigned int *)(sq + p.sq_off.head);
	r->sq_tail = (unsigned int *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned int *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned int *)(sq + p.sq_off.array);
	r->sq_flags = (unsigned int *)(sq + p.sq_off.flags);
	r->cq_head = (unsigned int *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned int *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned int *)(cq + p.cq_off.ring_mask);
	r->cqes = cq + p.cq_off.cqes;
	return 0;
err:
	saved = errno;
	uring_close(r);
	errno = saved;
	return -1;
}

void uring_close(struct uring *r)
{
	if (r->sqes != NULL)
		munmap(r->sqes, r->sqes_len);
	if (r->cq_map != NULL)
		munmap(r->cq_map, r->cq_map_len);
	if (r->sq_map != NULL)
		munmap(r->sq_map, r->sq_map_len);
	if (r->fd >= 0)
		real.close(r->fd); /* never the shim's own close() */
	uring_forget(r);
}

void uring_forget(struct uring *r)
{
	memset(r, 0, sizeof(*r));
	r->fd = -1;
}

int uring_files(struct uring *r, unsigned int n)
{
	int *fds = malloc(n * sizeof(int));
	int rc, saved;

	if (fds == NULL) {
		errno = ENOMEM;
		return -1;
	}
	memset(fds, 0xff, n * sizeof(int)); /* every slot -1: empty */
	rc = sys_register(r->fd, IORING_REGISTER_FILES, fds, n);
	saved = errno;
	free(fds);
	if (rc != 0) {
		errno = saved;
		return -1;
	}
	r->nfiles = n;
	return 0;
}

int uring_files_set(struct uring *r, unsigned int slot, const int *fds, unsigned int n)
{
	struct io_uring_files_update up;
	int rc;

	if (slot >= r->nfiles || n > r->nfiles - slot) {
		errno = EINVAL;
		return -1;
	}
	memset(&up, 0, sizeof(up));
	up.offset = slot;
	up.fds = (uint64_t)(uintptr_t)fds;
	do
		rc = sys_register(r->fd, IORING_REGISTER_FILES_UPDATE, &up, n);
	while (rc < 0 && errno == EINTR);
	if (rc < 0)
		return -1;
	if ((unsigned int)rc != n) {
		errno = EIO; /* a partial update: the kernel names no cause */
		return -1;
	}
	return 0;
}

/* The next free request entry, zeroed, or NULL (EBUSY) when the ring is full. */
static struct io_uring_sqe *sqe_get(struct uring *r)
{
	unsigned int head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
	unsigned int tail = *r->sq_tail + r->queued;
	struct io_uring_sqe *e;

	if (tail - head >= r->sq_entries) {
		errno = EBUSY;
		return NULL;
	}
	e = (struct io_uring_sqe *)r->sqes + (tail & *r->sq_mask);
	memset(e, 0, sizeof(*e));
	r->sq_array[tail & *r->sq_mask] = tail & *r->sq_mask;
	r->queued++;
	return e;
}

int uring_poll(struct uring *r, unsigned int slot, unsigned int events, uint64_t user_data)
{
	struct io_uring_sqe *e = sqe_get(r);

	if (e == NULL)
		return -1;
	e->opcode = IORING_OP_POLL_ADD;
	e->flags = IOSQE_FIXED_FILE;
	e->fd = (int)slot;
	e->poll32_events = events;
	e->user_data = user_data;
	return 0;
}

int uring_poll_remove(struct uring *r, uint64_t target, uint64_t user_data)
{
	struct io_uring_sqe *e = sqe_get(r);

	if (e == NULL)
		return -1;
	e->opcode = IORING_OP_POLL_REMOVE;
	e->fd = -1;
	e->addr = target;
	e->user_data = user_data;
	return 0;
}

int uring_install(struct uring *r, unsigned int slot, uint64_t user_data)
{
	struct io_uring_sqe *e = sqe_get(r);

	if (e == NULL)
		return -1;
	e->opcode = TLSSHIM_IORING_OP_FIXED_FD_INSTALL;
	e->flags = IOSQE_FIXED_FILE; /* the only way it takes its file */
	e->fd = (int)slot;
	/* install_fd_flags (the rw_flags word) 0: the descriptor is close-on-exec. */
	e->user_data = user_data;
	return 0;
}

int uring_submit(struct uring *r, unsigned int wait)
{
	unsigned int n;
	int rc;

	__atomic_store_n(r->sq_tail, *r->sq_tail + r->queued, __ATOMIC_RELEASE);
	r->queued = 0;
	for (;;) {
		/*
		 * Everything the kernel has not consumed yet, not only what was
		 * queued now: an earlier call may have submitted part of it.
		 */
		n = *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
		rc = wait > 0 ? sys_enter_timed(r->fd, n, wait, URING_WAIT_MS)
		              : sys_enter(r->fd, n, 0, 0);
		if (rc >= 0 || errno != EINTR)
			break;
	}
	return rc;
}

bool uring_pending(const struct uring *r)
{
	if (r->fd < 0)
		return false;
	return __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) != *r->cq_head ||
	       (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW);
}

bool uring_next(struct uring *r, struct uring_done *out)
{
	unsigned int head = *r->cq_head;
	const struct io_uring_cqe *c;

	if (__atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) == head) {
		/* Held back for want of room: have the kernel move them in. */
		if (!(__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) ||
		    sys_enter(r->fd, 0, 0, IORING_ENTER_GETEVENTS) < 0 ||
		    __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) == head)
			return false;
	}
	c = (const struct io_uring_cqe *)r->cqes + (head & *r->cq_mask);
	out->user_data = c->user_data;
	out->res = c->res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return true;
}
