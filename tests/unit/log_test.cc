// Unit tests for shim/log.c: the one-line event format.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

extern "C" {
#include "log.h"
}

namespace {

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
	struct sockaddr_in peer {};
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
	struct sockaddr_in6 peer {};
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

} // namespace
