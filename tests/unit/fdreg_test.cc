// Unit tests for shim/fdreg.c: hidden descriptors and wrapped-connection
// metadata.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

extern "C" {
#include "fdreg.h"
#include "real.h"
}

namespace
{

bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

class Fdreg : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		ASSERT_EQ(real_init(), 0);
	}
};

TEST_F(Fdreg, HideUnhide)
{
	int fd = fdreg_adopt(dup(0));
	ASSERT_GE(fd, 0);
	EXPECT_TRUE(fdreg_is_hidden(fd));
	EXPECT_TRUE(fdreg_any_hidden());
	EXPECT_GE(fd, 64) << "hidden descriptors stay away from low numbers";
	EXPECT_NE(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	fdreg_release(fd);
	EXPECT_FALSE(fdreg_is_hidden(fd));
	EXPECT_FALSE(is_open(fd));
	EXPECT_FALSE(fdreg_is_hidden(-1));
	EXPECT_FALSE(fdreg_is_hidden(1 << 30));
	EXPECT_EQ(fdreg_hide(-5), -1);
	EXPECT_EQ(fdreg_adopt(-1), -1);
}

TEST_F(Fdreg, CloseRangeSkipsHidden)
{
	std::vector<int> plain, hidden;
	for (int i = 0; i < 4; i++) {
		plain.push_back(dup(0));
		int h = fdreg_adopt(dup(0));
		ASSERT_GE(h, 0);
		hidden.push_back(h);
	}
	int lo = *std::min_element(plain.begin(), plain.end());
	ASSERT_EQ(fdreg_close_range((unsigned)lo, ~0U, 0), 0);
	for (int fd : plain)
		EXPECT_FALSE(is_open(fd)) << fd;
	for (int fd : hidden) {
		EXPECT_TRUE(is_open(fd)) << fd;
		fdreg_release(fd);
	}
}

TEST_F(Fdreg, CloseRangeEdges)
{
	int h = fdreg_adopt(dup(0));
	ASSERT_GE(h, 0);
	int a = fcntl(0, F_DUPFD, h - 1 > 3 ? h - 1 : 3);
	// A range that ends exactly on the hidden descriptor, one that starts on it.
	EXPECT_EQ(fdreg_close_range((unsigned)h, (unsigned)h, 0), 0);
	EXPECT_TRUE(is_open(h));
	if (a >= 0 && a < h) {
		EXPECT_EQ(fdreg_close_range((unsigned)a, (unsigned)h, 0), 0);
		EXPECT_FALSE(is_open(a));
	}
	EXPECT_TRUE(is_open(h));
	// CLOEXEC marking touches nothing of ours.
	EXPECT_EQ(fdreg_close_range((unsigned)h, (unsigned)h, CLOSE_RANGE_CLOEXEC), 0);
	EXPECT_TRUE(is_open(h));
	// first > last is an error, as for close_range(2).
	EXPECT_EQ(fdreg_close_range(10, 5, 0), -1);
	fdreg_release(h);
}

TEST_F(Fdreg, LookupByInodeFindsDups)
{
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct stat st;
	ASSERT_EQ(fstat(sv[0], &st), 0);
	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	ASSERT_GE(tcp, 0);

	struct wrapped_info info {
	};
	info.domain = AF_INET;
	info.protocol = IPPROTO_TCP;
	info.tcp_fd = tcp;
	info.peer_len = sizeof(struct sockaddr_in);
	ASSERT_EQ(fdreg_add(st.st_ino, &info), 0);

	int d = dup(sv[0]);
	struct wrapped_info got {
	};
	EXPECT_TRUE(fdreg_lookup(d, &got));
	EXPECT_EQ(got.domain, AF_INET);
	EXPECT_FALSE(fdreg_lookup(sv[1], nullptr)) << "the other end is not the program's";
	EXPECT_FALSE(fdreg_lookup(0, nullptr));

	int one = 1, ret = -1;
	ino_t ino = 0;
	socklen_t len = sizeof(one);
	EXPECT_EQ(fdreg_tcp_sockopt(d, true, IPPROTO_TCP, TCP_NODELAY, &one, &len, &ret, &ino),
	          FDREG_SOCKOPT_DONE);
	EXPECT_EQ(ret, 0);
	int v = 0;
	len = sizeof(v);
	EXPECT_EQ(fdreg_tcp_sockopt(sv[0], false, IPPROTO_TCP, TCP_NODELAY, &v, &len, &ret, &ino),
	          FDREG_SOCKOPT_DONE);
	EXPECT_EQ(ret, 0);
	EXPECT_EQ(v, 1) << "the option reached the TCP socket";

	// Parked (relay.c): nothing is done, the caller learns the inode to unpark.
	fdreg_set_tcp_fd(st.st_ino, FDREG_TCP_PARKED);
	ret = 12345;
	EXPECT_EQ(fdreg_tcp_sockopt(d, false, IPPROTO_TCP, TCP_NODELAY, &v, &len, &ret, &ino),
	          FDREG_SOCKOPT_PARKED);
	EXPECT_EQ(ino, st.st_ino);
	EXPECT_EQ(ret, 12345) << "no call was made";
	fdreg_set_tcp_fd(st.st_ino, -1); // after fork: not answered here at all
	EXPECT_EQ(fdreg_tcp_sockopt(d, false, IPPROTO_TCP, TCP_NODELAY, &v, &len, &ret, &ino),
	          FDREG_SOCKOPT_NO);
	fdreg_set_tcp_fd(st.st_ino, tcp);

	EXPECT_EQ(fdreg_remove(st.st_ino), tcp);
	EXPECT_FALSE(fdreg_lookup(d, nullptr));
	EXPECT_EQ(fdreg_remove(st.st_ino), -1);
	close(d);
	close(sv[0]);
	close(sv[1]);
	close(tcp);
}

TEST_F(Fdreg, ForkChildKeepsNoHiddenDescriptor)
{
	int h = fdreg_adopt(dup(0));
	ASSERT_GE(h, 0);
	fdreg_atfork_prepare();
	pid_t pid = fork();
	if (pid == 0) {
		fdreg_atfork_child();
		_exit(!is_open(h) && !fdreg_is_hidden(h) ? 0 : 1);
	}
	fdreg_atfork_parent();
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	EXPECT_TRUE(is_open(h)) << "the parent keeps its own";
	fdreg_release(h);
}

} // namespace
