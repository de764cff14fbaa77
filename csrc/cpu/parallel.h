// Work splitting shared by the CPU kernels, on diffrt's own pool (thread_pool.h). Work is always
// claimed item by item from a shared counter, never assigned up front: a thread that is descheduled
// (another process holds its core) then delays only the item it holds, not a fixed share.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cpu/thread_pool.h"

namespace diffrt::cpu {

// Items [0, n) handed out one at a time to whichever thread asks next.
class DynamicItems {
 public:
  explicit DynamicItems(int64_t n) : n_(n) {}
  bool claim(int64_t& item) {
    item = next_.fetch_add(1, std::memory_order_relaxed);
    return item < n_;
  }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t n_;
};

// Runs participant(DynamicItems&) on up to num_threads threads (the caller among them) over `items`
// items; each participant loops on claim(). A participant may set up per-thread scratch after its first
// successful claim, so a thread that arrives after the work is gone allocates nothing.
template <typename F>
void parallel_region(int64_t items, int num_threads, F&& participant) {
  DynamicItems work(items);
  const int nt = int(std::min<int64_t>(items, std::max(1, num_threads)));
  if (nt <= 1) {
    participant(work);
    return;
  }
  auto run = [&] { participant(work); };
  run_on_pool(nt - 1, TaskRef(run));
}

// Below this many elements a fork/join costs more than the second thread saves.
constexpr int64_t kMinParallelElements = int64_t(1) << 14;

// Calls fn(row, begin, end) over `rows` rows of `row_len` elements, splitting the flattened range
// into equal pieces (split points on 64-element boundaries, so no two threads write one cache line).
// Rows are independent; a thread may see pieces of several rows.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_len, int num_threads, F&& fn) {
  const int64_t total = rows * row_len;
  if (total <= 0) return;
  auto run_range = [&](int64_t lo, int64_t hi) {
    while (lo < hi) {
      const int64_t r = lo / row_len, begin = lo - r * row_len;
      const int64_t end = std::min(row_len, begin + (hi - lo));
      fn(r, begin, end);
      lo += end - begin;
    }
  };
  const int nt = total < kMinParallelElements ? 1 : std::max(1, num_threads);
  if (nt == 1) {
    run_range(0, total);
    return;
  }
  // A few pieces per thread, so the work still spreads when one thread is late.
  const int64_t pieces = std::min<int64_t>(int64_t(nt) * 4, std::max<int64_t>(nt, total / 4096));
  auto split = [&](int64_t k) { return k == pieces ? total : (total * k / pieces) & ~int64_t(63); };
  parallel_region(pieces, nt, [&](DynamicItems& work) {
    for (int64_t piece; work.claim(piece);) run_range(split(piece), split(piece + 1));
  });
}

// Runs fn(i) for i in [0, n) with up to num_threads threads (for per-row work such as quantiles).
template <typename F>
void parallel_for(int64_t n, int num_threads, F&& fn) {
  parallel_region(n, num_threads, [&](DynamicItems& work) {
    for (int64_t i; work.claim(i);) fn(i);
  });
}

}  // namespace diffrt::cpu
