// Shared by the CUDA check harnesses (sim_check.cpp, sim_attention.cpp): storage-dtype traits, the
// host/device mirror of a buffer, and the pass/fail tally. Include after the kernel source (it uses
// diffrt::DType, bf16, f16 and cuda::check from there).
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

namespace diffrt::harness {

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, bf16> ? DType::bf16 : std::is_same_v<T, f16> ? DType::f16 : DType::f32;
}
template <typename T>
const char* name_of() {
  return std::is_same_v<T, bf16> ? "bf16" : std::is_same_v<T, f16> ? "f16 " : "f32 ";
}
template <typename T>
constexpr double eps() {  // unit roundoff ×2 of the storage dtype
  return std::is_same_v<T, bf16> ? 0.0078125 : std::is_same_v<T, f16> ? 0.0009765625 : 1.1920929e-07;
}

// A host vector and the copy the kernels see: the vector itself under the simulation, a device
// buffer on a GPU (fetch() copies it back after the kernels ran).
template <typename T>
class Mirror {
 public:
  explicit Mirror(std::vector<T>& host) : host_(host) {
#if defined(DIFFRT_CUDA_SIM)
    dev_ = host.data();
#else
    cuda::check(cudaMalloc(&dev_, std::max<size_t>(1, host.size() * sizeof(T))), "check", "cudaMalloc");
    cuda::check(cudaMemcpy(dev_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "check", "cudaMemcpy");
#endif
  }
  ~Mirror() {
#if !defined(DIFFRT_CUDA_SIM)
    cudaFree(dev_);
#endif
  }
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;
  T* dev() const { return dev_; }
  void fetch() {
#if !defined(DIFFRT_CUDA_SIM)
    cuda::check(cudaDeviceSynchronize(), "check", "kernel execution");
    cuda::check(cudaMemcpy(host_.data(), dev_, host_.size() * sizeof(T), cudaMemcpyDeviceToHost), "check", "cudaMemcpy");
#endif
  }

 private:
  std::vector<T>& host_;
  T* dev_ = nullptr;
};

inline int failures = 0, checks = 0;

// Counts a check; prints it when it fails (every check with SIM_VERBOSE set).
inline void record(const std::string& name, bool ok, const std::string& detail) {
  ++checks;
  failures += !ok;
  if (!ok || std::getenv("SIM_VERBOSE")) std::printf("%-72s %s  %s\n", name.c_str(), ok ? "ok  " : "FAIL", detail.c_str());
}

inline int summary() {
  std::printf(failures ? "FAILED: %d of %d checks\n" : "ALL OK (%d checks)\n", failures ? failures : checks, checks);
  return failures ? 1 : 0;
}

}  // namespace diffrt::harness
