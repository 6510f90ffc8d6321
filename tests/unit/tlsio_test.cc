// Unit tests for shim/tlsio.c: context, bounded client handshake and the
// classification of failures, against a TLS peer over a socketpair.
#include <arpa/inet.h>
#include <poll.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "tls_peer.h"

extern "C" {
#include "conf.h"
#include "tlsio.h"
}

namespace
{

// The configuration is read once per process: trust the test CA.
struct TrustTestCa : ::testing::Environment {
	void SetUp() override
	{
		setenv("TLSSHIM_CA_FILE", cert_path("ca.pem").c_str(), 1);
	}
};
const auto *env = ::testing::AddGlobalTestEnvironment(new TrustTestCa);

struct Result {
	int rc;
	int err;
	struct tls_failure why;
};

// Connects a client SSL on one end of a socketpair; `serve` drives the other.
Result client_against(const char *name, const char *ip, std::function<int(int)> serve,
                      long timeout_ms = 5000)
{
	int sv[2];
	EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	int server_fd = sv[1];
	int flags = fcntl(server_fd, F_GETFL);
	fcntl(server_fd, F_SETFL, flags & ~O_NONBLOCK);
	std::thread server([&] { serve(server_fd); });

	char err[256];
	SSL_CTX *ctx = tlsio_client_ctx(err, sizeof(err));
	EXPECT_NE(ctx, nullptr) << err;
	struct sockaddr_in peer {
	};
	peer.sin_family = AF_INET;
	inet_pton(AF_INET, ip != nullptr ? ip : "127.0.0.1", &peer.sin_addr);
	SSL *ssl = tlsio_client_new(ctx, sv[0], name, reinterpret_cast<struct sockaddr *>(&peer));
	Result r{};
	r.rc = tlsio_handshake(ssl, tlsio_now_ms() + timeout_ms, &r.why);
	r.err = errno;
	SSL_free(ssl);
	shutdown(sv[0], SHUT_RDWR);
	server.join();
	close(sv[0]);
	return r;
}

std::function<int(int)> tls_server(const std::string &cert)
{
	return [cert](int fd) {
		TlsPeer peer(dup(fd), cert, [](SSL *ssl) {
			char b[16];
			SSL_read(ssl, b, sizeof(b)); // until the client goes
		});
		peer.join();
		close(fd);
		return 0;
	};
}

TEST(Tlsio, AcceptsTrustedServerByName)
{
	Result r = client_against("localhost", nullptr, tls_server("server"));
	EXPECT_EQ(r.rc, 0) << r.why.reason;
	EXPECT_EQ(std::string(r.why.tls).rfind("TLSv1.", 0), 0u);
}

TEST(Tlsio, AcceptsTrustedServerByIpSan)
{
	EXPECT_EQ(client_against(nullptr, "127.0.0.1", tls_server("server")).rc, 0);
}

struct RefusalCase {
	const char *cert;
	const char *name;
	const char *ip;
	int x509_err;
	const char *reason;
};

class TlsioRefusal : public ::testing::TestWithParam<RefusalCase>
{
};

TEST_P(TlsioRefusal, RefusedWithReason)
{
	const RefusalCase &c = GetParam();
	Result r = client_against(c.name, c.ip, tls_server(c.cert));
	EXPECT_EQ(r.rc, -1);
	EXPECT_EQ(r.err, ECONNREFUSED);
	EXPECT_STREQ(r.why.event, "handshake_failed");
	EXPECT_STREQ(r.why.stage, "verify");
	EXPECT_EQ(r.why.x509_err, c.x509_err);
	EXPECT_STREQ(r.why.reason, c.reason);
	EXPECT_NE(r.why.subject[0], '\0');
	EXPECT_EQ(strlen(r.why.sha256), 64u);
}

INSTANTIATE_TEST_SUITE_P(
        Cases, TlsioRefusal,
        ::testing::Values(
                RefusalCase{"untrusted", "localhost", nullptr, 20,
                            "unable to get local issuer certificate"},
                RefusalCase{"selfsigned", "localhost", nullptr, 18, "self-signed certificate"},
                RefusalCase{"expired", "localhost", nullptr, 10, "certificate has expired"},
                RefusalCase{"notyet", "localhost", nullptr, 9, "certificate is not yet valid"},
                RefusalCase{"wrongname", "localhost", nullptr, 62, "hostname mismatch"},
                RefusalCase{"server", "other.example", nullptr, 62, "hostname mismatch"},
                RefusalCase{"server", nullptr, "192.0.2.1", 64, "IP address mismatch"}));

TEST(Tlsio, PlaintextServerIsRecognised)
{
	Result r = client_against("localhost", nullptr, [](int fd) {
		char b[512];
		(void)!read(fd, b, sizeof(b)); // the ClientHello
		const char reply[] = "HTTP/1.0 400 Bad Request\r\n\r\n";
		(void)!write(fd, reply, sizeof(reply) - 1);
		close(fd);
		return 0;
	});
	EXPECT_EQ(r.rc, -1);
	EXPECT_EQ(r.err, ECONNREFUSED);
	EXPECT_STREQ(r.why.event, "refused_plaintext");
	EXPECT_STREQ(r.why.reason, "server did not speak TLS");
}

TEST(Tlsio, BannerServerIsRecognised)
{
	Result r = client_against("localhost", nullptr, [](int fd) {
		const char banner[] = "220 mail.example ESMTP\r\n";
		(void)!write(fd, banner, sizeof(banner) - 1);
		char b[512];
		(void)!read(fd, b, sizeof(b));
		close(fd);
		return 0;
	});
	EXPECT_EQ(r.rc, -1);
	EXPECT_STREQ(r.why.event, "refused_plaintext");
}

TEST(Tlsio, SilentServerTimesOut)
{
	long start = tlsio_now_ms();
	Result r = client_against(
	        "localhost", nullptr,
	        [](int fd) {
		        char b[4096];
		        // Read the ClientHello, then say nothing until the client leaves.
		        while (read(fd, b, sizeof(b)) > 0) {
		        }
		        close(fd);
		        return 0;
	        },
	        300);
	long took = tlsio_now_ms() - start;
	EXPECT_EQ(r.rc, -1);
	EXPECT_EQ(r.err, ETIMEDOUT);
	EXPECT_STREQ(r.why.stage, "timeout");
	EXPECT_STREQ(r.why.reason, "handshake timed out");
	EXPECT_GE(took, 250);
	EXPECT_LT(took, 5000);
}

TEST(Tlsio, ServerClosingMidHandshakeIsARefusal)
{
	Result r = client_against("localhost", nullptr, [](int fd) {
		char b[64];
		(void)!read(fd, b, sizeof(b));
		close(fd);
		return 0;
	});
	EXPECT_EQ(r.rc, -1);
	EXPECT_EQ(r.err, ECONNREFUSED);
	EXPECT_STREQ(r.why.event, "handshake_failed");
	// Closing with the ClientHello unread resets the connection.
	std::string reason = r.why.reason;
	EXPECT_TRUE(reason.find("closed by server") != std::string::npos ||
	            reason == "Connection reset by peer")
	        << reason;
}

TEST(Tlsio, Tls11OnlyServerIsRefused)
{
	Result r = client_against("localhost", nullptr, [](int fd) {
		SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
		SSL_CTX_set_security_level(ctx, 0);
		SSL_CTX_set_min_proto_version(ctx, TLS1_1_VERSION);
		SSL_CTX_set_max_proto_version(ctx, TLS1_1_VERSION);
		SSL_CTX_use_certificate_chain_file(ctx, cert_path("server.pem").c_str());
		SSL_CTX_use_PrivateKey_file(ctx, cert_path("server.key").c_str(), SSL_FILETYPE_PEM);
		SSL *ssl = SSL_new(ctx);
		SSL_set_fd(ssl, fd);
		EXPECT_NE(SSL_accept(ssl), 1);
		SSL_free(ssl);
		SSL_CTX_free(ctx);
		close(fd);
		return 0;
	});
	EXPECT_EQ(r.rc, -1);
	EXPECT_EQ(r.err, ECONNREFUSED);
	EXPECT_STREQ(r.why.stage, "handshake");
}

} // namespace

namespace
{

// One server context for several connections, so that its tickets can resume.
SSL_CTX *shared_server_ctx()
{
	static SSL_CTX *ctx = [] {
		SSL_CTX *c = SSL_CTX_new(TLS_server_method());
		SSL_CTX_use_certificate_chain_file(c, cert_path("server.pem").c_str());
		SSL_CTX_use_PrivateKey_file(c, cert_path("server.key").c_str(), SSL_FILETYPE_PEM);
		return c;
	}();
	return ctx;
}

// A handshake of `ctx` against the shared server; returns whether it resumed.
int resumed_against_shared(SSL_CTX *ctx)
{
	int sv[2];
	EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	std::thread server([&] {
		SSL *s = SSL_new(shared_server_ctx());
		SSL_set_fd(s, sv[1]);
		if (SSL_accept(s) == 1) {
			char b[16];
			SSL_read(s, b, sizeof(b)); // until the client goes
		}
		SSL_free(s);
		close(sv[1]);
	});
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	struct sockaddr_in peer {
	};
	peer.sin_family = AF_INET;
	peer.sin_port = htons(4433);
	inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
	SSL *ssl = tlsio_client_new(ctx, sv[0], "localhost",
	                            reinterpret_cast<struct sockaddr *>(&peer));
	struct tls_failure why;
	int rc = tlsio_handshake(ssl, tlsio_now_ms() + 5000, &why);
	EXPECT_EQ(rc, 0) << why.reason;
	// Let TLS 1.3 tickets arrive: read until the server has sent them.
	char b;
	long until = tlsio_now_ms() + 2000;
	while (tlsio_now_ms() < until && SSL_read(ssl, &b, 1) <= 0 &&
	       SSL_get_error(ssl, -1) == SSL_ERROR_WANT_READ &&
	       SSL_SESSION_is_resumable(SSL_get0_session(ssl)) == 0)
		tlsio_wait(sv[0], POLLIN, until);
	int resumed = SSL_session_reused(ssl);
	SSL_shutdown(ssl);
	SSL_free(ssl);
	shutdown(sv[0], SHUT_RDWR);
	server.join();
	close(sv[0]);
	return resumed;
}

TEST(TlsioSessions, ResumesWithinTheSameRuleOnly)
{
	char err[256];
	SSL_CTX *ctx = tlsio_client_ctx(err, sizeof(err));
	ASSERT_NE(ctx, nullptr) << err;
	EXPECT_EQ(resumed_against_shared(ctx), 0) << "the first connection is a full handshake";
	EXPECT_EQ(resumed_against_shared(ctx), 1) << "the second resumes";

	// Another rule (another context) never gets that session.
	static struct conf_tls other;
	other.ca_file = conf_get()->tls.ca_file;
	other.min_protocol = 0x0303;
	SSL_CTX *ctx2 = tlsio_ctx_new(&other, err, sizeof(err));
	ASSERT_NE(ctx2, nullptr) << err;
	EXPECT_EQ(resumed_against_shared(ctx2), 0);
	SSL_CTX_free(ctx2);
}

} // namespace
