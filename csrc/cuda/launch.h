// Launching, error checking, device selection and scratch memory for the CUDA sources. Under
// DIFFRT_CUDA_SIM (tests/cuda_sim) the same sources compile with g++ and the kernels run on host
// threads; this header is the only place that differs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(DIFFRT_CUDA_SIM)
#include "cuda_shim.h"
#else
#include <cuda_runtime.h>
#endif

namespace diffrt::cuda {

inline void check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("diffrt CUDA ") + op + ": " + what + " failed: " + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + ")");
}

#if defined(DIFFRT_CUDA_SIM)
using cuda_sim::launch_kernel;
#else
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}
#endif

// Enqueues `kernel` on `stream`; a bad configuration or a missing sm_XX image surfaces here as an
// exception naming the op. (Faults during execution surface at the caller's next synchronisation.)
template <typename... Params, typename... Args>
void launch(const char* op, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch_kernel(kernel, grid, block, stream, std::forward<Args>(args)...);
  check(cudaGetLastError(), op, "kernel launch");
}

// Makes `device` current for the call (the tensors' device, not necessarily the thread's current one).
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    check(cudaGetDevice(&previous_), op, "cudaGetDevice");
    if (previous_ == device) {
      previous_ = -1;
    } else {
      check(cudaSetDevice(device), op, "cudaSetDevice");
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Per-call scratch from the stream-ordered allocator: allocated and freed in stream order, so no
// synchronisation and no cached state between calls. Carve it with `take` in a fixed order.
class Workspace {
 public:
  Workspace(size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
    if (bytes) check(cudaMallocAsync(&base_, bytes, stream), op, "workspace allocation (cudaMallocAsync)");
  }
  ~Workspace() {
    if (base_) cudaFreeAsync(base_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Bytes needed for a sequence of `take`s of these sizes.
  static size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + offset_);
    offset_ += aligned(count * sizeof(T));
    return count ? p : nullptr;
  }

 private:
  static constexpr size_t kAlign = 256;
  void* base_ = nullptr;
  size_t offset_ = 0;
  cudaStream_t stream_;
};

}  // namespace diffrt::cuda
