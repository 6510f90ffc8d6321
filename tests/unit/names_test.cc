// Unit tests for shim/names.c: the resolver memory behind SNI.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

extern "C" {
#include "names.h"
}

namespace
{

struct sockaddr_storage addr_of(const char *text)
{
	struct sockaddr_storage ss {
	};
	auto *in = reinterpret_cast<struct sockaddr_in *>(&ss);
	auto *in6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);

	if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
	} else {
		EXPECT_EQ(inet_pton(AF_INET6, text, &in6->sin6_addr), 1) << text;
		in6->sin6_family = AF_INET6;
	}
	return ss;
}

std::string lookup(const char *text)
{
	struct sockaddr_storage ss = addr_of(text);
	char out[NAMES_MAXLEN + 1];

	if (!names_lookup(reinterpret_cast<struct sockaddr *>(&ss), out, sizeof(out)))
		return "";
	return out;
}

class Names : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		names_reset();
	}
};

TEST_F(Names, RemembersAndNormalises)
{
	struct sockaddr_storage a = addr_of("192.0.2.10");
	names_remember("DB.Internal.", reinterpret_cast<struct sockaddr *>(&a));
	EXPECT_EQ(lookup("192.0.2.10"), "db.internal");
	EXPECT_EQ(lookup("192.0.2.11"), "");
}

TEST_F(Names, NewestResolutionWins)
{
	struct sockaddr_storage a = addr_of("192.0.2.10");
	names_remember("old.example", reinterpret_cast<struct sockaddr *>(&a));
	names_remember("new.example", reinterpret_cast<struct sockaddr *>(&a));
	EXPECT_EQ(lookup("192.0.2.10"), "new.example");
}

TEST_F(Names, MappedAddressMatchesIpv4)
{
	struct sockaddr_storage a = addr_of("192.0.2.7");
	names_remember("v4.example", reinterpret_cast<struct sockaddr *>(&a));
	EXPECT_EQ(lookup("::ffff:192.0.2.7"), "v4.example");
	EXPECT_EQ(lookup("2001:db8::7"), "");
}

TEST_F(Names, Ipv6)
{
	struct sockaddr_storage a = addr_of("2001:db8::1");
	names_remember("v6.example", reinterpret_cast<struct sockaddr *>(&a));
	EXPECT_EQ(lookup("2001:db8::1"), "v6.example");
}

TEST_F(Names, RejectsLiteralsAndJunk)
{
	struct sockaddr_storage a = addr_of("192.0.2.1");
	const char *bad[] = {"192.0.2.1", "::1", "", ".", "bad name", "a/b", "x\nfoo", nullptr};

	for (const char **p = bad; *p != nullptr; p++)
		names_remember(*p, reinterpret_cast<struct sockaddr *>(&a));
	names_remember(nullptr, reinterpret_cast<struct sockaddr *>(&a));
	EXPECT_EQ(lookup("192.0.2.1"), "");

	char out[NAMES_MAXLEN + 1];
	std::string long_name(NAMES_MAXLEN + 1, 'a');
	EXPECT_EQ(names_normalise(long_name.c_str(), out, sizeof(out)), -1);
	std::string max_name(NAMES_MAXLEN, 'a');
	EXPECT_EQ(names_normalise(max_name.c_str(), out, sizeof(out)), 0);
}

TEST_F(Names, BoundedCapacityEvictsOldest)
{
	struct sockaddr_storage first = addr_of("198.51.100.1");
	names_remember("first.example", reinterpret_cast<struct sockaddr *>(&first));
	for (int i = 0; i < NAMES_CAPACITY; i++) {
		struct sockaddr_storage a = addr_of("10.0.0.1");
		reinterpret_cast<struct sockaddr_in *>(&a)->sin_addr.s_addr =
		        htonl(0x0a000000u + i);
		names_remember("filler.example", reinterpret_cast<struct sockaddr *>(&a));
	}
	EXPECT_EQ(lookup("198.51.100.1"), "");
	EXPECT_EQ(lookup("10.0.0.5"), "filler.example");
}

TEST_F(Names, FromAddrinfoAndHostent)
{
	struct sockaddr_storage a = addr_of("203.0.113.5");
	struct addrinfo ai {
	};
	ai.ai_family = AF_INET;
	ai.ai_addr = reinterpret_cast<struct sockaddr *>(&a);
	ai.ai_addrlen = sizeof(struct sockaddr_in);
	names_remember_addrinfo("ai.example", &ai);
	EXPECT_EQ(lookup("203.0.113.5"), "ai.example");

	unsigned char raw[4] = {203, 0, 113, 6};
	char *list[] = {reinterpret_cast<char *>(raw), nullptr};
	struct hostent he {
	};
	he.h_addrtype = AF_INET;
	he.h_length = 4;
	he.h_addr_list = list;
	names_remember_hostent("he.example", &he);
	EXPECT_EQ(lookup("203.0.113.6"), "he.example");
	names_remember_hostent("none.example", nullptr);
}

} // namespace
