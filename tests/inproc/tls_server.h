/*
 * tls_server.h: an in-process TLS test server for the tlsshim semantics tests.
 *
 * The tests run inside a process whose every connect() goes through the shim,
 * so the server must never call connect(): it only listens and accepts, on
 * 127.0.0.1 or ::1, port 0 (ephemeral).  It speaks TLS with OpenSSL directly,
 * with blocking I/O and one thread per accepted connection, and records what
 * happened on every connection (handshake result, SNI, bytes in, SHA-256 of
 * the bytes in, raw bytes for the plaintext modes) so that tests can assert
 * on the server's side of the story, not only on what the client saw.
 *
 * Modes:
 *   kEcho         echo every byte back until the peer's close_notify or EOF,
 *                 then send close_notify and close.
 *   kSendN        after the handshake send `send_n` bytes of PatternByte(i),
 *                 send close_notify, wait (bounded) for the peer to close.
 *   kCountUpload  read until close_notify/EOF, then reply with one line
 *                 "count=<bytes> sha256=<hex>\n", send close_notify, close.
 *                 (Half-close and upload checks.)
 *   kPlaintext    no TLS: send `plaintext_banner` (like an SMTP/FTP server),
 *                 then record every byte received until EOF.  Tests assert
 *                 that nothing of the application's data ever arrived.
 *   kSilent       no TLS: accept, record what arrives, never answer.
 *
 * Shutdown: the destructor (or Stop()) wakes the acceptor, shuts down every
 * live connection socket (which wakes threads blocked in SSL_read/SSL_write/
 * SSL_accept), joins every thread and closes every descriptor.
 *
 * OpenSSL writes to sockets with plain send()/write(), so a peer that goes
 * away raises SIGPIPE: the constructor sets SIGPIPE to SIG_IGN when it is
 * still at SIG_DFL.
 */
#ifndef TLSSHIM_TESTS_INPROC_TLS_SERVER_H
#define TLSSHIM_TESTS_INPROC_TLS_SERVER_H

#include <sys/socket.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

typedef struct ssl_ctx_st SSL_CTX;

namespace tlstest
{

enum class ServerMode { kEcho, kSendN, kCountUpload, kPlaintext, kSilent };

struct ServerOptions {
	ServerMode mode = ServerMode::kEcho;
	int family = AF_INET;          // AF_INET: 127.0.0.1; AF_INET6: ::1
	std::string cert_file;         // PEM chain (leaf first); TLS modes only
	std::string key_file;          // PEM private key; TLS modes only
	uint64_t send_n = 0;           // kSendN: bytes to send
	int max_proto_version = 0;     // e.g. TLS1_2_VERSION; 0: OpenSSL's maximum
	int io_timeout_ms = 30000;     // SO_RCVTIMEO/SO_SNDTIMEO on accepted sockets
	int linger_ms = 5000;          // kSendN: how long to wait for the peer's close
	size_t max_recorded = 1 << 20; // cap on ConnRecord::raw
	std::string plaintext_banner = "220 tlsshim-test plaintext server ready\r\n";
};

// What the server saw on one accepted connection.
struct ConnRecord {
	std::string peer_ip;    // numeric address of the client's TCP endpoint
	uint16_t peer_port = 0; // the client's TCP port
	bool handshake_ok = false;
	std::string error;      // why the connection ended abnormally, if it did
	std::string sni;        // server name the client sent, "" if none
	std::string protocol;   // e.g. "TLSv1.3"
	uint64_t bytes_in = 0;  // application bytes received (decrypted for TLS)
	uint64_t bytes_out = 0; // application bytes sent
	std::string sha256_hex; // of all bytes_in, set when the connection ends
	std::string raw;        // first max_recorded bytes received
	bool clean_eof = false; // peer sent close_notify (TLS) or FIN (plaintext)
	bool done = false;      // the server has closed the connection
};

class TlsServer
{
      public:
	explicit TlsServer(const ServerOptions &opts);
	~TlsServer();
	TlsServer(const TlsServer &) = delete;
	TlsServer &operator=(const TlsServer &) = delete;

	// False if setup failed; error() says why.
	bool ok() const
	{
		return ok_;
	}
	const std::string &error() const
	{
		return error_;
	}

	uint16_t port() const
	{
		return port_;
	}
	int family() const
	{
		return opts_.family;
	}
	// A sockaddr for the listening address (127.0.0.1 or ::1, port()).
	socklen_t Address(struct sockaddr_storage *out) const;

	// Snapshot of every connection accepted so far, in accept order.
	std::vector<ConnRecord> Connections() const;
	size_t accepted() const;
	size_t active() const;     // accepted and not yet closed
	size_t max_active() const; // high-water mark of active()

	// Bounded waits; true when the condition held before the timeout.
	bool WaitForAccepted(size_t n, int timeout_ms) const;
	bool WaitForDone(size_t n, int timeout_ms) const; // n connections closed
	bool WaitForActive(size_t n, int timeout_ms) const;

	// Stops accepting, aborts live connections, joins all threads.  Idempotent.
	void Stop();

      private:
	void AcceptLoop();
	void Serve(int fd, size_t idx);
	void ServeTls(int fd, size_t idx);
	void ServePlain(int fd, size_t idx);
	void Record(size_t idx, const char *data, size_t n);
	void Fail(size_t idx, const std::string &why);

	ServerOptions opts_;
	bool ok_ = false;
	std::string error_;
	SSL_CTX *ctx_ = nullptr;
	int listen_fd_ = -1;
	int wake_r_ = -1, wake_w_ = -1;
	uint16_t port_ = 0;
	std::thread acceptor_;

	mutable std::mutex mu_;
	mutable std::condition_variable cv_;
	bool stopping_ = false;
	bool stopped_ = false;
	std::vector<std::thread> workers_;
	std::set<int> live_fds_;
	std::vector<ConnRecord> records_;
	size_t active_ = 0, max_active_ = 0;
};

// The deterministic byte stream of kSendN: byte i of the stream.
uint8_t PatternByte(uint64_t i);

// Lower-case hex SHA-256 of a buffer.
std::string Sha256Hex(const void *data, size_t len);

// Issues a leaf certificate for serverAuth signed by (ca_cert, ca_key), with
// subjectAltName `san` in OpenSSL's syntax ("DNS:localhost, IP:127.0.0.1"),
// valid from now - 1 h to now + 1 day, and a fresh EC P-256 key.  Writes
// PEM to out_cert / out_key.  Returns false and sets *err on failure.
bool MintLeafCert(const std::string &ca_cert, const std::string &ca_key, const std::string &cn,
                  const std::string &san, const std::string &out_cert, const std::string &out_key,
                  std::string *err);

} // namespace tlstest

#endif
