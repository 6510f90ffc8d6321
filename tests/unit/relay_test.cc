// Unit tests for shim/relay.c: the relay between a program's socketpair end
// and a TLS connection, with a real TLS peer on the network side (here also
// a socketpair, which TLS does not mind).
#include <arpa/inet.h>
#include <stddef.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tls_peer.h"

extern "C" {
#include "fdreg.h"
#include "real.h"
#include "relay.h"
#include "tlsio.h"
#include "uring.h"
}

namespace
{

struct TrustTestCa : ::testing::Environment {
	void SetUp() override
	{
		setenv("TLSSHIM_CA_FILE", cert_path("ca.pem").c_str(), 1);
	}
};
const auto *env = ::testing::AddGlobalTestEnvironment(new TrustTestCa);

int count_fds()
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	while (d != nullptr && readdir(d) != nullptr)
		n++;
	if (d != nullptr)
		closedir(d);
	return n;
}

// Waits (bounded) until the relay holds `n` connections.
bool relay_settles_at(long n)
{
	auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
	while (std::chrono::steady_clock::now() < until) {
		if (relay_count() == n)
			return true;
		std::this_thread::sleep_for(std::chrono::milliseconds(2));
	}
	return false;
}

unsigned char pattern(size_t i)
{
	return static_cast<unsigned char>((i * 131u + 7u) & 0xff);
}

// A program-side descriptor connected through the relay to a TLS peer that
// runs `serve`.
struct Wrapped {
	int app = -1;
	std::unique_ptr<TlsPeer> peer;
};

Wrapped wrap(std::function<void(SSL *)> serve)
{
	Wrapped w;
	int net[2], app[2];
	EXPECT_EQ(real_init(), 0);
	EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, net), 0);
	EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, app), 0);
	w.peer = std::make_unique<TlsPeer>(net[1], "server", serve);

	char err[256];
	SSL_CTX *ctx = tlsio_client_ctx(err, sizeof(err));
	EXPECT_NE(ctx, nullptr) << err;
	int net_fd = fdreg_adopt(net[0]);
	fcntl(net_fd, F_SETFL, O_NONBLOCK);
	struct sockaddr_in peer {
	};
	peer.sin_family = AF_INET;
	inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
	SSL *ssl = tlsio_client_new(ctx, net_fd, "localhost",
	                            reinterpret_cast<struct sockaddr *>(&peer));
	struct tls_failure why;
	EXPECT_EQ(tlsio_handshake(ssl, tlsio_now_ms() + 5000, &why), 0) << why.reason;

	struct relay_spec spec {
	};
	spec.app_fd = fdreg_adopt(app[1]);
	fcntl(spec.app_fd, F_SETFL, O_NONBLOCK);
	spec.net_fd = net_fd;
	struct stat st;
	fstat(app[0], &st);
	spec.ino = st.st_ino;
	spec.ssl = ssl;
	memcpy(&spec.peer, &peer, sizeof(peer));
	EXPECT_EQ(relay_add(&spec), 0);
	w.app = app[0];
	return w;
}

// Reads exactly n bytes, bounded by poll timeouts. Returns bytes read.
size_t read_n(int fd, unsigned char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) != 1)
			break;
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			break;
		got += static_cast<size_t>(r);
	}
	return got;
}

bool reads_eof(int fd)
{
	struct pollfd p = {fd, POLLIN, 0};
	char c;
	return poll(&p, 1, 10000) == 1 && read(fd, &c, 1) == 0;
}

TEST(Relay, EchoesBulkDataBothWays)
{
	const size_t total = 8u << 20;
	Wrapped w = wrap([](SSL *ssl) {
		char buf[16384];
		int n;
		while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
			if (SSL_write(ssl, buf, n) != n)
				break;
		SSL_shutdown(ssl);
	});
	std::thread writer([&] {
		std::vector<unsigned char> out(total);
		for (size_t i = 0; i < total; i++)
			out[i] = pattern(i);
		size_t off = 0;
		while (off < total) {
			ssize_t n = write(w.app, out.data() + off, total - off);
			if (n <= 0)
				break;
			off += static_cast<size_t>(n);
		}
		shutdown(w.app, SHUT_WR);
	});
	std::vector<unsigned char> in(total);
	size_t got = read_n(w.app, in.data(), total);
	writer.join();
	ASSERT_EQ(got, total);
	for (size_t i = 0; i < total; i++)
		ASSERT_EQ(in[i], pattern(i)) << "at " << i;
	EXPECT_TRUE(reads_eof(w.app));
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
}

TEST(Relay, HalfCloseSendsCloseNotifyAndKeepsReading)
{
	std::atomic<long> server_saw{-1};
	Wrapped w = wrap([&](SSL *ssl) {
		char buf[4096];
		long total = 0;
		int n;
		while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
			total += n;
		// SSL_read returned 0: close_notify from the client.
		server_saw = SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN ? total : -2;
		std::string reply = "got " + std::to_string(total);
		SSL_write(ssl, reply.data(), static_cast<int>(reply.size()));
		SSL_shutdown(ssl);
	});
	std::string msg(100000, 'x');
	ASSERT_EQ(write(w.app, msg.data(), msg.size()), static_cast<ssize_t>(msg.size()));
	ASSERT_EQ(shutdown(w.app, SHUT_WR), 0);
	unsigned char buf[64] = {};
	size_t got = read_n(w.app, buf, 10);
	EXPECT_EQ(std::string(reinterpret_cast<char *>(buf), got), "got 100000");
	EXPECT_TRUE(reads_eof(w.app));
	w.peer->join();
	EXPECT_EQ(server_saw.load(), 100000);
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
}

TEST(Relay, ServerCloseBecomesEofAfterAllData)
{
	const size_t total = 3u << 20;
	Wrapped w = wrap([&](SSL *ssl) {
		std::vector<unsigned char> out(total);
		for (size_t i = 0; i < total; i++)
			out[i] = pattern(i);
		size_t off = 0;
		while (off < total) {
			int n = SSL_write(ssl, out.data() + off, static_cast<int>(total - off));
			if (n <= 0)
				return;
			off += static_cast<size_t>(n);
		}
		SSL_shutdown(ssl);
	});
	// Backpressure: the program does not read until the peer is blocked.
	std::vector<unsigned char> in(total);
	size_t got = read_n(w.app, in.data(), total);
	ASSERT_EQ(got, total);
	for (size_t i = 0; i < total; i++)
		ASSERT_EQ(in[i], pattern(i)) << "at " << i;
	EXPECT_TRUE(reads_eof(w.app));
	// The program may still write after the server's EOF, then close.
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
}

TEST(Relay, ProgramCloseTearsDownWithoutLeaks)
{
	ASSERT_TRUE(relay_settles_at(0));
	int before = count_fds();
	std::atomic<int> peer_read{-1};
	Wrapped w = wrap([&](SSL *ssl) {
		char buf[64];
		int n = SSL_read(ssl, buf, sizeof(buf));
		int m = SSL_read(ssl, buf, sizeof(buf));
		peer_read = n == 5 && m <= 0 ? 1 : 0;
	});
	ASSERT_EQ(write(w.app, "hello", 5), 5);
	close(w.app);
	w.peer->join();
	EXPECT_EQ(peer_read.load(), 1) << "data written before close arrives, then the end";
	w.peer.reset();
	EXPECT_TRUE(relay_settles_at(0));
	EXPECT_EQ(count_fds(), before) << "no descriptor leaked";
}

TEST(Relay, PeerResetMidStreamEndsTheProgramsStream)
{
	Wrapped w = wrap([](SSL *ssl) {
		SSL_write(ssl, "partial", 7);
		// No close_notify: the peer's socket is shut and closed by TlsPeer.
	});
	unsigned char buf[16];
	EXPECT_EQ(read_n(w.app, buf, 7), 7u);
	EXPECT_TRUE(reads_eof(w.app));
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
}

TEST(Relay, ManyConnectionsAtOnce)
{
	const int n = 64;
	std::vector<Wrapped> conns;
	for (int i = 0; i < n; i++)
		conns.push_back(wrap([](SSL *ssl) {
			char buf[4096];
			int r;
			while ((r = SSL_read(ssl, buf, sizeof(buf))) > 0)
				SSL_write(ssl, buf, r);
			SSL_shutdown(ssl);
		}));
	EXPECT_EQ(relay_count(), n);
	for (int i = 0; i < n; i++) {
		std::string msg = "conn " + std::to_string(i);
		ASSERT_EQ(write(conns[i].app, msg.data(), msg.size()),
		          static_cast<ssize_t>(msg.size()));
	}
	for (int i = 0; i < n; i++) {
		std::string msg = "conn " + std::to_string(i);
		std::vector<unsigned char> buf(msg.size());
		ASSERT_EQ(read_n(conns[i].app, buf.data(), buf.size()), msg.size());
		EXPECT_EQ(std::string(buf.begin(), buf.end()), msg);
		shutdown(conns[i].app, SHUT_WR);
		EXPECT_TRUE(reads_eof(conns[i].app));
		close(conns[i].app);
	}
	EXPECT_TRUE(relay_settles_at(0));
}

// --- busy-polling and the interactive (peek) path --------------------------

TEST(RelaySpin, WindowAdaptsToTheWaitsItSees)
{
	const long us = 1000, max = 50 * us;
	struct Case {
		const char *what;
		long window, max, waited;
		bool hit;
		long want;
	} cases[] = {
	        {"disabled stays disabled", 20 * us, 0, 10 * us, false, 0},
	        {"disabled even after a hit", 20 * us, 0, 10 * us, true, 0},
	        {"a hit keeps the window", 20 * us, max, 3 * us, true, 20 * us},
	        {"a hit never exceeds the bound", 80 * us, max, 3 * us, true, max},
	        {"a short wait grows it by half the wait", 0, max, 10 * us, false, 15 * us},
	        {"growth at least doubles", 20 * us, max, 22 * us, false, 40 * us},
	        {"growth stops at the bound", 40 * us, max, 45 * us, false, max},
	        {"a wait at the bound still counts as short", 0, max, max, false, max},
	        {"a tiny wait gives the minimum", 0, max, 1 * us, false, 5 * us},
	        {"a long wait halves it", max, max, 1000 * us, false, 25 * us},
	        {"halving below the minimum stops spinning", 8 * us, max, 1000 * us, false, 0},
	        {"no window and long waits: none", 0, max, 1000 * us, false, 0},
	        {"just over the bound is long", 40 * us, max, max + 1, false, 20 * us},
	};
	for (const Case &c : cases)
		EXPECT_EQ(relay_spin_adapt(c.window, c.max, c.waited, c.hit), c.want) << c.what;
}

TEST(RelaySpin, IdleWaitsBackOffToNoSpinningAndShortOnesComeBack)
{
	const long max = 50000;
	long w = max, prev = max;
	int steps = 0;
	while (w > 0 && steps < 64) {
		w = relay_spin_adapt(w, max, 10 * max, false);
		EXPECT_LT(w, prev);
		prev = w;
		steps++;
	}
	EXPECT_EQ(w, 0);
	EXPECT_LE(steps, 5); /* 50 -> 25 -> 12 -> 6 -> 0 us */
	for (int i = 0; i < 8 && w < max; i++)
		w = relay_spin_adapt(w, max, 20000, false);
	EXPECT_EQ(w, max);
}

TEST(RelaySpin, BoundFromSettingAndCpus)
{
	struct Case {
		long us, ncpu, want;
	} cases[] = {
	        {50, 2, 50000},     {50, 8, 50000},     {100, 2, 100000}, {0, 2, 0},
	        {1000, 2, 1000000}, {5000, 2, 1000000}, {-3, 2, 0},       {50, 1, 0},
	        {100, 1, 0},        {100, 0, 0},
	};
	for (const Case &c : cases)
		EXPECT_EQ(relay_spin_bound(c.us, c.ncpu), c.want)
		        << c.us << " us with " << c.ncpu << " CPUs";
}

TEST(RelaySpin, ArmsOnlyForOneConversation)
{
	const uint64_t a = 1, b = 2; // two connections' ids
	uint64_t last = 0;
	// A request on A, then its answer: the second batch spins.
	EXPECT_FALSE(relay_spin_arm(64, a, false, &last)) << "first batch of A";
	EXPECT_TRUE(relay_spin_arm(64, a, false, &last)) << "A again";
	EXPECT_TRUE(relay_spin_arm(4096, a, false, &last)) << "at the interactive bound";
	EXPECT_FALSE(relay_spin_arm(4097, a, false, &last)) << "bulk";
	EXPECT_FALSE(relay_spin_arm(0, a, false, &last)) << "nothing moved";
	EXPECT_TRUE(relay_spin_arm(1, a, false, &last)) << "A still";
	// Many connections busy: consecutive batches serve different ones.
	last = 0;
	for (int i = 0; i < 8; i++) {
		EXPECT_FALSE(relay_spin_arm(64, a, false, &last)) << "A after B, " << i;
		EXPECT_FALSE(relay_spin_arm(64, b, false, &last)) << "B after A, " << i;
	}
	// A batch that served both forgets: the next one cannot spin either.
	EXPECT_FALSE(relay_spin_arm(64, b, true, &last)) << "mixed";
	EXPECT_EQ(last, 0u);
	EXPECT_FALSE(relay_spin_arm(64, b, false, &last)) << "after mixed";
	EXPECT_TRUE(relay_spin_arm(64, b, false, &last)) << "B's conversation";
	// A batch of wake-ups only (no connection) does not spin and forgets.
	EXPECT_FALSE(relay_spin_arm(0, 0, false, &last));
	EXPECT_FALSE(relay_spin_arm(64, b, false, &last));
}

// --- CPU quotas -----------------------------------------------------------------

// A fake /proc/self/cgroup and cgroup file systems in a temporary directory.
class CgroupQuota : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		char tmpl[] = "/tmp/relay-cgroup-XXXXXX";
		ASSERT_NE(mkdtemp(tmpl), nullptr);
		root_ = tmpl;
	}
	void TearDown() override
	{
		std::string cmd = "rm -rf '" + root_ + "'";
		EXPECT_EQ(system(cmd.c_str()), 0);
	}
	// Writes `text` to root/rel, making its directories.
	void put(const std::string &rel, const std::string &text)
	{
		std::string path = root_ + "/" + rel;
		std::string cmd = "mkdir -p \"$(dirname '" + path + "')\"";
		ASSERT_EQ(system(cmd.c_str()), 0);
		FILE *f = fopen(path.c_str(), "w");
		ASSERT_NE(f, nullptr);
		fputs(text.c_str(), f);
		fclose(f);
	}
	long cpus(const std::string &self)
	{
		put("self", self);
		return relay_cgroup_cpus((root_ + "/self").c_str(), (root_ + "/fs").c_str());
	}
	std::string root_;
};

TEST_F(CgroupQuota, V2QuotaIsTheSmallestAlongThePath)
{
	put("fs/svc/cpu.max", "150000 100000\n"); // 1.5 CPUs: 2
	put("fs/svc/app/cpu.max", "max 100000\n");
	EXPECT_EQ(cpus("0::/svc/app\n"), 2);
	put("fs/cpu.max", "50000 100000\n"); // the root: half a CPU, 1
	EXPECT_EQ(cpus("0::/svc/app\n"), 1);
	put("fs/svc/app/cpu.max", "400000 100000\n");
	EXPECT_EQ(cpus("0::/svc/app\n"), 1) << "an ancestor's quota still binds";
}

TEST_F(CgroupQuota, V2WithoutAQuota)
{
	put("fs/svc/cpu.max", "max 100000\n");
	EXPECT_EQ(cpus("0::/svc\n"), 0);
	EXPECT_EQ(cpus("0::/\n"), 0) << "a namespace root with no cpu.max";
	EXPECT_EQ(cpus("0::/nowhere\n"), 0);
}

TEST_F(CgroupQuota, V1CpuController)
{
	put("fs/cpu,cpuacct/unit/cpu.cfs_quota_us", "250000\n");
	put("fs/cpu,cpuacct/unit/cpu.cfs_period_us", "100000\n");
	EXPECT_EQ(cpus("12:memory:/unit\n4:cpu,cpuacct:/unit\n0::/\n"), 3);
	put("fs/cpu,cpuacct/unit/cpu.cfs_quota_us", "-1\n");
	EXPECT_EQ(cpus("4:cpu,cpuacct:/unit\n"), 0) << "-1: no quota";
	put("fs/cpu/job/cpu.cfs_quota_us", "100000\n");
	put("fs/cpu/job/cpu.cfs_period_us", "100000\n");
	EXPECT_EQ(cpus("3:cpu:/job\n"), 1);
	EXPECT_EQ(cpus("2:cpuacct:/job\n"), 0) << "cpuacct alone sets no quota";
}

TEST_F(CgroupQuota, GarbageAndMissingFilesAreNoQuota)
{
	EXPECT_EQ(relay_cgroup_cpus((root_ + "/missing").c_str(), root_.c_str()), 0);
	put("fs/x/cpu.max", "lots 100000\n");
	EXPECT_EQ(cpus("0::/x\n"), 0);
	put("fs/x/cpu.max", "100000 0\n");
	EXPECT_EQ(cpus("0::/x\n"), 0) << "a zero period";
	EXPECT_EQ(cpus("garbage\n::\n0::relative\n"), 0);
	std::string longpath = "0::/" + std::string(2000, 'a') + "\n";
	EXPECT_EQ(cpus(longpath), 0);
}

TEST(CgroupQuotaHost, ThisHostParses)
{
	// Whatever the host's cgroups say, the answer is a CPU count or "none".
	long n = relay_cgroup_cpus("/proc/self/cgroup", "/sys/fs/cgroup");
	EXPECT_GE(n, 0);
	EXPECT_LE(n, 1 << 20);
}

// Waits (bounded) until `pred` holds for the relay's counters.
template <typename Pred> bool spin_stats_reach(Pred pred)
{
	auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
	struct relay_spin_stats st;
	while (std::chrono::steady_clock::now() < until) {
		relay_get_spin_stats(&st);
		if (pred(st))
			return true;
		std::this_thread::sleep_for(std::chrono::milliseconds(2));
	}
	return false;
}

// One request/response of `len` patterned bytes starting at stream offset
// `*off`; true when the echo came back whole and in order.
bool exchange(int fd, size_t len, size_t *off)
{
	std::vector<unsigned char> out(len), in(len);
	for (size_t i = 0; i < len; i++)
		out[i] = pattern(*off + i);
	size_t sent = 0;
	std::thread writer([&] {
		while (sent < len) {
			ssize_t n = write(fd, out.data() + sent, len - sent);
			if (n <= 0)
				break;
			sent += static_cast<size_t>(n);
		}
	});
	size_t got = read_n(fd, in.data(), len);
	writer.join();
	*off += len;
	return got == len && in == out;
}

Wrapped wrap_echo()
{
	return wrap([](SSL *ssl) {
		char buf[16384];
		int n;
		while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
			if (SSL_write(ssl, buf, n) != n)
				break;
		SSL_shutdown(ssl);
	});
}

TEST(RelaySpin, SpinningAndPeekingKeepEveryByteInOrder)
{
	Wrapped w = wrap_echo();
	struct relay_spin_stats before, after;
	relay_get_spin_stats(&before);
	const long bound = before.bound_ns;
	// Forced on, whatever the CPU count, with a window long enough to hit.
	relay_set_spin_us(1000);
	// Around the interactive (peeked) size, one record, several records,
	// more than one read's worth; small after large and large after small.
	const size_t sizes[] = {1,     64,    4095,  4096, 4097,   100, 16384,
	                        16385, 65536, 65537, 3,    200000, 7,   4096};
	size_t off = 0;
	for (int round = 0; round < 20; round++)
		for (size_t len : sizes)
			ASSERT_TRUE(exchange(w.app, len, &off))
			        << "round " << round << " len " << len;
	// Pipelined small writes: later ones arrive while earlier ones are peeked.
	std::string burst;
	for (int i = 0; i < 500; i++)
		burst += "msg " + std::to_string(i) + ";";
	ASSERT_EQ(write(w.app, burst.data(), burst.size()), static_cast<ssize_t>(burst.size()));
	std::vector<unsigned char> back(burst.size());
	ASSERT_EQ(read_n(w.app, back.data(), back.size()), burst.size());
	EXPECT_EQ(std::string(back.begin(), back.end()), burst);

	relay_get_spin_stats(&after);
	EXPECT_EQ(after.bound_ns, 1000000);
	EXPECT_GT(after.armed, before.armed);
	EXPECT_GT(after.spins, before.spins);
	EXPECT_LE(after.hits - before.hits, after.spins - before.spins);
	EXPECT_LE(after.window_ns, after.bound_ns);

	// Idle now: the relay stops polling and sleeps in a blocking wait.  (Not
	// "blocks grew since `after`": a slow test thread may read `after` once
	// the relay has already given up spinning, or the last batch may have
	// been too large to arm a spin at all.)
	EXPECT_TRUE(spin_stats_reach([&](const struct relay_spin_stats &st) {
		return st.sleeping && st.blocks >= after.blocks;
	}));

	// Half-close after peeked traffic: EOF reaches the server, comes back.
	shutdown(w.app, SHUT_WR);
	EXPECT_TRUE(reads_eof(w.app));
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
	relay_set_spin_us(bound / 1000);
}

TEST(RelaySpin, ZeroDisablesIt)
{
	Wrapped w = wrap_echo();
	struct relay_spin_stats was;
	relay_get_spin_stats(&was);
	relay_set_spin_us(0);
	size_t off = 0;
	// The first exchange makes the thread pass through a wait that sees 0.
	ASSERT_TRUE(exchange(w.app, 64, &off));
	struct relay_spin_stats before, after;
	relay_get_spin_stats(&before);
	for (int i = 0; i < 50; i++)
		ASSERT_TRUE(exchange(w.app, 64, &off));
	relay_get_spin_stats(&after);
	EXPECT_EQ(after.bound_ns, 0);
	EXPECT_EQ(after.armed, before.armed);
	EXPECT_EQ(after.spins, before.spins);
	EXPECT_EQ(after.window_ns, 0);
	shutdown(w.app, SHUT_WR);
	EXPECT_TRUE(reads_eof(w.app));
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
	relay_set_spin_us(was.bound_ns / 1000);
}

// --- more than one relay thread ----------------------------------------------

// How many threads the policy allows after `k` connections were added (none
// closed): one more each time every thread carries `per`, up to `limit`.
int threads_after(int k, int per, int limit)
{
	return std::min(limit, (k + per - 1) / per);
}

struct ThreadCase {
	const char *what;
	long ncpu;
	int per;
	int conns;
	int want_threads;
	const char *setting = nullptr; // TLSSHIM_RELAY_THREADS, if any
	int set_threads = 0;           // its number; 0: auto, min(CPUs, 4)
	int limit() const
	{
		return set_threads > 0 ? set_threads : std::min(static_cast<int>(ncpu), 4);
	}
};

// Runs in a fresh process (a death test's child): opens `tc.conns` echo
// connections with the threshold forced to `tc.per` and the CPU count to
// `tc.ncpu`, checks the thread count after every one, moves patterned data
// over all of them at once, closes them all, and exits 0 only when every
// check held.  The child's exit runs the relay's atexit (every thread
// joined) and, under ASan, the leak check.
[[noreturn]] void run_thread_case(const ThreadCase &tc)
{
	bool ok = true;
	auto fail = [&](const std::string &why) {
		fprintf(stderr, "%s: %s\n", tc.what, why.c_str());
		ok = false;
	};
	if (tc.setting != nullptr)
		setenv("TLSSHIM_RELAY_THREADS", tc.setting, 1); // read at the first thread's start
	relay_set_ncpu(tc.ncpu);
	relay_set_conns_per_thread(tc.per);
	if (relay_nthreads() != 0)
		fail("a thread ran before the first connection");
	int fds_before = count_fds();

	std::vector<Wrapped> conns;
	for (int k = 1; k <= tc.conns; k++) {
		conns.push_back(wrap_echo());
		int want = threads_after(k, tc.per, tc.limit());
		if (relay_nthreads() != want)
			fail("after " + std::to_string(k) + " connections " +
			     std::to_string(relay_nthreads()) + " threads, want " +
			     std::to_string(want));
	}
	if (relay_nthreads() != tc.want_threads)
		fail("threads " + std::to_string(relay_nthreads()));
	// Least-loaded placement: the connections spread evenly.
	long most = 0, least = tc.conns;
	for (int i = 0; i < relay_nthreads(); i++) {
		most = std::max(most, relay_count_on(i));
		least = std::min(least, relay_count_on(i));
	}
	if (most - least > tc.per || relay_count() != tc.conns)
		fail("unbalanced: " + std::to_string(least) + ".." + std::to_string(most));
	if (relay_count_on(relay_nthreads()) != -1)
		fail("a thread past the last one reports connections");

	// Every connection at once, each with its own stream, small and bulk.
	std::vector<std::thread> users;
	std::atomic<int> bad{0};
	for (int i = 0; i < tc.conns; i++)
		users.emplace_back([&, i] {
			const size_t sizes[] = {1, 4096, 65537, 300000, 7, 16384};
			size_t off = static_cast<size_t>(i) * 7919u; // a different stream each
			for (size_t len : sizes)
				if (!exchange(conns[i].app, len, &off)) {
					bad++;
					return;
				}
			shutdown(conns[i].app, SHUT_WR);
			if (!reads_eof(conns[i].app))
				bad++;
		});
	for (auto &u : users)
		u.join();
	if (bad != 0)
		fail(std::to_string(bad.load()) + " connections lost or reordered data");
	for (auto &w : conns) {
		close(w.app);
		w.peer.reset();
	}
	if (!relay_settles_at(0))
		fail("connections left in the relay");
	for (int i = 0; i < relay_nthreads(); i++)
		if (relay_count_on(i) != 0)
			fail("thread " + std::to_string(i) + " still holds connections");
	// Each running thread keeps its epoll set and eventfd; nothing else stays.
	if (count_fds() != fds_before + 2 * relay_nthreads())
		fail("descriptors: " + std::to_string(count_fds()) + ", want " +
		     std::to_string(fds_before + 2 * relay_nthreads()));
	exit(ok ? 0 : 1);
}

void PrintTo(const ThreadCase &tc, std::ostream *os)
{
	*os << tc.what;
}

class RelayThreads : public ::testing::TestWithParam<ThreadCase>
{
};

TEST_P(RelayThreads, SpreadsConnectionsAndKeepsEveryStream)
{
	// A fresh process per case: relay threads, once started, run until exit.
	GTEST_FLAG_SET(death_test_style, "threadsafe");
	const ThreadCase &tc = GetParam();
	EXPECT_EXIT(run_thread_case(tc), ::testing::ExitedWithCode(0), "") << tc.what;
}

INSTANTIATE_TEST_SUITE_P(
        Policy, RelayThreads,
        ::testing::Values(ThreadCase{"one CPU never starts a second thread", 1, 4, 12, 1},
                          ThreadCase{"two CPUs: two threads", 2, 4, 12, 2},
                          ThreadCase{"3x the threshold on four CPUs: three threads", 4, 4, 12, 3},
                          ThreadCase{"never more than four", 16, 2, 12, 4},
                          ThreadCase{"below the threshold: one thread", 4, 16, 12, 1},
                          ThreadCase{"exactly the threshold: still one", 4, 6, 6, 1},
                          ThreadCase{"relay_threads=1 on four CPUs: one", 4, 2, 12, 1, "1", 1},
                          ThreadCase{"relay_threads=3 on one CPU: three (the setting wins)", 1, 2,
                                     12, 3, "3", 3},
                          ThreadCase{"relay_threads=auto: the CPUs", 2, 2, 12, 2, "auto", 0}));

// A connection offered after the relay's exit handler ran (another exit
// handler, registered before the relay's, runs after it) is refused at once:
// its thread is stopping and would never move a byte.
SSL *late_ssl; // made before the exit handlers are registered
int late_app = -1, late_net = -1;

void add_after_relay_exit()
{
	struct relay_spec spec {
	};
	spec.app_fd = late_app;
	spec.net_fd = late_net;
	spec.ssl = late_ssl;
	long before = relay_count();
	errno = 0;
	int rc = relay_add(&spec);
	_exit(rc == -1 && errno == ECONNABORTED && relay_count() == before ? 42 : 4);
}

[[noreturn]] void run_add_after_exit()
{
	// OpenSSL's own exit handler is registered first (by the context), ours
	// next, the relay's last (at its first thread): they run the other way.
	int app[2], net[2];
	char err[256];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, app) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, net) != 0)
		_exit(2);
	SSL_CTX *ctx = tlsio_client_ctx(err, sizeof(err));
	late_ssl = ctx != nullptr ? SSL_new(ctx) : nullptr;
	if (late_ssl == nullptr || SSL_set_fd(late_ssl, net[0]) != 1)
		_exit(3);
	late_app = app[1];
	late_net = net[0];
	atexit(add_after_relay_exit);
	Wrapped w = wrap_echo();
	size_t off = 0;
	if (!exchange(w.app, 100, &off))
		_exit(5);
	exit(0);
}

TEST(RelayThreadsHooks, RefusesConnectionsOnceExiting)
{
	GTEST_FLAG_SET(death_test_style, "threadsafe");
	EXPECT_EXIT(run_add_after_exit(), ::testing::ExitedWithCode(42), "");
}

TEST(RelayThreadsHooks, DefaultsComeBack)
{
	// Out-of-range values restore the defaults; nothing else observable
	// changes in this process, which keeps its single thread.
	relay_set_conns_per_thread(0);
	relay_set_ncpu(-1);
	Wrapped w = wrap_echo();
	size_t off = 0;
	EXPECT_TRUE(exchange(w.app, 100, &off));
	EXPECT_EQ(relay_nthreads(), 1);
	EXPECT_EQ(relay_count_on(0), 1);
	EXPECT_EQ(relay_count_on(-1), -1);
	EXPECT_EQ(relay_count_on(1), -1);
	shutdown(w.app, SHUT_WR);
	EXPECT_TRUE(reads_eof(w.app));
	close(w.app);
	EXPECT_TRUE(relay_settles_at(0));
}

// --- parking (relay.c, "Parking") --------------------------------------------

// Waits (bounded) until `cond` holds.
template <typename F> bool settles(F cond)
{
	auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
	while (std::chrono::steady_clock::now() < until) {
		if (cond())
			return true;
		std::this_thread::sleep_for(std::chrono::milliseconds(2));
	}
	return false;
}

// The kernel lacks io_uring's FIXED_FD_INSTALL (before 6.8) or forbids it:
// parking cannot happen, and the tests below have nothing to check.
bool can_park()
{
	struct uring r {
	};
	if (real_init() != 0 || uring_open(&r, 2, 4) != 0)
		return false;
	uring_close(&r);
	return true;
}

// With relay_park = always every idle connection keeps one descriptor (the
// program's end): the relay's two are parked.  Data in either direction,
// half-close from either side, getsockopt through relay_unpark() and close
// all bring a connection back, and every stream stays whole.
[[noreturn]] void run_park_always()
{
	bool ok = true;
	auto fail = [&](const std::string &why) {
		fprintf(stderr, "park always: %s\n", why.c_str());
		ok = false;
	};
	setenv("TLSSHIM_RELAY_PARK", "always", 1); // read at the first thread's start
	const int n = 16;
	int fds_before = count_fds();
	std::vector<Wrapped> conns;
	for (int k = 0; k < n; k++)
		conns.push_back(wrap_echo());
	if (!settles([&] { return relay_parked() == n; }))
		fail("parked " + std::to_string(relay_parked()) + " of " + std::to_string(n));
	// Per connection: the program's end and the test's TLS peer's end; the
	// relay holds its epoll set, eventfd and ring, and nothing per connection.
	// (Waited for: the peer's session tickets may arrive after a connection
	// parked, and wake it once more.)
	if (!settles([&] { return relay_parked() == n && count_fds() == fds_before + 2 * n + 3; }))
		fail("descriptors " + std::to_string(count_fds() - fds_before) + ", want " +
		     std::to_string(2 * n + 3));

	// Every connection at once: each unparks, moves its stream, parks again.
	std::vector<std::thread> users;
	std::atomic<int> bad{0};
	for (int i = 0; i < n; i++)
		users.emplace_back([&, i] {
			size_t off = static_cast<size_t>(i) * 104729u;
			for (size_t len : {1, 4096, 100000, 7})
				if (!exchange(conns[i].app, len, &off))
					bad++;
		});
	for (auto &u : users)
		u.join();
	if (bad != 0)
		fail(std::to_string(bad.load()) + " exchanges lost or reordered data");
	if (!settles([&] { return relay_parked() == n; }))
		fail("parked again " + std::to_string(relay_parked()));

	// The program's getsockopt on a parked connection's TCP socket.
	struct stat st {
	};
	fstat(conns[0].app, &st);
	struct wrapped_info info {
	};
	info.tcp_fd = FDREG_TCP_PARKED; // as the shim's registry has it
	if (fdreg_add(st.st_ino, &info) != 0)
		fail("fdreg_add");
	int type = 0, ret = -1;
	socklen_t len = sizeof(type);
	ino_t ino = 0;
	if (fdreg_tcp_sockopt(conns[0].app, false, SOL_SOCKET, SO_TYPE, &type, &len, &ret, &ino) !=
	            FDREG_SOCKOPT_PARKED ||
	    ino != st.st_ino)
		fail("the registry does not say parked");
	if (relay_unpark(ino) != 0)
		fail("relay_unpark");
	if (relay_parked() != n - 1)
		fail("relay_unpark left " + std::to_string(relay_parked()) + " parked");
	if (fdreg_tcp_sockopt(conns[0].app, false, SOL_SOCKET, SO_TYPE, &type, &len, &ret, &ino) !=
	            FDREG_SOCKOPT_DONE ||
	    ret != 0 || type != SOCK_STREAM)
		fail("getsockopt after unparking");
	if (relay_unpark(ino) != 0 || relay_unpark(12345) != 0)
		fail("unparking what is not parked, or not there, is a no-op");
	fdreg_set_tcp_fd(st.st_ino, -1);

	// Half-close from the program wakes the connection; the peer's close
	// (it echoes until EOF, then closes) wakes it from the other side.
	for (auto &w : conns)
		shutdown(w.app, SHUT_WR);
	for (auto &w : conns)
		if (!reads_eof(w.app))
			fail("no EOF after half-close");
	for (auto &w : conns) {
		close(w.app);
		w.peer.reset();
	}
	if (!relay_settles_at(0) || relay_parked() != 0)
		fail("connections left: " + std::to_string(relay_count()));
	if (count_fds() != fds_before + 3)
		fail("descriptors left: " + std::to_string(count_fds() - fds_before));
	exit(ok ? 0 : 1);
}

// Each case runs in a fresh process (a death test's child): the relay reads
// relay_park when its first thread starts, and threads run until exit.
class RelayPark : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		if (!can_park())
			GTEST_SKIP() << "no io_uring with FIXED_FD_INSTALL here";
		GTEST_FLAG_SET(death_test_style, "threadsafe");
	}
};

TEST_F(RelayPark, AlwaysParksIdleConnectionsAndKeepsEveryStream)
{
	EXPECT_EXIT(run_park_always(), ::testing::ExitedWithCode(0), "");
}

// relay_park = auto (the default): under a soft limit of 256 descriptors, 75
// connections, which would take 300 (4 each here: the test's TLS peer is in
// this process too) without parking, all open and all work; parking starts
// when the shim's hidden descriptors reach 64, a quarter of the limit.
[[noreturn]] void run_park_auto()
{
	bool ok = true;
	auto fail = [&](const std::string &why) {
		fprintf(stderr, "park auto: %s\n", why.c_str());
		ok = false;
	};
	struct rlimit rl {
	};
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = 256;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		fail("setrlimit");
	const int n = 75;
	std::vector<Wrapped> conns;
	for (int k = 0; k < n && ok; k++) {
		conns.push_back(wrap_echo());
		if (conns.back().app < 0)
			fail("connection " + std::to_string(k) + " not made");
		if (!settles([] { return fdreg_hidden_count() < 64; }))
			fail("hidden descriptors stay at " + std::to_string(fdreg_hidden_count()));
	}
	if (relay_parked() < n / 2)
		fail("only " + std::to_string(relay_parked()) + " parked");
	size_t off = 0;
	for (auto &w : conns)
		if (!exchange(w.app, 3000, &off))
			fail("an exchange lost or reordered data");
	for (auto &w : conns) {
		close(w.app);
		w.peer.reset();
	}
	if (!relay_settles_at(0))
		fail("connections left");
	exit(ok ? 0 : 1);
}

TEST_F(RelayPark, AutoParksUnderDescriptorPressure)
{
	EXPECT_EXIT(run_park_auto(), ::testing::ExitedWithCode(0), "");
}

// A parked connection woken when the program has filled the descriptor
// table cannot get its descriptors back at once: it waits, trying again,
// and resumes with nothing lost once the program frees one (`resumes`), or,
// past the patience bound, is closed with a relay_failed line (the program
// reads EOF or a reset, no hang) and the relay goes on.
[[noreturn]] void run_park_no_descriptors(bool resumes)
{
	setenv("TLSSHIM_RELAY_PARK", "always", 1);
	setenv("TLSSHIM_LOG_STDERR", "yes", 1);
	relay_set_unpark_patience_ms(resumes ? 60000 : 300);
	// The peer's thread must not end while the table is full: the sanitizers'
	// own checks at a thread's exit need descriptors (UBSan then reports a
	// false "invalid vptr"), so it waits for the table to have room again.
	static std::atomic<bool> room{false};
	auto patient_echo = [](SSL *ssl) {
		char buf[16384];
		int n;
		while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
			if (SSL_write(ssl, buf, n) != n)
				break;
		SSL_shutdown(ssl);
		settles([] { return room.load(); });
	};
	Wrapped w = wrap(patient_echo), w2 = wrap(patient_echo);
	// One exchange each first: the peer's session tickets come before its
	// echo, so none can arrive later and wake a connection on its own.
	size_t first = 0;
	if (!exchange(w.app, 10, &first) || !exchange(w2.app, 10, &first))
		_exit(13);
	if (!settles([] { return relay_parked() == 2; }))
		_exit(2);
	struct rlimit rl {
	};
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = static_cast<rlim_t>(count_fds() + 8);
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		_exit(3);
	std::vector<int> filler;
	for (int fd; (fd = dup(0)) >= 0;)
		filler.push_back(fd);
	if (write(w.app, "hello", 5) != 5)
		_exit(4);
	if (resumes) {
		// A second connection wakes while the first waits: both wait, both resume.
		if (!settles([] { return relay_unpark_waiting() == 1; }))
			_exit(5);
		if (write(w2.app, "world", 5) != 5 ||
		    !settles([] { return relay_unpark_waiting() == 2; })) {
			fprintf(stderr, "waiting %ld parked %ld\n", relay_unpark_waiting(),
			        relay_parked());
			_exit(12);
		}
		close(filler.back()); // one free descriptor is not enough: two are needed
		filler.pop_back();
		if (relay_unpark_waiting() != 2 || relay_parked() != 2)
			_exit(6);
		for (int fd : filler)
			close(fd);
		room = true;
		unsigned char back[5], back2[5];
		if (read_n(w.app, back, 5) != 5 || memcmp(back, "hello", 5) != 0 ||
		    read_n(w2.app, back2, 5) != 5 || memcmp(back2, "world", 5) != 0)
			_exit(7);
		if (relay_unpark_waiting() != 0)
			_exit(8);
	} else {
		// EOF, or ECONNRESET: the relay's end went away with the bytes unread.
		struct pollfd p = {w.app, POLLIN, 0};
		char c;
		bool eof =
		        poll(&p, 1, 10000) == 1 && (read(w.app, &c, 1) == 0 || errno == ECONNRESET);
		for (int fd : filler)
			close(fd);
		room = true;
		if (!eof)
			_exit(9);
		if (!relay_settles_at(1) || relay_parked() != 1 || relay_unpark_waiting() != 0)
			_exit(10); // the other connection, never woken, is parked still
	}
	// The relay still works.
	Wrapped again = wrap_echo();
	size_t off = 0;
	if (!exchange(again.app, 5000, &off))
		_exit(11);
	close(w.app);
	close(w2.app);
	close(again.app);
	w.peer.reset(); // joined: exit() runs no destructors
	w2.peer.reset();
	again.peer.reset();
	// _exit: the sanitizers' exit-time checks are not reliable in a process
	// that ran its descriptor table full (TSan has reported these joined
	// peer threads as leaked, 1 run in 20); the other parking cases exit()
	// and keep them.
	_exit(0);
}

TEST_F(RelayPark, NoDescriptorToResumeWaitsUntilOneIsFree)
{
	EXPECT_EXIT(run_park_no_descriptors(true), ::testing::ExitedWithCode(0), "");
}

TEST_F(RelayPark, NoDescriptorForTooLongClosesTheConnection)
{
	EXPECT_EXIT(run_park_no_descriptors(false), ::testing::ExitedWithCode(0),
	            "event=relay_failed .*reason=\"parked connection not resumed: Too many open "
	            "files \\(waited too long for a descriptor\\)\"");
}

// Where io_uring is forbidden (here by a seccomp filter, as a container
// runtime's profile may do), nothing parks, one park_unavailable line says
// why, and connections work as before.
[[noreturn]] void run_park_forbidden()
{
	setenv("TLSSHIM_RELAY_PARK", "always", 1);
	setenv("TLSSHIM_LOG_STDERR", "yes", 1);
	struct sock_filter filter[] = {
	        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
	        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])),
	                          filter};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		_exit(2);
	std::vector<Wrapped> conns;
	for (int k = 0; k < 3; k++)
		conns.push_back(wrap_echo());
	size_t off = 0;
	for (auto &w : conns)
		if (!exchange(w.app, 20000, &off))
			_exit(3);
	if (relay_parked() != 0)
		_exit(4);
	for (auto &w : conns) {
		close(w.app);
		w.peer.reset();
	}
	exit(relay_settles_at(0) ? 0 : 6);
}

TEST(RelayParkUnavailable, WithoutIoUringNothingParksAndOneLineSaysSo)
{
	GTEST_FLAG_SET(death_test_style, "threadsafe");
	EXPECT_EXIT(run_park_forbidden(), ::testing::ExitedWithCode(0),
	            "event=park_unavailable .*stage=relay reason=\"io_uring_setup: Operation not "
	            "permitted: idle connections keep their three descriptors\"");
}

} // namespace
