// Unit tests for shim/policy.c and the rule parts of shim/conf.c: patterns,
// first-match order, and every configuration error, table-driven.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tls_peer.h" // cert_path()

extern "C" {
#include "conf.h"
#include "policy.h"
}

namespace
{

struct sockaddr_storage dest(const char *ip, unsigned port)
{
	struct sockaddr_storage ss {
	};
	auto *in = reinterpret_cast<struct sockaddr_in *>(&ss);
	auto *in6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);
	if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(static_cast<uint16_t>(port));
	} else {
		EXPECT_EQ(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1) << ip;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(static_cast<uint16_t>(port));
	}
	return ss;
}

struct MatchCase {
	const char *pattern;
	const char *ip;
	unsigned port;
	const char *name;
	bool want;
};

class PatternMatch : public ::testing::TestWithParam<MatchCase>
{
};

TEST_P(PatternMatch, Decides)
{
	const MatchCase &c = GetParam();
	struct conf_match m;
	char err[160];
	ASSERT_EQ(conf_parse_match(c.pattern, &m, err, sizeof(err)), 0) << c.pattern << ": " << err;
	struct sockaddr_storage d = dest(c.ip, c.port);
	EXPECT_EQ(policy_match_one(&m, reinterpret_cast<struct sockaddr *>(&d), c.name), c.want)
	        << c.pattern << " vs " << c.ip << ":" << c.port << " name "
	        << (c.name ? c.name : "(none)");
}

INSTANTIATE_TEST_SUITE_P(
        Table, PatternMatch,
        ::testing::Values(
                // IPv4 CIDR and ports
                MatchCase{"10.20.0.0/16:5432", "10.20.3.4", 5432, nullptr, true},
                MatchCase{"10.20.0.0/16:5432", "10.21.3.4", 5432, nullptr, false},
                MatchCase{"10.20.0.0/16:5432", "10.20.3.4", 5433, nullptr, false},
                MatchCase{"10.20.0.0/15:*", "10.21.255.255", 1, nullptr, true},
                MatchCase{"0.0.0.0/0:443", "203.0.113.9", 443, nullptr, true},
                MatchCase{"192.0.2.7", "192.0.2.7", 12345, nullptr, true},
                MatchCase{"192.0.2.7", "192.0.2.8", 12345, nullptr, false},
                MatchCase{"127.0.0.1:8000-8100", "127.0.0.1", 8000, nullptr, true},
                MatchCase{"127.0.0.1:8000-8100", "127.0.0.1", 8100, nullptr, true},
                MatchCase{"127.0.0.1:8000-8100", "127.0.0.1", 8101, nullptr, false},
                MatchCase{"127.0.0.1:8000-8100", "127.0.0.1", 7999, nullptr, false},
                // IPv4-mapped addresses on IPv6 sockets match IPv4 patterns
                MatchCase{"10.20.0.0/16:5432", "::ffff:10.20.1.1", 5432, nullptr, true},
                MatchCase{"127.0.0.1:11211", "::ffff:127.0.0.1", 11211, nullptr, true},
                // IPv6
                MatchCase{"[::1]:11211", "::1", 11211, nullptr, true},
                MatchCase{"[::1]:11211", "::2", 11211, nullptr, false},
                MatchCase{"[2001:db8::/32]:443", "2001:db8:ffff::1", 443, nullptr, true},
                MatchCase{"[2001:db8::/32]:443", "2001:db9::1", 443, nullptr, false},
                MatchCase{"2001:db8::/33", "2001:db8:7fff::1", 9, nullptr, true},
                MatchCase{"2001:db8::/33", "2001:db8:8000::1", 9, nullptr, false},
                MatchCase{"10.0.0.0/8:80", "::a00:1", 80, nullptr, false}, // not mapped
                // names: exact, wildcard, case, resolved name required
                MatchCase{"db.internal:5432", "10.1.1.1", 5432, "db.internal", true},
                MatchCase{"DB.Internal.:5432", "10.1.1.1", 5432, "db.internal", true},
                MatchCase{"db.internal:5432", "10.1.1.1", 5432, nullptr, false},
                MatchCase{"db.internal:5432", "10.1.1.1", 5432, "db.internal.evil", false},
                MatchCase{"*.example.com:443", "192.0.2.1", 443, "a.example.com", true},
                MatchCase{"*.example.com:443", "192.0.2.1", 443, "a.b.example.com", true},
                MatchCase{"*.example.com:443", "192.0.2.1", 443, "example.com", false},
                MatchCase{"*.example.com:443", "192.0.2.1", 443, "badexample.com", false},
                MatchCase{"*.example.com:443", "192.0.2.1", 443, nullptr, false},
                // any host
                MatchCase{"*:21", "192.0.2.1", 21, nullptr, true},
                MatchCase{"*:21", "::1", 21, "x", true},
                MatchCase{"*:21", "192.0.2.1", 22, nullptr, false},
                MatchCase{"*", "198.51.100.1", 65535, nullptr, true},
                MatchCase{"host.example", "192.0.2.1", 1, "host.example", true}));

TEST(PatternParse, RejectsMalformed)
{
	const char *bad[] = {"10.0.0.0/33:80",  "10.0.0.0/-1",    "10.0.0.0/:80", "host:99999",
	                     "host:80-70",      "host:x",         "host:",        "[::1:80",
	                     "[::1]80",         "2001:db8::/129", "1.2.3:80",     "300.1.1.1",
	                     "*.*.example.com", "bad name:80",    "*.:80",        "a/b:80"};
	for (const char *b : bad) {
		struct conf_match m;
		char err[160] = "";
		EXPECT_EQ(conf_parse_match(b, &m, err, sizeof(err)), -1) << b;
		EXPECT_NE(err[0], '\0') << b;
	}
}

TEST(Pins, ParseAndReject)
{
	unsigned char out[CONF_PIN_LEN];
	EXPECT_EQ(conf_parse_pin("sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=", out), 0);
	EXPECT_EQ(out[0], 0xaf);
	const char *bad[] = {"sha1//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=",
	                     "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5",
	                     "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA==",
	                     "sha256//!!!!kG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=",
	                     "sha256//",
	                     ""};
	for (const char *b : bad)
		EXPECT_EQ(conf_parse_pin(b, out), -1) << b;
}

TEST(Loopback, Recognised)
{
	const char *yes[] = {"127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"};
	const char *no[] = {"128.0.0.1", "10.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1"};
	for (const char *y : yes) {
		auto d = dest(y, 1);
		EXPECT_TRUE(policy_is_loopback(reinterpret_cast<struct sockaddr *>(&d))) << y;
	}
	for (const char *n : no) {
		auto d = dest(n, 1);
		EXPECT_FALSE(policy_is_loopback(reinterpret_cast<struct sockaddr *>(&d))) << n;
	}
}

// --- whole files ---------------------------------------------------------------

std::string write_conf(const std::string &text)
{
	char path[] = "/tmp/tlsshim-conf-XXXXXX";
	int fd = mkstemp(path);
	EXPECT_GE(fd, 0);
	EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
	close(fd);
	return path;
}

class ConfFile : public ::testing::Test
{
      protected:
	void SetUp() override
	{
		for (const char *v : {"TLSSHIM_CA_FILE", "TLSSHIM_CA_DIR", "TLSSHIM_CONFIG",
		                      "TLSSHIM_HANDSHAKE_TIMEOUT", "TLSSHIM_LOG_STDERR"})
			unsetenv(v);
	}
	void TearDown() override
	{
		for (auto &f : files_)
			unlink(f.c_str());
	}
	// Configurations live as long as the process, as in the shim: keep them
	// reachable so that the leak checker agrees.
	static std::vector<void *> &kept()
	{
		static auto *v = new std::vector<void *>;
		return *v;
	}
	// Loads `text`; returns the error ("" when usable), with the policy built too.
	std::string load(const std::string &text)
	{
		files_.push_back(write_conf(text));
		struct shim_conf *c = new shim_conf;
		kept().push_back(c);
		if (conf_load(c, files_.back().c_str()) != 0)
			return c->error;
		struct policy *p = new policy;
		kept().push_back(p);
		if (policy_build(p, c) != 0)
			return p->error;
		last_ = c;
		return "";
	}
	std::string ca()
	{
		return cert_path("ca.pem");
	}
	struct shim_conf *last_ = nullptr;
	std::vector<std::string> files_;
};

TEST_F(ConfFile, TheIssueExampleWorks)
{
	std::string text =
	        "[tlsshim]\n"
	        "ca_file = " +
	        ca() +
	        "   # approved CAs\n"
	        "min_protocol = TLSv1.2\n"
	        "ocsp = prefer\n"
	        "handshake_timeout = 10\n"
	        "rules = rules\n"
	        "[rules]\n1 = billing_db\n2 = legacy_partner\n3 = loopback_cache\n4 = blocked\n"
	        "[billing_db]\n"
	        "match = 10.20.0.0/16:5432, db.internal:5432\n"
	        "action = tls\nname = db.internal\n"
	        "cert = " +
	        cert_path("client.pem") + "\nkey = " + cert_path("client.key") +
	        "\n"
	        "ca_file = " +
	        ca() +
	        "\n"
	        "[legacy_partner]\nmatch = partner.example.net:443\naction = tls\n"
	        "pin = sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=, "
	        "sha256//YLh1dUR9y6Kja30RrAn7JKnbQG/uEtLMkBgFF2Fuihg=\n"
	        "approved_cert = " +
	        cert_path("server.pem") +
	        "\n"
	        "[loopback_cache]\nmatch = 127.0.0.1:11211, [::1]:11211\naction = plaintext\n"
	        "[blocked]\nmatch = *:21, *:23\naction = deny\n";
	ASSERT_EQ(load(text), "");
	ASSERT_EQ(last_->nrules, 4u);
	EXPECT_STREQ(last_->rules[0].section, "billing_db");
	EXPECT_STREQ(last_->rules[0].name, "db.internal");
	EXPECT_EQ(last_->rules[1].tls.npins, 2u);
	EXPECT_EQ(last_->rules[1].tls.ca_file, nullptr) << "own trust replaces the global one";
	EXPECT_EQ(last_->rules[2].action, ACTION_PLAINTEXT);
	EXPECT_EQ(last_->rules[3].action, ACTION_DENY);

	// First match decides, in order.
	struct {
		const char *ip;
		unsigned port;
		const char *name;
		const char *rule;
	} cases[] = {{"10.20.1.1", 5432, nullptr, "billing_db"},
	             {"192.0.2.1", 5432, "db.internal", "billing_db"},
	             {"192.0.2.1", 443, "partner.example.net", "legacy_partner"},
	             {"127.0.0.1", 11211, nullptr, "loopback_cache"},
	             {"::1", 11211, nullptr, "loopback_cache"},
	             {"10.20.1.1", 21, nullptr, "blocked"},
	             {"192.0.2.1", 443, "other.example", nullptr}};
	for (auto &c : cases) {
		auto d = dest(c.ip, c.port);
		const struct conf_rule *r = policy_match(
		        last_, reinterpret_cast<struct sockaddr *>(&d), c.name, nullptr);
		EXPECT_STREQ(r ? r->section : nullptr, c.rule) << c.ip << ":" << c.port;
	}
}

TEST_F(ConfFile, RulesInheritGlobalSettings)
{
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() +
	               "\nmin_protocol=TLSv1.3\nocsp=require\n"
	               "rules=r\n[r]\n1=a\n[a]\nmatch=*:443\naction=tls\n"),
	          "");
	EXPECT_STREQ(last_->rules[0].tls.ca_file, last_->tls.ca_file);
	EXPECT_EQ(last_->rules[0].tls.min_protocol, 0x0304);
	EXPECT_EQ(last_->rules[0].tls.ocsp, OCSP_REQUIRE);
}

TEST_F(ConfFile, RelaySpinSetting)
{
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\n"), "");
	EXPECT_EQ(last_->relay_spin_us, 50) << "the default";
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_spin_us=0\n"), "");
	EXPECT_EQ(last_->relay_spin_us, 0);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_spin_us=1000\n"), "");
	EXPECT_EQ(last_->relay_spin_us, 1000);
	setenv("TLSSHIM_RELAY_SPIN_US", "200", 1);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_spin_us=10\n"), "");
	EXPECT_EQ(last_->relay_spin_us, 200) << "the environment wins";
	setenv("TLSSHIM_RELAY_SPIN_US", "fast", 1);
	EXPECT_NE(load("[tlsshim]\nca_file=" + ca() + "\n").find("TLSSHIM_RELAY_SPIN_US"),
	          std::string::npos);
	unsetenv("TLSSHIM_RELAY_SPIN_US");
}

TEST_F(ConfFile, RelayThreadsSetting)
{
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\n"), "");
	EXPECT_EQ(last_->relay_threads, 0) << "the default: auto";
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_threads=1\n"), "");
	EXPECT_EQ(last_->relay_threads, 1);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_threads=4\n"), "");
	EXPECT_EQ(last_->relay_threads, 4);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_threads=3\nrelay_threads=AUTO\n"),
	          "");
	EXPECT_EQ(last_->relay_threads, 0);
	setenv("TLSSHIM_RELAY_THREADS", "2", 1);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_threads=1\n"), "");
	EXPECT_EQ(last_->relay_threads, 2) << "the environment wins";
	setenv("TLSSHIM_RELAY_THREADS", "0", 1);
	EXPECT_NE(load("[tlsshim]\nca_file=" + ca() + "\n").find("TLSSHIM_RELAY_THREADS"),
	          std::string::npos);
	unsetenv("TLSSHIM_RELAY_THREADS");
}

TEST_F(ConfFile, RelayParkSetting)
{
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\n"), "");
	EXPECT_EQ(last_->relay_park, PARK_AUTO) << "the default";
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_park=always\n"), "");
	EXPECT_EQ(last_->relay_park, PARK_ALWAYS);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_park=OFF\n"), "");
	EXPECT_EQ(last_->relay_park, PARK_OFF);
	EXPECT_NE(load("[tlsshim]\nca_file=" + ca() + "\nrelay_park=sometimes\n")
	                  .find("relay_park = sometimes: expected auto, always or off"),
	          std::string::npos);
	EXPECT_NE(load("[tlsshim]\nca_file=" + ca() + "\nrelay_park=\n").find("relay_park"),
	          std::string::npos);
	setenv("TLSSHIM_RELAY_PARK", "off", 1);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() + "\nrelay_park=always\n"), "");
	EXPECT_EQ(last_->relay_park, PARK_OFF) << "the environment wins";
	setenv("TLSSHIM_RELAY_PARK", "1", 1);
	EXPECT_NE(load("[tlsshim]\nca_file=" + ca() + "\n").find("TLSSHIM_RELAY_PARK"),
	          std::string::npos);
	unsetenv("TLSSHIM_RELAY_PARK");
}

TEST_F(ConfFile, EnvironmentOverridesGlobalKeys)
{
	setenv("TLSSHIM_HANDSHAKE_TIMEOUT", "2", 1);
	setenv("TLSSHIM_CA_FILE", cert_path("other-ca.pem").c_str(), 1);
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() +
	               "\nhandshake_timeout=30\nrules=r\n[r]\n1=a\n"
	               "[a]\nmatch=*:443\naction=tls\n"),
	          "");
	EXPECT_EQ(last_->handshake_timeout_ms, 2000);
	EXPECT_EQ(std::string(last_->tls.ca_file), cert_path("other-ca.pem"));
	EXPECT_EQ(std::string(last_->rules[0].tls.ca_file), cert_path("other-ca.pem"))
	        << "a rule inheriting the global trust sees the override";
	unsetenv("TLSSHIM_HANDSHAKE_TIMEOUT");
	unsetenv("TLSSHIM_CA_FILE");
}

struct ErrorCase {
	const char *what;
	std::string body; // after "[tlsshim]\nca_file=CA\n"
	const char *expect;
};

class ConfErrors : public ConfFile, public ::testing::WithParamInterface<ErrorCase>
{
};

TEST_P(ConfErrors, RefusedWithReason)
{
	const ErrorCase &e = GetParam();
	std::string err = load("[tlsshim]\nca_file=" + ca() + "\n" + e.body);
	EXPECT_NE(err, "") << e.what;
	EXPECT_NE(err.find(e.expect), std::string::npos) << e.what << ": " << err;
	EXPECT_NE(err.find(files_.back()), std::string::npos) << "names the file: " << err;
}

const std::string rule_hdr = "rules=r\n[r]\n1=a\n[a]\n";

INSTANTIATE_TEST_SUITE_P(
        Table, ConfErrors,
        ::testing::Values(
                ErrorCase{"unknown global key", "colour=blue\n", "unknown key \"colour\""},
                ErrorCase{"unknown rule key", rule_hdr + "match=*\naction=tls\nflavour=x\n",
                          "unknown key \"flavour\""},
                ErrorCase{"bad action", rule_hdr + "match=*\naction=maybe\n", "action = maybe"},
                ErrorCase{"bad CIDR", rule_hdr + "match=10.0.0.0/33:80\naction=deny\n",
                          "10.0.0.0/33"},
                ErrorCase{"bad port", rule_hdr + "match=host:99999\naction=deny\n", "bad port"},
                ErrorCase{"missing rule section", "rules=r\n[r]\n1=nosuch\n",
                          "[nosuch] does not exist"},
                ErrorCase{"missing rules section", "rules=nolist\n", "rules = nolist"},
                ErrorCase{"rule without match", rule_hdr + "action=deny\n", "has no match"},
                ErrorCase{"rule without action", rule_hdr + "match=*\n", "has no action"},
                ErrorCase{"unreadable cert",
                          rule_hdr + "match=*\naction=tls\ncert=/nonexistent.pem\n"
                                     "key=/nonexistent.key\n",
                          "cert = /nonexistent.pem"},
                ErrorCase{"cert without key", "client_cert=" + cert_path("client.pem") + "\n",
                          "client_cert and client_key go together"},
                ErrorCase{"inbound without listen", "inbound=in\n[in]\n1=api\n[api]\naction=tls\n",
                          "[api] has no listen"},
                ErrorCase{"inbound listen by name",
                          "inbound=in\n[in]\n1=api\n[api]\nlisten=localhost:80\n",
                          "expected address:port"},
                ErrorCase{"inbound bad allow_from",
                          "inbound=in\n[in]\n1=api\n[api]\nlisten=*:80\nallow_from=*.evil\n",
                          "allow_from"},
                ErrorCase{"inbound client_cert without client_ca",
                          "inbound=in\n[in]\n1=api\n[api]\nlisten=*:80\nclient_cert=require\n",
                          "needs client_ca"},
                ErrorCase{"inbound allow_client without client_cert",
                          "inbound=in\n[in]\n1=api\n[api]\nlisten=*:80\nallow_client=CN=x*\n",
                          "allow_client needs client_cert"},
                ErrorCase{"inbound bad allow_client pattern",
                          "inbound=in\n[in]\n1=api\n[api]\nlisten=*:80\nallow_client=OU=x\n",
                          "expected CN=pattern or DNS:pattern"},
                ErrorCase{"inbound missing section", "inbound=in\n[in]\n1=nosuch\n",
                          "inbound section [nosuch] does not exist"},
                ErrorCase{"inbound_default bad", "inbound_default=maybe\n", "inbound_default"},
                ErrorCase{"key not matching cert",
                          rule_hdr + "match=*\naction=tls\ncert=" + cert_path("client.pem") +
                                  "\nkey=" + cert_path("server.key") + "\n",
                          "does not match"},
                ErrorCase{"malformed pin", rule_hdr + "match=*\naction=tls\npin=sha256//abc\n",
                          "bad pin"},
                ErrorCase{"bad ocsp", "ocsp=maybe\n", "ocsp = maybe"},
                ErrorCase{"spin too long", "relay_spin_us=1001\n", "relay_spin_us = 1001"},
                ErrorCase{"spin not a number", "relay_spin_us=50us\n", "relay_spin_us = 50us"},
                ErrorCase{"spin negative", "relay_spin_us=-1\n", "relay_spin_us = -1"},
                ErrorCase{"no relay thread", "relay_threads=0\n", "relay_threads = 0"},
                ErrorCase{"too many relay threads", "relay_threads=5\n", "relay_threads = 5"},
                ErrorCase{"relay threads not a number", "relay_threads=two\n",
                          "relay_threads = two"},
                ErrorCase{"relay threads trailing", "relay_threads=2x\n", "relay_threads = 2x"},
                ErrorCase{"bad ocsp_fetch", "ocsp_fetch=maybe\n", "ocsp_fetch = maybe"},
                ErrorCase{"bad protocol", "min_protocol=SSLv3\n", "min_protocol = SSLv3"},
                ErrorCase{"bad timeout", "handshake_timeout=forever\n", "handshake_timeout"},
                ErrorCase{"bad cipher string", "ciphers=NOSUCHCIPHER\n", "ciphers = NOSUCHCIPHER"},
                ErrorCase{"deny with TLS keys", rule_hdr + "match=*\naction=deny\nname=x.example\n",
                          "takes no TLS settings"},
                ErrorCase{"empty CA file",
                          "rules=r\n[r]\n1=a\n[a]\nmatch=*\naction=tls\nca_file=/dev/null\n",
                          "cannot load CA /dev/null"},
                ErrorCase{"syntax error", "[broken\n", "syntax error"}));

TEST_F(ConfFile, SyntaxErrorNamesTheLine)
{
	std::string err = load("[tlsshim]\nca_file=" + ca() + "\n\n[broken\n");
	EXPECT_NE(err.find("line 4"), std::string::npos) << err;
}

TEST_F(ConfFile, NoSection)
{
	EXPECT_NE(load("[other]\nx=1\n").find("no [tlsshim] section"), std::string::npos);
}

TEST_F(ConfFile, MissingFile)
{
	auto *c = new shim_conf;
	kept().push_back(c);
	EXPECT_EQ(conf_load(c, "/nonexistent/tlsshim.conf"), -1);
	EXPECT_NE(std::string(c->error).find("/nonexistent/tlsshim.conf"), std::string::npos);
	EXPECT_FALSE(c->usable);
}

TEST_F(ConfFile, RelativePathsAreAgainstTheFilesDirectory)
{
	std::string dir = certs_dir();
	std::string path = dir + "/relative-test.conf";
	std::ofstream(path) << "[tlsshim]\nca_file = ca.pem\n";
	files_.push_back(path);
	auto *c = new shim_conf;
	kept().push_back(c);
	ASSERT_EQ(conf_load(c, path.c_str()), 0) << c->error;
	EXPECT_EQ(std::string(c->tls.ca_file), dir + "/ca.pem");
}

} // namespace

namespace
{

TEST_F(ConfFile, InboundSectionsMatchListenersInOrder)
{
	std::string text = "[tlsshim]\nca_file=" + ca() + "\ncert=" + cert_path("server.pem") +
	                   "\nkey=" + cert_path("server.key") +
	                   "\ninbound=inbound\n[inbound]\n1=api\n2=admin\n"
	                   "[api]\nlisten=*:8080, [::1]:8443\nallow_from=127.0.0.0/8, ::1/128\n"
	                   "client_ca=" +
	                   ca() +
	                   "\nclient_cert=optional\n"
	                   "allow_client=CN=ops-*, DNS:*.mgmt.internal\nmin_protocol=TLSv1.3\n"
	                   "[admin]\nlisten=127.0.0.1:9090\naction=plaintext\n";
	ASSERT_EQ(load(text), "");
	ASSERT_EQ(last_->ninbound, 2u);
	EXPECT_EQ(last_->inbound[0].client_cert, CLIENT_CERT_OPTIONAL);
	EXPECT_EQ(last_->inbound[0].nallow_client, 2u);
	EXPECT_STREQ(last_->inbound[0].cert, last_->inbound_dft.cert) << "global cert serves it";

	struct policy p;
	ASSERT_EQ(policy_build(&p, last_), 0) << p.error;
	struct {
		const char *ip;
		unsigned port;
		const char *section; // nullptr: the default
		bool has_ctx;
	} cases[] = {{"0.0.0.0", 8080, "api", true},
	             {"::1", 8443, "api", true},
	             {"127.0.0.1", 8443, nullptr, true},
	             {"127.0.0.1", 9090, "admin", false},
	             {"0.0.0.0", 9090, nullptr, true}};
	for (auto &c : cases) {
		auto d = dest(c.ip, c.port);
		SSL_CTX *ctx = nullptr;
		const struct conf_inbound *in =
		        policy_inbound(&p, reinterpret_cast<struct sockaddr *>(&d), &ctx);
		EXPECT_STREQ(in->section, c.section) << c.ip << ":" << c.port;
		EXPECT_EQ(ctx != nullptr, c.has_ctx) << c.ip << ":" << c.port;
	}
	const struct conf_inbound *api = &last_->inbound[0];
	auto inside = dest("127.9.9.9", 5555), v6 = dest("::1", 5555),
	     outside = dest("10.0.0.1", 5);
	EXPECT_TRUE(policy_admits(api, reinterpret_cast<struct sockaddr *>(&inside)));
	EXPECT_TRUE(policy_admits(api, reinterpret_cast<struct sockaddr *>(&v6)));
	EXPECT_FALSE(policy_admits(api, reinterpret_cast<struct sockaddr *>(&outside)));
	EXPECT_TRUE(
	        policy_admits(&last_->inbound_dft, reinterpret_cast<struct sockaddr *>(&outside)))
	        << "no allow_from: any source";
	policy_free(&p);
}

TEST_F(ConfFile, InboundWithoutCertificateBuildsNoContext)
{
	ASSERT_EQ(load("[tlsshim]\nca_file=" + ca() +
	               "\ninbound=in\n[in]\n1=api\n[api]\nlisten=*:1\n"),
	          "");
	struct policy p;
	ASSERT_EQ(policy_build(&p, last_), 0) << p.error;
	auto d = dest("0.0.0.0", 1);
	SSL_CTX *ctx = reinterpret_cast<SSL_CTX *>(1);
	policy_inbound(&p, reinterpret_cast<struct sockaddr *>(&d), &ctx);
	EXPECT_EQ(ctx, nullptr) << "connections to it are refused at accept";
	policy_free(&p);
}

} // namespace
