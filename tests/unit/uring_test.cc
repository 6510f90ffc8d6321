// Unit tests for shim/uring.c: the fixed-file table, poll, poll-remove and
// install requests on a real ring, with socketpairs as the files.
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

extern "C" {
#include "real.h"
#include "uring.h"
}

namespace
{

// A ring, or a skip where this kernel or sandbox has none (the relay then
// does not park, which relay_test covers).
class Uring : public ::testing::Test
{
      protected:
	struct uring r {
	};
	void SetUp() override
	{
		ASSERT_EQ(real_init(), 0);
		if (uring_open(&r, 8, 64) != 0)
			GTEST_SKIP() << "no usable io_uring here: " << strerror(errno);
		ASSERT_EQ(uring_files(&r, 16), 0) << strerror(errno);
	}
	void TearDown() override
	{
		if (r.fd >= 0)
			uring_close(&r);
	}
	// Every completion ready now.
	std::vector<uring_done> drain()
	{
		std::vector<uring_done> v;
		uring_done d;
		while (uring_next(&r, &d))
			v.push_back(d);
		return v;
	}
};

ino_t inode(int fd)
{
	struct stat st {
	};
	EXPECT_EQ(fstat(fd, &st), 0);
	return st.st_ino;
}

TEST_F(Uring, AParkedFileOutlivesItsDescriptorAndComesBack)
{
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ino_t ino = inode(sv[0]);
	ASSERT_EQ(uring_files_set(&r, 5, &sv[0], 1), 0);
	close(sv[0]); // the table holds the file: the peer sees no EOF
	struct pollfd p = {sv[1], POLLIN, 0};
	EXPECT_EQ(poll(&p, 1, 0), 0) << "closing the descriptor closed the connection";

	ASSERT_EQ(uring_poll(&r, 5, POLLIN, 42), 0);
	ASSERT_EQ(uring_submit(&r, 0), 1);
	EXPECT_FALSE(uring_pending(&r)) << "nothing to read yet";
	ASSERT_EQ(write(sv[1], "x", 1), 1);
	ASSERT_EQ(uring_submit(&r, 1), 0); // waits for the completion
	auto done = drain();
	ASSERT_EQ(done.size(), 1u);
	EXPECT_EQ(done[0].user_data, 42u);
	EXPECT_TRUE(done[0].res & POLLIN);

	ASSERT_EQ(uring_install(&r, 5, 7), 0);
	ASSERT_EQ(uring_submit(&r, 0), 1);
	done = drain();
	ASSERT_EQ(done.size(), 1u) << "an install completes as it is submitted";
	int fd = done[0].res;
	ASSERT_GE(fd, 0) << strerror(-fd);
	EXPECT_EQ(inode(fd), ino) << "the same open file";
	EXPECT_EQ(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	char c = 0;
	EXPECT_EQ(read(fd, &c, 1), 1);
	EXPECT_EQ(c, 'x');

	// Emptying the slot drops only the table's reference.
	const int none = -1;
	ASSERT_EQ(uring_files_set(&r, 5, &none, 1), 0);
	ASSERT_EQ(write(sv[1], "y", 1), 1);
	EXPECT_EQ(read(fd, &c, 1), 1);
	close(fd); // the last reference: now the peer sees EOF
	EXPECT_EQ(read(sv[1], &c, 1), 0);
	close(sv[1]);
}

TEST_F(Uring, PollReportsHangUpAndRemoveCancels)
{
	int a[2], b[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
	int fds[2] = {a[0], b[0]};
	ASSERT_EQ(uring_files_set(&r, 0, fds, 2), 0);
	close(a[0]);
	close(b[0]);
	ASSERT_EQ(uring_poll(&r, 0, POLLIN | POLLRDHUP, 100), 0);
	ASSERT_EQ(uring_poll(&r, 1, POLLIN | POLLRDHUP, 101), 0);
	ASSERT_EQ(uring_submit(&r, 0), 2);

	close(a[1]); // the peer goes away
	ASSERT_EQ(uring_submit(&r, 1), 0);
	auto done = drain();
	ASSERT_EQ(done.size(), 1u);
	EXPECT_EQ(done[0].user_data, 100u);
	EXPECT_TRUE(done[0].res & (POLLHUP | POLLRDHUP)) << done[0].res;

	ASSERT_EQ(uring_poll_remove(&r, 101, 200), 0);
	ASSERT_EQ(uring_submit(&r, 2), 1);
	done = drain();
	ASSERT_EQ(done.size(), 2u);
	for (const auto &d : done) {
		if (d.user_data == 101)
			EXPECT_EQ(d.res, -ECANCELED);
		else
			EXPECT_EQ(d.user_data, 200u);
	}
	// Removing what is gone is answered, not an error of the ring.
	ASSERT_EQ(uring_poll_remove(&r, 101, 201), 0);
	ASSERT_EQ(uring_submit(&r, 1), 1);
	done = drain();
	ASSERT_EQ(done.size(), 1u);
	EXPECT_EQ(done[0].res, -ENOENT);
	close(b[1]);
}

TEST_F(Uring, BadRequestsFailCleanly)
{
	// An empty slot installs nothing.
	ASSERT_EQ(uring_install(&r, 3, 1), 0);
	ASSERT_EQ(uring_submit(&r, 0), 1);
	auto done = drain();
	ASSERT_EQ(done.size(), 1u);
	EXPECT_LT(done[0].res, 0);
	// Slots outside the table.
	int fd = dup(0);
	EXPECT_EQ(uring_files_set(&r, 16, &fd, 1), -1);
	EXPECT_EQ(errno, EINVAL);
	EXPECT_EQ(uring_files_set(&r, 15, &fd, 1), 0);
	close(fd);
	// A full submission ring says EBUSY, and works again once submitted.
	unsigned int queued = 0;
	while (uring_poll_remove(&r, 999, 1) == 0)
		queued++;
	EXPECT_EQ(errno, EBUSY);
	EXPECT_EQ(queued, r.sq_entries);
	EXPECT_EQ(uring_submit(&r, 0), static_cast<int>(queued));
	EXPECT_EQ(drain().size(), queued);
	EXPECT_EQ(uring_poll_remove(&r, 999, 1), 0);
	EXPECT_EQ(uring_submit(&r, 1), 1);
	EXPECT_EQ(drain().size(), 1u);
}

TEST_F(Uring, InstallFailsWithEmfileWhenTheTableIsFull)
{
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ASSERT_EQ(uring_files_set(&r, 2, &sv[0], 1), 0);
	close(sv[0]);
	// Fill the descriptor table below a lowered limit, in a child.
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		// The ring's mappings are not inherited (MADV_DONTFORK): a fresh ring.
		struct uring c {
		};
		int p[2];
		if (uring_open(&c, 4, 8) != 0 || uring_files(&c, 4) != 0 ||
		    socketpair(AF_UNIX, SOCK_STREAM, 0, p) != 0 ||
		    uring_files_set(&c, 0, p, 1) != 0)
			_exit(2);
		struct rlimit rl = {64, 64};
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			_exit(3);
		while (dup(0) >= 0) {
		}
		if (uring_install(&c, 0, 9) != 0 || uring_submit(&c, 0) != 1)
			_exit(4);
		uring_done d;
		if (!uring_next(&c, &d) || d.res != -EMFILE)
			_exit(5);
		_exit(0);
	}
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(WEXITSTATUS(status), 0);
	close(sv[1]);
}

TEST(UringClosed, ForgetLeavesNothingToTouch)
{
	struct uring r {
	};
	uring_forget(&r);
	EXPECT_EQ(r.fd, -1);
	EXPECT_FALSE(uring_pending(&r));
}

} // namespace
