/*
 * fdreg.c: registries of hidden descriptors and of wrapped connections.
 *
 * The hidden set is a two-level bitmap over the whole descriptor space
 * (1024 pages of 1024 bits cover 2^20 descriptors, the kernel's default
 * ceiling for nr_open).  Pages are allocated on first use and never freed,
 * so readers need no lock: close() costs one atomic load when nothing is
 * hidden and two when something is.
 */
#include "fdreg.h"

#include "real.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define PAGE_BITS  1024u
#define PAGES      1024u
#define WORD_BITS  (sizeof(unsigned long) * CHAR_BIT)
#define PAGE_WORDS (PAGE_BITS / WORD_BITS)

struct hidden_page {
	_Atomic unsigned long w[PAGE_WORDS];
};

static struct hidden_page *_Atomic hidden_pages[PAGES];
static atomic_long hidden_count;
static pthread_mutex_t hidden_alloc_lock = PTHREAD_MUTEX_INITIALIZER;

int fdreg_hide(int fd)
{
	unsigned int p, bit;
	struct hidden_page *page;

	if (fd < 0 || (unsigned int)fd >= PAGE_BITS * PAGES) {
		errno = EBADF;
		return -1;
	}
	p = (unsigned int)fd / PAGE_BITS;
	bit = (unsigned int)fd % PAGE_BITS;
	page = atomic_load(&hidden_pages[p]);
	if (page == NULL) {
		pthread_mutex_lock(&hidden_alloc_lock);
		page = atomic_load(&hidden_pages[p]);
		if (page == NULL) {
			page = calloc(1, sizeof(*page));
			if (page != NULL)
				atomic_store(&hidden_pages[p], page);
		}
		pthread_mutex_unlock(&hidden_alloc_lock);
		if (page == NULL) {
			errno = ENOMEM;
			return -1;
		}
	}
	if (!(atomic_fetch_or(&page->w[bit / WORD_BITS], 1UL << (bit % WORD_BITS)) &
	      (1UL << (bit % WORD_BITS))))
		atomic_fetch_add(&hidden_count, 1);
	return 0;
}

void fdreg_unhide(int fd)
{
	struct hidden_page *page;
	unsigned int bit;

	if (fd < 0 || (unsigned int)fd >= PAGE_BITS * PAGES)
		return;
	page = atomic_load(&hidden_pages[(unsigned int)fd / PAGE_BITS]);
	if (page == NULL)
		return;
	bit = (unsigned int)fd % PAGE_BITS;
	if (atomic_fetch_and(&page->w[bit / WORD_BITS], ~(1UL << (bit % WORD_BITS))) &
	    (1UL << (bit % WORD_BITS)))
		atomic_fetch_sub(&hidden_count, 1);
}

bool fdreg_any_hidden(void)
{
	return atomic_load_explicit(&hidden_count, memory_order_relaxed) > 0;
}

long fdreg_hidden_count(void)
{
	return atomic_load_explicit(&hidden_count, memory_order_relaxed);
}

bool fdreg_is_hidden(int fd)
{
	struct hidden_page *page;
	unsigned int bit;

	if (fd < 0 || (unsigned int)fd >= PAGE_BITS * PAGES || !fdreg_any_hidden())
		return false;
	page = atomic_load(&hidden_pages[(unsigned int)fd / PAGE_BITS]);
	if (page == NULL)
		return false;
	bit = (unsigned int)fd % PAGE_BITS;
	return (atomic_load(&page->w[bit / WORD_BITS]) >> (bit % WORD_BITS)) & 1UL;
}

/* Half the descriptor limit, at least 64: where hidden descriptors start. */
static int hidden_base(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return 512;
	if (rl.rlim_cur / 2 < 64)
		return 64 < (long)rl.rlim_cur ? 64 : 3;
	return (int)(rl.rlim_cur / 2 > 65536 ? 65536 : rl.rlim_cur / 2);
}

int fdreg_adopt(int fd)
{
	int hi, saved;

	if (fd < 0)
		return -1;
	hi = fcntl(fd, F_DUPFD_CLOEXEC, hidden_base());
	if (hi < 0)
		hi = fcntl(fd, F_DUPFD_CLOEXEC, 3); /* the high range is full */
	saved = errno;
	real.close(fd);
	if (hi < 0) {
		errno = saved;
		return -1;
	}
	if (fdreg_hide(hi) != 0) {
		saved = errno;
		real.close(hi);
		errno = saved;
		return -1;
	}
	return hi;
}

void fdreg_release(int fd)
{
	if (fd < 0)
		return;
	fdreg_unhide(fd);
	real.close(fd);
}

/* Next hidden descriptor in [from, limit], or -1. */
static long hidden_next(unsigned long from, unsigned long limit)
{
	unsigned long fd;

	for (fd = from; fd <= limit && fd < (unsigned long)PAGE_BITS * PAGES;) {
		struct hidden_page *page = atomic_load(&hidden_pages[fd / PAGE_BITS]);
		unsigned long word;

		if (page == NULL) {
			fd = (fd / PAGE_BITS + 1) * PAGE_BITS;
			continue;
		}
		word = atomic_load(&page->w[(fd % PAGE_BITS) / WORD_BITS]) >> (fd % WORD_BITS);
		if (word == 0) {
			fd = (fd / WORD_BITS + 1) * WORD_BITS;
			continue;
		}
		fd += (unsigned long)__builtin_ctzl(word);
		return fd <= limit ? (long)fd : -1;
	}
	return -1;
}

static int close_range_raw(unsigned int first, unsigned int last, int flags)
{
	unsigned int fd;

	if (real.close_range != NULL)
		return real.close_range(first, last, flags);
	/* Old C library: close one by one, up to the hidden bitmap's reach. */
	for (fd = first; fd <= last && fd < PAGE_BITS * PAGES; fd++)
		real.close((int)fd);
	return 0;
}

int fdreg_close_range(unsigned int first, unsigned int last, int flags)
{
	unsigned long from = first;
	long h;

	/* Marking close-on-exec harms nothing of ours: they already are. */
	if (first > last || !fdreg_any_hidden() || (flags & CLOSE_RANGE_CLOEXEC))
		return close_range_raw(first, last, flags);
	if ((flags & CLOSE_RANGE_UNSHARE) && real.close_range != NULL) {
		/* Unshare first (an empty range closes nothing), then split. */
		if (real.close_range(~0U, ~0U, CLOSE_RANGE_UNSHARE) != 0)
			return -1;
		flags &= ~(int)CLOSE_RANGE_UNSHARE;
	}
	while (from <= last) {
		h = hidden_next(from, last);
		if (h < 0)
			return close_range_raw((unsigned int)from, last, flags);
		if ((unsigned long)h > from &&
		    close_range_raw((unsigned int)from, (unsigned int)h - 1, flags) != 0)
			return -1;
		if ((unsigned long)h == ~0UL || (unsigned int)h == last)
			break;
		from = (unsigned long)h + 1;
	}
	return 0;
}

/* --- wrapped connections -------------------------------------------------- */

#define BUCKETS 1024u

struct wrapped_node {
	struct wrapped_node *next;
	ino_t ino;
	struct wrapped_info info;
};

static struct wrapped_node *wrapped[BUCKETS];
static atomic_long wrapped_count;
static pthread_rwlock_t wrapped_lock = PTHREAD_RWLOCK_INITIALIZER;

static unsigned int bucket_of(ino_t ino)
{
	return (unsigned int)((ino * 0x9E3779B97F4A7C15ULL) >> 40) % BUCKETS;
}

int fdreg_add(ino_t ino, const struct wrapped_info *info)
{
	struct wrapped_node *n = calloc(1, sizeof(*n));
	unsigned int b = bucket_of(ino);

	if (n == NULL) {
		errno = ENOMEM;
		return -1;
	}
	n->ino = ino;
	n->info = *info;
	pthread_rwlock_wrlock(&wrapped_lock);
	n->next = wrapped[b];
	wrapped[b] = n;
	atomic_fetch_add(&wrapped_count, 1);
	pthread_rwlock_unlock(&wrapped_lock);
	return 0;
}

int fdreg_remove(ino_t ino)
{
	struct wrapped_node **pp, *n = NULL;
	int tcp_fd = -1;

	pthread_rwlock_wrlock(&wrapped_lock);
	for (pp = &wrapped[bucket_of(ino)]; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->ino == ino) {
			n = *pp;
			*pp = n->next;
			atomic_fetch_sub(&wrapped_count, 1);
			break;
		}
	}
	pthread_rwlock_unlock(&wrapped_lock);
	if (n != NULL) {
		tcp_fd = n->info.tcp_fd;
		free(n);
	}
	return tcp_fd;
}

/* Caller holds wrapped_lock. */
static struct wrapped_node *find_locked(int fd)
{
	struct wrapped_node *n;
	struct stat st;

	if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return NULL;
	for (n = wrapped[bucket_of(st.st_ino)]; n != NULL; n = n->next)
		if (n->ino == st.st_ino)
			return n;
	return NULL;
}

bool fdreg_lookup(int fd, struct wrapped_info *out)
{
	struct wrapped_node *n;

	if (atomic_load_explicit(&wrapped_count, memory_order_relaxed) == 0)
		return false;
	pthread_rwlock_rdlock(&wrapped_lock);
	n = find_locked(fd);
	if (n != NULL && out != NULL)
		*out = n->info;
	pthread_rwlock_unlock(&wrapped_lock);
	return n != NULL;
}

void fdreg_set_tcp_fd(ino_t ino, int tcp_fd)
{
	struct wrapped_node *n;

	pthread_rwlock_wrlock(&wrapped_lock);
	for (n = wrapped[bucket_of(ino)]; n != NULL; n = n->next)
		if (n->ino == ino)
			n->info.tcp_fd = tcp_fd;
	pthread_rwlock_unlock(&wrapped_lock);
}

enum fdreg_sockopt fdreg_tcp_sockopt(int fd, bool set, int level, int name, void *val,
                                     socklen_t *len, int *ret, ino_t *ino)
{
	struct wrapped_node *n;
	enum fdreg_sockopt done = FDREG_SOCKOPT_NO;

	if (atomic_load_explicit(&wrapped_count, memory_order_relaxed) == 0)
		return FDREG_SOCKOPT_NO;
	pthread_rwlock_rdlock(&wrapped_lock);
	n = find_locked(fd);
	if (n != NULL && n->info.tcp_fd >= 0) {
		*ret = set ? real.setsockopt(n->info.tcp_fd, level, name, val, *len)
		           : real.getsockopt(n->info.tcp_fd, level, name, val, len);
		done = FDREG_SOCKOPT_DONE;
	} else if (n != NULL && n->info.tcp_fd == FDREG_TCP_PARKED) {
		*ino = n->ino;
		done = FDREG_SOCKOPT_PARKED;
	}
	pthread_rwlock_unlock(&wrapped_lock);
	return done;
}

void fdreg_atfork_prepare(void)
{
	pthread_mutex_lock(&hidden_alloc_lock);
	pthread_rwlock_wrlock(&wrapped_lock);
}

void fdreg_atfork_parent(void)
{
	pthread_rwlock_unlock(&wrapped_lock);
	pthread_mutex_unlock(&hidden_alloc_lock);
}

void fdreg_atfork_child(void)
{
	unsigned int b;
	long fd;

	for (b = 0; b < BUCKETS; b++) {
		struct wrapped_node *n;

		for (n = wrapped[b]; n != NULL; n = n->next)
			n->info.tcp_fd = -1;
	}
	while ((fd = hidden_next(0, (unsigned long)PAGE_BITS * PAGES - 1)) >= 0) {
		fdreg_unhide((int)fd);
		real.close((int)fd);
	}
	/*
	 * The parent's thread took these in fdreg_atfork_prepare(); glibc's
	 * rwlock remembers the writer by thread id, which the child's thread does
	 * not share, so unlocking is not enough: start them afresh.
	 */
	pthread_rwlock_init(&wrapped_lock, NULL);
	pthread_mutex_init(&hidden_alloc_lock, NULL);
}
