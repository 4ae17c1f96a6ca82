// The collectives a group runs behind the caller's back (the gradient buckets launched during
// the backward): one thread per group takes the jobs in the order they were pushed, so the
// collectives meet the other ranks' in the same order. Gloo's collectives block; on this thread
// they overlap with the backward that goes on on the caller's threads.
#pragma once
#include <functional>
#include <memory>
#include <thread>

namespace pk::dist {

class CollectiveQueue {
 public:
  CollectiveQueue();
  // Stops the thread. Joined when called from elsewhere; detached when the last job itself
  // drops the group (its shared state lives on until the thread ends).
  ~CollectiveQueue();
  CollectiveQueue(const CollectiveQueue&) = delete;
  CollectiveQueue& operator=(const CollectiveQueue&) = delete;

  // Queues a job. After a job fails, the ones still queued are dropped (the group is broken).
  void push(std::function<void()> job);
  // Blocks until every pushed job has run; throws the first failure among them (once).
  void wait();

 private:
  struct State;
  std::shared_ptr<State> s_;
  std::thread thread_;
};

}  // namespace pk::dist
