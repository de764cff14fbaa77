// diffrt's own CPU thread pool (no OpenMP runtime).
//
// Why not OpenMP: its threads busy-wait at every fork and join, and its join waits for every thread of
// the team. On a machine where another process holds a core, one descheduled team thread stalls the
// whole op (measured: a 0.05 ms ddim_step took 11.8 ms beside one CPU-bound process). Here a fork
// offers seats to the pool's threads; whoever takes one shares out the work item by item (parallel.h),
// and the caller works too, so an op finishes on whatever CPUs it gets and the join waits only for items
// already started. Idle pool threads spin for a few tens of microseconds (back-to-back kernel calls pay
// no wake-up), then sleep.
#pragma once
#include <cstdint>
#include <utility>

namespace diffrt::cpu {

// A non-owning reference to a callable (no allocation; the callable outlives every call).
class TaskRef {
 public:
  template <typename F>
  explicit TaskRef(F& f) : object_(&f), call_([](void* o) { (*static_cast<F*>(o))(); }) {}
  void operator()() const { call_(object_); }

 private:
  void* object_;
  void (*call_)(void*);
};

// Runs `participant` on the calling thread and on up to `helpers` pool threads, and returns when every
// thread that started it has returned. Helpers that do not wake in time do not take part, so
// `participant` must claim its work dynamically. One fork at a time: a second caller (another thread,
// or a kernel called from inside a participant) runs `participant` alone. `participant` must not throw.
void run_on_pool(int helpers, TaskRef participant);

// Threads the pool has started so far (grows on demand up to the largest `helpers` asked for).
int pool_thread_count();

}  // namespace diffrt::cpu
