// tls_peer.h: a server-side TLS peer on one end of a socketpair, on its own
// thread, for unit tests of the client handshake and the relay.  Header
// only; uses OpenSSL directly and blocking I/O.
#ifndef TLSSHIM_TESTS_TLS_PEER_H
#define TLSSHIM_TESTS_TLS_PEER_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

inline std::string certs_dir()
{
	const char *d = getenv("TLSSHIM_CERTS");
	return d != nullptr ? d : "build/test-certs";
}

inline std::string cert_path(const std::string &name)
{
	return certs_dir() + "/" + name;
}

// Runs `body(ssl)` after a server handshake with `cert`(.pem/.key) on `fd`.
// The handshake result is in handshake_ok.  Owns and closes `fd`.
class TlsPeer
{
      public:
	TlsPeer(int fd, const std::string &cert, std::function<void(SSL *)> body) : fd_(fd)
	{
		// The peer may write to a client that has gone; that must not kill
		// the test process (the shim itself never raises SIGPIPE).
		std::signal(SIGPIPE, SIG_IGN);
		ctx_ = SSL_CTX_new(TLS_server_method());
		SSL_CTX_use_certificate_chain_file(ctx_, cert_path(cert + ".pem").c_str());
		SSL_CTX_use_PrivateKey_file(ctx_, cert_path(cert + ".key").c_str(),
		                            SSL_FILETYPE_PEM);
		thread_ = std::thread([this, body] {
			SSL *ssl = SSL_new(ctx_);
			SSL_set_fd(ssl, fd_);
			handshake_ok = SSL_accept(ssl) == 1;
			if (handshake_ok && body)
				body(ssl);
			SSL_free(ssl);
			shutdown(fd_, SHUT_RDWR);
		});
	}
	~TlsPeer()
	{
		join();
		SSL_CTX_free(ctx_);
		close(fd_);
	}
	void join()
	{
		if (thread_.joinable())
			thread_.join();
	}
	bool handshake_ok = false;

      private:
	int fd_;
	SSL_CTX *ctx_;
	std::thread thread_;
};

#endif
