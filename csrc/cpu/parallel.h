// OpenMP work splitting shared by the CPU kernels.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace diffrt::cpu {

// Below this many elements a fork/join costs more than the second thread saves.
constexpr int64_t kMinParallelElements = int64_t(1) << 14;

// Calls fn(row, begin, end) over `rows` rows of `row_len` elements, splitting the flattened range
// evenly across threads (split points on 64-element boundaries, so no two threads write one
// cache line). Rows are independent; a thread may see pieces of several rows.
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
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    auto split = [&](int64_t k) { return k == T ? total : (total * k / T) & ~int64_t(63); };
    run_range(split(t), split(t + 1));
  }
}

// Runs fn(i) for i in [0, n) with up to num_threads threads (for per-row work such as quantiles).
template <typename F>
void parallel_for(int64_t n, int num_threads, F&& fn) {
  const int nt = int(std::min<int64_t>(n, std::max(1, num_threads)));
  if (nt <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace diffrt::cpu
