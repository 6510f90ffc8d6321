/*
 * tls_server.cc: the in-process TLS test server (see tls_server.h).
 *
 * Every socket here comes from socket()/bind()/listen()/accept(), never from
 * connect(), so the shim linked into the test binary leaves them alone.
 */
#include "tls_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <system_error>

namespace tlstest
{
namespace
{

std::string OpenSslErrors()
{
	std::string out;
	unsigned long e;
	char buf[256];
	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof buf);
		if (!out.empty())
			out += "; ";
		out += buf;
	}
	return out.empty() ? std::string("(no OpenSSL error)") : out;
}

void SetTimeouts(int fd, int ms)
{
	struct timeval tv;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

struct SslDeleter {
	void operator()(SSL *s) const
	{
		SSL_free(s);
	}
};
struct MdCtxDeleter {
	void operator()(EVP_MD_CTX *c) const
	{
		EVP_MD_CTX_free(c);
	}
};

std::string Hex(const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	std::string s;
	s.reserve(n * 2);
	for (size_t i = 0; i < n; i++) {
		s += digits[p[i] >> 4];
		s += digits[p[i] & 15];
	}
	return s;
}

std::string Finish(EVP_MD_CTX *md)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (EVP_DigestFinal_ex(md, out, &n) != 1)
		return "";
	return Hex(out, n);
}

// SSL_write of the whole buffer (blocking socket, SSL_MODE_AUTO_RETRY).
bool SslWriteAll(SSL *ssl, const char *p, size_t n, std::string *why)
{
	while (n > 0) {
		int chunk = n > (1u << 20) ? (1 << 20) : static_cast<int>(n);
		int w = SSL_write(ssl, p, chunk);
		if (w <= 0) {
			int e = SSL_get_error(ssl, w);
			*why = "SSL_write failed: ssl_error=" + std::to_string(e) +
			       " errno=" + std::to_string(errno) + " " + OpenSslErrors();
			return false;
		}
		p += w;
		n -= static_cast<size_t>(w);
	}
	return true;
}

} // namespace

uint8_t PatternByte(uint64_t i)
{
	// Not periodic at any power of two, so a dropped or repeated TLS record or
	// socket-buffer-sized chunk cannot go unnoticed.
	uint64_t x = i * 0x9E3779B97F4A7C15ull;
	x ^= x >> 29;
	return static_cast<uint8_t>((x >> 8) ^ (i / 251));
}

std::string Sha256Hex(const void *data, size_t len)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (EVP_Digest(data, len, out, &n, EVP_sha256(), nullptr) != 1)
		return "";
	return Hex(out, n);
}

TlsServer::TlsServer(const ServerOptions &opts) : opts_(opts)
{
	struct sigaction old;
	if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL &&
	    !(old.sa_flags & SA_SIGINFO))
		signal(SIGPIPE, SIG_IGN);

	bool tls = opts_.mode != ServerMode::kPlaintext && opts_.mode != ServerMode::kSilent;
	if (tls) {
		ctx_ = SSL_CTX_new(TLS_server_method());
		if (ctx_ == nullptr) {
			error_ = "SSL_CTX_new: " + OpenSslErrors();
			return;
		}
		if (SSL_CTX_use_certificate_chain_file(ctx_, opts_.cert_file.c_str()) != 1 ||
		    SSL_CTX_use_PrivateKey_file(ctx_, opts_.key_file.c_str(), SSL_FILETYPE_PEM) !=
		            1 ||
		    SSL_CTX_check_private_key(ctx_) != 1) {
			error_ = "loading " + opts_.cert_file + " / " + opts_.key_file + ": " +
			         OpenSslErrors();
			return;
		}
		if (opts_.max_proto_version != 0 &&
		    SSL_CTX_set_max_proto_version(ctx_, opts_.max_proto_version) != 1) {
			error_ = "SSL_CTX_set_max_proto_version: " + OpenSslErrors();
			return;
		}
	}

	listen_fd_ = socket(opts_.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd_ < 0) {
		error_ = std::string("socket: ") + strerror(errno);
		return;
	}
	int one = 1;
	(void)setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_storage ss;
	socklen_t len = Address(&ss);
	if (bind(listen_fd_, reinterpret_cast<struct sockaddr *>(&ss), len) != 0) {
		error_ = std::string("bind: ") + strerror(errno);
		return;
	}
	if (listen(listen_fd_, SOMAXCONN) != 0) {
		error_ = std::string("listen: ") + strerror(errno);
		return;
	}
	len = sizeof ss;
	if (getsockname(listen_fd_, reinterpret_cast<struct sockaddr *>(&ss), &len) != 0) {
		error_ = std::string("getsockname: ") + strerror(errno);
		return;
	}
	port_ = ntohs(ss.ss_family == AF_INET6
	                      ? reinterpret_cast<struct sockaddr_in6 *>(&ss)->sin6_port
	                      : reinterpret_cast<struct sockaddr_in *>(&ss)->sin_port);

	int p[2];
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
		error_ = std::string("pipe2: ") + strerror(errno);
		return;
	}
	wake_r_ = p[0];
	wake_w_ = p[1];
	try {
		acceptor_ = std::thread(&TlsServer::AcceptLoop, this);
	} catch (const std::system_error &e) {
		error_ = std::string("starting acceptor: ") + e.what();
		return;
	}
	ok_ = true;
}

TlsServer::~TlsServer()
{
	Stop();
	if (listen_fd_ >= 0)
		close(listen_fd_);
	if (wake_r_ >= 0)
		close(wake_r_);
	if (wake_w_ >= 0)
		close(wake_w_);
	SSL_CTX_free(ctx_);
}

socklen_t TlsServer::Address(struct sockaddr_storage *out) const
{
	memset(out, 0, sizeof *out);
	if (opts_.family == AF_INET6) {
		auto *s6 = reinterpret_cast<struct sockaddr_in6 *>(out);
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		s6->sin6_port = htons(port_);
		return sizeof *s6;
	}
	auto *s4 = reinterpret_cast<struct sockaddr_in *>(out);
	s4->sin_family = AF_INET;
	s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s4->sin_port = htons(port_);
	return sizeof *s4;
}

void TlsServer::Stop()
{
	{
		std::lock_guard<std::mutex> lk(mu_);
		if (stopped_)
			return;
		stopped_ = true;
		stopping_ = true;
		// Under the lock: a descriptor is in live_fds_ only while it is open,
		// so this never shuts down a reused descriptor number.
		for (int fd : live_fds_)
			(void)shutdown(fd, SHUT_RDWR);
	}
	if (wake_w_ >= 0) {
		char c = 'x';
		ssize_t w = write(wake_w_, &c, 1);
		(void)w;
	}
	if (acceptor_.joinable())
		acceptor_.join();
	// The acceptor is gone, so workers_ no longer changes.
	for (auto &t : workers_)
		t.join();
	workers_.clear();
}

void TlsServer::AcceptLoop()
{
	for (;;) {
		struct pollfd pfd[2] = {{listen_fd_, POLLIN, 0}, {wake_r_, POLLIN, 0}};
		int r = poll(pfd, 2, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if (pfd[1].revents != 0)
			return;
		if (!(pfd[0].revents & POLLIN))
			continue;
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		int fd = accept4(listen_fd_, reinterpret_cast<struct sockaddr *>(&ss), &len,
		                 SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				usleep(10000);
			continue;
		}
		ConnRecord rec;
		char host[INET6_ADDRSTRLEN] = "";
		if (ss.ss_family == AF_INET6) {
			auto *s6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);
			inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
			rec.peer_port = ntohs(s6->sin6_port);
		} else if (ss.ss_family == AF_INET) {
			auto *s4 = reinterpret_cast<struct sockaddr_in *>(&ss);
			inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
			rec.peer_port = ntohs(s4->sin_port);
		}
		rec.peer_ip = host;

		std::lock_guard<std::mutex> lk(mu_);
		if (stopping_) {
			close(fd);
			return;
		}
		size_t idx = records_.size();
		records_.push_back(rec);
		live_fds_.insert(fd);
		active_++;
		if (active_ > max_active_)
			max_active_ = active_;
		try {
			workers_.emplace_back(&TlsServer::Serve, this, fd, idx);
		} catch (const std::system_error &e) {
			records_[idx].error = std::string("thread: ") + e.what();
			records_[idx].done = true;
			live_fds_.erase(fd);
			active_--;
			close(fd);
		}
		cv_.notify_all();
	}
}

void TlsServer::Record(size_t idx, const char *data, size_t n)
{
	std::lock_guard<std::mutex> lk(mu_);
	ConnRecord &r = records_[idx];
	r.bytes_in += n;
	if (r.raw.size() < opts_.max_recorded)
		r.raw.append(data, std::min(n, opts_.max_recorded - r.raw.size()));
}

void TlsServer::Fail(size_t idx, const std::string &why)
{
	std::lock_guard<std::mutex> lk(mu_);
	if (records_[idx].error.empty())
		records_[idx].error = why;
}

void TlsServer::Serve(int fd, size_t idx)
{
	SetTimeouts(fd, opts_.io_timeout_ms);
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (ctx_ != nullptr)
		ServeTls(fd, idx);
	else
		ServePlain(fd, idx);
	{
		std::lock_guard<std::mutex> lk(mu_);
		live_fds_.erase(fd);
	}
	close(fd);
	std::lock_guard<std::mutex> lk(mu_);
	records_[idx].done = true;
	active_--;
	cv_.notify_all();
}

void TlsServer::ServePlain(int fd, size_t idx)
{
	std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> md(EVP_MD_CTX_new());
	EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
	if (opts_.mode == ServerMode::kPlaintext && !opts_.plaintext_banner.empty()) {
		ssize_t w = send(fd, opts_.plaintext_banner.data(), opts_.plaintext_banner.size(),
		                 MSG_NOSIGNAL);
		if (w > 0) {
			std::lock_guard<std::mutex> lk(mu_);
			records_[idx].bytes_out += static_cast<uint64_t>(w);
		}
	}
	char buf[16384];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n == 0) {
			std::lock_guard<std::mutex> lk(mu_);
			records_[idx].clean_eof = true;
			break;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			Fail(idx, std::string("recv: ") + strerror(errno));
			break;
		}
		EVP_DigestUpdate(md.get(), buf, static_cast<size_t>(n));
		Record(idx, buf, static_cast<size_t>(n));
	}
	std::string h = Finish(md.get());
	std::lock_guard<std::mutex> lk(mu_);
	records_[idx].sha256_hex = h;
}

void TlsServer::ServeTls(int fd, size_t idx)
{
	ERR_clear_error();
	std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(ctx_));
	if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) {
		Fail(idx, "SSL_new/SSL_set_fd: " + OpenSslErrors());
		return;
	}
	int r = SSL_accept(ssl.get());
	if (r != 1) {
		int e = SSL_get_error(ssl.get(), r);
		int saved = errno;
		Fail(idx, "handshake failed: ssl_error=" + std::to_string(e) +
		                  " errno=" + std::to_string(saved) + " " + OpenSslErrors());
		return;
	}
	{
		std::lock_guard<std::mutex> lk(mu_);
		ConnRecord &rec = records_[idx];
		rec.handshake_ok = true;
		const char *sni = SSL_get_servername(ssl.get(), TLSEXT_NAMETYPE_host_name);
		rec.sni = sni ? sni : "";
		rec.protocol = SSL_get_version(ssl.get());
	}

	std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> md(EVP_MD_CTX_new());
	EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
	std::string why;
	bool peer_closed = false; // read side finished cleanly or by EOF

	// Reads until close_notify/EOF, optionally echoing.  Returns false on error.
	auto read_all = [&](bool echo) -> bool {
		std::vector<char> buf(16384);
		for (;;) {
			int n = SSL_read(ssl.get(), buf.data(), static_cast<int>(buf.size()));
			if (n <= 0) {
				int e = SSL_get_error(ssl.get(), n);
				if (e == SSL_ERROR_ZERO_RETURN) {
					std::lock_guard<std::mutex> lk(mu_);
					records_[idx].clean_eof = true;
					peer_closed = true;
					return true;
				}
				int saved = errno;
				why = "SSL_read failed: ssl_error=" + std::to_string(e) +
				      " errno=" + std::to_string(saved) + " " + OpenSslErrors();
				return false;
			}
			EVP_DigestUpdate(md.get(), buf.data(), static_cast<size_t>(n));
			Record(idx, buf.data(), static_cast<size_t>(n));
			if (echo) {
				if (!SslWriteAll(ssl.get(), buf.data(), static_cast<size_t>(n),
				                 &why))
					return false;
				std::lock_guard<std::mutex> lk(mu_);
				records_[idx].bytes_out += static_cast<uint64_t>(n);
			}
		}
	};

	bool good = true;
	switch (opts_.mode) {
	case ServerMode::kEcho:
		good = read_all(true);
		break;
	case ServerMode::kCountUpload: {
		good = read_all(false);
		if (good) {
			uint64_t count;
			{
				std::lock_guard<std::mutex> lk(mu_);
				count = records_[idx].bytes_in;
			}
			std::string reply = "count=" + std::to_string(count) +
			                    " sha256=" + Finish(md.get()) + "\n";
			good = SslWriteAll(ssl.get(), reply.data(), reply.size(), &why);
			if (good) {
				std::lock_guard<std::mutex> lk(mu_);
				records_[idx].bytes_out += reply.size();
				records_[idx].sha256_hex =
				        reply.substr(reply.find("sha256=") + 7, 64);
			}
		}
		break;
	}
	case ServerMode::kSendN: {
		std::vector<char> buf(65536);
		uint64_t sent = 0;
		while (good && sent < opts_.send_n) {
			size_t n = static_cast<size_t>(
			        std::min<uint64_t>(buf.size(), opts_.send_n - sent));
			for (size_t i = 0; i < n; i++)
				buf[i] = static_cast<char>(PatternByte(sent + i));
			good = SslWriteAll(ssl.get(), buf.data(), n, &why);
			if (good) {
				sent += n;
				std::lock_guard<std::mutex> lk(mu_);
				records_[idx].bytes_out = sent;
			}
		}
		break;
	}
	case ServerMode::kPlaintext:
	case ServerMode::kSilent:
		break;
	}
	if (!good) {
		Fail(idx, why);
		return;
	}

	// Our close_notify.  The return value is 0 until the peer's arrives.
	(void)SSL_shutdown(ssl.get());
	if (!peer_closed) {
		// Wait, bounded, for the peer to close before we close: closing with
		// unread data in the receive queue makes the kernel send RST, which can
		// destroy bytes the client has not read yet.
		SetTimeouts(fd, opts_.linger_ms);
		std::vector<char> buf(16384);
		for (;;) {
			int n = SSL_read(ssl.get(), buf.data(), static_cast<int>(buf.size()));
			if (n <= 0) {
				if (SSL_get_error(ssl.get(), n) == SSL_ERROR_ZERO_RETURN) {
					std::lock_guard<std::mutex> lk(mu_);
					records_[idx].clean_eof = true;
				}
				break;
			}
			Record(idx, buf.data(), static_cast<size_t>(n));
		}
	}
	if (opts_.mode != ServerMode::kCountUpload) {
		std::string h = Finish(md.get());
		std::lock_guard<std::mutex> lk(mu_);
		records_[idx].sha256_hex = h;
	}
	ERR_clear_error();
}

std::vector<ConnRecord> TlsServer::Connections() const
{
	std::lock_guard<std::mutex> lk(mu_);
	return records_;
}

size_t TlsServer::accepted() const
{
	std::lock_guard<std::mutex> lk(mu_);
	return records_.size();
}

size_t TlsServer::active() const
{
	std::lock_guard<std::mutex> lk(mu_);
	return active_;
}

size_t TlsServer::max_active() const
{
	std::lock_guard<std::mutex> lk(mu_);
	return max_active_;
}

bool TlsServer::WaitForAccepted(size_t n, int timeout_ms) const
{
	std::unique_lock<std::mutex> lk(mu_);
	return cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
	                    [&] { return records_.size() >= n; });
}

bool TlsServer::WaitForDone(size_t n, int timeout_ms) const
{
	std::unique_lock<std::mutex> lk(mu_);
	return cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] {
		size_t done = 0;
		for (const auto &r : records_)
			done += r.done ? 1 : 0;
		return done >= n;
	});
}

bool TlsServer::WaitForActive(size_t n, int timeout_ms) const
{
	std::unique_lock<std::mutex> lk(mu_);
	return cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
	                    [&] { return active_ >= n; });
}

bool MintLeafCert(const std::string &ca_cert, const std::string &ca_key, const std::string &cn,
                  const std::string &san, const std::string &out_cert, const std::string &out_key,
                  std::string *err)
{
	bool ok = false;
	X509 *ca = nullptr, *x = nullptr;
	EVP_PKEY *cakey = nullptr, *key = nullptr;
	X509_NAME *name = nullptr;
	FILE *f = nullptr;
	ASN1_INTEGER *serial = nullptr;
	BIGNUM *bn = nullptr;
	const char *stage = "";

	ERR_clear_error();
	stage = "reading CA";
	f = fopen(ca_cert.c_str(), "r");
	if (f == nullptr)
		goto out;
	ca = PEM_read_X509(f, nullptr, nullptr, nullptr);
	fclose(f);
	f = nullptr;
	if (ca == nullptr)
		goto out;
	stage = "reading CA key";
	f = fopen(ca_key.c_str(), "r");
	if (f == nullptr)
		goto out;
	cakey = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
	fclose(f);
	f = nullptr;
	if (cakey == nullptr)
		goto out;

	stage = "generating key";
	key = EVP_EC_gen("P-256");
	if (key == nullptr)
		goto out;

	stage = "building certificate";
	x = X509_new();
	if (x == nullptr || X509_set_version(x, 2) != 1)
		goto out;
	bn = BN_new();
	if (bn == nullptr || BN_rand(bn, 64, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1)
		goto out;
	serial = BN_to_ASN1_INTEGER(bn, nullptr);
	if (serial == nullptr || X509_set_serialNumber(x, serial) != 1)
		goto out;
	if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == nullptr ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 86400) == nullptr)
		goto out;
	if (X509_set_pubkey(x, key) != 1)
		goto out;
	name = X509_NAME_new();
	if (name == nullptr ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	                               reinterpret_cast<const unsigned char *>(cn.c_str()), -1, -1,
	                               0) != 1 ||
	    X509_set_subject_name(x, name) != 1 ||
	    X509_set_issuer_name(x, X509_get_subject_name(ca)) != 1)
		goto out;
	{
		X509V3_CTX v3;
		X509V3_set_ctx(&v3, ca, x, nullptr, nullptr, 0);
		const std::pair<const char *, std::string> exts[] = {
		        {"basicConstraints", "critical,CA:FALSE"},
		        {"keyUsage", "critical,digitalSignature"},
		        {"extendedKeyUsage", "serverAuth"},
		        {"subjectKeyIdentifier", "hash"},
		        {"authorityKeyIdentifier", "keyid:always"},
		        {"subjectAltName", san},
		};
		for (const auto &e : exts) {
			X509_EXTENSION *ext =
			        X509V3_EXT_conf(nullptr, &v3, e.first, e.second.c_str());
			if (ext == nullptr)
				goto out;
			int added = X509_add_ext(x, ext, -1);
			X509_EXTENSION_free(ext);
			if (added != 1)
				goto out;
		}
	}
	stage = "signing";
	if (X509_sign(x, cakey, EVP_sha256()) == 0)
		goto out;

	stage = "writing certificate";
	f = fopen(out_cert.c_str(), "w");
	if (f == nullptr || PEM_write_X509(f, x) != 1)
		goto out;
	if (fclose(f) != 0) {
		f = nullptr;
		goto out;
	}
	stage = "writing key";
	f = fopen(out_key.c_str(), "w");
	if (f == nullptr ||
	    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
		goto out;
	if (fclose(f) != 0) {
		f = nullptr;
		goto out;
	}
	f = nullptr;
	ok = true;

out:
	if (!ok && err != nullptr)
		*err = std::string(stage) + ": " + strerror(errno) + " / " + OpenSslErrors();
	if (f != nullptr)
		fclose(f);
	ASN1_INTEGER_free(serial);
	BN_free(bn);
	X509_NAME_free(name);
	X509_free(x);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(cakey);
	return ok;
}

} // namespace tlstest
