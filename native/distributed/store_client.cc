// POSIX sockets: not built on Windows, where scripts/gloo.js never turns distributed support on.
#ifndef _WIN32
#include "peftkit/distributed/store_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "peftkit/error.h"

// macOS has neither flag: no close-on-exec at creation (nothing here forks), and SIGPIPE is
// ignored by Node there anyway.
#ifndef SOCK_CLOEXEC
#define SOCK_CLOEXEC 0
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

namespace pk::dist {
namespace {

using Clock = std::chrono::steady_clock;

int64_t ms_left(Clock::time_point deadline) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
}

// One connect attempt to every address of host:port; -1 with errno's text in `why` on failure.
int try_connect(const std::string& host, int port, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    why = std::string("cannot resolve the host: ") + gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    why = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

void put_u32(std::string& s, uint32_t v) {
  char b[4] = {char(v & 255), char((v >> 8) & 255), char((v >> 16) & 255), char((v >> 24) & 255)};
  s.append(b, 4);
}

uint32_t get_u32(const char* p) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t(u[0]) | uint32_t(u[1]) << 8 | uint32_t(u[2]) << 16 | uint32_t(u[3]) << 24;
}

}  // namespace

StoreClient::StoreClient(const std::string& host, int port, int64_t connect_timeout_ms)
    : where_(host + ":" + std::to_string(port)) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(connect_timeout_ms);
  std::string why;
  for (;;) {
    fd_ = try_connect(host, port, why);
    if (fd_ >= 0) break;
    if (ms_left(deadline) <= 0) {
      fail("E_DIST", "no rendezvous store answers at " + where_ + " (MASTER_ADDR:MASTER_PORT) after " +
                         std::to_string(connect_timeout_ms) + " ms: " + why + "; is rank 0 running?");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

StoreClient::~StoreClient() {
  if (fd_ >= 0) close(fd_);
}

int StoreClient::request(char op, const std::vector<std::string>& fields, std::vector<std::string>& out, int64_t timeout_ms) {
  if (fd_ < 0) fail("E_DIST", "the connection to the rendezvous store at " + where_ + " was lost earlier");
  std::string body(1, op);
  for (const std::string& f : fields) {
    put_u32(body, uint32_t(f.size()));
    body += f;
  }
  std::string frame;
  put_u32(frame, uint32_t(body.size()));
  frame += body;
  // A broken connection is closed here, so the next request fails at once instead of reading
  // the rest of a reply that belonged to this one.
  auto broken = [&](const std::string& why) {
    close(fd_);
    fd_ = -1;
    fail("E_DIST", "the rendezvous store at " + where_ + " (rank 0) " + why);
  };
  for (size_t off = 0; off < frame.size();) {
    ssize_t n = send(fd_, frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) broken(std::string("cannot be written to: ") + std::strerror(errno));
    off += size_t(n);
  }
  // The store answers a wait when its own timer runs out; this deadline only catches a store
  // that hangs, so it is a little longer.
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms + 5000);
  std::string in;
  size_t need = 4;
  while (in.size() < need) {
    int64_t left = ms_left(deadline);
    if (left <= 0) broken("did not answer within " + std::to_string(timeout_ms + 5000) + " ms");
    pollfd p{fd_, POLLIN, 0};
    int rc = poll(&p, 1, int(std::min<int64_t>(left, 1 << 30)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    char buf[65536];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) broken(n == 0 ? "closed the connection (rank 0 ended or died)" : std::string("failed: ") + std::strerror(errno));
    in.append(buf, size_t(n));
    if (need == 4 && in.size() >= 4) need = 4 + size_t(get_u32(in.data()));
  }
  if (in.size() != need || need < 5) broken("sent a malformed reply");
  out.clear();
  for (size_t o = 5; o < need;) {
    if (o + 4 > need) broken("sent a malformed reply");
    size_t n = get_u32(in.data() + o);
    if (o + 4 + n > need) broken("sent a malformed reply");
    out.emplace_back(in.data() + o + 4, n);
    o += 4 + n;
  }
  int status = static_cast<unsigned char>(in[4]);
  if (status == 2) fail("E_DIST", "the rendezvous store at " + where_ + " refused '" + std::string(1, op) + "': " + (out.empty() ? "" : out[0]));
  return status;
}

void StoreClient::set(const std::string& key, const std::vector<char>& value) {
  std::vector<std::string> out;
  request('S', {key, std::string(value.begin(), value.end())}, out, 0);
}

std::vector<char> StoreClient::get(const std::string& key, int64_t timeout_ms) {
  std::vector<std::string> out;
  if (request('G', {key, std::to_string(timeout_ms)}, out, timeout_ms) == 1 || out.empty()) {
    fail("E_DIST", "rendezvous store at " + where_ + ": key '" + key + "' was not set within " + std::to_string(timeout_ms) + " ms");
  }
  return std::vector<char>(out[0].begin(), out[0].end());
}

void StoreClient::wait(const std::vector<std::string>& keys, int64_t timeout_ms) {
  std::vector<std::string> fields{std::to_string(timeout_ms)};
  fields.insert(fields.end(), keys.begin(), keys.end());
  std::vector<std::string> out;
  if (request('W', fields, out, timeout_ms) == 1) {
    std::string missing;
    for (const std::string& k : out) missing += (missing.empty() ? "'" : ", '") + k + "'";
    fail("E_DIST", "rendezvous store at " + where_ + ": " + missing + " not set within " + std::to_string(timeout_ms) +
                       " ms (a rank did not reach the rendezvous: check WORLD_SIZE and that every rank was started)");
  }
}

int64_t StoreClient::add(const std::string& key, int64_t delta) {
  std::vector<std::string> out;
  request('A', {key, std::to_string(delta)}, out, 0);
  if (out.empty()) fail("E_DIST", "the rendezvous store at " + where_ + " sent a malformed reply to 'A'");
  return std::stoll(out[0]);
}

}  // namespace pk::dist
#endif  // _WIN32
