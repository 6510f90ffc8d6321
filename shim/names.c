/*
 * names.c: the resolver memory behind SNI and host name verification.
 *
 * A ring of the newest resolutions, searched newest first.  A linear scan of
 * a thousand 16-byte keys costs well under a microsecond, far below a TCP
 * handshake, and keeps the structure trivially bounded and lock-simple.
 */
#include "names.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <pthread.h>
#include <string.h>

struct name_entry {
	unsigned char ip[16]; /* IPv4 stored as IPv4-mapped IPv6 */
	bool used;
	char name[NAMES_MAXLEN + 1];
};

static struct name_entry names_ring[NAMES_CAPACITY];
static size_t names_next;
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;

/* Maps any IP sockaddr to a 16-byte key; returns -1 for other families. */
static int names_key(const struct sockaddr *sa, unsigned char key[16])
{
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		memset(key, 0, 10);
		key[10] = 0xff;
		key[11] = 0xff;
		memcpy(key + 12, &in->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		return 0;
	}
	return -1;
}

int names_normalise(const char *name, char *out, size_t outlen)
{
	unsigned char probe[16];
	size_t len, i;

	if (name == NULL)
		return -1;
	len = strlen(name);
	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > NAMES_MAXLEN || len >= outlen)
		return -1;
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (!(isalnum(ch) || ch == '-' || ch == '.' || ch == '_'))
			return -1;
		out[i] = (char)tolower(ch);
	}
	out[len] = '\0';
	if (inet_pton(AF_INET, out, probe) == 1 || inet_pton(AF_INET6, out, probe) == 1)
		return -1;
	return 0;
}

void names_remember(const char *name, const struct sockaddr *addr)
{
	char norm[NAMES_MAXLEN + 1];
	unsigned char key[16];
	struct name_entry *e;

	if (names_key(addr, key) != 0 || names_normalise(name, norm, sizeof(norm)) != 0)
		return;
	pthread_mutex_lock(&names_lock);
	e = &names_ring[names_next];
	names_next = (names_next + 1) % NAMES_CAPACITY;
	memcpy(e->ip, key, sizeof(key));
	memcpy(e->name, norm, sizeof(norm));
	e->used = true;
	pthread_mutex_unlock(&names_lock);
}

void names_remember_addrinfo(const char *name, const struct addrinfo *res)
{
	for (; res != NULL; res = res->ai_next)
		names_remember(name, res->ai_addr);
}

void names_remember_hostent(const char *name, const struct hostent *he)
{
	char **p;

	if (he == NULL || he->h_addr_list == NULL)
		return;
	for (p = he->h_addr_list; *p != NULL; p++) {
		struct sockaddr_in6 s6;
		struct sockaddr_in s4;

		if (he->h_addrtype == AF_INET && he->h_length == 4) {
			memset(&s4, 0, sizeof(s4));
			s4.sin_family = AF_INET;
			memcpy(&s4.sin_addr, *p, 4);
			names_remember(name, (struct sockaddr *)&s4);
		} else if (he->h_addrtype == AF_INET6 && he->h_length == 16) {
			memset(&s6, 0, sizeof(s6));
			s6.sin6_family = AF_INET6;
			memcpy(&s6.sin6_addr, *p, 16);
			names_remember(name, (struct sockaddr *)&s6);
		}
	}
}

bool names_lookup(const struct sockaddr *addr, char *out, size_t outlen)
{
	unsigned char key[16];
	bool found = false;
	size_t i;

	if (names_key(addr, key) != 0 || outlen == 0)
		return false;
	pthread_mutex_lock(&names_lock);
	for (i = 1; i <= NAMES_CAPACITY; i++) {
		const struct name_entry *e =
		        &names_ring[(names_next + NAMES_CAPACITY - i) % NAMES_CAPACITY];

		if (!e->used)
			break;
		if (memcmp(e->ip, key, sizeof(key)) == 0) {
			size_t n = strlen(e->name);

			if (n < outlen) {
				memcpy(out, e->name, n + 1);
				found = true;
			}
			break;
		}
	}
	pthread_mutex_unlock(&names_lock);
	return found;
}

void names_reset(void)
{
	pthread_mutex_lock(&names_lock);
	memset(names_ring, 0, sizeof(names_ring));
	names_next = 0;
	pthread_mutex_unlock(&names_lock);
}

void names_atfork_prepare(void)
{
	pthread_mutex_lock(&names_lock);
}

void names_atfork_release(void)
{
	pthread_mutex_unlock(&names_lock);
}
