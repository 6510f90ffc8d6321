// Unit tests for shim/conf.c.  conf_get() reads the environment once per
// process, so each case that loads it runs in a forked child (EXPECT_EXIT).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

extern "C" {
#include "conf.h"
}

namespace
{

TEST(ConfParse, Seconds)
{
	int ms = 0;
	EXPECT_EQ(conf_parse_seconds("10", &ms), 0);
	EXPECT_EQ(ms, 10000);
	EXPECT_EQ(conf_parse_seconds("0.5", &ms), 0);
	EXPECT_EQ(ms, 500);
	const char *bad[] = {"", "0", "-1", "abc", "10s", "1e9", "nan", "inf", "0.01", "3601"};
	for (const char *b : bad)
		EXPECT_EQ(conf_parse_seconds(b, &ms), -1) << b;
	EXPECT_EQ(conf_parse_seconds(nullptr, &ms), -1);
}

TEST(ConfParse, Bool)
{
	bool v = false;
	const char *yes[] = {"1", "yes", "YES", "true", "on"};
	const char *no[] = {"0", "no", "False", "off"};
	for (const char *y : yes) {
		EXPECT_EQ(conf_parse_bool(y, &v), 0) << y;
		EXPECT_TRUE(v);
	}
	for (const char *n : no) {
		EXPECT_EQ(conf_parse_bool(n, &v), 0) << n;
		EXPECT_FALSE(v);
	}
	EXPECT_EQ(conf_parse_bool("maybe", &v), -1);
	EXPECT_EQ(conf_parse_bool(nullptr, &v), -1);
}

// Exit code 0: usable; 1: unusable with the expected words in the error.
[[noreturn]] void load_and_exit(const char *expect_in_error)
{
	const struct shim_conf *c = conf_get();
	if (c->usable)
		_exit(0);
	_exit(std::string(c->error).find(expect_in_error) != std::string::npos ? 1 : 2);
}

void clear_env()
{
	for (const char *v : {"TLSSHIM_CA_FILE", "TLSSHIM_CA_DIR", "TLSSHIM_CONFIG",
	                      "TLSSHIM_HANDSHAKE_TIMEOUT", "TLSSHIM_LOG_STDERR", "TLSSHIM_DEBUG"})
		unsetenv(v);
}

TEST(ConfLoad, NoTrustIsUnusable)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        load_and_exit("no trust configured");
	        },
	        ::testing::ExitedWithCode(1), "");
}

TEST(ConfLoad, CaFileMakesItUsable)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        setenv("TLSSHIM_CA_FILE", "/proc/self/exe",
		               1); // readable is all conf checks
		        setenv("TLSSHIM_HANDSHAKE_TIMEOUT", "2.5", 1);
		        const struct shim_conf *c = conf_get();
		        _exit(c->usable && c->handshake_timeout_ms == 2500 ? 0 : 3);
	        },
	        ::testing::ExitedWithCode(0), "");
}

TEST(ConfLoad, UnreadableCaFileIsUnusable)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        setenv("TLSSHIM_CA_FILE", "/nonexistent/ca.pem", 1);
		        load_and_exit("TLSSHIM_CA_FILE");
	        },
	        ::testing::ExitedWithCode(1), "");
}

TEST(ConfLoad, BadTimeoutNeverFallsBackToDefault)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        setenv("TLSSHIM_CA_FILE", "/proc/self/exe", 1);
		        setenv("TLSSHIM_HANDSHAKE_TIMEOUT", "forever", 1);
		        load_and_exit("TLSSHIM_HANDSHAKE_TIMEOUT");
	        },
	        ::testing::ExitedWithCode(1), "");
}

TEST(ConfLoad, BadLogStderrIsUnusable)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        setenv("TLSSHIM_CA_FILE", "/proc/self/exe", 1);
		        setenv("TLSSHIM_LOG_STDERR", "perhaps", 1);
		        load_and_exit("TLSSHIM_LOG_STDERR");
	        },
	        ::testing::ExitedWithCode(1), "");
}

TEST(ConfLoad, DefaultsAreSecure)
{
	EXPECT_EXIT(
	        {
		        clear_env();
		        setenv("TLSSHIM_CA_FILE", "/proc/self/exe", 1);
		        const struct shim_conf *c = conf_get();
		        _exit(c->usable && c->handshake_timeout_ms == 10000 && !c->log_stderr &&
		                              !c->debug && c->ca_dir == nullptr
		                      ? 0
		                      : 3);
	        },
	        ::testing::ExitedWithCode(0), "");
}

} // namespace
