/*
 * logging-legacy.c: a program with syslog settings of its own, for
 * logging.bats.  It calls openlog("legacy-app", LOG_PID, LOG_LOCAL3), logs a
 * line, connects to HOST:PORT (under the shim, to a server that is refused,
 * so the shim logs too), and logs another line.  Its lines must keep its tag
 * and facility, the shim's keep theirs.
 *
 * usage: logging-legacy HOST PORT MARKER
 * Prints "connect=ok" or "connect=<strerror>"; exits 0 when both syslog()
 * calls were made.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_in sin;
	int fd, r;

	if (argc != 4) {
		fprintf(stderr, "usage: %s HOST PORT MARKER\n", argv[0]);
		return 2;
	}
	openlog("legacy-app", LOG_PID, LOG_LOCAL3);
	syslog(LOG_WARNING, "before connect %s", argv[3]);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)strtoul(argv[2], NULL, 10));
	if (inet_pton(AF_INET, argv[1], &sin.sin_addr) != 1)
		return 2;
	fd = socket(AF_INET, SOCK_STREAM, 0);
	r = connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	printf("connect=%s\n", r == 0 ? "ok" : strerror(errno));
	close(fd);

	syslog(LOG_WARNING, "after connect %s", argv[3]);
	closelog();
	return 0;
}
