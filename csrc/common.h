// Shared by the CPU and CUDA kernels: the host/device qualifier and bfloat16 storage helpers.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DIFFRT_HD __host__ __device__ __forceinline__
#else
#define DIFFRT_HD inline
#endif

namespace diffrt {

// Storage dtypes the kernels accept; all arithmetic is float32.
enum class DType : int { f32 = 0, bf16 = 1 };

// bfloat16 is the top 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits;
};

DIFFRT_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

DIFFRT_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

DIFFRT_HD float load(float v) { return v; }
DIFFRT_HD float load(bf16 v) { return bits_to_float(uint32_t(v.bits) << 16); }

// Round to nearest, ties to even (what torch's .to(bfloat16) does); NaN stays a quiet NaN.
DIFFRT_HD bf16 to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return bf16{uint16_t(is_nan ? ((u >> 16) | 0x40u) : rounded)};
}

template <typename T> DIFFRT_HD T store_as(float f);
template <> DIFFRT_HD float store_as<float>(float f) { return f; }
template <> DIFFRT_HD bf16 store_as<bf16>(float f) { return to_bf16(f); }

DIFFRT_HD float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace diffrt
