/*
 * real.c: binds the C library's implementations of the interposed functions.
 *
 * Binding happens once, under pthread_once, before the shim allocates or
 * locks anything of its own (house rule 3).  dlsym(RTLD_NEXT) finds the next
 * definition after libtlsshim.so in the lookup order, which is libc's.
 */
#include "real.h"

#include <dlfcn.h>
#include <pthread.h>

struct real_fns real;

static pthread_once_t real_once = PTHREAD_ONCE_INIT;
static int real_ok;

#define BIND(name) (*(void **)&real.name = dlsym(RTLD_NEXT, #name))

static void real_bind(void)
{
	BIND(connect);
	BIND(listen);
	BIND(accept);
	BIND(accept4);
	BIND(close);
	BIND(close_range);
	BIND(closefrom);
	BIND(getpeername);
	BIND(getsockname);
	BIND(getsockopt);
	BIND(setsockopt);
	BIND(sendto);
	BIND(sendmsg);
	BIND(sendmmsg);
	BIND(getaddrinfo);
	BIND(gethostbyname);
	BIND(gethostbyname2);
	BIND(gethostbyname_r);
	BIND(gethostbyname2_r);
	real_ok = real.connect && real.listen && real.accept && real.accept4 && real.close &&
	          real.getpeername && real.getsockname && real.getsockopt && real.setsockopt &&
	          real.sendto && real.sendmsg && real.sendmmsg && real.getaddrinfo &&
	          real.gethostbyname && real.gethostbyname2 && real.gethostbyname_r &&
	          real.gethostbyname2_r;
}

int real_init(void)
{
	pthread_once(&real_once, real_bind);
	return real_ok ? 0 : -1;
}
