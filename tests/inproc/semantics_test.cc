/*
 * semantics_test.cc: does a program that runs under tlsshim still see the
 * socket semantics it was written against?
 *
 * This binary is linked against libtlsshim.so ahead of libc, so every
 * connect() below goes through the shim exactly as under LD_PRELOAD, and the
 * shim's configuration comes from the environment it is started with:
 *   TLSSHIM_CA_FILE=<certs>/ca.pem   (the only trust anchor)
 *   TLSSHIM_CERTS=<certs>            (made by scripts/gen-certs.sh)
 * The servers are in-process (tls_server.h); they only listen and accept, so
 * the shim leaves them alone.  The close_range/closefrom tests use an echo
 * server in a child process instead (this binary re-executed with
 * kServerFlag), because closing "every other descriptor" would otherwise
 * close the in-process server's sockets too.
 *
 * Every test asserts something that a misbehaving shim would get wrong, and
 * every wait is bounded: I/O goes through poll() with deadlines, and a
 * watchdog aborts the whole binary if one test runs longer than
 * TLSSHIM_TEST_TIMEOUT seconds (default 120), so a shim bug fails CI instead
 * of hanging it.
 */
#include "tls_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern char **environ;

namespace
{

using tlstest::ConnRecord;
using tlstest::ServerMode;
using tlstest::ServerOptions;
using tlstest::TlsServer;
using Clock = std::chrono::steady_clock;

constexpr const char *kServerFlag = "--tlsshim-inproc-echo-server";
constexpr int kIoMs = 20000; // bound on any single exchange in a test

/* ---------- environment ---------- */

std::string CertsDir()
{
	const char *d = getenv("TLSSHIM_CERTS");
	if (d != nullptr && *d != '\0')
		return d;
	const char *ca = getenv("TLSSHIM_CA_FILE");
	if (ca == nullptr || *ca == '\0')
		return "";
	std::string s(ca);
	size_t slash = s.rfind('/');
	return slash == std::string::npos ? "." : s.substr(0, slash);
}

bool FileExists(const std::string &p)
{
	struct stat st;
	return stat(p.c_str(), &st) == 0;
}

std::string CertPath(const std::string &name)
{
	return CertsDir() + "/" + name + ".pem";
}
std::string KeyPath(const std::string &name)
{
	return CertsDir() + "/" + name + ".key";
}

ServerOptions Opts(ServerMode mode, const std::string &cert = "server")
{
	ServerOptions o;
	o.mode = mode;
	o.cert_file = CertPath(cert);
	o.key_file = KeyPath(cert);
	return o;
}

/* ---------- small utilities ---------- */

class ScopedFd
{
      public:
	explicit ScopedFd(int fd = -1) : fd_(fd)
	{
	}
	~ScopedFd()
	{
		reset();
	}
	ScopedFd(ScopedFd &&o) noexcept : fd_(o.release())
	{
	}
	ScopedFd &operator=(ScopedFd &&o) noexcept
	{
		if (this != &o)
			reset(o.release());
		return *this;
	}
	ScopedFd(const ScopedFd &) = delete;
	ScopedFd &operator=(const ScopedFd &) = delete;
	int get() const
	{
		return fd_;
	}
	int release()
	{
		int f = fd_;
		fd_ = -1;
		return f;
	}
	void reset(int nfd = -1)
	{
		if (fd_ >= 0)
			close(fd_);
		fd_ = nfd;
	}

      private:
	int fd_;
};

int MsLeft(Clock::time_point deadline)
{
	auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())
	                 .count();
	return d <= 0 ? 0 : static_cast<int>(std::min<long long>(d, 1 << 30));
}

Clock::time_point DeadlineIn(int ms)
{
	return Clock::now() + std::chrono::milliseconds(ms);
}

std::string Errno(int e)
{
	return std::to_string(e) + " (" + strerror(e) + ")";
}

// Deterministic pseudo-random bytes (splitmix64), distinct per seed.
std::string RandomBytes(size_t n, uint64_t seed)
{
	std::string s(n, '\0');
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
	for (size_t i = 0; i < n; i++) {
		if (i % 8 == 0) {
			x += 0x9E3779B97F4A7C15ull;
			uint64_t z = x;
			z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
			z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
			x = z ^ (z >> 31);
		}
		s[i] = static_cast<char>(x >> ((i % 8) * 8));
	}
	return s;
}

bool IsIpLiteral(const std::string &s)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

std::string FirstDifference(const std::string &want, const std::string &got)
{
	size_t i = 0;
	while (i < want.size() && i < got.size() && want[i] == got[i])
		i++;
	return "lengths want " + std::to_string(want.size()) + " got " +
	       std::to_string(got.size()) + ", first difference at byte " + std::to_string(i);
}

/* ---------- bounded I/O on the application's descriptor ---------- */

// Sends all of `data`, waiting for POLLOUT as needed; works on blocking and
// non-blocking descriptors alike (MSG_DONTWAIT).
::testing::AssertionResult SendAll(int fd, const std::string &data, int timeout_ms = kIoMs)
{
	auto deadline = DeadlineIn(timeout_ms);
	size_t sent = 0;
	while (sent < data.size()) {
		ssize_t n = send(fd, data.data() + sent, data.size() - sent,
		                 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			sent += static_cast<size_t>(n);
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return ::testing::AssertionFailure()
			       << "send failed after " << sent << " bytes: " << Errno(errno);
		struct pollfd p = {fd, POLLOUT, 0};
		int left = MsLeft(deadline);
		if (left == 0 || poll(&p, 1, left) == 0)
			return ::testing::AssertionFailure()
			       << "send timed out after " << sent << "/" << data.size();
	}
	return ::testing::AssertionSuccess();
}

// Receives until EOF.  Fails on timeout or error.
::testing::AssertionResult RecvUntilEof(int fd, std::string *out, int timeout_ms = kIoMs)
{
	auto deadline = DeadlineIn(timeout_ms);
	char buf[65536];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n > 0) {
			out->append(buf, static_cast<size_t>(n));
			continue;
		}
		if (n == 0)
			return ::testing::AssertionSuccess();
		if (errno != EAGAIN && errno != EINTR)
			return ::testing::AssertionFailure()
			       << "recv failed after " << out->size() << " bytes: " << Errno(errno);
		struct pollfd p = {fd, POLLIN, 0};
		int left = MsLeft(deadline);
		if (left == 0 || poll(&p, 1, left) == 0)
			return ::testing::AssertionFailure()
			       << "no EOF within " << timeout_ms << " ms; got " << out->size()
			       << " bytes";
	}
}

// Sends `data` and receives the same bytes back, interleaving both directions
// so that neither side can deadlock on full buffers.
::testing::AssertionResult EchoRoundTrip(int fd, const std::string &data, int timeout_ms = kIoMs)
{
	auto deadline = DeadlineIn(timeout_ms);
	std::string got;
	got.reserve(data.size());
	size_t sent = 0;
	std::vector<char> buf(65536);
	while (got.size() < data.size()) {
		int left = MsLeft(deadline);
		if (left == 0)
			return ::testing::AssertionFailure()
			       << "echo timed out: sent " << sent << "/" << data.size()
			       << ", received " << got.size();
		struct pollfd p = {
		        fd, static_cast<short>(POLLIN | (sent < data.size() ? POLLOUT : 0)), 0};
		int r = poll(&p, 1, left);
		if (r < 0 && errno != EINTR)
			return ::testing::AssertionFailure() << "poll: " << Errno(errno);
		if (r <= 0)
			continue;
		if (p.revents & POLLNVAL)
			return ::testing::AssertionFailure()
			       << "POLLNVAL: fd " << fd << " is not open";
		if ((p.revents & (POLLOUT | POLLERR)) && sent < data.size()) {
			ssize_t n = send(fd, data.data() + sent,
			                 std::min<size_t>(data.size() - sent, 65536),
			                 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				sent += static_cast<size_t>(n);
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				return ::testing::AssertionFailure() << "send failed after " << sent
				                                     << " bytes: " << Errno(errno);
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
			if (n > 0)
				got.append(buf.data(), static_cast<size_t>(n));
			else if (n == 0)
				return ::testing::AssertionFailure()
				       << "unexpected EOF: sent " << sent << ", received "
				       << got.size() << "/" << data.size();
			else if (errno != EAGAIN && errno != EINTR)
				return ::testing::AssertionFailure()
				       << "recv failed after " << got.size()
				       << " bytes: " << Errno(errno);
		}
	}
	if (got != data)
		return ::testing::AssertionFailure()
		       << "echo differs: " << FirstDifference(data, got);
	return ::testing::AssertionSuccess();
}

/* ---------- connecting ---------- */

struct Conn {
	ScopedFd fd;
	int rc = -1;              // 0 connected, -1 failed
	int err = 0;              // errno of connect(), or SO_ERROR after EINPROGRESS
	bool in_progress = false; // connect() said EINPROGRESS
};

// socket() + connect(); if connect() says EINPROGRESS, waits (bounded) for
// POLLOUT and takes the result from SO_ERROR, as an event loop would.
Conn ConnectAddr(const struct sockaddr *sa, socklen_t len, int type_flags = 0)
{
	Conn c;
	c.fd.reset(socket(sa->sa_family, SOCK_STREAM | type_flags, 0));
	if (c.fd.get() < 0) {
		c.err = errno;
		return c;
	}
	c.rc = connect(c.fd.get(), sa, len);
	c.err = c.rc == 0 ? 0 : errno;
	if (c.rc != 0 && c.err == EINPROGRESS) {
		c.in_progress = true;
		struct pollfd p = {c.fd.get(), POLLOUT, 0};
		if (poll(&p, 1, 30000) != 1) {
			c.rc = -1;
			c.err = ETIMEDOUT;
			return c;
		}
		int soerr = -1;
		socklen_t sl = sizeof soerr;
		if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
			soerr = errno;
		c.rc = soerr == 0 ? 0 : -1;
		c.err = soerr;
	}
	return c;
}

Conn ConnectServer(const TlsServer &s, int type_flags = 0)
{
	struct sockaddr_storage ss;
	socklen_t len = s.Address(&ss);
	return ConnectAddr(reinterpret_cast<struct sockaddr *>(&ss), len, type_flags);
}

struct sockaddr_in Loopback4(uint16_t port)
{
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(port);
	return sa;
}

// Connects to localhost:port through getaddrinfo (IPv4 answers), so that the
// shim learns the name.  Returns the connection to the first answer.
Conn ConnectByName(const char *host, uint16_t port, int *gai_err)
{
	struct addrinfo hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	struct addrinfo *res = nullptr;
	std::string svc = std::to_string(port);
	*gai_err = getaddrinfo(host, svc.c_str(), &hints, &res);
	if (*gai_err != 0 || res == nullptr)
		return Conn();
	Conn c = ConnectAddr(res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return c;
}

bool Ipv6LoopbackAvailable()
{
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct sockaddr_in6 sa;
	memset(&sa, 0, sizeof sa);
	sa.sin6_family = AF_INET6;
	sa.sin6_addr = in6addr_loopback;
	bool ok = bind(fd, reinterpret_cast<struct sockaddr *>(&sa), sizeof sa) == 0;
	close(fd);
	return ok;
}

// Waits (bounded) for a child; returns its wait status or -1 (then the child
// has been killed).
int WaitChild(pid_t pid, int timeout_ms)
{
	auto deadline = DeadlineIn(timeout_ms);
	for (;;) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		if (r < 0 && errno != EINTR)
			return -1;
		if (MsLeft(deadline) == 0) {
			kill(pid, SIGKILL);
			(void)waitpid(pid, &st, 0);
			return -1;
		}
		usleep(5000);
	}
}

std::string DescribeStatus(int st)
{
	if (st == -1)
		return "timed out (killed)";
	if (WIFEXITED(st))
		return "exit " + std::to_string(WEXITSTATUS(st));
	if (WIFSIGNALED(st))
		return "signal " + std::to_string(WTERMSIG(st));
	return "status " + std::to_string(st);
}

// Prints why a forked child failed and exits it without running any of the
// parent's destructors or atexit handlers.
[[noreturn]] void ChildExit(const ::testing::AssertionResult &r, int code)
{
	if (!r) {
		fprintf(stderr, "child: %s\n", r.message());
		_exit(code);
	}
	_exit(0);
}

/* ---------- an echo server in another process ---------- */

// Re-executes this binary as an echo server (kServerFlag), for the tests that
// close every descriptor of this process except the connection.
class SpawnedEchoServer
{
      public:
	~SpawnedEchoServer()
	{
		if (pid_ > 0) {
			kill(pid_, SIGKILL);
			int st;
			(void)waitpid(pid_, &st, 0);
		}
	}
	::testing::AssertionResult Start()
	{
		int p[2];
		if (pipe2(p, O_CLOEXEC) != 0)
			return ::testing::AssertionFailure() << "pipe2: " << Errno(errno);
		ScopedFd rd(p[0]), wr(p[1]);
		posix_spawn_file_actions_t fa;
		posix_spawn_file_actions_init(&fa);
		posix_spawn_file_actions_adddup2(&fa, wr.get(), STDOUT_FILENO);
		char arg0[] = "semantics_test";
		std::string flag(kServerFlag);
		char *argv[] = {arg0, &flag[0], nullptr};
		int rc = posix_spawn(&pid_, "/proc/self/exe", &fa, nullptr, argv, environ);
		posix_spawn_file_actions_destroy(&fa);
		if (rc != 0) {
			pid_ = -1;
			return ::testing::AssertionFailure() << "posix_spawn: " << Errno(rc);
		}
		wr.reset();
		std::string line;
		auto deadline = DeadlineIn(20000);
		while (line.find('\n') == std::string::npos) {
			struct pollfd pfd = {rd.get(), POLLIN, 0};
			int left = MsLeft(deadline);
			if (left == 0 || poll(&pfd, 1, left) != 1)
				return ::testing::AssertionFailure() << "server child sent no port";
			char buf[64];
			ssize_t n = read(rd.get(), buf, sizeof buf);
			if (n <= 0)
				return ::testing::AssertionFailure()
				       << "server child exited early: " << line;
			line.append(buf, static_cast<size_t>(n));
		}
		unsigned port = 0;
		if (sscanf(line.c_str(), "PORT %u", &port) != 1 || port == 0 || port > 65535)
			return ::testing::AssertionFailure() << "server child said: " << line;
		port_ = static_cast<uint16_t>(port);
		return ::testing::AssertionSuccess();
	}
	uint16_t port() const
	{
		return port_;
	}

      private:
	pid_t pid_ = -1;
	uint16_t port_ = 0;
};

int RunServerChild()
{
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		return 1;
	TlsServer srv(Opts(ServerMode::kEcho));
	if (!srv.ok()) {
		printf("ERROR %s\n", srv.error().c_str());
		fflush(stdout);
		return 1;
	}
	printf("PORT %u\n", static_cast<unsigned>(srv.port()));
	fflush(stdout);
	for (;;)
		pause(); // killed by the parent
}

/* ---------- fixtures ---------- */

class ShimTest : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		ASSERT_FALSE(CertsDir().empty())
		        << "run with TLSSHIM_CERTS=<dir from scripts/gen-certs.sh> and "
		           "TLSSHIM_CA_FILE=<dir>/ca.pem";
		ASSERT_TRUE(FileExists(CertPath("server"))) << CertPath("server") << " is missing";
	}

	std::unique_ptr<TlsServer> Start(const ServerOptions &o)
	{
		auto s = std::make_unique<TlsServer>(o);
		EXPECT_TRUE(s->ok()) << s->error();
		return s;
	}

	// Waits for the server to close connection `idx` and returns its record.
	ConnRecord Finished(const TlsServer &s, size_t n_done, size_t idx)
	{
		EXPECT_TRUE(s.WaitForDone(n_done, kIoMs))
		        << "server did not see the connection end";
		auto v = s.Connections();
		return idx < v.size() ? v[idx] : ConnRecord();
	}
};

#define START_SERVER(var, opts) \
	auto var = Start(opts); \
	ASSERT_TRUE(var->ok()) << var->error()

#define ASSERT_CONNECTED(c)                                          \
	ASSERT_EQ((c).rc, 0) << "connect failed: " << Errno((c).err) \
	                     << ((c).in_progress ? " (after EINPROGRESS)" : "")

/* ======================= blocking connect ======================= */

TEST_F(ShimTest, BlockingConnectIPv4Echo)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	EXPECT_FALSE(c.in_progress);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "hello through tlsshim\n"));
	std::string big = RandomBytes(256 * 1024, 1);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), big));
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_TRUE(r.handshake_ok) << r.error;
	EXPECT_EQ(r.bytes_in, 22u + big.size());
	EXPECT_EQ(r.peer_ip, "127.0.0.1");
	// RFC 6066 section 3: SNI never carries a literal address.
	EXPECT_FALSE(IsIpLiteral(r.sni)) << "SNI was an IP literal: " << r.sni;
}

TEST_F(ShimTest, ConnectByNameSendsSniAndVerifiesName)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	int gai = 0;
	Conn c = ConnectByName("localhost", srv->port(), &gai);
	ASSERT_EQ(gai, 0) << gai_strerror(gai);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "by name\n"));
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_TRUE(r.handshake_ok) << r.error;
	EXPECT_EQ(r.sni, "localhost") << "the resolved name was not sent as SNI";
}

// Certificates minted for these two tests, signed by the trusted CA.
class NameCheckTest : public ShimTest
{
      protected:
	void SetUp() override
	{
		ShimTest::SetUp();
		if (HasFatalFailure())
			return;
		if (!FileExists(CertsDir() + "/ca.key"))
			GTEST_SKIP() << "no ca.key in " << CertsDir() << " to mint certificates";
		char tmpl[] = "/tmp/tlsshim-inproc-XXXXXX";
		ASSERT_NE(mkdtemp(tmpl), nullptr) << Errno(errno);
		dir_ = tmpl;
	}
	void TearDown() override
	{
		for (const auto &f : files_)
			unlink(f.c_str());
		if (!dir_.empty())
			rmdir(dir_.c_str());
	}
	ServerOptions Mint(const std::string &name, const std::string &san)
	{
		ServerOptions o = Opts(ServerMode::kEcho);
		o.cert_file = dir_ + "/" + name + ".pem";
		o.key_file = dir_ + "/" + name + ".key";
		files_.push_back(o.cert_file);
		files_.push_back(o.key_file);
		std::string err;
		EXPECT_TRUE(tlstest::MintLeafCert(CertsDir() + "/ca.pem", CertsDir() + "/ca.key",
		                                  name, san, o.cert_file, o.key_file, &err))
		        << err;
		return o;
	}
	std::string dir_;
	std::vector<std::string> files_;
};

TEST_F(NameCheckTest, NameOnlyCertificateAcceptedForResolvedName)
{
	START_SERVER(srv, Mint("dnsonly", "DNS:localhost"));
	int gai = 0;
	Conn c = ConnectByName("localhost", srv->port(), &gai);
	ASSERT_EQ(gai, 0) << gai_strerror(gai);
	ASSERT_CONNECTED(c) << " (certificate has DNS:localhost and no IP SAN)";
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "name only\n"));
}

TEST_F(NameCheckTest, CertificateWithoutResolvedNameRefused)
{
	// Valid for the address but not for the name the program asked for.
	START_SERVER(srv, Mint("iponly", "DNS:not-localhost.invalid, IP:127.0.0.1"));
	int gai = 0;
	Conn c = ConnectByName("localhost", srv->port(), &gai);
	ASSERT_EQ(gai, 0) << gai_strerror(gai);
	EXPECT_EQ(c.rc, -1) << "connected although the certificate does not name "
	                       "localhost: the resolved name was not verified";
	EXPECT_EQ(c.err, ECONNREFUSED) << Errno(c.err);
	if (c.rc == 0)
		return;
	EXPECT_EQ(send(c.fd.get(), "X", 1, MSG_NOSIGNAL), -1);
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_EQ(r.bytes_in, 0u);
}

TEST_F(ShimTest, IPv6LoopbackEcho)
{
	if (!Ipv6LoopbackAvailable())
		GTEST_SKIP() << "no ::1 here";
	ServerOptions o = Opts(ServerMode::kEcho);
	o.family = AF_INET6;
	START_SERVER(srv, o);
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), RandomBytes(100000, 6)));

	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	ASSERT_EQ(getpeername(c.fd.get(), reinterpret_cast<sockaddr *>(&ss), &len), 0)
	        << Errno(errno);
	ASSERT_EQ(ss.ss_family, AF_INET6);
	auto *s6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);
	EXPECT_EQ(len, sizeof(struct sockaddr_in6));
	EXPECT_EQ(ntohs(s6->sin6_port), srv->port());
	EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));
	int dom = -1;
	socklen_t dl = sizeof dom;
	ASSERT_EQ(getsockopt(c.fd.get(), SOL_SOCKET, SO_DOMAIN, &dom, &dl), 0);
	EXPECT_EQ(dom, AF_INET6);
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_TRUE(r.handshake_ok) << r.error;
	EXPECT_EQ(r.peer_ip, "::1");
}

TEST_F(ShimTest, Tls12ServerEcho)
{
	ServerOptions o = Opts(ServerMode::kEcho);
	o.max_proto_version = TLS1_2_VERSION;
	START_SERVER(srv, o);
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), RandomBytes(300000, 12)));
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_EQ(r.protocol, "TLSv1.2");
}

/* ======================= descriptor flags ======================= */

struct FlagCase {
	const char *name;
	int type_flags;      // passed to socket()
	bool fcntl_nonblock; // set O_NONBLOCK with fcntl() before connect
};

void PrintTo(const FlagCase &c, std::ostream *os)
{
	*os << c.name;
}

class FlagsTest : public ShimTest, public ::testing::WithParamInterface<FlagCase>
{
};

TEST_P(FlagsTest, ConnectKeepsStatusAndDescriptorFlags)
{
	const FlagCase &fc = GetParam();
	START_SERVER(srv, Opts(ServerMode::kEcho));
	struct sockaddr_storage ss;
	socklen_t len = srv->Address(&ss);
	ScopedFd fd(socket(AF_INET, SOCK_STREAM | fc.type_flags, 0));
	ASSERT_GE(fd.get(), 0) << Errno(errno);
	if (fc.fcntl_nonblock) {
		ASSERT_EQ(fcntl(fd.get(), F_SETFL, fcntl(fd.get(), F_GETFL) | O_NONBLOCK), 0);
	}
	bool want_nonblock = fc.fcntl_nonblock || (fc.type_flags & SOCK_NONBLOCK);
	bool want_cloexec = fc.type_flags & SOCK_CLOEXEC;

	int rc = connect(fd.get(), reinterpret_cast<sockaddr *>(&ss), len);
	int err = errno;
	if (rc != 0) {
		ASSERT_TRUE(want_nonblock && err == EINPROGRESS) << Errno(err);
		struct pollfd p = {fd.get(), POLLOUT, 0};
		ASSERT_EQ(poll(&p, 1, 30000), 1) << "no POLLOUT after EINPROGRESS";
	}
	int soerr = -1;
	socklen_t sl = sizeof soerr;
	ASSERT_EQ(getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &sl), 0);
	ASSERT_EQ(soerr, 0) << Errno(soerr);

	int fl = fcntl(fd.get(), F_GETFL);
	int fdf = fcntl(fd.get(), F_GETFD);
	ASSERT_NE(fl, -1);
	ASSERT_NE(fdf, -1);
	EXPECT_EQ((fl & O_ACCMODE), O_RDWR);
	EXPECT_EQ((fdf & FD_CLOEXEC) != 0, want_cloexec) << "F_GETFD=" << fdf;
	// ASSERT: the read below would block on a descriptor that lost O_NONBLOCK.
	ASSERT_EQ((fl & O_NONBLOCK) != 0, want_nonblock) << "F_GETFL=" << fl;

	if (want_nonblock) {
		// Nothing has been sent, so a read must not block and must not invent
		// data (TLS 1.3 session tickets are the relay's business).
		char b;
		auto t0 = Clock::now();
		ssize_t n = recv(fd.get(), &b, 1, 0);
		int e = errno;
		EXPECT_EQ(n, -1);
		EXPECT_TRUE(e == EAGAIN || e == EWOULDBLOCK) << Errno(e);
		auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
		EXPECT_LT(ms.count(), 1000) << "a non-blocking recv() took " << ms.count() << " ms";
		struct pollfd p = {fd.get(), POLLOUT, 0};
		EXPECT_EQ(poll(&p, 1, 1000), 1) << "connected socket not writable";
	}
	ASSERT_TRUE(EchoRoundTrip(fd.get(), "flags\n"));
}

INSTANTIATE_TEST_SUITE_P(
        Semantics, FlagsTest,
        ::testing::Values(FlagCase{"Plain", 0, false},
                          FlagCase{"SockNonblock", SOCK_NONBLOCK, false},
                          FlagCase{"FcntlNonblock", 0, true},
                          FlagCase{"SockCloexec", SOCK_CLOEXEC, false},
                          FlagCase{"NonblockCloexec", SOCK_NONBLOCK | SOCK_CLOEXEC, false}),
        [](const ::testing::TestParamInfo<FlagCase> &i) { return std::string(i.param.name); });

/* ======================= readiness ======================= */

enum class Waiter { kPoll, kSelect, kEpollLevel, kEpollEdge };

const char *WaiterName(Waiter w)
{
	switch (w) {
	case Waiter::kPoll:
		return "Poll";
	case Waiter::kSelect:
		return "Select";
	case Waiter::kEpollLevel:
		return "EpollLevel";
	case Waiter::kEpollEdge:
		return "EpollEdge";
	}
	return "Unknown";
}

void PrintTo(Waiter w, std::ostream *os)
{
	*os << WaiterName(w);
}

// One readiness mechanism watching one descriptor.
class Readiness
{
      public:
	Readiness(Waiter w, int fd) : w_(w), fd_(fd)
	{
		if (w_ == Waiter::kEpollLevel || w_ == Waiter::kEpollEdge) {
			ep_.reset(epoll_create1(EPOLL_CLOEXEC));
			struct epoll_event ev;
			memset(&ev, 0, sizeof ev);
			ev.events = EPOLLIN | (w_ == Waiter::kEpollEdge ? EPOLLOUT | EPOLLET : 0);
			ev.data.fd = fd_;
			ok_ = ep_.get() >= 0 && epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd_, &ev) == 0;
			registered_out_ = w_ == Waiter::kEpollEdge;
		} else {
			ok_ = w_ != Waiter::kSelect || fd_ < FD_SETSIZE;
		}
	}
	bool ok() const
	{
		return ok_;
	}

	// Waits up to timeout_ms for readability (and writability if want_out;
	// edge-triggered always reports both).  Returns 1 on an event, 0 on
	// timeout, -1 on error.
	int Wait(bool want_out, int timeout_ms, bool *in, bool *out)
	{
		*in = *out = false;
		switch (w_) {
		case Waiter::kPoll: {
			struct pollfd p = {
			        fd_, static_cast<short>(POLLIN | (want_out ? POLLOUT : 0)), 0};
			int r = poll(&p, 1, timeout_ms);
			if (r <= 0)
				return r < 0 ? -1 : 0;
			*in = p.revents & (POLLIN | POLLHUP | POLLERR);
			*out = p.revents & (POLLOUT | POLLERR);
			return 1;
		}
		case Waiter::kSelect: {
			fd_set r, w;
			FD_ZERO(&r);
			FD_ZERO(&w);
			FD_SET(fd_, &r);
			if (want_out)
				FD_SET(fd_, &w);
			struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
			int n = select(fd_ + 1, &r, want_out ? &w : nullptr, nullptr, &tv);
			if (n <= 0)
				return n < 0 ? -1 : 0;
			*in = FD_ISSET(fd_, &r);
			*out = want_out && FD_ISSET(fd_, &w);
			return 1;
		}
		case Waiter::kEpollLevel:
			if (want_out != registered_out_) {
				struct epoll_event ev;
				memset(&ev, 0, sizeof ev);
				ev.events = EPOLLIN | (want_out ? uint32_t{EPOLLOUT} : 0u);
				ev.data.fd = fd_;
				if (epoll_ctl(ep_.get(), EPOLL_CTL_MOD, fd_, &ev) != 0)
					return -1;
				registered_out_ = want_out;
			}
			[[fallthrough]];
		case Waiter::kEpollEdge: {
			struct epoll_event ev;
			int n = epoll_wait(ep_.get(), &ev, 1, timeout_ms);
			if (n <= 0)
				return n < 0 ? -1 : 0;
			*in = ev.events & (EPOLLIN | EPOLLHUP | EPOLLERR);
			*out = ev.events & (EPOLLOUT | EPOLLERR);
			return 1;
		}
		}
		return -1;
	}

      private:
	Waiter w_;
	int fd_;
	ScopedFd ep_;
	bool ok_ = false;
	bool registered_out_ = false;
};

class ReadinessTest : public ShimTest, public ::testing::WithParamInterface<Waiter>
{
};

TEST_P(ReadinessTest, NonBlockingEchoDrivenByReadiness)
{
	const Waiter w = GetParam();
	const bool edge = w == Waiter::kEpollEdge;
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv, SOCK_NONBLOCK);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	// Checked first: on a blocking descriptor the loops below would block.
	ASSERT_TRUE(fcntl(fd, F_GETFL) & O_NONBLOCK) << "connect() dropped O_NONBLOCK";
	Readiness rd(w, fd);
	ASSERT_TRUE(rd.ok()) << Errno(errno);

	// 1. A connected socket is writable at once and not readable.
	bool in = false, out = false;
	ASSERT_EQ(rd.Wait(true, 5000, &in, &out), 1) << "not writable after connect";
	EXPECT_TRUE(out);
	EXPECT_FALSE(in) << "readable before the server sent anything";

	// 2. No spurious readability while nothing is in flight.
	int r = rd.Wait(false, 300, &in, &out);
	ASSERT_GE(r, 0) << Errno(errno);
	EXPECT_FALSE(r == 1 && in) << "spuriously readable";

	// 3. 512 KiB through the echo server, driven only by readiness.  Level
	// modes do one send and one 16 KiB recv per event, so data left behind
	// must be reported again; edge mode writes and reads until EAGAIN.
	const std::string payload = RandomBytes(512 * 1024, 100 + static_cast<int>(w));
	std::string got;
	size_t sent = 0;
	bool can_write = edge; // edge: the EPOLLOUT edge of step 1 was consumed
	std::vector<char> buf(65536);
	auto deadline = DeadlineIn(kIoMs);
	while (got.size() < payload.size()) {
		if (edge) {
			while (can_write && sent < payload.size()) {
				ssize_t n = send(fd, payload.data() + sent,
				                 std::min<size_t>(payload.size() - sent, 65536),
				                 MSG_NOSIGNAL);
				if (n > 0) {
					sent += static_cast<size_t>(n);
				} else {
					ASSERT_TRUE(n < 0 && errno == EAGAIN) << Errno(errno);
					can_write = false;
				}
			}
		}
		ASSERT_GT(MsLeft(deadline), 0)
		        << "timed out: sent " << sent << ", received " << got.size();
		r = rd.Wait(sent < payload.size(), std::min(MsLeft(deadline), 10000), &in, &out);
		ASSERT_EQ(r, 1) << "no readiness event within 10 s with data in flight: "
		                << "sent " << sent << "/" << payload.size() << ", received "
		                << got.size();
		if (edge) {
			if (out)
				can_write = true;
			while (in) {
				ssize_t n = recv(fd, buf.data(), buf.size(), 0);
				if (n > 0) {
					got.append(buf.data(), static_cast<size_t>(n));
					continue;
				}
				ASSERT_NE(n, 0) << "unexpected EOF after " << got.size();
				ASSERT_EQ(errno, EAGAIN) << Errno(errno);
				break;
			}
		} else {
			if (out && sent < payload.size()) {
				ssize_t n = send(fd, payload.data() + sent,
				                 std::min<size_t>(payload.size() - sent, 65536),
				                 MSG_NOSIGNAL);
				if (n > 0)
					sent += static_cast<size_t>(n);
				else
					ASSERT_EQ(errno, EAGAIN)
					        << "writable but send said " << Errno(errno);
			}
			if (in) {
				ssize_t n = recv(fd, buf.data(), 16384, 0);
				ASSERT_NE(n, 0) << "unexpected EOF after " << got.size();
				if (n > 0)
					got.append(buf.data(), static_cast<size_t>(n));
				else
					ASSERT_EQ(errno, EAGAIN)
					        << "readable but recv said " << Errno(errno);
			}
		}
	}
	ASSERT_EQ(got.size(), payload.size());
	ASSERT_TRUE(got == payload) << FirstDifference(payload, got);

	// 4. Half-close; the echo server closes; EOF must be reported as readable.
	ASSERT_EQ(shutdown(fd, SHUT_WR), 0) << Errno(errno);
	bool eof = false;
	while (!eof) {
		ASSERT_GT(MsLeft(deadline), 0) << "EOF never became readable";
		r = rd.Wait(false, std::min(MsLeft(deadline), 10000), &in, &out);
		ASSERT_EQ(r, 1) << "no readiness event for EOF within 10 s";
		while (in) {
			ssize_t n = recv(fd, buf.data(), buf.size(), 0);
			if (n == 0) {
				eof = true;
				break;
			}
			ASSERT_LT(n, 0) << "data after the echo was complete";
			ASSERT_EQ(errno, EAGAIN) << Errno(errno);
			break;
		}
	}
	ConnRecord rec = Finished(*srv, 1, 0);
	EXPECT_EQ(rec.bytes_in, payload.size());
}

INSTANTIATE_TEST_SUITE_P(Semantics, ReadinessTest,
                         ::testing::Values(Waiter::kPoll, Waiter::kSelect, Waiter::kEpollLevel,
                                           Waiter::kEpollEdge),
                         [](const ::testing::TestParamInfo<Waiter> &i) {
	                         return std::string(WaiterName(i.param));
                         });

/* ======================= socket identity ======================= */

TEST_F(ShimTest, PeerAndSockNameAreTheTcpEndpoints)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(srv->WaitForAccepted(1, kIoMs));

	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	ASSERT_EQ(getpeername(c.fd.get(), reinterpret_cast<sockaddr *>(&ss), &len), 0)
	        << Errno(errno);
	ASSERT_EQ(ss.ss_family, AF_INET) << "getpeername family";
	EXPECT_EQ(len, sizeof(struct sockaddr_in));
	auto *peer = reinterpret_cast<struct sockaddr_in *>(&ss);
	EXPECT_EQ(ntohs(peer->sin_port), srv->port());
	EXPECT_EQ(ntohl(peer->sin_addr.s_addr), INADDR_LOOPBACK);

	len = sizeof ss;
	ASSERT_EQ(getsockname(c.fd.get(), reinterpret_cast<sockaddr *>(&ss), &len), 0)
	        << Errno(errno);
	ASSERT_EQ(ss.ss_family, AF_INET) << "getsockname family";
	EXPECT_EQ(len, sizeof(struct sockaddr_in));
	auto *self = reinterpret_cast<struct sockaddr_in *>(&ss);
	uint16_t local_port = ntohs(self->sin_port);
	EXPECT_NE(local_port, 0);
	EXPECT_EQ(ntohl(self->sin_addr.s_addr) >> 24, 127u) << "not loopback";
	// The port the server saw is the one getsockname reports.
	EXPECT_EQ(srv->Connections()[0].peer_port, local_port);

	// A short buffer is truncated and told the real length, as for TCP.
	struct sockaddr_in small;
	memset(&small, 0, sizeof small);
	len = 4;
	ASSERT_EQ(getpeername(c.fd.get(), reinterpret_cast<sockaddr *>(&small), &len), 0);
	EXPECT_EQ(len, sizeof(struct sockaddr_in));
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "identity\n"));
}

TEST_F(ShimTest, SocketOptionsDescribeTcp)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	struct {
		int level, opt, want;
		const char *name;
	} reads[] = {
	        {SOL_SOCKET, SO_DOMAIN, AF_INET, "SO_DOMAIN"},
	        {SOL_SOCKET, SO_PROTOCOL, IPPROTO_TCP, "SO_PROTOCOL"},
	        {SOL_SOCKET, SO_TYPE, SOCK_STREAM, "SO_TYPE"},
	        {SOL_SOCKET, SO_ERROR, 0, "SO_ERROR"},
	        {SOL_SOCKET, SO_ACCEPTCONN, 0, "SO_ACCEPTCONN"},
	};
	for (const auto &t : reads) {
		int v = -1;
		socklen_t l = sizeof v;
		ASSERT_EQ(getsockopt(fd, t.level, t.opt, &v, &l), 0)
		        << t.name << ": " << Errno(errno);
		EXPECT_EQ(v, t.want) << t.name;
	}
	// TCP- and IP-level options reach the TCP socket: on an AF_UNIX socket
	// these calls fail, so a round trip proves they are forwarded.
	struct {
		int level, opt, value;
		const char *name;
	} rts[] = {
	        {IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY=1"},
	        {IPPROTO_TCP, TCP_NODELAY, 0, "TCP_NODELAY=0"},
	        {IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY=1 again"},
	        {IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE"},
	        {IPPROTO_IP, IP_TOS, IPTOS_LOWDELAY, "IP_TOS"},
	};
	for (const auto &t : rts) {
		ASSERT_EQ(setsockopt(fd, t.level, t.opt, &t.value, sizeof t.value), 0)
		        << "set " << t.name << ": " << Errno(errno);
		int v = -1;
		socklen_t l = sizeof v;
		ASSERT_EQ(getsockopt(fd, t.level, t.opt, &v, &l), 0)
		        << "get " << t.name << ": " << Errno(errno);
		EXPECT_EQ(v != 0, t.value != 0) << t.name;
		if (t.opt != TCP_NODELAY) {
			EXPECT_EQ(v, t.value) << t.name;
		}
	}
	ASSERT_TRUE(EchoRoundTrip(fd, "options\n"));
}

TEST_F(ShimTest, TcpInfoReportsEstablished)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	struct tcp_info ti;
	memset(&ti, 0, sizeof ti);
	socklen_t l = sizeof ti;
	ASSERT_EQ(getsockopt(c.fd.get(), IPPROTO_TCP, TCP_INFO, &ti, &l), 0) << Errno(errno);
	EXPECT_EQ(ti.tcpi_state, TCP_ESTABLISHED);
}

TEST_F(ShimTest, BindBeforeConnectIsKept)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	ScopedFd fd(socket(AF_INET, SOCK_STREAM, 0));
	ASSERT_GE(fd.get(), 0);
	struct sockaddr_in local = Loopback4(0);
	ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr *>(&local), sizeof local), 0)
	        << Errno(errno);
	socklen_t len = sizeof local;
	ASSERT_EQ(getsockname(fd.get(), reinterpret_cast<sockaddr *>(&local), &len), 0);
	uint16_t bound = ntohs(local.sin_port);
	ASSERT_NE(bound, 0);
	struct sockaddr_storage ss;
	socklen_t sl = srv->Address(&ss);
	ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr *>(&ss), sl), 0) << Errno(errno);
	ASSERT_TRUE(srv->WaitForAccepted(1, kIoMs));
	EXPECT_EQ(srv->Connections()[0].peer_port, bound)
	        << "the connection did not use the socket the program bound";
	len = sizeof local;
	ASSERT_EQ(getsockname(fd.get(), reinterpret_cast<sockaddr *>(&local), &len), 0);
	EXPECT_EQ(ntohs(local.sin_port), bound);
	ASSERT_TRUE(EchoRoundTrip(fd.get(), "bound\n"));
}

/* ======================= stream semantics ======================= */

TEST_F(ShimTest, HalfCloseDeliversServerReplyThenEof)
{
	START_SERVER(srv, Opts(ServerMode::kCountUpload));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	const std::string up = RandomBytes(100000, 2);
	ASSERT_TRUE(SendAll(fd, up));
	ASSERT_EQ(shutdown(fd, SHUT_WR), 0) << Errno(errno);
	// Our write side is closed, natively.
	EXPECT_EQ(send(fd, "x", 1, MSG_NOSIGNAL), -1);
	EXPECT_EQ(errno, EPIPE) << Errno(errno);

	std::string reply;
	ASSERT_TRUE(RecvUntilEof(fd, &reply)) << "the read side must keep flowing after SHUT_WR";
	EXPECT_EQ(reply, "count=100000 sha256=" + tlstest::Sha256Hex(up.data(), up.size()) + "\n");
	char b;
	EXPECT_EQ(recv(fd, &b, 1, MSG_DONTWAIT), 0) << "EOF is sticky";
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_TRUE(r.clean_eof) << "SHUT_WR did not arrive as close_notify: " << r.error;
}

TEST_F(ShimTest, ServerCloseIsEofAfterAllBytes)
{
	ServerOptions o = Opts(ServerMode::kSendN);
	o.send_n = 1 << 20;
	START_SERVER(srv, o);
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	std::string got;
	ASSERT_TRUE(RecvUntilEof(c.fd.get(), &got));
	ASSERT_EQ(got.size(), o.send_n);
	for (size_t i = 0; i < got.size(); i++)
		ASSERT_EQ(static_cast<uint8_t>(got[i]), tlstest::PatternByte(i)) << "byte " << i;
	struct pollfd p = {c.fd.get(), POLLIN, 0};
	EXPECT_EQ(poll(&p, 1, 1000), 1) << "EOF must stay readable";
	char b;
	EXPECT_EQ(recv(c.fd.get(), &b, 1, MSG_DONTWAIT), 0);
}

TEST_F(ShimTest, ClientCloseReachesServerAsCloseNotify)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "bye\n"));
	c.fd.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_TRUE(r.clean_eof) << "close() was not an orderly TLS close: " << r.error;
	EXPECT_EQ(r.bytes_in, 4u);
}

TEST_F(ShimTest, DupThenCloseOriginalKeepsConnection)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ScopedFd d(dup(c.fd.get()));
	ASSERT_GE(d.get(), 0);
	c.fd.reset(); // the program closes the original number
	ASSERT_TRUE(EchoRoundTrip(d.get(), RandomBytes(70000, 3)))
	        << "closing one of two descriptors tore the connection down";
	ScopedFd high(fcntl(d.get(), F_DUPFD_CLOEXEC, 700));
	ASSERT_GE(high.get(), 700);
	d.reset();
	ASSERT_TRUE(EchoRoundTrip(high.get(), "high\n"));
	high.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_EQ(r.bytes_in, 70005u);
}

TEST_F(ShimTest, PeekAndFionreadWork)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	ASSERT_TRUE(SendAll(fd, "ping"));
	int avail = 0;
	auto deadline = DeadlineIn(kIoMs);
	while (avail < 4 && MsLeft(deadline) > 0) {
		struct pollfd p = {fd, POLLIN, 0};
		poll(&p, 1, 100);
		ASSERT_EQ(ioctl(fd, FIONREAD, &avail), 0) << Errno(errno);
	}
	ASSERT_EQ(avail, 4);
	char buf[8];
	ASSERT_EQ(recv(fd, buf, sizeof buf, MSG_PEEK), 4);
	EXPECT_EQ(std::string(buf, 4), "ping");
	ASSERT_EQ(recv(fd, buf, sizeof buf, 0), 4);
	EXPECT_EQ(std::string(buf, 4), "ping");
}

TEST_F(ShimTest, StdioFdopenLineEcho)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	// Bound fgets(): SO_RCVTIMEO acts on the program's descriptor natively.
	struct timeval tv = {10, 0};
	ASSERT_EQ(setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
	FILE *f = fdopen(c.fd.release(), "r+");
	ASSERT_NE(f, nullptr) << Errno(errno);
	std::unique_ptr<FILE, int (*)(FILE *)> guard(f, fclose);
	uint64_t total = 0;
	for (int i = 0; i < 50; i++) {
		std::string body =
		        "line " + std::to_string(i) + " " + std::string(i * 7, 'a' + i % 26);
		ASSERT_GT(fprintf(f, "%s\n", body.c_str()), 0);
		ASSERT_EQ(fflush(f), 0) << Errno(errno);
		char line[1024];
		ASSERT_NE(fgets(line, sizeof line, f), nullptr)
		        << "fgets failed at line " << i << " (ferror=" << ferror(f)
		        << ", feof=" << feof(f) << ")";
		EXPECT_EQ(std::string(line), body + "\n");
		total += body.size() + 1;
	}
	guard.reset();
	ConnRecord r = Finished(*srv, 1, 0);
	EXPECT_EQ(r.bytes_in, total);
}

TEST_F(ShimTest, SendfileFromFile)
{
	START_SERVER(srv, Opts(ServerMode::kCountUpload));
	char path[] = "/tmp/tlsshim-sendfile-XXXXXX";
	ScopedFd file(mkstemp(path));
	ASSERT_GE(file.get(), 0) << Errno(errno);
	unlink(path);
	const std::string content = RandomBytes(4 << 20, 4);
	ASSERT_EQ(write(file.get(), content.data(), content.size()),
	          static_cast<ssize_t>(content.size()));

	Conn c = ConnectServer(*srv, SOCK_NONBLOCK);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	off_t off = 0;
	auto deadline = DeadlineIn(kIoMs);
	while (off < static_cast<off_t>(content.size())) {
		ssize_t n = sendfile(fd, file.get(), &off, content.size() - off);
		if (n > 0)
			continue;
		ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EINTR))
		        << "sendfile: n=" << n << " " << Errno(errno);
		struct pollfd p = {fd, POLLOUT, 0};
		ASSERT_EQ(poll(&p, 1, MsLeft(deadline)), 1) << "sendfile stalled at " << off;
	}
	ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
	std::string reply;
	ASSERT_TRUE(RecvUntilEof(fd, &reply));
	EXPECT_EQ(reply, "count=" + std::to_string(content.size()) + " sha256=" +
	                         tlstest::Sha256Hex(content.data(), content.size()) + "\n");
}

/* ======================= fork ======================= */

TEST_F(ShimTest, ForkChildUsesInheritedConnection)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	ASSERT_TRUE(EchoRoundTrip(fd, "parent before\n"));
	fflush(nullptr);
	pid_t pid = fork();
	ASSERT_GE(pid, 0) << Errno(errno);
	if (pid == 0)
		ChildExit(EchoRoundTrip(fd, RandomBytes(200000, 5), 10000), 1);
	int st = WaitChild(pid, 30000);
	ASSERT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
	        << "child: " << DescribeStatus(st);
	// The child's exit closed only its copies.
	ASSERT_TRUE(EchoRoundTrip(fd, "parent after\n"));
}

TEST_F(ShimTest, ForkChildMakesItsOwnConnection)
{
	START_SERVER(srv, Opts(ServerMode::kEcho));
	// The parent's relay thread is running before the fork.
	Conn c = ConnectServer(*srv);
	ASSERT_CONNECTED(c);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "parent before\n"));
	fflush(nullptr);
	pid_t pid = fork();
	ASSERT_GE(pid, 0) << Errno(errno);
	if (pid == 0) {
		Conn cc = ConnectServer(*srv);
		if (cc.rc != 0) {
			fprintf(stderr, "child: connect: %s\n", Errno(cc.err).c_str());
			_exit(2);
		}
		ChildExit(EchoRoundTrip(cc.fd.get(), RandomBytes(200000, 7), 10000), 3);
	}
	int st = WaitChild(pid, 30000);
	ASSERT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
	        << "child (2: connect failed, 3: echo failed): " << DescribeStatus(st);
	ASSERT_TRUE(EchoRoundTrip(c.fd.get(), "parent after\n"));
	c.fd.reset();
	ASSERT_TRUE(srv->WaitForDone(2, kIoMs));
	for (const auto &r : srv->Connections())
		EXPECT_TRUE(r.handshake_ok) << r.error;
}

/* ======================= concurrency ======================= */

// A reusable barrier with a deadline (std::barrier is C++20).
class Barrier
{
      public:
	explicit Barrier(int n) : n_(n)
	{
	}
	bool ArriveAndWait(int timeout_ms)
	{
		std::unique_lock<std::mutex> lk(mu_);
		int gen = gen_;
		if (++count_ == n_) {
			count_ = 0;
			gen_++;
			cv_.notify_all();
			return true;
		}
		return cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
		                    [&] { return gen_ != gen; });
	}

      private:
	std::mutex mu_;
	std::condition_variable cv_;
	int n_, count_ = 0, gen_ = 0;
};

TEST_F(ShimTest, TwoHundredConcurrentConnectionsFromEightThreads)
{
	constexpr int kThreads = 8, kPerThread = 25, kBytes = 64 * 1024;
	constexpr int kTotal = kThreads * kPerThread;
	ServerOptions o = Opts(ServerMode::kEcho);
	o.io_timeout_ms = 120000;
	START_SERVER(srv, o);

	Barrier all_open(kThreads + 1), checked(kThreads + 1);
	std::mutex mu;
	std::vector<std::string> errors;
	auto fail = [&](const std::string &e) {
		std::lock_guard<std::mutex> lk(mu);
		errors.push_back(e);
	};
	std::vector<std::thread> threads;
	for (int t = 0; t < kThreads; t++) {
		threads.emplace_back([&, t] {
			std::vector<Conn> conns;
			for (int i = 0; i < kPerThread; i++) {
				conns.push_back(ConnectServer(*srv));
				if (conns.back().rc != 0)
					fail("thread " + std::to_string(t) + " conn " +
					     std::to_string(i) +
					     ": connect: " + Errno(conns.back().err));
			}
			if (!all_open.ArriveAndWait(120000))
				fail("barrier 1 timed out");
			if (!checked.ArriveAndWait(120000))
				fail("barrier 2 timed out");
			for (int i = 0; i < kPerThread; i++) {
				if (conns[i].rc != 0)
					continue;
				std::string data = RandomBytes(
				        kBytes, 1000 + static_cast<uint64_t>(t * kPerThread + i));
				auto r = EchoRoundTrip(conns[i].fd.get(), data, 60000);
				if (!r)
					fail("thread " + std::to_string(t) + " conn " +
					     std::to_string(i) + ": " + r.message());
			}
		});
	}
	bool all_open_ok = all_open.ArriveAndWait(180000);
	// Every client connect() has returned; all of them are open at once.
	bool server_saw_all = srv->WaitForActive(kTotal, 30000);
	size_t active = srv->active();
	bool checked_ok = checked.ArriveAndWait(180000);
	for (auto &th : threads)
		th.join();

	EXPECT_TRUE(all_open_ok);
	EXPECT_TRUE(checked_ok);
	for (const auto &e : errors)
		ADD_FAILURE() << e;
	EXPECT_TRUE(server_saw_all)
	        << "server had " << active << " live connections, want " << kTotal;
	ASSERT_TRUE(srv->WaitForDone(kTotal, 60000));
	std::set<uint16_t> ports;
	for (const auto &r : srv->Connections()) {
		EXPECT_TRUE(r.handshake_ok) << r.error;
		EXPECT_EQ(r.bytes_in, static_cast<uint64_t>(kBytes));
		ports.insert(r.peer_port);
	}
	EXPECT_EQ(ports.size(), static_cast<size_t>(kTotal));
	EXPECT_GE(srv->max_active(), static_cast<size_t>(kTotal));
}

/* ======================= refusals ======================= */

struct RefusalCase {
	const char *cert; // certs-dir file stem
	const char *why;
};

void PrintTo(const RefusalCase &c, std::ostream *os)
{
	*os << c.cert;
}

class RefusalTest : public ShimTest, public ::testing::WithParamInterface<RefusalCase>
{
};

// connect() fails with ECONNREFUSED, the server saw a TLS handshake that
// failed (so the shim did try), and the descriptor is no plaintext path.
TEST_P(RefusalTest, UnverifiableServerRefused)
{
	const RefusalCase &rc = GetParam();
	if (!FileExists(CertPath(rc.cert)))
		GTEST_SKIP() << CertPath(rc.cert) << " is missing";
	START_SERVER(srv, Opts(ServerMode::kEcho, rc.cert));
	Conn c = ConnectServer(*srv);
	ASSERT_EQ(c.rc, -1) << "connected to a server with " << rc.why;
	EXPECT_EQ(c.err, ECONNREFUSED) << Errno(c.err);
	ASSERT_TRUE(srv->WaitForDone(1, kIoMs)) << "the refused TCP connection was left open";
	ConnRecord r = srv->Connections()[0];
	EXPECT_FALSE(r.handshake_ok);
	EXPECT_EQ(r.bytes_in, 0u);

	// No plaintext path: writing to the descriptor must fail.
	const std::string marker = "PLAINTEXT-MARKER-" + std::string(rc.cert);
	errno = 0;
	ssize_t n = send(c.fd.get(), marker.data(), marker.size(), MSG_NOSIGNAL);
	EXPECT_EQ(n, -1) << "send after a refused connect succeeded";
	EXPECT_EQ(srv->Connections()[0].raw.find(marker), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
        Semantics, RefusalTest,
        ::testing::Values(RefusalCase{"untrusted", "a certificate from another CA"},
                          RefusalCase{"selfsigned", "a self-signed certificate"},
                          RefusalCase{"expired", "an expired certificate"},
                          RefusalCase{"notyet", "a not-yet-valid certificate"},
                          RefusalCase{"wrongname", "a certificate for another name/address"}),
        [](const ::testing::TestParamInfo<RefusalCase> &i) { return std::string(i.param.cert); });

TEST_F(ShimTest, NonBlockingConnectToUntrustedServerRefused)
{
	START_SERVER(srv, Opts(ServerMode::kEcho, "untrusted"));
	Conn c = ConnectServer(*srv, SOCK_NONBLOCK);
	EXPECT_EQ(c.rc, -1);
	EXPECT_EQ(c.err, ECONNREFUSED)
	        << Errno(c.err) << (c.in_progress ? " (via EINPROGRESS/SO_ERROR)" : "");
	EXPECT_EQ(send(c.fd.get(), "X", 1, MSG_NOSIGNAL), -1);
}

TEST_F(ShimTest, PlaintextServerRefusedAndGetsNoApplicationByte)
{
	ServerOptions o;
	o.mode = ServerMode::kPlaintext;
	START_SERVER(srv, o);
	const std::string marker = "SECRET-PLAINTEXT-MARKER-4711";
	Conn c = ConnectServer(*srv);
	ASSERT_EQ(c.rc, -1) << "connected to a plaintext server";
	EXPECT_EQ(c.err, ECONNREFUSED) << Errno(c.err);
	errno = 0;
	ssize_t n = send(c.fd.get(), marker.data(), marker.size(), MSG_NOSIGNAL);
	int e = errno;
	EXPECT_EQ(n, -1) << "send after a refused connect succeeded";
	n = write(c.fd.get(), marker.data(), marker.size());
	EXPECT_EQ(n, -1) << "write after a refused connect succeeded";
	(void)e;
	c.fd.reset();
	ASSERT_TRUE(srv->WaitForDone(1, kIoMs)) << "the refused TCP connection was left open";
	std::string all;
	for (const auto &r : srv->Connections())
		all += r.raw;
	EXPECT_EQ(all.find(marker), std::string::npos)
	        << "the application's bytes reached the plaintext server";
	ASSERT_FALSE(all.empty()) << "the shim did not even try a TLS handshake";
	EXPECT_EQ(static_cast<uint8_t>(all[0]), 0x16)
	        << "the first byte the server got was not a TLS handshake record";
}

TEST_F(ShimTest, RefusedDescriptorIsNotConnectedToAnything)
{
	START_SERVER(bad, Opts(ServerMode::kEcho, "untrusted"));
	START_SERVER(good, Opts(ServerMode::kEcho));
	Conn c = ConnectServer(*bad);
	ASSERT_EQ(c.rc, -1);
	const int fd = c.fd.get();
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	int r = getpeername(fd, reinterpret_cast<sockaddr *>(&ss), &len);
	int e = errno;
	EXPECT_EQ(r, -1) << "getpeername says the refused socket is connected";
	if (r == -1) {
		EXPECT_EQ(e, ENOTCONN) << Errno(e);
	}
	char b;
	EXPECT_LE(recv(fd, &b, 1, MSG_DONTWAIT), 0);
	// POSIX leaves a socket unspecified after a failed connect; if it can be
	// connected again, that connection must be a verified TLS one.
	len = good->Address(&ss);
	if (connect(fd, reinterpret_cast<sockaddr *>(&ss), len) == 0) {
		ASSERT_TRUE(EchoRoundTrip(fd, "second try\n"));
		ASSERT_TRUE(good->WaitForAccepted(1, kIoMs));
		c.fd.reset();
		ConnRecord rec = Finished(*good, 1, 0);
		EXPECT_TRUE(rec.handshake_ok) << rec.error;
	}
}

TEST_F(ShimTest, ClosedPortRefusedPromptly)
{
	// A bound socket that does not listen holds the port: connections get RST.
	ScopedFd holder(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	struct sockaddr_in sa = Loopback4(0);
	ASSERT_EQ(bind(holder.get(), reinterpret_cast<sockaddr *>(&sa), sizeof sa), 0);
	socklen_t len = sizeof sa;
	ASSERT_EQ(getsockname(holder.get(), reinterpret_cast<sockaddr *>(&sa), &len), 0);
	auto t0 = Clock::now();
	Conn c = ConnectAddr(reinterpret_cast<sockaddr *>(&sa), sizeof sa);
	auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
	EXPECT_EQ(c.rc, -1);
	EXPECT_EQ(c.err, ECONNREFUSED) << Errno(c.err);
	EXPECT_LT(ms.count(), 5000) << "refusal took " << ms.count() << " ms";
}

/* ======================= close_range / closefrom ======================= */
// These close descriptors all over this process, so they use an echo server
// in a child process (an in-process server's sockets would be closed too).
// Tests that run after them in the same process still pass: nothing in this
// file keeps a descriptor open across tests.

class CloseRangeTest : public ShimTest
{
};

TEST_F(CloseRangeTest, ClosingEveryOtherDescriptorKeepsConnection)
{
	SpawnedEchoServer srv;
	ASSERT_TRUE(srv.Start());
	struct sockaddr_in sa = Loopback4(srv.port());
	Conn c = ConnectAddr(reinterpret_cast<sockaddr *>(&sa), sizeof sa);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	ASSERT_TRUE(EchoRoundTrip(fd, "before close_range\n"));
	// Everything but stdio and the connection, wherever the shim keeps its
	// own descriptors.
	if (fd > 3) {
		ASSERT_EQ(close_range(3, static_cast<unsigned>(fd - 1), 0), 0) << Errno(errno);
	}
	ASSERT_EQ(close_range(static_cast<unsigned>(fd + 1), ~0U, 0), 0) << Errno(errno);
	ASSERT_NE(fcntl(fd, F_GETFD), -1) << "the connection itself was closed";
	EXPECT_TRUE(EchoRoundTrip(fd, RandomBytes(1 << 20, 8)))
	        << "close_range broke the live connection";
	// The relay still takes new connections too.
	Conn c2 = ConnectAddr(reinterpret_cast<sockaddr *>(&sa), sizeof sa);
	ASSERT_CONNECTED(c2);
	EXPECT_TRUE(EchoRoundTrip(c2.fd.get(), "after close_range\n"));
}

TEST_F(CloseRangeTest, ClosefromAboveConnectionKeepsConnection)
{
	SpawnedEchoServer srv;
	ASSERT_TRUE(srv.Start());
	struct sockaddr_in sa = Loopback4(srv.port());
	Conn c = ConnectAddr(reinterpret_cast<sockaddr *>(&sa), sizeof sa);
	ASSERT_CONNECTED(c);
	const int fd = c.fd.get();
	ASSERT_TRUE(EchoRoundTrip(fd, "before closefrom\n"));
	closefrom(fd + 1);
	ASSERT_NE(fcntl(fd, F_GETFD), -1) << "the connection itself was closed";
	EXPECT_TRUE(EchoRoundTrip(fd, RandomBytes(1 << 20, 9)))
	        << "closefrom broke the live connection";
	Conn c2 = ConnectAddr(reinterpret_cast<sockaddr *>(&sa), sizeof sa);
	ASSERT_CONNECTED(c2);
	EXPECT_TRUE(EchoRoundTrip(c2.fd.get(), "after closefrom\n"));
}

/* ======================= watchdog and main ======================= */

// Aborts the binary when one test runs too long: a hung shim must fail CI,
// not stall it.
class Watchdog : public ::testing::EmptyTestEventListener
{
      public:
	explicit Watchdog(int secs) : secs_(secs), thread_([this] { Run(); })
	{
	}
	~Watchdog() override
	{
		{
			std::lock_guard<std::mutex> lk(mu_);
			quit_ = true;
		}
		cv_.notify_all();
		thread_.join();
	}
	void OnTestStart(const ::testing::TestInfo &t) override
	{
		std::lock_guard<std::mutex> lk(mu_);
		name_ = std::string(t.test_suite_name()) + "." + t.name();
		deadline_ = Clock::now() + std::chrono::seconds(secs_);
		armed_ = true;
	}
	void OnTestEnd(const ::testing::TestInfo &) override
	{
		std::lock_guard<std::mutex> lk(mu_);
		armed_ = false;
	}

      private:
	void Run()
	{
		std::unique_lock<std::mutex> lk(mu_);
		while (!quit_) {
			cv_.wait_for(lk, std::chrono::milliseconds(500));
			if (armed_ && Clock::now() > deadline_) {
				fprintf(stderr, "\nwatchdog: %s ran longer than %d s; aborting\n",
				        name_.c_str(), secs_);
				fflush(stderr);
				abort();
			}
		}
	}
	int secs_;
	std::mutex mu_;
	std::condition_variable cv_;
	bool quit_ = false, armed_ = false;
	std::string name_;
	Clock::time_point deadline_;
	std::thread thread_; // last: starts after the members above exist
};

} // namespace

#ifdef __SANITIZE_THREAD__
// The fork tests start a relay thread in the child, which TSan refuses unless
// die_after_fork=0 (scripts/test.sh sets it too; this covers a bare run).
extern "C" const char *__tsan_default_options(void);
extern "C" const char *__tsan_default_options(void)
{
	return "die_after_fork=0";
}
#endif

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], kServerFlag) == 0)
		return RunServerChild();
	signal(SIGPIPE, SIG_IGN);
	// 200 connections need ~4 descriptors each in this one process.
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
		rl.rlim_cur =
		        rl.rlim_max == RLIM_INFINITY ? 4096 : std::min<rlim_t>(rl.rlim_max, 4096);
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	::testing::InitGoogleTest(&argc, argv);
	int secs = 120;
	if (const char *t = getenv("TLSSHIM_TEST_TIMEOUT")) {
		long v = strtol(t, nullptr, 10);
		if (v > 0 && v < 86400)
			secs = static_cast<int>(v);
	}
	auto *wd = new Watchdog(secs);
	::testing::UnitTest::GetInstance()->listeners().Append(wd);
	int rc = RUN_ALL_TESTS();
	::testing::UnitTest::GetInstance()->listeners().Release(wd);
	delete wd;
	return rc;
}
