// The pool behind run_on_pool (see thread_pool.h for why it is not OpenMP).
//
// Protocol. A fork, under `m`: publish the task, open `seats` = helpers, bump `generation`, notify.
// A pool thread that sees the new generation takes a seat under `m` (seats > 0 and the task still
// published), counts itself in `running`, runs the task, counts itself out. The caller runs the task
// itself, then closes the seats under `m` and waits until `running` is 0: a thread either took its seat
// before the close (and is waited for) or never touches the task, which lives on the caller's stack.
#include "cpu/thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace diffrt::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long an idle pool thread polls for the next fork before it sleeps: long enough to cover the gap
// between two kernel calls of one sampling step, short enough that on a busy machine it costs the other
// processes little.
constexpr auto kSpin = std::chrono::microseconds(50);
// Threads beyond this are never started (a request for more runs on this many).
constexpr int kMaxThreads = 256;

struct Pool {
  std::mutex submit;  // held for one whole fork
  std::mutex m;
  std::condition_variable wake;
  std::atomic<uint64_t> generation{0};
  const TaskRef* task = nullptr;  // guarded by m
  int seats = 0;                  // guarded by m
  std::atomic<int> running{0};
  std::atomic<int> threads{0};
};

Pool* g_pool = new Pool;  // never destroyed: its threads are detached and may outlive static destructors

void worker(Pool* pool) {
  uint64_t seen = pool->generation.load(std::memory_order_acquire);
  for (;;) {
    // Poll, then sleep until the generation moves.
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    for (int i = 0; pool->generation.load(std::memory_order_acquire) == seen; ++i) {
      cpu_relax();
      if ((i & 255) == 255 && std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(pool->m);
        pool->wake.wait(lock, [&] { return pool->generation.load(std::memory_order_relaxed) != seen; });
        break;
      }
    }
    const TaskRef* task = nullptr;
    {
      std::lock_guard<std::mutex> lock(pool->m);
      seen = pool->generation.load(std::memory_order_relaxed);
      if (pool->task && pool->seats > 0) {
        --pool->seats;
        pool->running.fetch_add(1, std::memory_order_relaxed);
        task = pool->task;
      }
    }
    if (task) {
      (*task)();
      pool->running.fetch_sub(1, std::memory_order_release);
    }
  }
}

void ensure_threads(Pool* pool, int wanted) {
  wanted = std::min(wanted, kMaxThreads);
  for (int have = pool->threads.load(); have < wanted; ++have) {
    std::thread(worker, pool).detach();
    pool->threads.fetch_add(1);
  }
}

// A forked child has none of the parent's threads, and its copies of the locks may be held by threads
// that no longer exist: it starts from a fresh pool (the old one is leaked, as it must not be touched).
void reset_after_fork() { g_pool = new Pool; }
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, reset_after_fork);

}  // namespace

void run_on_pool(int helpers, TaskRef participant) {
  Pool* pool = g_pool;
  if (helpers <= 0 || !pool->submit.try_lock()) {
    participant();
    return;
  }
  ensure_threads(pool, helpers);
  {
    std::lock_guard<std::mutex> lock(pool->m);
    pool->task = &participant;
    pool->seats = helpers;
    pool->generation.fetch_add(1, std::memory_order_release);
  }
  pool->wake.notify_all();
  participant();
  {
    std::lock_guard<std::mutex> lock(pool->m);
    pool->task = nullptr;
    pool->seats = 0;
  }
  // Only threads that took a seat are waited for, each finishing the item it holds.
  for (int i = 0; pool->running.load(std::memory_order_acquire) != 0; ++i) {
    if (i < 4096) cpu_relax();
    else std::this_thread::yield();
  }
  pool->submit.unlock();
}

int pool_thread_count() { return g_pool->threads.load(); }

}  // namespace diffrt::cpu
