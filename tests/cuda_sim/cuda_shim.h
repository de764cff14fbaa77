// A host-side simulation of the parts of CUDA that csrc/cuda/*.cu use, so that g++ compiles those
// sources unchanged (-DDIFFRT_CUDA_SIM, selected in csrc/cuda/launch.h) and their kernels run on
// the CPU against the reference. It checks indexing, bounds, partial tiles, the reductions and
// their synchronisation; it says nothing about speed, occupancy or the device's float rounding
// (the shared math is host-tested already; see tests/test_cuda_simulation.py).
//
// Model:
//   - every thread of a block is a fiber (ucontext) with its own threadIdx; the fibers of a block
//     take turns on one OS thread, switching only at barriers, so a run is deterministic;
//   - blocks of a launch run one after another, so `__shared__` variables can be plain statics:
//     exactly one block uses them at a time;
//   - __syncthreads() is a barrier over the block's fibers; __shfl_*_sync exchange values through
//     a per-warp buffer between two barriers over the warp's 32 fibers;
//   - at every switch the lowest-numbered runnable fiber runs next, or the highest with
//     CUDA_SIM_SCHEDULE=reverse: run under both, a read that a missing barrier lets happen too
//     early (before the writer, or after the next overwrite) shows up in one of the two orders;
//   - when no fiber can run and some have not finished (one skipped a barrier or returned early)
//     the launch aborts with a deadlock report instead of hanging;
//   - device memory is host memory; cudaMallocAsync fills it with 0xFF bytes (NaN as float or
//     double) so a kernel that reads scratch it never wrote produces NaN; streams run in order.
#pragma once
#include <ucontext.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// ---- runtime API subset ------------------------------------------------------------------------

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
                   cudaErrorInvalidConfiguration = 9 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };

namespace cuda_sim {
inline thread_local cudaError_t last_error = cudaSuccess;
inline std::atomic<long> live_allocations{0};
inline thread_local int current_device = 0;
}  // namespace cuda_sim

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_sim::last_error;
  cuda_sim::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = cuda_sim::current_device;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  if (device != 0) return cudaErrorInvalidValue;  // one simulated device
  cuda_sim::current_device = device;
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xff, bytes);
  ++cuda_sim::live_allocations;
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  --cuda_sim::live_allocations;
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

// ---- blocks of fibers, barriers, warps --------------------------------------------------------

namespace cuda_sim {

inline bool reverse_schedule() {
  static const bool reverse = [] {
    const char* env = std::getenv("CUDA_SIM_SCHEDULE");
    return env && std::string(env) == "reverse";
  }();
  return reverse;
}

struct Fiber {
  enum State { runnable, at_sync, at_warp, done };
  ucontext_t context;
  uint3 thread;
  State state = runnable;
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  int waiting_at_sync = 0;
  std::vector<int> waiting_at_warp;                    // per warp
  std::vector<std::array<unsigned char, 8>> exchange;  // one shuffle slot per thread
  std::function<void()> body;                          // the kernel with its arguments
};

inline thread_local Block* block = nullptr;

inline void fiber_main() {
  block->body();
  block->fibers[block->current].state = Fiber::done;
}  // returns to uc_link: the scheduler

// The running fiber gives up the CPU; the scheduler resumes it once its state is runnable again.
inline void yield_to_scheduler(Fiber::State state) {
  Fiber& me = block->fibers[block->current];
  me.state = state;
  swapcontext(&me.context, &block->scheduler);
}

// Arrival at a barrier over fibers [first, first + count): the last to arrive releases the others;
// all of them (the last too) then wait for the scheduler, which picks who goes first.
inline void arrive(int& waiting, int first, int count, Fiber::State state) {
  if (++waiting == count) {
    waiting = 0;
    for (int t = first; t < first + count; ++t)
      if (block->fibers[t].state == state) block->fibers[t].state = Fiber::runnable;
    yield_to_scheduler(Fiber::runnable);
  } else {
    yield_to_scheduler(state);
  }
}

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void sync_block() { arrive(block->waiting_at_sync, 0, int(block->fibers.size()), Fiber::at_sync); }

inline void sync_warp(unsigned warp) { arrive(block->waiting_at_warp[warp], int(warp) * 32, 32, Fiber::at_warp); }

template <typename T, typename Source>
T shuffle(unsigned mask, T v, Source source_lane, const char* what) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_sim: %s with a partial mask is not simulated\n", what);
    std::abort();
  }
  const unsigned t = linear_thread(), lane = t % 32, warp = t / 32;
  std::memcpy(block->exchange[t].data(), &v, sizeof(T));
  sync_warp(warp);
  const unsigned src = source_lane(lane);
  T out = v;
  if (src < 32) std::memcpy(&out, block->exchange[warp * 32 + src].data(), sizeof(T));
  sync_warp(warp);  // nobody overwrites a slot before every lane has read it
  return out;
}

[[noreturn]] inline void report_deadlock(const Block& b) {
  int sync = 0, warp = 0, done = 0;
  for (const Fiber& f : b.fibers) {
    sync += f.state == Fiber::at_sync;
    warp += f.state == Fiber::at_warp;
    done += f.state == Fiber::done;
  }
  std::fprintf(stderr,
               "cuda_sim: deadlock at a barrier in block (%u,%u): %d of %zu threads wait at __syncthreads, %d at a "
               "warp shuffle, %d returned\n",
               blockIdx.x, blockIdx.y, sync, b.fibers.size(), warp, done);
  std::abort();
}

// Runs one block to completion: resume the first (or last) runnable fiber until all are done.
inline void run_block(Block& b, char* stacks, size_t stack_bytes) {
  const int n = int(b.fibers.size());
  for (int t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    f.state = Fiber::runnable;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks + size_t(t) * stack_bytes;
    f.context.uc_stack.ss_size = stack_bytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  const bool reverse = reverse_schedule();
  for (;;) {
    int next = -1, done = 0;
    for (int k = 0; k < n; ++k) {
      const int t = reverse ? n - 1 - k : k;
      done += b.fibers[t].state == Fiber::done;
      if (next < 0 && b.fibers[t].state == Fiber::runnable) next = t;
    }
    if (next < 0) {
      if (done == n) return;
      report_deadlock(b);
    }
    b.current = next;
    threadIdx = b.fibers[next].thread;
    swapcontext(&b.scheduler, &b.fibers[next].context);
  }
}

constexpr size_t kStackBytes = size_t(1) << 16;  // per fiber; the kernels' frames are small

// Stacks for `threads` fibers, reused by every launch; pages are touched only as stacks grow.
inline char* fiber_stacks(unsigned long threads) {
  static thread_local std::unique_ptr<char[]> stacks;
  static thread_local unsigned long capacity = 0;
  if (capacity < threads) {
    stacks.reset(new char[threads * kStackBytes]);
    capacity = threads;
  }
  return stacks.get();
}

// Runs the grid: the blocks in order, each as blockDim fibers.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block_dim, cudaStream_t, Args&&... args) {
  const unsigned long threads = (unsigned long)block_dim.x * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (threads % 32) {
    std::fprintf(stderr, "cuda_sim: blocks of %lu threads (not whole warps) are not simulated\n", threads);
    std::abort();
  }
  const std::tuple<Params...> params(static_cast<Params>(args)...);  // converted once, as at a real launch
  Block state;
  state.fibers.resize(threads);
  for (unsigned t = 0; t < threads; ++t)
    state.fibers[t].thread = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
  state.waiting_at_warp.assign(threads / 32, 0);
  state.exchange.resize(threads);
  state.body = [&] { std::apply(kernel, params); };
  Block* const outer = block;
  block = &state;
  blockDim = block_dim;
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(state, fiber_stacks(threads), kStackBytes);
      }
  block = outer;
}

}  // namespace cuda_sim

// ---- device intrinsics -------------------------------------------------------------------------

inline void __syncthreads() { cuda_sim::sync_block(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return cuda_sim::shuffle(mask, v, [delta](unsigned lane) { return lane + delta; }, "__shfl_down_sync");
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, unsigned lane_mask) {
  return cuda_sim::shuffle(mask, v, [lane_mask](unsigned lane) { return lane ^ lane_mask; }, "__shfl_xor_sync");
}

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicMin(unsigned* p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
