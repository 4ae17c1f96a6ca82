// A client of the rendezvous store that rank 0 serves (src/distributed/store.ts has the wire
// format): blocking POSIX sockets, no Node, no Gloo, so the Gloo rendezvous and later NCCL's
// unique-id exchange share it. Every request has a deadline; a store that does not answer in
// time, or closes, is a pk::Error("E_DIST") naming MASTER_ADDR:MASTER_PORT.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pk::dist {

class StoreClient {
 public:
  // Connects, retrying until connect_timeout_ms has passed (rank 0 may start after the others).
  StoreClient(const std::string& host, int port, int64_t connect_timeout_ms);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  void set(const std::string& key, const std::vector<char>& value);
  // Waits up to timeout_ms for the key to be set, then returns its value.
  std::vector<char> get(const std::string& key, int64_t timeout_ms);
  // Waits up to timeout_ms for every key; the error names the missing ones.
  void wait(const std::vector<std::string>& keys, int64_t timeout_ms);
  int64_t add(const std::string& key, int64_t delta);

  const std::string& where() const { return where_; }

 private:
  // Sends one request, returns the status byte and the fields; waits at most timeout_ms.
  int request(char op, const std::vector<std::string>& fields, std::vector<std::string>& out, int64_t timeout_ms);
  int fd_ = -1;
  std::string where_;
};

}  // namespace pk::dist
