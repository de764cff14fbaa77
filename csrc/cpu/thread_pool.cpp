// The pool behind run_on_pool (see thread_pool.h for why it is not OpenMP).
//
// Sleeping uses pthread's mutex and condition variable directly, and the one-fork-at-a-time guard is an
// atomic flag: std::condition_variable::wait and std::mutex::try_lock would tie the library to
// GLIBCXX_3.4.30 (GCC 12's libstdc++) and glibc 2.34, which the portable wheel's manylinux_2_28 forbids.
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

// pthread_mutex_t under a scope (std::lock_guard's role).
class Locked {
 public:
  explicit Locked(pthread_mutex_t& m) : m_(m) { pthread_mutex_lock(&m_); }
  ~Locked() { pthread_mutex_unlock(&m_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  pthread_mutex_t& m_;
};

struct Pool {
  std::atomic<bool> submitting{false};  // set for one whole fork
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
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
        Locked lock(pool->m);
        while (pool->generation.load(std::memory_order_relaxed) == seen) pthread_cond_wait(&pool->wake, &pool->m);
        break;
      }
    }
    const TaskRef* task = nullptr;
    {
      Locked lock(pool->m);
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
  if (helpers <= 0 || pool->submitting.exchange(true, std::memory_order_acquire)) {
    participant();
    return;
  }
  ensure_threads(pool, helpers);
  {
    Locked lock(pool->m);
    pool->task = &participant;
    pool->seats = helpers;
    pool->generation.fetch_add(1, std::memory_order_release);
  }
  pthread_cond_broadcast(&pool->wake);
  participant();
  {
    Locked lock(pool->m);
    pool->task = nullptr;
    pool->seats = 0;
  }
  // Only threads that took a seat are waited for, each finishing the item it holds.
  for (int i = 0; pool->running.load(std::memory_order_acquire) != 0; ++i) {
    if (i < 4096) cpu_relax();
    else std::this_thread::yield();
  }
  pool->submitting.store(false, std::memory_order_release);
}

int pool_thread_count() { return g_pool->threads.load(); }

}  // namespace diffrt::cpu
