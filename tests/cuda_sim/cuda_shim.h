// A host-side simulation of the parts of CUDA that csrc/cuda/*.cu use, so that g++ compiles those
// sources unchanged (-DDIFFRT_CUDA_SIM, selected in csrc/cuda/launch.h) and their kernels run on
// the CPU against the reference. It checks indexing, bounds, partial tiles, the reductions and
// their synchronisation; it says nothing about speed, occupancy or the device's float rounding
// (the shared math is host-tested already; see tests/test_cuda_simulation.py).
//
// Model:
//   - every thread of a block is a std::thread with its own threadIdx/blockIdx (thread_local);
//     the blocks of a launch run one after another on the same threads, so `__shared__`
//     variables can be plain statics: exactly one block uses them at a time;
//   - __syncthreads() is a barrier over the block's threads; __shfl_*_sync exchange values
//     through a per-warp buffer between two barriers over the warp's 32 threads;
//   - a barrier nobody completes within CUDA_SIM_DEADLOCK_SECONDS (default 60; a thread skipped
//     __syncthreads or returned early) aborts with a message instead of hanging;
//   - device memory is host memory; cudaMallocAsync fills it with 0xFF bytes (NaN as float or
//     double) so a kernel that reads scratch it never wrote produces NaN; streams run in order.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
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
// How long a barrier may wait before it is reported as a deadlock (CUDA_SIM_DEADLOCK_SECONDS).
inline int deadlock_seconds() {
  static const int seconds = [] {
    const char* env = std::getenv("CUDA_SIM_DEADLOCK_SECONDS");
    return env && std::atoi(env) > 0 ? std::atoi(env) : 60;
  }();
  return seconds;
}
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

// ---- blocks, barriers, warps -------------------------------------------------------------------

namespace cuda_sim {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait(const char* what) {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
      return;
    }
    if (!released_.wait_for(lock, std::chrono::seconds(deadlock_seconds()), [&] { return generation_ != generation; })) {
      std::fprintf(stderr, "cuda_sim: deadlock at %s: %d of %d threads arrived (block %u,%u thread %u)\n", what,
                   arrived_, count_, blockIdx.x, blockIdx.y, threadIdx.x);
      std::abort();
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_, arrived_ = 0;
  unsigned long generation_ = 0;
};

struct Block {
  explicit Block(int threads) : sync(threads), end(threads), exchange(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.emplace_back(new Barrier(32));
  }
  Barrier sync;  // __syncthreads
  Barrier end;   // all threads finished this block (a separate barrier, so an early return is caught)
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<std::array<unsigned char, 8>> exchange;  // one shuffle slot per thread
};

inline thread_local Block* block = nullptr;

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename T, typename Source>
T shuffle(unsigned mask, T v, Source source_lane, const char* what) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_sim: %s with a partial mask is not simulated\n", what);
    std::abort();
  }
  const unsigned t = linear_thread(), lane = t % 32, warp = t / 32;
  std::memcpy(block->exchange[t].data(), &v, sizeof(T));
  block->warps[warp]->wait(what);
  const unsigned src = source_lane(lane);
  T out = v;
  if (src < 32) std::memcpy(&out, block->exchange[warp * 32 + src].data(), sizeof(T));
  block->warps[warp]->wait(what);  // nobody overwrites a slot before every lane has read it
  return out;
}

// Runs the grid: one std::thread per thread of a block, looping over the blocks in order.
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
  Block state{int(threads)};
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      block = &state;
      blockDim = block_dim;
      gridDim = grid;
      threadIdx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = uint3{x, y, z};
            std::apply(kernel, params);
            state.end.wait("the end of a block");
          }
    });
  }
  for (auto& w : workers) w.join();
}

}  // namespace cuda_sim

// ---- device intrinsics -------------------------------------------------------------------------

inline void __syncthreads() { cuda_sim::block->sync.wait("__syncthreads"); }

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
