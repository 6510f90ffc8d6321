// Unit tests for shim/log.c: the one-line event format, the syslog header,
// folding of identical events (driven with an explicit clock), dropped-line
// counting, reconnecting after the daemon restarts, fork and exit handling.
//
// The "daemon" is a datagram socket bound by the test (Sink); a channel
// (struct log_chan) sends to it exactly as the shim's process-wide one does.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "log.h"
}

namespace
{

std::string format(const struct log_event &ev)
{
	char buf[4096];
	size_t n = log_format(&ev, buf, sizeof(buf));
	EXPECT_EQ(n, strlen(buf));
	return buf;
}

TEST(Log, FieldsInFixedOrderAndAbsentOnesLeftOut)
{
	struct log_event ev;
	struct sockaddr_in peer {
	};
	peer.sin_family = AF_INET;
	peer.sin_port = htons(443);
	inet_pton(AF_INET, "192.0.2.4", &peer.sin_addr);

	log_event_init(&ev, LOG_ERR, "handshake_failed");
	ev.dir = "out";
	ev.peer = reinterpret_cast<struct sockaddr *>(&peer);
	ev.name = "db.internal";
	ev.stage = "verify";
	ev.reason = "certificate has expired";
	ev.x509_err = 10;
	ev.depth = 0;
	ev.elapsed_ms = 12;
	std::string s = format(ev);

	std::string want_prefix = "event=handshake_failed dir=out pid=" + std::to_string(getpid());
	EXPECT_EQ(s.rfind(want_prefix, 0), 0u) << s;
	EXPECT_NE(s.find(" peer=192.0.2.4:443 name=db.internal stage=verify "
	                 "reason=\"certificate has expired\" x509_err=10 depth=0 elapsed_ms=12"),
	          std::string::npos)
	        << s;
	EXPECT_EQ(s.find("subject="), std::string::npos);
	EXPECT_EQ(s.find("ocsp="), std::string::npos);
	EXPECT_EQ(s.find('\n'), std::string::npos);
}

TEST(Log, Ipv6PeerInBrackets)
{
	struct log_event ev;
	struct sockaddr_in6 peer {
	};
	peer.sin6_family = AF_INET6;
	peer.sin6_port = htons(8443);
	inet_pton(AF_INET6, "2001:db8::1", &peer.sin6_addr);
	log_event_init(&ev, LOG_ERR, "denied");
	ev.peer = reinterpret_cast<struct sockaddr *>(&peer);
	EXPECT_NE(format(ev).find("peer=[2001:db8::1]:8443"), std::string::npos);
}

TEST(Log, HostileValuesAreQuotedAndEscaped)
{
	struct log_event ev;
	log_event_init(&ev, LOG_ERR, "handshake_failed");
	ev.subject = "/CN=evil\nevent=forged \"x\"\\";
	ev.reason = "";
	std::string s = format(ev);
	EXPECT_EQ(s.find('\n'), std::string::npos) << "a value cannot start a new line";
	EXPECT_NE(s.find("subject=\"/CN=evil\\x0aevent=forged \\\"x\\\"\\\\\""), std::string::npos)
	        << s;
	EXPECT_NE(s.find("reason=\"\""), std::string::npos) << s;
}

TEST(Log, TruncatesSafely)
{
	struct log_event ev;
	log_event_init(&ev, LOG_ERR, "handshake_failed");
	std::string big(10000, 'a');
	ev.reason = big.c_str();
	char small[64];
	size_t n = log_format(&ev, small, sizeof(small));
	EXPECT_LT(n, sizeof(small));
	EXPECT_EQ(strlen(small), n);
	EXPECT_EQ(log_format(&ev, small, 0), 0u);
}

TEST(Log, SeverityPerEvent)
{
	const struct {
		const char *event;
		int severity;
	} table[] = {
	        {"handshake_failed", LOG_ERR},     {"refused_plaintext", LOG_ERR},
	        {"relay_failed", LOG_ERR},         {"config_error", LOG_ERR},
	        {"denied", LOG_WARNING},           {"insecure_setting", LOG_WARNING},
	        {"plaintext_allowed", LOG_NOTICE}, {"connected", LOG_INFO},
	        {"staple_failed", LOG_WARNING},    {"staple_refreshed", LOG_INFO},
	        {"something_new", LOG_NOTICE},
	};
	for (const auto &t : table) {
		struct log_event ev;
		EXPECT_EQ(log_severity(t.event), t.severity) << t.event;
		log_event_init(&ev, LOG_SEVERITY_DEFAULT, t.event);
		EXPECT_EQ(ev.severity, t.severity) << t.event;
		log_event_init(&ev, LOG_DEBUG, t.event);
		EXPECT_EQ(ev.severity, LOG_DEBUG) << "an explicit severity wins: " << t.event;
	}
	EXPECT_EQ(log_severity(nullptr), LOG_NOTICE);
}

// --- a syslog daemon stand-in ----------------------------------------------------

// A datagram socket bound at a path in a private temporary directory.
class Sink
{
      public:
	Sink()
	{
		char tmpl[] = "/tmp/tlsshim-log-test-XXXXXX";
		EXPECT_NE(mkdtemp(tmpl), nullptr);
		dir_ = tmpl;
		path_ = dir_ + "/log.sock";
	}
	~Sink()
	{
		stop();
		rmdir(dir_.c_str());
	}
	const std::string &path() const
	{
		return path_;
	}

	// Binds (again) at the path, like a daemon (re)starting.
	void start()
	{
		stop();
		fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		ASSERT_GE(fd_, 0);
		struct sockaddr_un sun {
		};
		sun.sun_family = AF_UNIX;
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path_.c_str());
		unlink(path_.c_str());
		ASSERT_EQ(bind(fd_, reinterpret_cast<struct sockaddr *>(&sun), sizeof(sun)), 0)
		        << strerror(errno);
	}
	// Closes the socket and removes it, like a daemon exiting.
	void stop()
	{
		if (fd_ >= 0)
			close(fd_);
		fd_ = -1;
		unlink(path_.c_str());
	}
	// Every datagram queued now (the kernel queues a datagram before the
	// sender's send() returns, so nothing is in flight).
	std::vector<std::string> drain()
	{
		std::vector<std::string> out;
		char buf[16384];
		ssize_t n;
		while (fd_ >= 0 && (n = recv(fd_, buf, sizeof(buf), 0)) >= 0)
			out.emplace_back(buf, static_cast<size_t>(n));
		return out;
	}
	int fd() const
	{
		return fd_;
	}

      private:
	std::string dir_, path_;
	int fd_ = -1;
};

struct Msg {
	int pri = -1;
	std::string ident;
	long pid = -1;
	std::string body;
};

// Parses "<PRI>Mmm dd hh:mm:ss IDENT[PID]: BODY"; pri -1 when it is not that.
Msg parse(const std::string &m)
{
	Msg out;
	int pri = -1, day = 0, hh = 0, mm = 0, ss = 0, used = 0;
	char mon[4] = "";
	if (sscanf(m.c_str(), "<%3d>%3[A-Za-z] %2d %2d:%2d:%2d %n", &pri, mon, &day, &hh, &mm, &ss,
	           &used) != 6 ||
	    used != static_cast<int>(strlen("<1>Jan  1 00:00:00 ")) + (pri > 9) + (pri > 99) ||
	    strlen(mon) != 3 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60)
		return out;
	size_t open = m.find('[', static_cast<size_t>(used));
	size_t close = m.find("]: ", static_cast<size_t>(used));
	if (open == std::string::npos || close == std::string::npos || close < open ||
	    open == static_cast<size_t>(used))
		return out;
	std::string ident = m.substr(static_cast<size_t>(used), open - static_cast<size_t>(used));
	std::string pid = m.substr(open + 1, close - open - 1);
	if (ident.find_first_not_of(
	            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") !=
	            std::string::npos ||
	    pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos)
		return out;
	out.pri = pri;
	out.ident = ident;
	out.pid = std::stol(pid);
	out.body = m.substr(close + 3);
	return out;
}

// The value of key=N in a body, or -1.
long field(const std::string &body, const std::string &key)
{
	std::string k = " " + key + "=";
	size_t at = body.find(k);
	if (at == std::string::npos)
		return -1;
	return std::stol(body.substr(at + k.size()));
}

struct sockaddr_in v4(const char *ip, int port)
{
	struct sockaddr_in a {
	};
	a.sin_family = AF_INET;
	a.sin_port = htons(static_cast<uint16_t>(port));
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

// Builds events with a stable peer address.
struct Ev {
	struct log_event ev;
	struct sockaddr_in peer;
	std::string reason;
	Ev(const char *event, const char *reason_, int port = 443, long elapsed = 1)
	    : peer(v4("192.0.2.7", port)), reason(reason_)
	{
		log_event_init(&ev, LOG_SEVERITY_DEFAULT, event);
		ev.dir = "out";
		ev.peer = reinterpret_cast<struct sockaddr *>(&peer);
		ev.stage = "verify";
		ev.reason = reason.c_str();
		ev.elapsed_ms = elapsed;
	}
	// Copies point at their own peer and reason.
	Ev(const Ev &o) : ev(o.ev), peer(o.peer), reason(o.reason)
	{
		if (o.ev.peer == reinterpret_cast<const struct sockaddr *>(&o.peer))
			ev.peer = reinterpret_cast<struct sockaddr *>(&peer);
		if (o.ev.reason == o.reason.c_str())
			ev.reason = reason.c_str();
	}
	Ev &operator=(const Ev &) = delete;
	std::string line() const
	{
		return format(ev);
	}
};

class Chan : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		sink.start();
	}
	void TearDown() override
	{
		log_chan_free(chan);
	}
	void open(int window_ms, bool to_stderr = false, int facility = LOG_AUTHPRIV,
	          const char *ident = "tlsshim")
	{
		struct log_chan_opts o {
		};
		o.path = sink.path().c_str();
		o.ident = ident;
		o.facility = facility;
		o.window_ms = window_ms;
		o.to_stderr = to_stderr;
		chan = log_chan_new(&o);
		ASSERT_NE(chan, nullptr);
	}
	void emit(const Ev &e, long long now)
	{
		log_chan_emit(chan, &e.ev, now);
	}
	// The bodies received since the last call.
	std::vector<std::string> bodies()
	{
		std::vector<std::string> out;
		for (const auto &m : sink.drain()) {
			Msg p = parse(m);
			EXPECT_GE(p.pri, 0) << "not a syslog line: " << m;
			out.push_back(p.body);
		}
		return out;
	}

	Sink sink;
	struct log_chan *chan = nullptr;
};

TEST_F(Chan, HeaderCarriesPriorityTimeIdentAndPid)
{
	open(0, false, LOG_LOCAL4, "unit-ident");
	Ev e("handshake_failed", "certificate has expired");
	emit(e, 0);
	auto msgs = sink.drain();
	ASSERT_EQ(msgs.size(), 1u);
	Msg m = parse(msgs[0]);
	EXPECT_EQ(m.pri, LOG_LOCAL4 | LOG_ERR) << msgs[0];
	EXPECT_EQ(m.ident, "unit-ident");
	EXPECT_EQ(m.pid, getpid());
	EXPECT_EQ(m.body, e.line()) << "the header is followed by the formatted line, unchanged";

	Ev c("connected", "");
	emit(c, 1);
	msgs = sink.drain();
	ASSERT_EQ(msgs.size(), 1u);
	EXPECT_EQ(parse(msgs[0]).pri, LOG_LOCAL4 | LOG_INFO);
}

TEST_F(Chan, RepeatsInsideTheWindowAreFoldedIntoOneCount)
{
	open(10000);
	Ev first("handshake_failed", "certificate has expired", 443, 1);
	emit(first, 0);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u) << "the first occurrence is sent at once";
	EXPECT_EQ(got[0], first.line());

	for (int i = 2; i <= 6; i++) {
		Ev again("handshake_failed", "certificate has expired", 443, i);
		emit(again, i);
	}
	EXPECT_TRUE(bodies().empty()) << "repeats inside the window are only counted";

	Ev other("refused_plaintext", "server did not speak TLS", 80);
	emit(other, 9999);
	got = bodies();
	ASSERT_EQ(got.size(), 1u) << "another key is not folded with the first";
	EXPECT_EQ(got[0], other.line());

	// The window closes at 10000: the next line of any kind carries the count
	// out first, with the fields of the latest occurrence.
	Ev third("denied", "policy", 25);
	emit(third, 10000);
	got = bodies();
	ASSERT_EQ(got.size(), 2u);
	Ev last("handshake_failed", "certificate has expired", 443, 6);
	EXPECT_EQ(got[0], last.line() + " repeated=5");
	EXPECT_EQ(got[1], third.line());

	// `other` was never repeated: its window closes without a line.
	log_chan_flush(chan, 30000, false);
	EXPECT_TRUE(bodies().empty());
}

TEST_F(Chan, SameKeyAfterTheWindowSendsTheCountThenOpensANewWindow)
{
	open(10000);
	Ev a("handshake_failed", "hostname mismatch", 443, 1);
	Ev b("handshake_failed", "hostname mismatch", 443, 2);
	Ev c("handshake_failed", "hostname mismatch", 443, 3);
	emit(a, 0);
	emit(b, 5000);
	emit(c, 10001);
	auto got = bodies();
	ASSERT_EQ(got.size(), 3u);
	EXPECT_EQ(got[0], a.line());
	EXPECT_EQ(got[1], b.line() + " repeated=1");
	EXPECT_EQ(got[2], c.line()) << "a new window starts with a line of its own";
	emit(c, 10002);
	EXPECT_TRUE(bodies().empty());
}

TEST_F(Chan, OnlyEventPeerAndReasonTogetherFold)
{
	open(10000);
	Ev base("handshake_failed", "certificate has expired", 443);
	Ev port("handshake_failed", "certificate has expired", 444);
	Ev reason("handshake_failed", "hostname mismatch", 443);
	Ev event("refused_plaintext", "certificate has expired", 443);
	Ev noPeer("config_error", "certificate has expired");
	noPeer.ev.peer = nullptr;
	for (const Ev *e : {&base, &port, &reason, &event, &noPeer})
		emit(*e, 1);
	EXPECT_EQ(bodies().size(), 5u);

	// Fields outside the key (name, stage, certificate) do not split it.
	Ev other = base;
	other.ev.name = "different.example";
	other.ev.stage = "handshake";
	emit(other, 2);
	EXPECT_TRUE(bodies().empty());
}

// An inbound client comes from a new port with every connection: its
// address, and the listener, make the key.
TEST_F(Chan, InboundPeersFoldByAddressAndListener)
{
	open(10000);
	struct sockaddr_in listener = v4("127.0.0.1", 8443), other_listener = v4("127.0.0.1", 9443);
	auto denied = [&](const char *ip, int port, struct sockaddr_in *local) {
		Ev e("denied", "source not in allow_from", port);
		e.peer = v4(ip, port);
		e.ev.dir = "in";
		e.ev.local = reinterpret_cast<struct sockaddr *>(local);
		return e;
	};
	for (int port = 40000; port < 40005; port++)
		emit(denied("192.0.2.9", port, &listener), port - 40000);
	EXPECT_EQ(bodies().size(), 1u) << "one client, five source ports: folded";
	emit(denied("192.0.2.10", 40000, &listener), 6);
	emit(denied("192.0.2.9", 40001, &other_listener), 7);
	EXPECT_EQ(bodies().size(), 2u) << "another client, another listener: not folded";
	log_chan_flush(chan, 8, true);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u);
	EXPECT_EQ(field(got[0], "repeated"), 4);
	EXPECT_NE(got[0].find(" peer=192.0.2.9:40004 local=127.0.0.1:8443 "), std::string::npos)
	        << got[0];
}

TEST_F(Chan, ConnectedAuditLinesAreNeverFolded)
{
	open(10000);
	Ev ok("connected", "");
	ok.ev.reason = nullptr;
	for (int i = 0; i < 3; i++)
		emit(ok, i);
	EXPECT_EQ(bodies().size(), 3u);
}

TEST_F(Chan, ZeroWindowFoldsNothing)
{
	open(0);
	Ev e("handshake_failed", "certificate has expired");
	for (int i = 0; i < 4; i++)
		emit(e, i);
	auto got = bodies();
	ASSERT_EQ(got.size(), 4u);
	for (const auto &b : got)
		EXPECT_EQ(b.find("repeated="), std::string::npos);
}

TEST_F(Chan, ExitFlushSendsOpenCountsAndStopsFolding)
{
	open(10000);
	Ev e("handshake_failed", "certificate has expired");
	emit(e, 0);
	emit(e, 1);
	emit(e, 2);
	EXPECT_EQ(bodies().size(), 1u);
	log_chan_flush(chan, 3, true); // what the atexit handler does
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u) << "the count is sent although its window is still open";
	EXPECT_EQ(got[0], e.line() + " repeated=2");
	// Lines logged later in the exit (another exit handler) are sent as they come.
	emit(e, 4);
	emit(e, 5);
	EXPECT_EQ(bodies().size(), 2u);
	log_chan_flush(chan, 6, true);
	EXPECT_TRUE(bodies().empty());
}

// At exit up to 32 counts go out at once, more than a short daemon queue
// holds; the exit flush waits (bounded) for the daemon to make room.
TEST_F(Chan, ExitFlushWaitsForRoomInTheDaemonsQueue)
{
	open(10000);
	const int keys = 32;
	for (int k = 0; k < keys; k++) {
		Ev e("handshake_failed", "certificate has expired", 3000 + k);
		emit(e, k);
		emit(e, k);
		EXPECT_EQ(bodies().size(), 1u);
	}
	std::vector<std::string> got;
	std::thread reader([&] {
		while (got.size() < static_cast<size_t>(keys)) {
			struct pollfd p = {sink.fd(), POLLIN, 0};
			if (poll(&p, 1, 5000) != 1)
				return;
			for (auto &m : sink.drain())
				got.push_back(m);
		}
	});
	log_chan_flush(chan, keys, true);
	reader.join();
	ASSERT_EQ(got.size(), static_cast<size_t>(keys));
	for (const auto &m : got)
		EXPECT_EQ(field(parse(m).body, "repeated"), 1) << m;
}

// ... and gives up when nobody reads: exit is delayed, never blocked.
TEST_F(Chan, ExitFlushGivesUpWhenTheDaemonDoesNotRead)
{
	open(10000);
	const int keys = 32;
	for (int k = 0; k < keys; k++) {
		Ev e("handshake_failed", "certificate has expired", 3000 + k);
		emit(e, k);
		emit(e, k);
		EXPECT_EQ(bodies().size(), 1u);
	}
	log_chan_flush(chan, keys, true); // returns: the test would hang otherwise
	auto got = bodies();
	EXPECT_GT(got.size(), 0u);
	EXPECT_LT(got.size(), static_cast<size_t>(keys)) << "the queue never filled";
}

// More keys repeating at once than the table holds: the extra keys' lines
// go out unfolded (none is lost, none waits), the others stay folded.
TEST_F(Chan, KeysBeyondAFullTableAreSentUnfolded)
{
	open(10000);
	const int keys = 40, slots = 32;
	int unfolded = 0, counts = 0;
	for (int k = 0; k < keys; k++) {
		Ev e("handshake_failed", "certificate has expired", 1000 + k);
		emit(e, 2 * k);
		emit(e, 2 * k + 1);
		auto got = bodies();
		for (const auto &b : got)
			EXPECT_EQ(field(b, "repeated"), -1) << b;
		EXPECT_EQ(got.size(), k < slots ? 1u : 2u) << "key " << k;
		unfolded += static_cast<int>(got.size());
	}
	// The windows close as time passes (read as they do: the test's socket
	// queue may hold only 10 datagrams).
	for (long long t = 2 * keys; t <= 2 * keys + 10000; t++) {
		log_chan_flush(chan, t, false);
		for (const auto &b : bodies()) {
			EXPECT_EQ(field(b, "repeated"), 1) << b;
			counts++;
		}
	}
	EXPECT_EQ(counts, slots);
	EXPECT_EQ(unfolded + counts, 2 * keys) << "every event is accounted for";
}

// A key seen once has nothing to report: after a tenth of the window it
// gives way to a new key; before, it is kept (it may be part of a loop).
TEST_F(Chan, OneOffKeysGiveWayInAFullTable)
{
	open(10000);
	for (int k = 0; k < 32; k++) {
		Ev once("handshake_failed", "certificate has expired", 1000 + k);
		emit(once, k);
		EXPECT_EQ(bodies().size(), 1u);
	}
	Ev loop("refused_plaintext", "server did not speak TLS", 80);
	emit(loop, 999);
	emit(loop, 999);
	EXPECT_EQ(bodies().size(), 2u) << "young windows are kept: the new key is not folded";
	for (int i = 0; i < 5; i++)
		emit(loop, 1000 + i);
	EXPECT_EQ(bodies().size(), 1u) << "the oldest one-off gave way: the new key is folded";
	log_chan_flush(chan, 1100, true);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u);
	EXPECT_EQ(got[0], loop.line() + " repeated=4");
}

// Whatever the mix of keys and times, every event is accounted for:
// events = lines without repeated= + the sum of repeated=.
TEST_F(Chan, EveryEventIsAccountedForInRandomTraffic)
{
	open(2000);
	std::mt19937 rng(12345);
	std::map<int, long> sent, seen;
	long long now = 0;
	auto take = [&]() {
		for (const auto &b : bodies()) {
			EXPECT_EQ(b.find("dropped="), std::string::npos) << b;
			size_t at = b.find("peer=192.0.2.7:");
			ASSERT_NE(at, std::string::npos) << b;
			int p = std::stoi(b.substr(at + 15));
			long r = field(b, "repeated");
			seen[p] += r == -1 ? 1 : r;
		}
	};
	for (int i = 0; i < 5000; i++) {
		int p = 2000 + static_cast<int>(rng() % 50);
		now += static_cast<long long>(rng() % 40);
		Ev e("handshake_failed", "certificate has expired", p, i);
		emit(e, now);
		sent[p]++;
		take(); // keep the socket's queue from filling
	}
	// Let the windows close one millisecond at a time, reading as they do:
	// the test's socket queue (net.unix.max_dgram_qlen) may be only 10 long.
	for (long long t = now; t <= now + 2000; t++) {
		log_chan_flush(chan, t, false);
		take();
	}
	log_chan_flush(chan, now + 2001, true);
	EXPECT_TRUE(bodies().empty());
	EXPECT_EQ(seen, sent);
}

// The daemon is not reading: lines are dropped without blocking, counted, and
// the count goes out with the next line that gets through.
TEST_F(Chan, DroppedLinesAreCountedOnTheNextLineThatGetsThrough)
{
	open(0);
	const int total = 60;
	for (int i = 0; i < total; i++) {
		Ev e("handshake_failed", "certificate has expired", 443, i);
		emit(e, i);
	}
	auto got = bodies();
	ASSERT_GT(got.size(), 0u);
	ASSERT_LT(got.size(), static_cast<size_t>(total))
	        << "the socket queue never filled: the test proves nothing";
	for (const auto &b : got)
		EXPECT_EQ(b.find("dropped="), std::string::npos) << b;
	Ev after("refused_plaintext", "server did not speak TLS");
	emit(after, total);
	auto last = bodies();
	ASSERT_EQ(last.size(), 1u);
	EXPECT_EQ(last[0], after.line() + " dropped=" + std::to_string(total - got.size()));
	emit(after, total + 1);
	last = bodies();
	ASSERT_EQ(last.size(), 1u);
	EXPECT_EQ(last[0].find("dropped="), std::string::npos) << "the count was cleared";
}

// Threads log while the daemon reads slower than they write (each thread
// reads back at most 5 datagrams per 7 it logs, so the queue fills and
// drains all the time): every line is either received or counted exactly once
// in a dropped= that was received.
TEST_F(Chan, DroppedCountIsExactUnderConcurrency)
{
	open(0);
	const int threads = 4, each = 700;
	std::vector<std::vector<std::string>> per(threads);
	std::vector<std::thread> writers;
	for (int t = 0; t < threads; t++)
		writers.emplace_back([&, t] {
			char buf[8192];
			for (int i = 0; i < each; i++) {
				Ev e("handshake_failed", "certificate has expired", 1000 + t, i);
				emit(e, i);
				for (int r = 0; i % 7 == 6 && r < 5; r++) {
					ssize_t n = recv(sink.fd(), buf, sizeof(buf), MSG_DONTWAIT);
					if (n < 0)
						break;
					per[t].emplace_back(buf, static_cast<size_t>(n));
				}
			}
		});
	for (auto &w : writers)
		w.join();
	std::vector<std::string> got;
	for (auto &v : per)
		got.insert(got.end(), v.begin(), v.end());
	for (auto &m : sink.drain())
		got.push_back(std::move(m));
	Ev last("refused_plaintext", "server did not speak TLS");
	emit(last, 0);
	auto tail = sink.drain();
	ASSERT_EQ(tail.size(), 1u);
	got.push_back(tail[0]);

	long received = 0, dropped = 0;
	for (const auto &m : got) {
		Msg p = parse(m);
		ASSERT_GE(p.pri, 0) << m;
		received++;
		long d = field(p.body, "dropped");
		if (d > 0)
			dropped += d;
	}
	EXPECT_EQ(received + dropped, threads * each + 1);
	EXPECT_GT(dropped, 0) << "nothing was dropped: the test proves nothing";
	EXPECT_GT(received, 2 * 5 * each / 7) << "lines got through while others were dropped";
}

TEST_F(Chan, ReconnectsWhenTheDaemonRestarts)
{
	open(0);
	Ev a("handshake_failed", "certificate has expired", 443);
	emit(a, 0);
	EXPECT_EQ(bodies().size(), 1u);

	sink.start(); // a new socket at the same path; the old one is gone
	Ev b("handshake_failed", "hostname mismatch", 443);
	emit(b, 1);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u) << "the line is resent after reconnecting";
	EXPECT_EQ(got[0], b.line()) << "nothing was dropped";
}

TEST_F(Chan, AbsentDaemonDropsAndCountsThenRecovers)
{
	open(0);
	Ev a("handshake_failed", "certificate has expired", 443);
	emit(a, 0);
	EXPECT_EQ(bodies().size(), 1u);
	sink.stop();
	int saved_errno = EILSEQ;
	errno = saved_errno;
	emit(a, 1);
	emit(a, 2);
	EXPECT_EQ(errno, saved_errno) << "logging leaves errno alone";
	sink.start();
	emit(a, 3);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u);
	EXPECT_EQ(got[0], a.line() + " dropped=2");
}

TEST_F(Chan, NoSocketAtAllNeverBlocksOrFails)
{
	sink.stop();
	struct log_chan_opts o {
	};
	o.path = "/nonexistent/tlsshim/log.sock";
	o.ident = "tlsshim";
	o.facility = LOG_AUTHPRIV;
	chan = log_chan_new(&o);
	ASSERT_NE(chan, nullptr);
	Ev e("handshake_failed", "certificate has expired");
	for (int i = 0; i < 1000; i++)
		emit(e, i);

	// A path too long for sun_path is the same: dropped, not a crash.
	std::string longpath(200, 'x');
	o.path = longpath.c_str();
	struct log_chan *c2 = log_chan_new(&o);
	ASSERT_NE(c2, nullptr);
	log_chan_emit(c2, &e.ev, 0);
	log_chan_free(c2);
}

// A program that closes descriptors behind the shim's back (a raw syscall, a
// dup2 onto the number) must not receive log lines in its own file.
TEST_F(Chan, ReplacedDescriptorIsNotWrittenTo)
{
	open(0);
	Ev a("handshake_failed", "certificate has expired", 443);
	emit(a, 0);
	EXPECT_EQ(bodies().size(), 1u);
	int fd = log_chan_fd(chan);
	ASSERT_GE(fd, 0);
	int p[2];
	ASSERT_EQ(pipe2(p, O_NONBLOCK), 0);
	ASSERT_EQ(dup2(p[1], fd), fd); // the program's pipe now has that number
	Ev b("handshake_failed", "hostname mismatch", 443);
	emit(b, 1);
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u) << "the line went through a new socket";
	EXPECT_EQ(got[0], b.line());
	char buf[16];
	EXPECT_EQ(read(p[0], buf, sizeof(buf)), -1) << "nothing was written to the program's pipe";
	EXPECT_EQ(errno, EAGAIN);
	EXPECT_NE(log_chan_fd(chan), -1);
	close(fd);
	close(p[0]);
	close(p[1]);
}

TEST_F(Chan, LongLinesKeepTheirSuffixes)
{
	open(10000);
	std::string big(8000, 'r');
	Ev e("handshake_failed", big.c_str());
	emit(e, 0);
	emit(e, 1);
	sink.stop(); // one drop
	log_chan_flush(chan, 2, true);
	sink.start();
	emit(e, 3);
	emit(e, 4);
	log_chan_flush(chan, 5, true);
	auto got = bodies();
	ASSERT_EQ(got.size(), 2u);
	EXPECT_EQ(got[0].size(), 4095u + std::string(" dropped=1").size());
	EXPECT_EQ(got[0].substr(got[0].size() - 10), " dropped=1");
	EXPECT_EQ(got[1].size(), 4095u);
}

// --- standard error ------------------------------------------------------------

// Runs `fn` with standard error redirected into a pipe; returns what it wrote.
template <typename F> std::string capture_stderr(F fn)
{
	int p[2];
	EXPECT_EQ(pipe(p), 0);
	int saved = dup(STDERR_FILENO);
	dup2(p[1], STDERR_FILENO);
	close(p[1]);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	std::string out;
	char buf[4096];
	ssize_t n;
	while ((n = read(p[0], buf, sizeof(buf))) > 0)
		out.append(buf, static_cast<size_t>(n));
	close(p[0]);
	return out;
}

TEST_F(Chan, StderrGetsTheSameLinesWithoutTheSyslogHeader)
{
	open(10000, true, LOG_AUTHPRIV, "stderr-ident");
	Ev e("handshake_failed", "certificate has expired");
	std::string err = capture_stderr([&] {
		emit(e, 0);
		emit(e, 1);
		sink.stop();
		log_chan_flush(chan, 2, true);
		sink.start();
		emit(e, 3);
	});
	std::string tag = "stderr-ident[" + std::to_string(getpid()) + "]: ";
	EXPECT_EQ(err,
	          tag + e.line() + "\n" + tag + e.line() + " repeated=1\n" + tag + e.line() + "\n")
	        << "dropped= is about the syslog socket and stays there";
	auto got = bodies();
	ASSERT_EQ(got.size(), 1u);
	EXPECT_EQ(got[0], e.line() + " dropped=1");
}

// --- fork ----------------------------------------------------------------------

// The state of a thread, from /proc: 'S' while it sleeps in a system call.
char thread_state(pid_t tid)
{
	std::string path = "/proc/self/task/" + std::to_string(tid) + "/stat";
	FILE *f = fopen(path.c_str(), "r");
	if (f == nullptr)
		return '?';
	char buf[512] = "";
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *close_paren = strrchr(buf, ')');
	return close_paren != nullptr && close_paren[1] == ' ' ? close_paren[2] : '?';
}

// fork() while another thread is inside the channel, holding its lock (here:
// blocked writing its stderr copy into a full pipe).  The child must be able
// to log at once; the alarm turns a deadlock into a failure.
TEST_F(Chan, ChildOfForkLogsWhileTheParentHoldsTheLock)
{
	open(0, true);
	int p[2];
	ASSERT_EQ(pipe2(p, O_NONBLOCK), 0);
	char fill[4096];
	memset(fill, 'x', sizeof(fill));
	while (write(p[1], fill, sizeof(fill)) > 0) {
	}
	ASSERT_EQ(fcntl(p[1], F_SETFL, 0), 0); // blocking again
	int saved = dup(STDERR_FILENO);
	dup2(p[1], STDERR_FILENO);

	std::atomic<pid_t> tid{0};
	std::thread blocked([&] {
		tid = gettid();
		Ev e("handshake_failed", "parent line", 1);
		emit(e, 0); // sent to the socket, then blocks on stderr, lock held
	});
	// Wait (bounded) until the thread sleeps in write() with the lock held:
	// its line has reached the socket and its state is 'S'.
	std::vector<std::string> parent_lines;
	for (int i = 0; i < 5000 && (parent_lines.empty() || thread_state(tid) != 'S'); i++) {
		for (auto &m : sink.drain())
			parent_lines.push_back(m);
		struct pollfd none = {-1, 0, 0};
		poll(&none, 0, 1);
	}
	ASSERT_EQ(parent_lines.size(), 1u);
	ASSERT_EQ(thread_state(tid), 'S');

	fflush(nullptr);
	pid_t pid = fork();
	if (pid == 0) {
		alarm(5);
		int devnull = ::open("/dev/null", O_WRONLY);
		dup2(devnull, STDERR_FILENO); // not the full pipe
		log_chan_atfork_child(chan);
		Ev e("handshake_failed", "child line", 2);
		log_chan_emit(chan, &e.ev, 0);
		_exit(0);
	}
	ASSERT_GT(pid, 0);
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);

	// Unblock the parent's thread.
	dup2(saved, STDERR_FILENO);
	close(saved);
	std::thread drainer([&] {
		char buf[4096];
		while (read(p[0], buf, sizeof(buf)) > 0) {
		}
	});
	blocked.join();
	close(p[1]);
	drainer.join();
	close(p[0]);

	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
	        << "the child hung on the inherited lock (status " << status << ")";
	auto got = sink.drain();
	ASSERT_EQ(got.size(), 1u);
	Msg m = parse(got[0]);
	EXPECT_EQ(m.pid, pid);
	EXPECT_NE(m.body.find("reason=\"child line\""), std::string::npos) << m.body;
}

// --- the process-wide channel: configuration, exit handler -------------------------

// conf_get() reads the environment once per process, so this runs in a child:
// it configures the socket, ident and facility, logs three identical events
// and exits; the exit handler sends the pending count.
TEST(LogProcess, UsesTheConfigurationAndFlushesAtExit)
{
	Sink sink;
	sink.start();
	fflush(nullptr); // the child's exit() must not print our buffers again
	pid_t pid = fork();
	if (pid == 0) {
		alarm(5);
		setenv("TLSSHIM_LOG_SOCKET", sink.path().c_str(), 1);
		setenv("TLSSHIM_LOG_IDENT", "unit-shim", 1);
		setenv("TLSSHIM_LOG_FACILITY", "local6", 1);
		unsetenv("TLSSHIM_LOG_STDERR");
		Ev e("refused_plaintext", "server did not speak TLS", 8080);
		e.ev.stage = "handshake";
		for (int i = 0; i < 3; i++)
			log_emit(&e.ev);
		log_flush(); // the window (10 s) is still open: nothing yet
		exit(0);
	}
	ASSERT_GT(pid, 0);
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
	auto got = sink.drain();
	ASSERT_EQ(got.size(), 2u);
	Msg first = parse(got[0]), count = parse(got[1]);
	EXPECT_EQ(first.pri, LOG_LOCAL6 | LOG_ERR) << got[0];
	EXPECT_EQ(first.ident, "unit-shim");
	EXPECT_EQ(first.pid, pid);
	EXPECT_NE(first.body.find("event=refused_plaintext "), std::string::npos);
	EXPECT_EQ(field(first.body, "repeated"), -1);
	EXPECT_EQ(field(count.body, "repeated"), 2) << got[1];
}

} // namespace
