// Shared by the CPU and CUDA kernels: the host/device qualifier and bfloat16 / float16 storage helpers.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define DIFFRT_HD __host__ __device__ __forceinline__
#else
#define DIFFRT_HD inline
#endif

namespace diffrt {

// Storage dtypes the kernels accept; all arithmetic is float32. f16 is CUDA-only (the CPU
// bindings reject it).
enum class DType : int { f32 = 0, bf16 = 1, f16 = 2 };

// bfloat16 is the top 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits;
};

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
struct f16 {
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

// float16 <-> float32. On the device one cvt instruction each; on the host the bit-exact
// equivalent (round to nearest even, subnormals kept, overflow to ±inf, NaN stays a quiet NaN).
DIFFRT_HD float load(f16 v) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
#else
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant·2⁻²⁴, exact in float32
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return bits_to_float(sign | float_to_bits(mag));
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));     // rebias 15 -> 127
#endif
}

DIFFRT_HD f16 to_f16(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return f16{h};
#else
  const uint32_t u = float_to_bits(f), sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  uint32_t h;
  if (a >= 0x47800000u) {  // |f| >= 2¹⁶ (or inf / NaN): beyond the largest finite half after rounding
    h = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (a < 0x38800000u) {  // below 2⁻¹⁴: a half subnormal; adding 0.5 rounds at bit 2⁻²⁴ (RNE)
    const float r = bits_to_float(a) + 0.5f;
    h = float_to_bits(r) - 0x3f000000u;
  } else {  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
    a += 0xc8000fffu + ((a >> 13) & 1u);  // (15 − 127) << 23, plus the rounding bias
    h = a >> 13;
  }
  return f16{uint16_t(h | sign)};
#endif
}

template <typename T> DIFFRT_HD T store_as(float f);
template <> DIFFRT_HD float store_as<float>(float f) { return f; }
template <> DIFFRT_HD bf16 store_as<bf16>(float f) { return to_bf16(f); }
template <> DIFFRT_HD f16 store_as<f16>(float f) { return to_f16(f); }

// Host-side helpers shared by the CPU and CUDA kernel files: typed views of the args structs
// untyped pointers, and a run-time flag turned into a compile-time one
// (with_flag(b, [&](auto k) { f<decltype(k)::value>(); })).
template <typename T>
inline const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
inline T* out_ptr(void* p) {
  return static_cast<T*>(p);
}
template <typename F>
inline void with_flag(bool flag, F&& fn) {
  if (flag)
    fn(std::true_type{});
  else
    fn(std::false_type{});
}

DIFFRT_HD float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace diffrt
