// Ordering for an op handed to another host thread (the libuv pool runs the ...Async twins).
// CUDA kernels run on per-thread streams, which do not order against each other: without this,
// an async op could start before GPU work its caller queued first, and its promise could settle
// before its own kernels finished (or failed). Create it on the calling thread when the op is
// queued; begin() and end() run on the thread that does the work. Without a GPU it does nothing.
#pragma once

namespace pk {

class AsyncOrder {
 public:
  AsyncOrder();  // marks the point the calling thread's GPU work has reached
  ~AsyncOrder();
  AsyncOrder(const AsyncOrder&) = delete;
  AsyncOrder& operator=(const AsyncOrder&) = delete;

  void begin();  // this thread's GPU work waits for that point
  void end();    // waits for this thread's GPU work; a kernel fault becomes an E_CUDA error here

 private:
  void* event_ = nullptr;
};

}  // namespace pk
