// Checks the CUDA host simulation itself (cuda_shim.h) on kernels whose results are known exactly:
// warp shuffles, shared memory that needs the barrier, one block at a time, launch-configuration
// errors; `shim_selftest deadlock` runs a kernel with a divergent __syncthreads, which must abort
// with a deadlock report.
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_shim.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%-60s %s\n", what, ok ? "ok" : "FAIL");
  failures += !ok;
}

__global__ void shuffle_kernel(int* out) {
  const int v = int(blockIdx.x * blockDim.x + threadIdx.x);
  out[2 * v] = __shfl_down_sync(0xffffffffu, v, 3);     // lane + 3, or its own value past lane 31
  out[2 * v + 1] = __shfl_xor_sync(0xffffffffu, v, 5);  // lane ^ 5
}

// Each thread reads what another wrote: right only with the barrier between.
__global__ void reverse_kernel(int* out) {
  __shared__ int buf[256];
  buf[threadIdx.x] = int(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

// Counts per block in shared memory: blocks must not overlap, or the counts mix.
__global__ void count_kernel(unsigned* out) {
  __shared__ unsigned count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  atomicAdd(&count, 1u + blockIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = count;
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x == 0) return;  // thread 0 never reaches the barrier
  __syncthreads();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "deadlock") {
    cuda_sim::launch_kernel(divergent_barrier_kernel, dim3(1), dim3(64), nullptr);
    std::printf("divergent barrier returned\n");
    return 0;
  }
  const int blocks = 3, threads = 96;
  std::vector<int> shuffled(2 * blocks * threads, -1);
  cuda_sim::launch_kernel(shuffle_kernel, dim3(blocks), dim3(threads), nullptr, shuffled.data());
  bool ok = true;
  for (int v = 0; v < blocks * threads; ++v) {
    const int lane = v % 32;
    ok &= shuffled[2 * v] == (lane + 3 < 32 ? v + 3 : v);
    ok &= shuffled[2 * v + 1] == (v - lane) + (lane ^ 5);
  }
  expect(ok, "__shfl_down_sync / __shfl_xor_sync");

  std::vector<int> reversed(blocks * 256, -1);
  cuda_sim::launch_kernel(reverse_kernel, dim3(blocks), dim3(256), nullptr, reversed.data());
  ok = true;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < 256; ++t) ok &= reversed[b * 256 + t] == b * 1000 + 255 - t;
  expect(ok, "__shared__ memory across a __syncthreads");

  std::vector<unsigned> counts(4, 0);
  cuda_sim::launch_kernel(count_kernel, dim3(4), dim3(128), nullptr, counts.data());
  expect(counts == std::vector<unsigned>{128, 256, 384, 512}, "shared atomics, one block at a time");

  cuda_sim::launch_kernel(reverse_kernel, dim3(1, 70000), dim3(256), nullptr, reversed.data());
  expect(cudaGetLastError() == cudaErrorInvalidConfiguration && cudaGetLastError() == cudaSuccess,
         "an invalid launch sets (and clears) the last error");

  std::printf(failures ? "FAILED\n" : "ALL OK\n");
  return failures ? 1 : 0;
}
