// Unit tests for shim/staple.c: what a TLS client receives as the stapled
// OCSP response of an inbound listener, through the real path
// (tlsio_server_ctx_new() with ocsp_fetch or ocsp_response_file, the
// refresher thread, the status callback, a handshake over a socketpair).
//
// Nothing here depends on a fixed port: the test issues, with the test CA
// (TLSSHIM_CERTS/ca.pem, ca.key), one server certificate per case whose AIA
// names a responder of this test on an ephemeral port (the path names the
// case), and that responder signs each answer when asked, with the CA's key
// or the bed's delegated and unauthorised responders (TLSSHIM_OCSP, made by
// scripts/gen-ocsp.sh).
//
// The refresher is one thread per process and sources live as long as the
// process; a source attached after the thread has started is only looked at
// when the thread next wakes (not at once).  So, as the shim does (policy.c
// builds every listener before the first handshake), every fetching
// listener is built by the global environment before staple_start(), and
// each test then asserts only on its own listener.  The refresher's log
// lines (to a datagram socket of this test, TLSSHIM_LOG_SOCKET) say when
// a source's fetch has been judged, so a test waits for the line rather
// than for time to pass.  (For the same reason --gtest_repeat is not
// supported: a second iteration's listeners attach to a running refresher.)
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "tls_peer.h"

extern "C" {
#include "conf.h"
#include "ocsp.h"
#include "real.h"
#include "staple.h"
#include "tlsio.h"
}

namespace
{

using Bytes = std::vector<unsigned char>;
using Clock = std::chrono::steady_clock;

const long kDay = 86400;
const int kGood = V_OCSP_CERTSTATUS_GOOD;
const int kRevoked = V_OCSP_CERTSTATUS_REVOKED;
const int kUnknown = V_OCSP_CERTSTATUS_UNKNOWN;

// --- files and certificates ---------------------------------------------------

std::string bed_path(const std::string &name)
{
	const char *d = getenv("TLSSHIM_OCSP");
	return std::string(d != nullptr ? d : "build/test-ocsp") + "/" + name;
}

Bytes read_bytes(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string as_string(const Bytes &b)
{
	return std::string(b.begin(), b.end());
}

X509 *load_cert(const std::string &path)
{
	BIO *b = BIO_new_file(path.c_str(), "r");
	X509 *x = b != nullptr ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr;

	BIO_free(b);
	return x;
}

EVP_PKEY *load_key(const std::string &path)
{
	BIO *b = BIO_new_file(path.c_str(), "r");
	EVP_PKEY *k =
	        b != nullptr ? PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr) : nullptr;

	BIO_free(b);
	return k;
}

std::string pem_of(X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p = nullptr;
	long n;

	PEM_write_bio_X509(b, x);
	n = BIO_get_mem_data(b, &p);
	std::string s(p, (size_t)n);
	BIO_free(b);
	return s;
}

std::string pem_of(EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p = nullptr;
	long n;

	PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
	n = BIO_get_mem_data(b, &p);
	std::string s(p, (size_t)n);
	BIO_free(b);
	return s;
}

void write_file(const std::string &path, const std::string &data)
{
	std::ofstream out(path, std::ios::binary | std::ios::trunc);
	out << data;
	ASSERT_TRUE(out.good()) << path;
}

// Sets `path`'s modification time, to the nanosecond.
void set_mtime(const std::string &path, time_t sec, long nsec)
{
	struct timespec t[2] = {{sec, nsec}, {sec, nsec}};

	ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), t, 0), 0) << path << ": " << strerror(errno);
}

bool add_ext(X509 *x, X509 *issuer, int nid, const std::string &value)
{
	X509V3_CTX v3;
	X509_EXTENSION *e;
	bool ok;

	X509V3_set_ctx(&v3, issuer, x, nullptr, nullptr, 0);
	e = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
	ok = e != nullptr && X509_add_ext(x, e, -1) == 1;
	X509_EXTENSION_free(e);
	return ok;
}

// A server certificate for `cn`, issued by `ca` with `ca_key`: valid from a
// day ago for 30 days, SAN localhost, and when `ocsp_url` is not empty an
// AIA naming it as the OCSP responder.
X509 *issue(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *key, const std::string &cn,
            const std::string &ocsp_url)
{
	X509 *x = X509_new();
	BIGNUM *bn = BN_new();
	bool ok = x != nullptr && bn != nullptr && X509_set_version(x, 2) == 1 &&
	          BN_rand(bn, 63, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1 &&
	          BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != nullptr &&
	          X509_gmtime_adj(X509_getm_notBefore(x), -kDay) != nullptr &&
	          X509_gmtime_adj(X509_getm_notAfter(x), 30 * kDay) != nullptr &&
	          X509_set_issuer_name(x, X509_get_subject_name(ca)) == 1 &&
	          X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                                     reinterpret_cast<const unsigned char *>(cn.c_str()),
	                                     -1, -1, 0) == 1 &&
	          X509_set_pubkey(x, key) == 1 &&
	          add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE") &&
	          add_ext(x, ca, NID_key_usage, "critical,digitalSignature") &&
	          add_ext(x, ca, NID_ext_key_usage, "serverAuth") &&
	          add_ext(x, ca, NID_subject_alt_name, "DNS:localhost") &&
	          add_ext(x, ca, NID_subject_key_identifier, "hash") &&
	          add_ext(x, ca, NID_authority_key_identifier, "keyid") &&
	          (ocsp_url.empty() || add_ext(x, ca, NID_info_access, "OCSP;URI:" + ocsp_url)) &&
	          X509_sign(x, ca_key, EVP_sha256()) > 0;

	BN_free(bn);
	if (!ok) {
		X509_free(x);
		return nullptr;
	}
	return x;
}

// The signers of answers: the CA itself, its delegated responder, and two
// that may not speak for it (gen-ocsp.sh): a responder of another CA, and
// one issued by the CA without id-kp-OCSPSigning.
enum class Signer { ca, delegate, rogue, noeku };

struct Keys {
	X509 *ca = nullptr;
	EVP_PKEY *ca_key = nullptr;
	X509 *signer[4] = {};
	EVP_PKEY *signer_key[4] = {};
	X509 *other = nullptr; // a certificate of the bed, for "an answer about another"
};

Keys keys;

// Signs a successful OCSP response saying `status` about `id`, made
// `this_off` seconds from now and valid until `next_off` from now
// (LONG_MIN: no nextUpdate).
Bytes sign_answer(OCSP_CERTID *id, int status, long this_off, long next_off, Signer by)
{
	OCSP_BASICRESP *basic = OCSP_BASICRESP_new();
	ASN1_TIME *thisu = X509_gmtime_adj(nullptr, this_off);
	ASN1_TIME *nextu = next_off != LONG_MIN ? X509_gmtime_adj(nullptr, next_off) : nullptr;
	ASN1_TIME *revt = status == kRevoked ? X509_gmtime_adj(nullptr, -3600) : nullptr;
	X509 *signer = by == Signer::ca ? keys.ca : keys.signer[(int)by];
	EVP_PKEY *key = by == Signer::ca ? keys.ca_key : keys.signer_key[(int)by];
	OCSP_RESPONSE *resp = nullptr;
	unsigned char *der = nullptr;
	Bytes out;
	int n = -1;

	if (basic != nullptr && thisu != nullptr &&
	    OCSP_basic_add1_status(basic, id, status,
	                           status == kRevoked ? OCSP_REVOKED_STATUS_KEYCOMPROMISE : -1,
	                           revt, thisu, nextu) != nullptr &&
	    OCSP_basic_sign(basic, signer, key, EVP_sha256(), nullptr,
	                    by == Signer::ca ? OCSP_NOCERTS : 0) == 1 &&
	    (resp = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic)) != nullptr)
		n = i2d_OCSP_RESPONSE(resp, &der);
	if (n > 0)
		out.assign(der, der + n);
	OPENSSL_free(der);
	OCSP_RESPONSE_free(resp);
	ASN1_TIME_free(thisu);
	ASN1_TIME_free(nextu);
	ASN1_TIME_free(revt);
	OCSP_BASICRESP_free(basic);
	EXPECT_FALSE(out.empty()) << "cannot sign an OCSP response";
	return out;
}

Bytes answer_about(X509 *leaf, int status, long this_off, long next_off,
                   Signer by = Signer::delegate)
{
	OCSP_CERTID *id = OCSP_cert_to_id(nullptr, leaf, keys.ca);
	Bytes b = sign_answer(id, status, this_off, next_off, by);

	OCSP_CERTID_free(id);
	return b;
}

Bytes trylater()
{
	OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_TRYLATER, nullptr);
	unsigned char *der = nullptr;
	int n = i2d_OCSP_RESPONSE(r, &der);
	Bytes out(der, der + (n > 0 ? n : 0));

	OPENSSL_free(der);
	OCSP_RESPONSE_free(r);
	return out;
}

// The nextUpdate of a DER response's first answer (0: none or unreadable).
time_t next_update_of(const Bytes &d)
{
	const unsigned char *p = d.data();
	OCSP_RESPONSE *r = d2i_OCSP_RESPONSE(nullptr, &p, (long)d.size());
	OCSP_BASICRESP *b = r != nullptr ? OCSP_response_get1_basic(r) : nullptr;
	ASN1_GENERALIZEDTIME *next = nullptr;
	struct tm tm;
	time_t t = 0;

	if (b != nullptr && OCSP_resp_count(b) > 0) {
		OCSP_single_get0_status(OCSP_resp_get0(b, 0), nullptr, nullptr, nullptr, &next);
		if (next != nullptr && ASN1_TIME_to_tm(next, &tm) == 1)
			t = timegm(&tm);
	}
	OCSP_BASICRESP_free(b);
	OCSP_RESPONSE_free(r);
	return t;
}

// --- the responder ---------------------------------------------------------------

// A TCP socket bound to 127.0.0.1 on an ephemeral port, not yet listening:
// until it listens, a connection to it is refused.
int bound_socket(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a {
	};
	socklen_t l = sizeof(a);

	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	EXPECT_GE(fd, 0);
	EXPECT_EQ(bind(fd, reinterpret_cast<struct sockaddr *>(&a), sizeof(a)), 0);
	EXPECT_EQ(getsockname(fd, reinterpret_cast<struct sockaddr *>(&a), &l), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

struct HttpRequest {
	bool complete = false;
	std::string head; // request line and headers, each ending in CRLF
	Bytes body;
};

// Reads one HTTP request: headers, then Content-Length bytes of body.
HttpRequest read_request(int fd)
{
	HttpRequest r;
	std::string data;
	char buf[4096];
	size_t end;

	while ((end = data.find("\r\n\r\n")) == std::string::npos) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		if (n <= 0)
			return r;
		data.append(buf, (size_t)n);
	}
	r.head = data.substr(0, end + 2);
	data.erase(0, end + 4);
	std::string lower = r.head;
	for (char &c : lower)
		c = (char)tolower((unsigned char)c);
	size_t at = lower.find("\r\ncontent-length:");
	if (at == std::string::npos)
		return r;
	size_t want = std::stoul(r.head.substr(at + 17));
	while (data.size() < want) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		if (n <= 0)
			return r;
		data.append(buf, (size_t)n);
	}
	r.body.assign(data.begin(), data.end());
	r.complete = data.size() == want;
	return r;
}

void send_all(int fd, const std::string &s)
{
	size_t off = 0;

	while (off < s.size()) {
		ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);

		if (n <= 0)
			return; // the client has gone: that is its right
		off += (size_t)n;
	}
}

std::string http_ok(const Bytes &body)
{
	return "HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: " +
	       std::to_string(body.size()) + "\r\n\r\n" + as_string(body);
}

// What a route answers to a request about `id` (the CertID the client
// asked about): the whole HTTP reply, and the OCSP response in it (empty
// when there is none).
struct Reply {
	std::string http;
	Bytes der;
};
using Answer = std::function<Reply(OCSP_CERTID *id)>;

// What a route saw.
struct Seen {
	int requests = 0;
	int not_about_leaf = 0; // requests whose CertID is not the route's leaf's
	std::vector<Bytes> answers;
	std::vector<Clock::time_point> at;
};

// An HTTP OCSP responder on 127.0.0.1 serving routes by path, one
// connection at a time, on a thread of its own; it counts what it is asked.
// Listening starts with start(): until then connections are refused.
class Responder
{
      public:
	Responder()
	{
		lfd_ = bound_socket(&port_);
		stop_fd_ = eventfd(0, EFD_CLOEXEC);
	}
	~Responder()
	{
		stop();
		close(lfd_);
		close(stop_fd_);
	}
	void route(const std::string &path, X509 *leaf, Answer a)
	{
		std::lock_guard<std::mutex> g(mu_);
		routes_[path] = Route{leaf, std::move(a)};
	}
	void start()
	{
		ASSERT_EQ(listen(lfd_, 64), 0);
		thread_ = std::thread([this] { loop(); });
	}
	void stop()
	{
		uint64_t one = 1;

		if (!thread_.joinable())
			return;
		EXPECT_EQ(write(stop_fd_, &one, sizeof(one)), (ssize_t)sizeof(one));
		thread_.join();
	}
	std::string url(const std::string &path) const
	{
		return "http://127.0.0.1:" + std::to_string(port_) + path;
	}
	Seen seen(const std::string &path)
	{
		std::lock_guard<std::mutex> g(mu_);
		return seen_[path];
	}

      private:
	struct Route {
		X509 *leaf;
		Answer answer;
	};

	void loop()
	{
		for (;;) {
			struct pollfd p[2] = {{lfd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};

			if (poll(p, 2, -1) < 0 && errno != EINTR)
				return;
			if (p[1].revents != 0)
				return;
			if (p[0].revents == 0)
				continue;
			int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
			if (fd < 0)
				continue;
			// A bound, not pacing: a client that never finishes its
			// request must not wedge the responder.
			struct timeval tv = {5, 0};
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
			serve(fd);
			close(fd);
		}
	}

	void serve(int fd)
	{
		HttpRequest r = read_request(fd);
		size_t sp = r.head.find(' '), sp2 = r.head.find(' ', sp + 1);
		std::string path =
		        sp2 != std::string::npos ? r.head.substr(sp + 1, sp2 - sp - 1) : "";
		const unsigned char *p = r.body.data();
		OCSP_REQUEST *req =
		        r.complete ? d2i_OCSP_REQUEST(nullptr, &p, (long)r.body.size()) : nullptr;
		OCSP_CERTID *id = req != nullptr && OCSP_request_onereq_count(req) == 1
		                          ? OCSP_onereq_get0_id(OCSP_request_onereq_get0(req, 0))
		                          : nullptr;
		Route route;
		Reply reply;
		{
			std::lock_guard<std::mutex> g(mu_);
			auto it = routes_.find(path);
			if (it != routes_.end())
				route = it->second;
		}
		if (id == nullptr || !route.answer) {
			reply.http = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
		} else {
			reply = route.answer(id);
		}
		bool about_leaf = false;
		if (id != nullptr && route.leaf != nullptr) {
			OCSP_CERTID *want = OCSP_cert_to_id(nullptr, route.leaf, keys.ca);
			about_leaf = OCSP_id_cmp(want, id) == 0;
			OCSP_CERTID_free(want);
		}
		{
			std::lock_guard<std::mutex> g(mu_);
			Seen &s = seen_[path];
			s.requests++;
			s.not_about_leaf += about_leaf ? 0 : 1;
			s.answers.push_back(reply.der);
			s.at.push_back(Clock::now());
		}
		OCSP_REQUEST_free(req);
		send_all(fd, reply.http);
	}

	int lfd_ = -1;
	int port_ = 0;
	int stop_fd_ = -1;
	std::thread thread_;
	std::mutex mu_;
	std::map<std::string, Route> routes_;
	std::map<std::string, Seen> seen_;
};

// --- the log -------------------------------------------------------------------

// The value of `key` in a log line ("" when absent); quoted values unquoted.
std::string field(const std::string &line, const std::string &key)
{
	size_t at = line.find(" " + key + "=");

	if (at == std::string::npos)
		return "";
	at += key.size() + 2;
	if (at < line.size() && line[at] == '"') {
		size_t end = line.find('"', at + 1);
		return line.substr(at + 1,
		                   end == std::string::npos ? std::string::npos : end - at - 1);
	}
	return line.substr(at, line.find(' ', at) - at);
}

// The syslog severity of a line (<PRI> & 7), or -1.
int severity_of(const std::string &line)
{
	if (line.empty() || line[0] != '<')
		return -1;
	return atoi(line.c_str() + 1) & 7;
}

// The shim's log socket (TLSSHIM_LOG_SOCKET): collects every line.
class LogSink
{
      public:
	explicit LogSink(const std::string &path) : path_(path)
	{
		struct sockaddr_un a {
		};
		int big = 1 << 20;

		fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		a.sun_family = AF_UNIX;
		EXPECT_LT(path.size(), sizeof(a.sun_path));
		memcpy(a.sun_path, path.c_str(), path.size() + 1);
		EXPECT_EQ(bind(fd_, reinterpret_cast<struct sockaddr *>(&a), sizeof(a)), 0);
		setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
		stop_fd_ = eventfd(0, EFD_CLOEXEC);
		thread_ = std::thread([this] { loop(); });
	}
	~LogSink()
	{
		uint64_t one = 1;

		EXPECT_EQ(write(stop_fd_, &one, sizeof(one)), (ssize_t)sizeof(one));
		thread_.join();
		close(fd_);
		close(stop_fd_);
		unlink(path_.c_str());
	}
	// The first staple_* line about section `rule`, waiting for it at most
	// `timeout_ms`; "" when none came.
	std::string staple_line(const std::string &rule, long timeout_ms,
	                        Clock::time_point *when = nullptr)
	{
		std::unique_lock<std::mutex> g(mu_);
		std::string found;

		cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] {
			for (size_t i = 0; i < lines_.size(); i++) {
				const std::string &l = lines_[i];
				if (field(l, "rule") == rule &&
				    field(l, "event").rfind("staple_", 0) == 0) {
					found = l;
					if (when != nullptr)
						*when = at_[i];
					return true;
				}
			}
			return false;
		});
		return found;
	}
	std::string all()
	{
		std::lock_guard<std::mutex> g(mu_);
		std::string s;
		for (const std::string &l : lines_)
			s += l + "\n";
		return s;
	}

      private:
	void loop()
	{
		char buf[8192];

		for (;;) {
			struct pollfd p[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};

			if (poll(p, 2, -1) < 0 && errno != EINTR)
				return;
			if (p[1].revents != 0)
				return;
			ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
			if (n <= 0)
				continue;
			std::lock_guard<std::mutex> g(mu_);
			lines_.emplace_back(buf, (size_t)n);
			at_.push_back(Clock::now());
			cv_.notify_all();
		}
	}

	std::string path_;
	int fd_ = -1;
	int stop_fd_ = -1;
	std::thread thread_;
	std::mutex mu_;
	std::condition_variable cv_;
	std::vector<std::string> lines_;
	std::vector<Clock::time_point> at_;
};

// --- listeners ----------------------------------------------------------------

// One inbound section: its files, its configuration (which must outlive
// its context) and its context.
struct Listener {
	std::string name;
	std::string chain_path, key_path, response_path;
	X509 *leaf = nullptr;
	struct conf_inbound in {
	};
	SSL_CTX *ctx = nullptr;
	std::string err;
};

enum class Chain { leaf_and_ca, leaf_only, leaf_and_other_ca };

class World
{
      public:
	std::string dir;
	std::unique_ptr<LogSink> log;
	std::unique_ptr<Responder> responder; // up from the start
	std::unique_ptr<Responder> late;      // down until a test starts it
	int down_fd = -1;                     // bound, never listening
	int down_port = 0;
	std::deque<Listener> listeners; // stable addresses

	// Writes a certificate for `name` (AIA `ocsp_url` unless empty) and
	// its chain and key files; builds the context for section `name` with
	// `fetch` or a response file.  ctx is NULL with err when refused.
	Listener &make(const std::string &name, const std::string &ocsp_url, Chain chain,
	               bool fetch, bool response_file = false)
	{
		listeners.emplace_back();
		Listener &l = listeners.back();
		EVP_PKEY *key = EVP_EC_gen("P-256");
		char err[512] = "";

		l.name = name;
		l.leaf = issue(keys.ca, keys.ca_key, key, name + ".test", ocsp_url);
		EXPECT_NE(l.leaf, nullptr) << name;
		l.chain_path = dir + "/" + name + "-chain.pem";
		l.key_path = dir + "/" + name + ".key";
		l.response_path = dir + "/" + name + ".der";
		std::string pem = pem_of(l.leaf);
		if (chain == Chain::leaf_and_ca)
			pem += pem_of(keys.ca);
		else if (chain == Chain::leaf_and_other_ca)
			pem += read_as_string(cert_path("other-ca.pem"));
		write_file(l.chain_path, pem);
		write_file(l.key_path, pem_of(key));
		EVP_PKEY_free(key);
		l.in.section = l.name.c_str();
		l.in.action = ACTION_TLS;
		l.in.cert = l.chain_path.c_str();
		l.in.key = l.key_path.c_str();
		l.in.ocsp_fetch = fetch;
		l.in.ocsp_fetch_timeout_ms = 2000;
		l.in.ocsp_response_file = response_file ? l.response_path.c_str() : nullptr;
		l.ctx = tlsio_server_ctx_new(&l.in, err, sizeof(err));
		l.err = err;
		return l;
	}
	Listener *find(const std::string &name)
	{
		for (Listener &l : listeners)
			if (l.name == name)
				return &l;
		return nullptr;
	}
	static std::string read_as_string(const std::string &path)
	{
		return as_string(read_bytes(path));
	}
};

World *world;

// --- the handshake ---------------------------------------------------------------

struct Handshake {
	bool ok = false;
	std::string err;
	long verify = -1;
	bool stapled = false;
	Bytes staple;
};

SSL_CTX *client_ctx()
{
	static SSL_CTX *ctx = [] {
		SSL_CTX *c = SSL_CTX_new(TLS_client_method());
		EXPECT_EQ(SSL_CTX_load_verify_locations(c, cert_path("ca.pem").c_str(), nullptr),
		          1);
		SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
		return c;
	}();
	return ctx;
}

// A client that asks for a staple handshakes with a server SSL of `ctx`
// (tlsio_server_new) over a socketpair; both driven here, non-blocking.
Handshake handshake(SSL_CTX *ctx)
{
	Handshake h;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
		h.err = "socketpair";
		return h;
	}
	SSL *srv = tlsio_server_new(ctx, sv[0]);
	SSL *cli = SSL_new(client_ctx());
	SSL_set_fd(cli, sv[1]);
	SSL_set_connect_state(cli);
	SSL_set_tlsext_status_type(cli, TLSEXT_STATUSTYPE_ocsp);
	SSL_set1_host(cli, "localhost");

	bool cdone = false, sdone = false;
	for (int round = 0; round < 100 && !(cdone && sdone) && h.err.empty(); round++) {
		SSL *side[2] = {cli, srv};
		bool *done[2] = {&cdone, &sdone};

		for (int i = 0; i < 2; i++) {
			if (*done[i])
				continue;
			int r = SSL_do_handshake(side[i]);
			if (r == 1) {
				*done[i] = true;
				continue;
			}
			int e = SSL_get_error(side[i], r);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
				char buf[256];
				ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
				h.err = std::string(i == 0 ? "client: " : "server: ") + buf;
			}
		}
	}
	if (h.err.empty() && !(cdone && sdone))
		h.err = "handshake did not complete";
	h.ok = h.err.empty();
	h.verify = SSL_get_verify_result(cli);
	const unsigned char *p = nullptr;
	long n = SSL_get_tlsext_status_ocsp_resp(cli, &p);
	if (n > 0 && p != nullptr) {
		h.stapled = true;
		h.staple.assign(p, p + n);
	}
	ERR_clear_error();
	SSL_free(cli);
	SSL_free(srv);
	close(sv[0]);
	close(sv[1]);
	return h;
}

// --- the fetching listeners, made before the refresher starts ------------------

struct FetchCase {
	const char *name;    // the section, and the path of its responder URL
	Answer answer;       // what the responder says
	bool stapled;        // what the client must receive
	const char *event;   // the refresher's log line
	int severity;        // of that line
	const char *outcome; // its ocsp= field
	const char *reason;  // a part of its reason=, or nullptr
};

Answer sign(int status, long this_off, long next_off, Signer by = Signer::delegate)
{
	return [=](OCSP_CERTID *id) {
		Reply r;
		r.der = sign_answer(id, status, this_off, next_off, by);
		r.http = http_ok(r.der);
		return r;
	};
}

Answer raw(std::function<std::string()> http)
{
	return [=](OCSP_CERTID *) {
		Reply r;
		r.http = http();
		return r;
	};
}

// Failures name the case, not its function objects.
void PrintTo(const FetchCase &c, std::ostream *os)
{
	*os << c.name;
}

const std::vector<FetchCase> &fetch_cases()
{
	static const std::vector<FetchCase> cases = {
	        {"good", sign(kGood, -60, kDay), true, "staple_refreshed", LOG_INFO, "good",
	         nullptr},
	        // The CA's own signature, no certificates in the response.
	        {"good_ca_signed", sign(kGood, -60, kDay, Signer::ca), true, "staple_refreshed",
	         LOG_INFO, "good", nullptr},
	        {"good_no_next_update", sign(kGood, -60, LONG_MIN), true, "staple_refreshed",
	         LOG_INFO, "good", nullptr},
	        // A responder clock a little ahead (STAPLE_SKEW_S is 60 s).
	        {"good_this_update_30s_ahead", sign(kGood, 30, kDay), true, "staple_refreshed",
	         LOG_INFO, "good", nullptr},
	        {"good_next_update_10s_ahead", sign(kGood, -1, 10), true, "staple_refreshed",
	         LOG_INFO, "good", nullptr},
	        // Revoked is stapled: clients must learn it.  Logged as an error.
	        {"revoked", sign(kRevoked, -60, kDay), true, "staple_failed", LOG_ERR, "revoked",
	         "this server's certificate is revoked"},
	        {"unknown", sign(kUnknown, -60, kDay), false, "staple_failed", LOG_ERR, "unknown",
	         "OCSP status unknown (not stapled; nothing is stapled)"},
	        {"stale", sign(kGood, -2 * kDay, -kDay), false, "staple_failed", LOG_WARNING,
	         "bad:stale", "nextUpdate has passed"},
	        // Within the skew a client allows, but past: not stapled.
	        {"stale_within_skew", sign(kGood, -3600, -30), false, "staple_failed", LOG_WARNING,
	         "bad:stale", "nextUpdate has passed"},
	        {"this_update_1h_ahead", sign(kGood, 3600, kDay), false, "staple_failed",
	         LOG_WARNING, "bad:future", "thisUpdate is in the future"},
	        {"signer_of_other_ca", sign(kGood, -60, kDay, Signer::rogue), false,
	         "staple_failed", LOG_WARNING, "bad:signer", nullptr},
	        {"signer_without_ocsp_signing", sign(kGood, -60, kDay, Signer::noeku), false,
	         "staple_failed", LOG_WARNING, "bad:signer", nullptr},
	        {"about_another_certificate",
	         [](OCSP_CERTID *) {
		         Reply r;
		         r.der = answer_about(keys.other, kGood, -60, kDay);
		         r.http = http_ok(r.der);
		         return r;
	         },
	         false, "staple_failed", LOG_WARNING, "bad:serial", "not about this certificate"},
	        {"trylater", raw([] { return http_ok(trylater()); }), false, "staple_failed",
	         LOG_WARNING, "bad:status", nullptr},
	        {"garbage_http", raw([] { return std::string("SSH-2.0-OpenSSH_9.2p1\r\n"); }),
	         false, "staple_failed", LOG_WARNING, "none", "OCSP responder"},
	        {"http_500", raw([] {
		         return std::string(
		                 "HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
	         }),
	         false, "staple_failed", LOG_WARNING, "none", "OCSP responder"},
	        {"garbage_body", raw([] {
		         Bytes junk(300, 0x5a);
		         return http_ok(junk);
	         }),
	         false, "staple_failed", LOG_WARNING, "none", "OCSP responder"},
	};
	return cases;
}

// Makes every fetching listener, then starts the refresher.
struct StapleWorld : ::testing::Environment {
	void SetUp() override
	{
		char tmpl[] = "/tmp/staple_test.XXXXXX";

		std::signal(SIGPIPE, SIG_IGN);
		// The shim binds these in its constructor; staple_start() adopts
		// its cancel descriptor with them.
		ASSERT_EQ(real_init(), 0);
		ASSERT_NE(mkdtemp(tmpl), nullptr);
		world = new World;
		world->dir = tmpl;
		// Read once per process (conf_get()), so before anything logs.
		world->log.reset(new LogSink(world->dir + "/log.sock"));
		setenv("TLSSHIM_LOG_SOCKET", (world->dir + "/log.sock").c_str(), 1);
		setenv("TLSSHIM_CA_FILE", cert_path("ca.pem").c_str(), 1);

		struct ocsp_net n = {connect, getsockopt, getaddrinfo, [](int fd) { return fd; },
		                     [](int fd) { close(fd); }};
		ocsp_set_net(&n);

		keys.ca = load_cert(cert_path("ca.pem"));
		keys.ca_key = load_key(cert_path("ca.key"));
		const char *names[4] = {nullptr, "responder", "rogue-responder", "noeku-responder"};
		for (int i = 1; i < 4; i++) {
			keys.signer[i] = load_cert(bed_path(std::string(names[i]) + ".pem"));
			keys.signer_key[i] = load_key(bed_path(std::string(names[i]) + ".key"));
			ASSERT_NE(keys.signer[i], nullptr)
			        << bed_path(names[i]) << ": run `make test-unit` (TLSSHIM_OCSP)";
			ASSERT_NE(keys.signer_key[i], nullptr) << names[i];
		}
		keys.other = load_cert(bed_path("other.pem"));
		ASSERT_NE(keys.ca, nullptr) << cert_path("ca.pem");
		ASSERT_NE(keys.ca_key, nullptr) << cert_path("ca.key");
		ASSERT_NE(keys.other, nullptr);

		world->responder.reset(new Responder);
		world->responder->start();
		for (const FetchCase &c : fetch_cases()) {
			std::string path = std::string("/") + c.name;
			Listener &l = world->make(c.name, world->responder->url(path),
			                          Chain::leaf_and_ca, true);
			ASSERT_NE(l.ctx, nullptr) << c.name << ": " << l.err;
			world->responder->route(path, l.leaf, c.answer);
		}
		// One fetch, many handshakes.
		Listener &many = world->make("many_handshakes", world->responder->url("/many"),
		                             Chain::leaf_and_ca, true);
		ASSERT_NE(many.ctx, nullptr) << many.err;
		world->responder->route("/many", many.leaf, sign(kGood, -60, kDay));
		// Responders that are down: for good, and until a test starts it.
		world->down_fd = bound_socket(&world->down_port);
		Listener &down =
		        world->make("responder_down",
		                    "http://127.0.0.1:" + std::to_string(world->down_port) + "/",
		                    Chain::leaf_and_ca, true);
		ASSERT_NE(down.ctx, nullptr) << down.err;
		world->late.reset(new Responder);
		Listener &late = world->make("responder_up_later", world->late->url("/late"),
		                             Chain::leaf_and_ca, true);
		ASSERT_NE(late.ctx, nullptr) << late.err;
		world->late->route("/late", late.leaf, sign(kGood, -60, kDay));

		staple_start();
	}
	void TearDown() override
	{
		if (world == nullptr)
			return;
		world->responder.reset();
		world->late.reset();
		world->log.reset();
		close(world->down_fd);
		for (Listener &l : world->listeners) {
			SSL_CTX_free(l.ctx);
			X509_free(l.leaf);
			unlink(l.chain_path.c_str());
			unlink(l.key_path.c_str());
			unlink(l.response_path.c_str());
		}
		rmdir(world->dir.c_str());
		delete world;
		world = nullptr;
		X509_free(keys.ca);
		EVP_PKEY_free(keys.ca_key);
		for (int i = 1; i < 4; i++) {
			X509_free(keys.signer[i]);
			EVP_PKEY_free(keys.signer_key[i]);
		}
		X509_free(keys.other);
	}
};
const auto *world_env = ::testing::AddGlobalTestEnvironment(new StapleWorld);

// --- fetched staples -------------------------------------------------------------

class StapleFetch : public ::testing::TestWithParam<FetchCase>
{
};

TEST_P(StapleFetch, ClientReceivesWhatTheResponderSaidOrNothing)
{
	const FetchCase &c = GetParam();
	Listener *l = world->find(c.name);
	ASSERT_NE(l, nullptr);
	std::string path = std::string("/") + c.name;

	// Sync: the staple is installed, or the fetch was judged and logged.
	if (c.stapled) {
		ASSERT_EQ(staple_wait(l->ctx, 15000), 0) << world->log->all();
	}
	std::string line = world->log->staple_line(c.name, 15000);
	ASSERT_FALSE(line.empty()) << "no staple_* line for [" << c.name << "]:\n"
	                           << world->log->all();
	EXPECT_EQ(field(line, "event"), c.event) << line;
	EXPECT_EQ(field(line, "ocsp"), c.outcome) << line;
	EXPECT_EQ(severity_of(line), c.severity) << line;
	EXPECT_EQ(field(line, "stage"), "ocsp") << line;
	EXPECT_EQ(field(line, "dir"), "in") << line;
	EXPECT_NE(field(line, "subject").find(std::string("CN=") + c.name + ".test"),
	          std::string::npos)
	        << line;
	if (c.reason != nullptr) {
		EXPECT_NE(field(line, "reason").find(c.reason), std::string::npos) << line;
	}
	if (!c.stapled) {
		EXPECT_EQ(staple_wait(l->ctx, 0), -1);
	}

	// The nextUpdate-in-10-s answer may expire between the wait and the
	// handshake (it is fetched again when it does): then wait again.
	Handshake h;
	for (int attempt = 0; attempt < 3; attempt++) {
		h = handshake(l->ctx);
		ASSERT_TRUE(h.ok) << h.err;
		Seen s = world->responder->seen(path);
		ASSERT_FALSE(s.answers.empty());
		if (!c.stapled || h.stapled || time(nullptr) < next_update_of(s.answers.back()))
			break;
		ASSERT_EQ(staple_wait(l->ctx, 15000), 0);
	}
	EXPECT_EQ(h.verify, X509_V_OK);
	Seen s = world->responder->seen(path);
	ASSERT_GE(s.requests, 1);
	EXPECT_EQ(s.not_about_leaf, 0)
	        << "the request did not ask about this listener's certificate";
	if (c.stapled) {
		ASSERT_TRUE(h.stapled);
		if (std::string(c.name) == "good_next_update_10s_ahead") {
			// Asked again every 10 s: one of its answers, a current one.
			bool served = false;
			for (const Bytes &a : s.answers)
				served = served || a == h.staple;
			EXPECT_TRUE(served) << "the staple is none of the responder's answers";
			EXPECT_GT(next_update_of(h.staple), time(nullptr) - 1);
		} else {
			EXPECT_EQ(s.requests, 1);
			EXPECT_EQ(h.staple, s.answers.front()) << "not the responder's answer";
		}
	} else {
		EXPECT_FALSE(h.stapled) << h.staple.size() << " bytes stapled";
	}
}

INSTANTIATE_TEST_SUITE_P(Answers, StapleFetch, ::testing::ValuesIn(fetch_cases()),
                         [](const ::testing::TestParamInfo<FetchCase> &i) {
	                         return std::string(i.param.name);
                         });

TEST(StapleFetchOnce, OneFetchServesManyHandshakes)
{
	Listener *l = world->find("many_handshakes");
	ASSERT_NE(l, nullptr);
	ASSERT_EQ(staple_wait(l->ctx, 15000), 0);

	for (int i = 0; i < 8; i++) {
		Handshake h = handshake(l->ctx);
		ASSERT_TRUE(h.ok) << h.err;
		ASSERT_TRUE(h.stapled) << "handshake " << i;
		Seen s = world->responder->seen("/many");
		ASSERT_EQ(s.requests, 1) << "handshake " << i << " made the refresher ask again";
		EXPECT_EQ(h.staple, s.answers.front());
	}
}

TEST(StapleFetchDown, NothingStapledAndWaitTimesOut)
{
	Listener *l = world->find("responder_down");
	ASSERT_NE(l, nullptr);
	std::string line = world->log->staple_line("responder_down", 15000);

	ASSERT_FALSE(line.empty()) << world->log->all();
	EXPECT_EQ(field(line, "event"), "staple_failed") << line;
	EXPECT_EQ(field(line, "ocsp"), "none") << line;
	EXPECT_NE(field(line, "reason").find("cannot connect"), std::string::npos) << line;

	auto start = Clock::now();
	EXPECT_EQ(staple_wait(l->ctx, 1500), -1);
	long ms = (long)std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start)
	                  .count();
	EXPECT_GE(ms, 1400);
	EXPECT_LT(ms, 4000) << "staple_wait overran its timeout";

	Handshake h = handshake(l->ctx);
	ASSERT_TRUE(h.ok) << h.err;
	EXPECT_FALSE(h.stapled);
}

// A failure is retried after 5 s: once the responder is up, the staple comes.
TEST(StapleFetchDown, StapledOnceTheResponderComesUp)
{
	Listener *l = world->find("responder_up_later");
	ASSERT_NE(l, nullptr);
	Clock::time_point failed;
	std::string line = world->log->staple_line("responder_up_later", 15000, &failed);
	ASSERT_FALSE(line.empty()) << world->log->all();
	EXPECT_EQ(field(line, "ocsp"), "none") << line;
	Handshake before = handshake(l->ctx);
	ASSERT_TRUE(before.ok) << before.err;
	EXPECT_FALSE(before.stapled);
	EXPECT_EQ(world->late->seen("/late").requests, 0);

	world->late->start();
	// Retries come 5, 10, 20 s apart: when this test starts more than 5 s
	// after the environment, the next one may be up to 20 s away.
	ASSERT_EQ(staple_wait(l->ctx, 25000), 0) << world->log->all();
	Seen s = world->late->seen("/late");
	ASSERT_EQ(s.requests, 1);
	// Not sooner than the first retry (RETRY_FIRST_S, whole seconds).
	EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(s.at[0] - failed).count(),
	          3500);
	Handshake after = handshake(l->ctx);
	ASSERT_TRUE(after.ok) << after.err;
	ASSERT_TRUE(after.stapled);
	EXPECT_EQ(after.staple, s.answers.front());
}

// --- configuration errors ----------------------------------------------------------

struct ConfCase {
	const char *name;
	bool aia;        // the certificate names an http:// responder
	const char *url; // else, this one (nullptr: no AIA at all)
	Chain chain;
	bool fetch;      // else a response file
	const char *err; // a part of the error; nullptr: accepted
};

void PrintTo(const ConfCase &c, std::ostream *os)
{
	*os << c.name;
}

class StapleConf : public ::testing::TestWithParam<ConfCase>
{
};

TEST_P(StapleConf, AttachAcceptsOrSaysWhy)
{
	const ConfCase &c = GetParam();
	// A responder that is down: an accepted source fails quietly.
	std::string url = c.aia ? "http://127.0.0.1:" + std::to_string(world->down_port) + "/conf"
	                        : (c.url != nullptr ? c.url : "");
	Listener &l = world->make(std::string("conf_") + c.name, url, c.chain, c.fetch, !c.fetch);

	if (c.err == nullptr) {
		EXPECT_NE(l.ctx, nullptr) << l.err;
		return;
	}
	EXPECT_EQ(l.ctx, nullptr);
	EXPECT_NE(l.err.find(c.err), std::string::npos) << l.err;
	EXPECT_EQ(l.err.rfind("[conf_" + std::string(c.name) + "] ocsp_fetch: ", 0), 0u) << l.err;
}

INSTANTIATE_TEST_SUITE_P(
        Cases, StapleConf,
        ::testing::Values(
                ConfCase{"aia_and_issuer", true, nullptr, Chain::leaf_and_ca, true, nullptr},
                ConfCase{"no_aia", false, nullptr, Chain::leaf_and_ca, true,
                         "certificate names no OCSP responder"},
                ConfCase{"https_only", false, "https://127.0.0.1:1/", Chain::leaf_and_ca, true,
                         "no http:// OCSP responder"},
                ConfCase{"chain_without_issuer", true, nullptr, Chain::leaf_only, true,
                         "the issuing CA's certificate must follow the server certificate"},
                ConfCase{"chain_with_another_ca", true, nullptr, Chain::leaf_and_other_ca, true,
                         "the issuing CA's certificate must follow the server certificate"},
                // A response file needs neither.
                ConfCase{"file_source_needs_no_aia", false, nullptr, Chain::leaf_only, false,
                         nullptr}),
        [](const ::testing::TestParamInfo<ConfCase> &i) { return std::string(i.param.name); });

TEST(StapleConfNone, NoSourceNoStaple)
{
	Listener &l = world->make("no_source", "", Chain::leaf_and_ca, false, false);
	ASSERT_NE(l.ctx, nullptr) << l.err;

	EXPECT_EQ(staple_wait(l.ctx, 0), -1);
	Handshake h = handshake(l.ctx);
	ASSERT_TRUE(h.ok) << h.err;
	EXPECT_FALSE(h.stapled);
}

// --- response files -----------------------------------------------------------------

// One step of an operator's life with the file: what is written (or not),
// with which modification time, and what the next client receives.
struct FileStep {
	const char *what;
	std::function<Bytes(X509 *leaf)> content; // nullptr: the file is left alone
	long mtime_s;                             // from the test's base time
	long mtime_ns;
	bool stapled;
};

void run_file_steps(const std::string &name, const std::vector<FileStep> &steps)
{
	Listener &l = world->make(name, "", Chain::leaf_only, false, true);
	ASSERT_NE(l.ctx, nullptr) << l.err;
	time_t base = time(nullptr) - 3600;
	Bytes written;

	for (const FileStep &st : steps) {
		SCOPED_TRACE(st.what);
		if (st.content) {
			written = st.content(l.leaf);
			write_file(l.response_path, as_string(written));
			set_mtime(l.response_path, base + st.mtime_s, st.mtime_ns);
		}
		Handshake h = handshake(l.ctx);
		ASSERT_TRUE(h.ok) << h.err;
		EXPECT_EQ(h.verify, X509_V_OK);
		EXPECT_EQ(h.stapled, st.stapled);
		if (st.stapled && h.stapled) {
			EXPECT_EQ(h.staple, written) << "not the file's current content";
		}
	}
}

std::function<Bytes(X509 *)> file_answer(int status, long this_off, long next_off)
{
	return [=](X509 *leaf) { return answer_about(leaf, status, this_off, next_off); };
}

TEST(StapleFile, StapledAndReadAgainWhenItsTimeChanges)
{
	run_file_steps(
	        "file_source",
	        {
	                {"no file yet", nullptr, 0, 0, false},
	                {"good", file_answer(kGood, -60, kDay), 10, 0, true},
	                {"unchanged: the same again", nullptr, 0, 0, true},
	                {"revoked, a new time", file_answer(kRevoked, -60, kDay), 20, 0, true},
	                {"stale, a new time", file_answer(kGood, -2 * kDay, -kDay), 30, 0, false},
	                {"good again", file_answer(kGood, -60, kDay), 40, 0, true},
	                {"no nextUpdate", file_answer(kGood, -60, LONG_MIN), 50, 0, true},
	                {"tryLater", [](X509 *) { return trylater(); }, 60, 0, false},
	                {"garbage", [](X509 *) { return Bytes(300, 0x5a); }, 70, 0, false},
	                {"empty", [](X509 *) { return Bytes(); }, 80, 0, false},
	                {"good, an older time than before", file_answer(kGood, -60, kDay), 5, 0,
	                 true},
	        });
}

// The file is read again only when it changes (modification time to the
// nanosecond, size, inode): the same time and size in the same file mean the
// same response (no read per handshake).
TEST(StapleFile, SameTimeIsNotReadAgain)
{
	Listener &l = world->make("file_cached", "", Chain::leaf_only, false, true);
	ASSERT_NE(l.ctx, nullptr) << l.err;
	time_t t = time(nullptr) - 100;
	Bytes first = answer_about(l.leaf, kGood, -60, kDay);
	Bytes same_size = answer_about(l.leaf, kGood, -30, kDay);
	Bytes second = answer_about(l.leaf, kRevoked, -60, kDay);

	/* ECDSA signatures vary in length by a byte or two: sign until it fits. */
	for (int i = 0; i < 200 && same_size.size() != first.size(); i++)
		same_size = answer_about(l.leaf, kGood, -30, kDay);
	ASSERT_EQ(first.size(), same_size.size());
	ASSERT_NE(first, same_size);
	write_file(l.response_path, as_string(first));
	set_mtime(l.response_path, t, 0);
	Handshake a = handshake(l.ctx);
	ASSERT_TRUE(a.ok) << a.err;
	EXPECT_EQ(a.staple, first);

	write_file(l.response_path, as_string(same_size));
	set_mtime(l.response_path, t, 0);
	Handshake b = handshake(l.ctx);
	ASSERT_TRUE(b.ok) << b.err;
	EXPECT_EQ(b.staple, first) << "read again although time, size and inode did not change";

	write_file(l.response_path, as_string(second));
	set_mtime(l.response_path, t + 1, 0);
	Handshake c = handshake(l.ctx);
	ASSERT_TRUE(c.ok) << c.err;
	EXPECT_EQ(c.staple, second);
}

// BUG (staple.c reload_file, `st.st_mtime == s->mtime`): the change test
// looks at whole seconds only.  An operator's tool that writes the file in
// place (openssl ocsp -respout does) can be caught half-written by a
// handshake; when the rest lands within the same second, the file is never
// read again until its next change (an hour or a day later), so nothing
// (or, with a revoked answer replacing a good one, the old good answer) is
// stapled meanwhile.  Expected: a change of st_mtim's nanoseconds (or of
// size/inode) is a change.  Run with --gtest_also_run_disabled_tests.
TEST(StapleFile, ChangeWithinTheSameSecondIsRead)
{
	run_file_steps("file_same_second",
	               {
	                       {"half written",
	                        [](X509 *leaf) {
		                        Bytes b = answer_about(leaf, kGood, -60, kDay);
		                        b.resize(b.size() / 2);
		                        return b;
	                        },
	                        100, 100000000, false},
	                       {"complete, 0.5 s later", file_answer(kGood, -60, kDay), 100,
	                        600000000, true},
	                       // A revoked answer replacing it, in the same second.
	                       {"revoked, 0.2 s later", file_answer(kRevoked, -60, kDay), 100,
	                        800000000, true},
	               });
}

} // namespace
