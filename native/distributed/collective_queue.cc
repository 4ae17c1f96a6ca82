#include "peftkit/distributed/collective_queue.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>

namespace pk::dist {

struct CollectiveQueue::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> jobs;
  bool busy = false;
  bool stop = false;
  std::exception_ptr error;
};

CollectiveQueue::CollectiveQueue() : s_(std::make_shared<State>()) {
  thread_ = std::thread([s = s_] {
    std::unique_lock<std::mutex> lock(s->mu);
    for (;;) {
      s->cv.wait(lock, [&] { return s->stop || !s->jobs.empty(); });
      if (s->jobs.empty()) return;  // stopped and drained
      std::function<void()> job = std::move(s->jobs.front());
      s->jobs.pop_front();
      s->busy = true;
      lock.unlock();
      std::exception_ptr failed;
      try {
        job();
      } catch (...) {
        failed = std::current_exception();
      }
      // Dropped outside the lock: it may hold the last reference to the group that owns this queue.
      job = nullptr;
      lock.lock();
      s->busy = false;
      if (failed && !s->error) s->error = failed;
      if (failed) s->jobs.clear();
      s->cv.notify_all();
    }
  });
}

CollectiveQueue::~CollectiveQueue() {
  {
    std::lock_guard<std::mutex> lock(s_->mu);
    s_->stop = true;
    s_->jobs.clear();
  }
  s_->cv.notify_all();
  if (thread_.get_id() == std::this_thread::get_id()) thread_.detach();
  else thread_.join();
}

void CollectiveQueue::push(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(s_->mu);
    if (s_->error) return;  // wait() reports the failure
    s_->jobs.push_back(std::move(job));
  }
  s_->cv.notify_all();
}

void CollectiveQueue::wait() {
  std::unique_lock<std::mutex> lock(s_->mu);
  s_->cv.wait(lock, [&] { return s_->jobs.empty() && !s_->busy; });
  if (s_->error) {
    std::exception_ptr e = s_->error;
    s_->error = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace pk::dist
