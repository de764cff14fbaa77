// CUDA runtime queries for diffrt.info. The CUDA kernels themselves share the per-element math of
// csrc/sampler_math.h with the CPU kernels.
#include <cuda_runtime.h>

#include <string>

namespace diffrt::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace diffrt::cuda
