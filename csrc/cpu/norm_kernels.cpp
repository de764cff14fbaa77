// CPU kernels of group_norm (+ SiLU), layer_norm, geglu, timestep_embedding and timestep_mlp (csrc/norm.h).
// Compiled once per ISA (DIFFRT_ISA = scalar, avx2, avx512, avx512_bf16).
//
// Memory traffic (s = bytes per element):
//   group_norm  read x, write y: 2·s per element when a group fits in L2 (NCHW, ≥ 8 groups: each group is
//               normalised right after its statistics); otherwise x is read twice: 3·s
//   layer_norm  each row is read from memory once (it stays in L1 for the second sweep), write y: 2·s
//   geglu       read [a | g] once, write y: 3·s per output element
//   timestep_mlp  read W1 and W2 once (s per weight); the float32 e and h (batch × dim) stay in cache
//
// Statistics are numerically stable for any mean: each chunk of kChunk elements (L1-resident) is read
// twice, once for its mean m̃ and once for Σd, Σd² of d = v − m̃ (of the order of the std, so float
// lanes lose nothing to cancellation); M2 = Σd² − (Σd)²/n; chunks merge by Chan's formula in double
// (NormMoments). Chunk boundaries are fixed offsets, and partials merge in a fixed order, so the result
// is the same for any thread count.
//
// SIMD: GCC vector types of the ISA's width, with the independent chains each ISA's register file
// holds (AVX-512: 32 zmm, 4 vectors in flight; AVX2: 16 ymm, 2 vectors — exp and erf keep ~6 live
// temporaries per vector). The scalar build is the plain per-element loop with libm's expf / erff.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/parallel.h"
#include "norm.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef DIFFRT_ISA
#error "DIFFRT_ISA must name the instruction set this file is compiled for"
#endif

#if defined(__AVX512F__)
#define DIFFRT_NORM_LANES 16
#define DIFFRT_NORM_UNROLL 4
#elif defined(__AVX2__)
#define DIFFRT_NORM_LANES 8
#define DIFFRT_NORM_UNROLL 2
#else
#define DIFFRT_NORM_LANES 0  // the scalar build: per-element loops
#define DIFFRT_NORM_UNROLL 1
#endif

namespace diffrt::cpu::DIFFRT_ISA {
namespace {

constexpr int64_t kChunk = 2048;     // elements read twice from L1 for one chunk's moments (8 KB float32)
constexpr int64_t kTileChunks = 8;   // chunks per unit of parallel work

#if DIFFRT_NORM_LANES > 0
constexpr int kLanes = DIFFRT_NORM_LANES;
constexpr int kUnroll = DIFFRT_NORM_UNROLL;
typedef float vf __attribute__((vector_size(kLanes * 4)));
typedef int32_t vi __attribute__((vector_size(kLanes * 4)));
typedef uint32_t vu __attribute__((vector_size(kLanes * 4)));
typedef uint16_t vh __attribute__((vector_size(kLanes * 2)));

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vf loadv(const bf16* p) {  // bfloat16 is the top half of a float32
  // vpmovzxwd from memory (one shuffle µop; GCC's generic widening splits it into halves and re-inserts)
#if DIFFRT_NORM_LANES == 16
  __m256i h;
  std::memcpy(&h, p, sizeof h);
  const __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#else
  __m128i h;
  std::memcpy(&h, p, sizeof h);
  const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
#endif
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline vf loadv(const f16* p) {  // the F16C / AVX-512F conversion instruction (exact)
#if DIFFRT_NORM_LANES == 16
  __m256i h;
  std::memcpy(&h, p, sizeof h);
  return _mm512_cvtph_ps(h);
#else
  __m128i h;
  std::memcpy(&h, p, sizeof h);
  return _mm256_cvtph_ps(h);
#endif
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void storev(bf16* p, vf v) {  // to_bf16 (common.h) lane by lane: round to nearest even, NaN stays quiet
#if defined(__AVX512BF16__) && DIFFRT_NORM_LANES == 16
  const __m256bh h = _mm512_cvtneps_pbh(v);  // one instruction, the same rounding
  std::memcpy(p, &h, sizeof h);
#else
  vu u;
  std::memcpy(&u, &v, sizeof u);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu quiet = (u >> 16) | 0x40u;
  const vu r = (u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
  const vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof h);
#endif
}

// Partial vectors (the last < kLanes elements of a span) go through a padded copy, so that every element
// gets the same vector math whatever its position.
template <typename T>
inline vf load_partial(const T* p, int64_t n) {
  T buf[kLanes] = {};
  std::memcpy(buf, p, size_t(n) * sizeof(T));
  return loadv(buf);
}
template <typename T>
inline void store_partial(T* p, vf v, int64_t n) {
  T buf[kLanes];
  storev(buf, v);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
}

inline vf splat(float s) { return vf{} + s; }

// Horizontal sum by halving (log2(lanes) vector adds), in float: the sums it finishes are either a
// shift (any value near the mean works) or deviations from it (of the order of the std).
inline double lane_sum(vf v) {  // shuffles, not memcpy: the accumulators stay in registers
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
#if DIFFRT_NORM_LANES == 16
  const v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  const v8 h = v;
#endif
  const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return double((q[0] + q[2]) + (q[1] + q[3]));
}

// e^x, Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for exactness), e^r by a degree-6
// polynomial, 2^n by the exponent bits. ~1 ulp on [−87, 88]; inputs are clamped there (no inf, no
// subnormal: silu and gelu only need e^x → 0 and e^x large). A NaN input stays NaN through the polynomial.
inline vf vexp(vf x) {
  x = x < -87.f ? splat(-87.f) : x;
  x = x > 88.f ? splat(88.f) : x;
  const vf t = x * 1.44269504088896341f;
  const vf n = (t + 12582912.f) - 12582912.f;  // round to nearest (1.5·2²³ trick; |t| < 2²²)
  const vf r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// 1/d: the hardware estimate (AVX-512: 14 bits, AVX2: 12 bits) and one Newton step r·(2 − d·r), ~1 ulp;
// a division costs several times more in these loops.
inline vf vrecip(vf d) {
#if DIFFRT_NORM_LANES == 16
  const vf r = _mm512_maskz_rcp14_ps(__mmask16(0xffff), d);  // maskz: GCC 12 warns on the unmasked form
#else
  const vf r = _mm256_rcp_ps(d);
#endif
  return r * (2.f - d * r);
}

inline vf vsilu(vf v) { return v * vrecip(1.f + vexp(-v)); }

// gelu(v) = v/2·(1 + erf(v/√2)) with erfc(|z|) ≈ t·P(t)·e^{−z²}, t = 1/(1 + p|z|) (Abramowitz & Stegun
// 7.1.26, |error| ≤ 1.5e−7): 1 + erf(z) = 2 − erfc(|z|) for z ≥ 0 and erfc(|z|) itself for z < 0, so the
// negative tail keeps its relative accuracy instead of cancelling 1 − erf.
inline vf vgelu(vf v) {
  const vf z = v * 0.70710678118654752f;
  const vf az = z < 0.f ? -z : z;
  const vf t = vrecip(1.f + 0.3275911f * az);
  vf p = splat(1.061405429f);
  p = p * t + -1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t + -0.284496736f;
  p = p * t + 0.254829592f;
  const vf erfc_abs = p * t * vexp(-(az * az));
  const vf one_plus_erf = z < 0.f ? erfc_abs : 2.f - erfc_abs;
  return 0.5f * v * one_plus_erf;
}
#endif

template <bool kSilu>
inline float act(float v) {
  if constexpr (kSilu) return silu_element(v);
  return v;
}

// ---- statistics ---------------------------------------------------------------------------------------

// Moments of one contiguous chunk (len ≤ kChunk): its mean m̃, then Σd, Σd² of d = v − float(m̃).
template <typename T>
NormMoments chunk_moments(const T* p, int64_t len) {
  if (len <= 0) return NormMoments{0, 0, 0};
  double sum = 0, s1 = 0, s2 = 0;
  int64_t i0 = 0;
#if DIFFRT_NORM_LANES > 0
  constexpr int64_t step = 2 * kLanes;  // two add chains per sum: the reductions are load-bound
  const int64_t body = len / step * step;
  vf a0{}, a1{};
  for (int64_t i = 0; i < body; i += step) {
    a0 += loadv(p + i);
    a1 += loadv(p + i + kLanes);
  }
  sum = lane_sum(a0) + lane_sum(a1);
  for (int64_t i = body; i < len; ++i) sum += load(p[i]);
  const float m = float(sum / double(len));
  vf d0{}, d1{}, q0{}, q1{};
  for (int64_t i = 0; i < body; i += step) {
    const vf x0 = loadv(p + i) - m, x1 = loadv(p + i + kLanes) - m;
    d0 += x0; d1 += x1;
    q0 += x0 * x0; q1 += x1 * x1;
  }
  s1 = lane_sum(d0) + lane_sum(d1);
  s2 = lane_sum(q0) + lane_sum(q1);
  i0 = body;
#else
  for (int64_t i = 0; i < len; ++i) sum += load(p[i]);
  const float m = float(sum / double(len));
#endif
  for (int64_t i = i0; i < len; ++i) {
    const float d = load(p[i]) - m;
    s1 += d;
    s2 += double(d) * d;
  }
  const double n = double(len);
  return NormMoments{n, m + s1 / n, std::max(0.0, s2 - s1 * s1 / n)};
}

// Moments of a contiguous span of any length, chunk by chunk from its start (fixed boundaries).
template <typename T>
NormMoments span_moments(const T* p, int64_t len) {
  NormMoments acc{0, 0, 0};
  for (int64_t b = 0; b < len; b += kChunk) acc.merge(chunk_moments(p + b, std::min(kChunk, len - b)));
  return acc;
}

// ---- element loops -----------------------------------------------------------------------------------

// The normalise step is y = act((x − μ)·s + t), s = rstd·γ, t = β: subtracting μ first keeps an input of
// large mean exact (folding μ into t, x·s + (β − μ·s), would cancel two terms of size |μ|·s).

// y[i] = act((x[i] − μ)·s + t) over a span (one NCHW channel plane: one mean, scale and shift).
template <typename T, bool kSilu>
void affine_span(const T* x, T* y, int64_t n, float mu, float s, float t) {
#if DIFFRT_NORM_LANES > 0
  constexpr int64_t step = kLanes * kUnroll;
  const int64_t body = n / step * step;
  for (int64_t i = 0; i < body; i += step) {
    vf v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) v[u] = (loadv(x + i + u * kLanes) - mu) * s + t;
    if constexpr (kSilu)
      for (int u = 0; u < kUnroll; ++u) v[u] = vsilu(v[u]);
    for (int u = 0; u < kUnroll; ++u) storev(y + i + u * kLanes, v[u]);
  }
  for (int64_t i = body; i < n; i += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - i);
    vf v = (load_partial(x + i, m) - mu) * s + t;
    if constexpr (kSilu) v = vsilu(v);
    store_partial(y + i, v, m);
  }
#else
  for (int64_t i = 0; i < n; ++i) y[i] = store_as<T>(act<kSilu>((load(x[i]) - mu) * s + t));
#endif
}

// y[i] = act((x[i] − μ[i])·s[i] + t[i]) (an NHWC pixel: per-channel mean, scale and shift).
template <typename T, bool kSilu>
void affine_vec(const T* x, T* y, int64_t n, const float* mu, const float* s, const float* t) {
#if DIFFRT_NORM_LANES > 0
  constexpr int64_t step = kLanes * kUnroll;
  const int64_t body = n / step * step;
  for (int64_t i = 0; i < body; i += step) {
    vf v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = i + u * kLanes;
      v[u] = (loadv(x + j) - loadv(mu + j)) * loadv(s + j) + loadv(t + j);
    }
    if constexpr (kSilu)
      for (int u = 0; u < kUnroll; ++u) v[u] = vsilu(v[u]);
    for (int u = 0; u < kUnroll; ++u) storev(y + i + u * kLanes, v[u]);
  }
  for (int64_t i = body; i < n; i += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - i);
    vf v = (load_partial(x + i, m) - load_partial(mu + i, m)) * load_partial(s + i, m) + load_partial(t + i, m);
    if constexpr (kSilu) v = vsilu(v);
    store_partial(y + i, v, m);
  }
#else
  for (int64_t i = 0; i < n; ++i) y[i] = store_as<T>(act<kSilu>((load(x[i]) - mu[i]) * s[i] + t[i]));
#endif
}

// y[i] = ((x[i] − μ)·rstd)·γ[i] + β[i]: layer_norm's row.
template <typename T>
void layer_norm_row(const T* x, T* y, int64_t n, float mu, float rstd, const float* w, const float* b) {
#if DIFFRT_NORM_LANES > 0
  constexpr int64_t step = kLanes * kUnroll;
  const int64_t body = n / step * step;
  for (int64_t i = 0; i < body; i += step)
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = i + u * kLanes;
      storev(y + j, ((loadv(x + j) - mu) * rstd) * loadv(w + j) + loadv(b + j));
    }
  for (int64_t i = body; i < n; i += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - i);
    store_partial(y + i, ((load_partial(x + i, m) - mu) * rstd) * load_partial(w + i, m) + load_partial(b + i, m), m);
  }
#else
  for (int64_t i = 0; i < n; ++i) y[i] = store_as<T>(((load(x[i]) - mu) * rstd) * w[i] + b[i]);
#endif
}

template <typename T>
void geglu_span(const T* a, const T* g, T* y, int64_t n) {
#if DIFFRT_NORM_LANES > 0
  constexpr int64_t step = kLanes * kUnroll;
  const int64_t body = n / step * step;
  for (int64_t i = 0; i < body; i += step) {
    vf v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) v[u] = vgelu(loadv(g + i + u * kLanes));
    for (int u = 0; u < kUnroll; ++u) storev(y + i + u * kLanes, loadv(a + i + u * kLanes) * v[u]);
  }
  for (int64_t i = body; i < n; i += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - i);
    store_partial(y + i, load_partial(a + i, m) * vgelu(load_partial(g + i, m)), m);
  }
#else
  for (int64_t i = 0; i < n; ++i) y[i] = store_as<T>(load(a[i]) * gelu_element(load(g[i])));
#endif
}

// ---- group_norm ----------------------------------------------------------------------------------------

// Per-(n, g) moments, NCHW: group g of sample n is one contiguous span of (C/G)·HW elements, cut into
// tiles of kTileChunks chunks (the unit of parallel work; partials merged in tile order).
template <typename T>
std::vector<NormMoments> group_moments_nchw(const GroupNormArgs& a) {
  const T* x = in<T>(a.x);
  const int64_t groups = a.batch * a.groups, len = (a.channels / a.groups) * a.spatial;
  const int64_t tile = kChunk * kTileChunks, tiles_per_group = (len + tile - 1) / tile;
  std::vector<NormMoments> partial(groups * tiles_per_group, NormMoments{0, 0, 0});
  const int nt = groups * len < kMinParallelElements ? 1 : a.num_threads;
  parallel_for(groups * tiles_per_group, nt, [&](int64_t t) {
    const int64_t gi = t / tiles_per_group, begin = (t % tiles_per_group) * tile;
    partial[t] = span_moments(x + gi * len + begin, std::min(tile, len - begin));
  });
  std::vector<NormMoments> out(groups, NormMoments{0, 0, 0});
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t t = 0; t < tiles_per_group; ++t) out[gi].merge(partial[gi * tiles_per_group + t]);
  return out;
}

// Per-(n, g) moments, NHWC: a block of P pixels × C channels (≈ 8·kChunk elements, 64 KB of float32:
// L2-resident) is read twice — per-channel sums give each group's block mean m̃_g, then per-channel Σd, Σd² of d = v − m̃_g —
// and gives one NormMoments per group. Tiles of kTileChunks blocks are the unit of parallel work.
template <typename T>
std::vector<NormMoments> group_moments_nhwc(const GroupNormArgs& a) {
  const T* x = in<T>(a.x);
  const int64_t C = a.channels, G = a.groups, cg = C / G, HW = a.spatial;
  const int64_t block = std::max<int64_t>(1, 8 * kChunk / C), tile = block * 2;
  const int64_t tiles_per_sample = (HW + tile - 1) / tile, tiles = a.batch * tiles_per_sample;
  std::vector<NormMoments> partial(tiles * G, NormMoments{0, 0, 0});
  const int nt = a.batch * C * HW < kMinParallelElements ? 1 : a.num_threads;
  parallel_for(tiles, nt, [&](int64_t t) {
    const int64_t n = t / tiles_per_sample, p_begin = (t % tiles_per_sample) * tile;
    const int64_t p_end = std::min(HW, p_begin + tile);
    std::vector<float> sums(3 * C);
    float* __restrict s1 = sums.data();
    float* __restrict s2 = s1 + C;
    float* __restrict shift = s2 + C;
    NormMoments* out = partial.data() + t * G;
    for (int64_t p0 = p_begin; p0 < p_end; p0 += block) {
      const int64_t pixels = std::min(block, p_end - p0);
      const T* xb = x + (n * HW + p0) * C;
      std::fill(s1, s1 + C, 0.f);
      for (int64_t p = 0; p < pixels; ++p) {
        const T* row = xb + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) s1[c] += load(row[c]);
      }
      for (int64_t g = 0; g < G; ++g) {
        double sum = 0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) sum += s1[c];
        const float m = float(sum / double(pixels * cg));
        std::fill(shift + g * cg, shift + (g + 1) * cg, m);
      }
      std::fill(s1, s1 + C, 0.f);
      std::fill(s2, s2 + C, 0.f);
      for (int64_t p = 0; p < pixels; ++p) {
        const T* row = xb + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = load(row[c]) - shift[c];
          s1[c] += d;
          s2[c] += d * d;
        }
      }
      const double count = double(pixels * cg);
      for (int64_t g = 0; g < G; ++g) {
        double d1 = 0, d2 = 0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          d1 += s1[c];
          d2 += s2[c];
        }
        out[g].merge(NormMoments{count, shift[g * cg] + d1 / count, std::max(0.0, d2 - d1 * d1 / count)});
      }
    }
  });
  std::vector<NormMoments> out(a.batch * G, NormMoments{0, 0, 0});
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t t = 0; t < tiles_per_sample; ++t)
      for (int64_t g = 0; g < G; ++g) out[n * G + g].merge(partial[(n * tiles_per_sample + t) * G + g]);
  return out;
}

// NCHW with enough groups to share out: each (n, g) is normalised right after its statistics, while its
// (C/G)·HW elements are still in L2 (SD's 320 channels / 32 groups × 64² pixels: 160 KB of float32), so x
// is read from memory once. The choice depends on the shape only, never on the thread count.
constexpr int64_t kMinGroupsForGroupWise = 8;

template <typename T, bool kSilu>
void group_norm_groupwise(const GroupNormArgs& a) {
  const int64_t G = a.groups, cg = a.channels / G, HW = a.spatial, len = cg * HW, groups = a.batch * G;
  const T* x = in<T>(a.x);
  T* y = out_ptr<T>(a.out);
  const int nt = groups * len < kMinParallelElements ? 1 : a.num_threads;
  parallel_for(groups, nt, [&](int64_t gi) {
    const NormMoments m = span_moments(x + gi * len, len);
    const float rstd = norm_rstd(m, a.eps), mean = float(m.mean);
    const int64_t c0 = (gi % G) * cg;
    for (int64_t j = 0; j < cg; ++j) {
      const int64_t c = c0 + j, o = gi * len + j * HW;
      const float w = a.weight ? a.weight[c] : 1.f, b = a.bias ? a.bias[c] : 0.f;
      affine_span<T, kSilu>(x + o, y + o, HW, mean, rstd * w, b);
    }
  });
}

template <typename T>
void group_norm_typed(const GroupNormArgs& a) {
  const int64_t N = a.batch, C = a.channels, G = a.groups, HW = a.spatial;
  if (N <= 0 || C <= 0 || HW <= 0) return;
  if (G <= 0 || C % G != 0) throw std::invalid_argument("group_norm: groups must divide channels");
  if (!a.channels_last && N * G >= kMinGroupsForGroupWise) {
    with_flag(a.silu, [&](auto ks) { group_norm_groupwise<T, decltype(ks)::value>(a); });
    return;
  }
  const std::vector<NormMoments> moments = a.channels_last ? group_moments_nhwc<T>(a) : group_moments_nchw<T>(a);
  // Per (n, c): y = (x − μ)·scale + shift with scale = rstd·γ[c], shift = β[c].
  std::vector<float> mean(N * C), scale(N * C), shift(N * C);
  const int64_t cg = C / G;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const NormMoments& m = moments[n * G + c / cg];
      const float rstd = norm_rstd(m, a.eps), w = a.weight ? a.weight[c] : 1.f, b = a.bias ? a.bias[c] : 0.f;
      mean[n * C + c] = float(m.mean);
      scale[n * C + c] = rstd * w;
      shift[n * C + c] = b;
    }
  const T* x = in<T>(a.x);
  T* y = out_ptr<T>(a.out);
  with_flag(a.silu, [&](auto ks) {
    constexpr bool kSilu = decltype(ks)::value;
    if (a.channels_last) {
      parallel_rows(N * HW, C, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
        const int64_t n = r / HW;
        const int64_t o = n * C + b;
        affine_vec<T, kSilu>(x + r * C + b, y + r * C + b, e - b, mean.data() + o, scale.data() + o, shift.data() + o);
      });
    } else {
      parallel_rows(N * C, HW, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
        affine_span<T, kSilu>(x + r * HW + b, y + r * HW + b, e - b, mean[r], scale[r], shift[r]);
      });
    }
  });
}

// ---- layer_norm ----------------------------------------------------------------------------------------

template <typename T>
void layer_norm_typed(const LayerNormArgs& a) {
  const int64_t R = a.rows, D = a.dim;
  if (R <= 0 || D <= 0) return;
  const T* x = in<T>(a.x);
  T* y = out_ptr<T>(a.out);
  std::vector<float> ones, zeros;  // γ = 1, β = 0 when not given
  const float* w = a.weight;
  const float* b = a.bias;
  if (!w) w = (ones.assign(D, 1.f), ones.data());
  if (!b) b = (zeros.assign(D, 0.f), zeros.data());
  // Blocks of rows of ≈ kMinParallelElements: one fork for the call, rows of a block read once each.
  const int64_t rows_per_block = std::max<int64_t>(1, kMinParallelElements / D);
  const int64_t blocks = (R + rows_per_block - 1) / rows_per_block;
  const int nt = R * D < kMinParallelElements ? 1 : a.num_threads;
  parallel_for(blocks, nt, [&](int64_t blk) {
    const int64_t r_end = std::min(R, (blk + 1) * rows_per_block);
    for (int64_t r = blk * rows_per_block; r < r_end; ++r) {
      const NormMoments m = span_moments(x + r * D, D);
      const float rstd = norm_rstd(m, a.eps);
      layer_norm_row(x + r * D, y + r * D, D, float(m.mean), rstd, w, b);
    }
  });
}

// ---- geglu ---------------------------------------------------------------------------------------------

template <typename T>
void geglu_typed(const GegluArgs& a) {
  const int64_t R = a.rows, D = a.dim;
  if (R <= 0 || D <= 0) return;
  const T* x = in<T>(a.x);
  T* y = out_ptr<T>(a.out);
  parallel_rows(R, D, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const T* row = x + r * 2 * D;
    geglu_span(row + b, row + D + b, y + r * D + b, e - b);
  });
}

// ---- timestep_embedding (batch × dim values: no SIMD needed) ---------------------------------------------

template <typename T>
void timestep_embedding_typed(const TimestepEmbeddingArgs& a) {
  T* y = out_ptr<T>(a.out);
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t c = 0; c < a.dim; ++c)
      y[n * a.dim + c] = store_as<T>(float(timestep_embedding_element(a, a.timesteps[n], c)));
}

// ---- timestep_mlp ----------------------------------------------------------------------------------------------

// Register tile of the two matrix-vector layers: kMlpRows weight rows × kMlpBatch batch rows, as many
// independent float32 accumulator chains (8 vectors: within AVX2's 16 registers with the 4 + 2 operands).
constexpr int kMlpRows = 4, kMlpBatch = 2;
constexpr int64_t kMlpRowsPerItem = 16;  // output features per unit of parallel work

// out[r][b] = Σ_k w[r·K + k]·x[b·K + k] for r < R, b < NB (float32 sums; w converted on load).
template <int R, int NB, typename W>
void dot_tile(const W* w, const float* x, int64_t K, float out[kMlpRows][kMlpBatch]) {
#if DIFFRT_NORM_LANES > 0
  vf acc[R][NB] = {};
  const int64_t body = K / kLanes * kLanes;
  auto step = [&](int64_t k, int64_t n) {  // n < kLanes: the padded tail
    vf xv[NB];
    for (int b = 0; b < NB; ++b) xv[b] = n == kLanes ? loadv(x + b * K + k) : load_partial(x + b * K + k, n);
    for (int r = 0; r < R; ++r) {
      const vf wv = n == kLanes ? loadv(w + r * K + k) : load_partial(w + r * K + k, n);
      for (int b = 0; b < NB; ++b) acc[r][b] += wv * xv[b];
    }
  };
  for (int64_t k = 0; k < body; k += kLanes) step(k, kLanes);
  if (body < K) step(body, K - body);
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) out[r][b] = float(lane_sum(acc[r][b]));
#else
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      float sum = 0.f;
      for (int64_t k = 0; k < K; ++k) sum += load(w[r * K + k]) * x[b * K + k];
      out[r][b] = sum;
    }
#endif
}

// store(n, j, Σ_k w[j, k]·x[n, k] + bias[j]) for the rows j in [j0, j1) of w (rows × K) and every batch row n of
// x (batch × K, float32). Each group of kMlpRows weight rows (≤ 4·K elements: L1-resident) is read from memory
// once and meets every batch row before the next group.
template <typename W, typename Store>
void linear_rows(const W* w, const W* bias, const float* x, int64_t batch, int64_t K, int64_t j0, int64_t j1,
                 Store&& store) {
  float tile[kMlpRows][kMlpBatch];
  auto run = [&](auto rows_tag, int64_t j) {
    constexpr int R = decltype(rows_tag)::value;
    for (int64_t n = 0; n < batch; n += kMlpBatch) {
      const int nb = int(std::min<int64_t>(kMlpBatch, batch - n));
      if (nb == kMlpBatch)
        dot_tile<R, kMlpBatch>(w + j * K, x + n * K, K, tile);
      else
        dot_tile<R, 1>(w + j * K, x + n * K, K, tile);
      for (int r = 0; r < R; ++r)
        for (int b = 0; b < nb; ++b) store(n + b, j + r, tile[r][b] + (bias ? load(bias[j + r]) : 0.f));
    }
  };
  int64_t j = j0;
  for (; j + kMlpRows <= j1; j += kMlpRows) run(std::integral_constant<int, kMlpRows>{}, j);
  for (; j < j1; ++j) run(std::integral_constant<int, 1>{}, j);
}

template <typename W>
void timestep_mlp_typed(const TimestepMlpArgs& a) {
  const int64_t B = a.batch, K = a.in_dim, H = a.hidden_dim, O = a.out_dim;
  if (B <= 0 || O <= 0) return;
  // The sinusoid, timestep_embedding_element's math with each freq_j computed once and one sin, cos pair per
  // phase (B·K/2 of them; an odd in_dim's last column stays 0).
  std::vector<float> emb(B * K, 0.f), hidden(B * H);
  const TimestepEmbeddingArgs sinusoid = mlp_sinusoid(a);
  const int64_t half = K / 2;
  std::vector<double> freq(half);
  for (int64_t j = 0; j < half; ++j) freq[j] = timestep_frequency(sinusoid, j);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t j = 0; j < half; ++j) {
      const double arg = a.scale * a.timesteps[n] * freq[j];
      const float s = float(std::sin(arg)), c = float(std::cos(arg));
      emb[n * K + j] = a.flip_sin_to_cos ? c : s;
      emb[n * K + half + j] = a.flip_sin_to_cos ? s : c;
    }
  // One layer: blocks of kMlpRowsPerItem output features shared out (a fork per layer: layer 2 needs all of h).
  auto layer = [&](const void* w, const void* bias, int64_t rows, int64_t k, const float* x, auto&& store) {
    const int64_t items = (rows + kMlpRowsPerItem - 1) / kMlpRowsPerItem;
    const int nt = rows * k < kMinParallelElements ? 1 : a.num_threads;
    parallel_for(items, nt, [&](int64_t i) {
      linear_rows(in<W>(w), in<W>(bias), x, B, k, i * kMlpRowsPerItem, std::min(rows, (i + 1) * kMlpRowsPerItem),
                  store);
    });
  };
  float* h = hidden.data();
  layer(a.weight_1, a.bias_1, H, K, emb.data(), [&](int64_t n, int64_t j, float v) { h[n * H + j] = silu_element(v); });
  W* y = out_ptr<W>(a.out);
  layer(a.weight_2, a.bias_2, O, H, h, [&](int64_t n, int64_t j, float v) { y[n * O + j] = store_as<W>(v); });
}

// The weights may be float16 here too: they are only read, converted on load (the kernel stores out as float16
// with the scalar rounding of common.h).
void timestep_mlp(const TimestepMlpArgs& a) {
  switch (a.dtype) {
    case DType::f32: return timestep_mlp_typed<float>(a);
    case DType::bf16: return timestep_mlp_typed<bf16>(a);
    case DType::f16: return timestep_mlp_typed<f16>(a);
  }
  throw std::invalid_argument("timestep_mlp: the CPU kernel reads float32, bfloat16 or float16 weights");
}

template <typename Args, void (*F32)(const Args&), void (*BF16)(const Args&)>
void for_dtype(const Args& a) {
  switch (a.dtype) {
    case DType::f32: return F32(a);
    case DType::bf16: return BF16(a);
    default: throw std::invalid_argument("the CPU norm kernels store float32 or bfloat16");
  }
}

}  // namespace

extern const NormKernels norm_kernels = {
    for_dtype<GroupNormArgs, group_norm_typed<float>, group_norm_typed<bf16>>,
    for_dtype<LayerNormArgs, layer_norm_typed<float>, layer_norm_typed<bf16>>,
    for_dtype<GegluArgs, geglu_typed<float>, geglu_typed<bf16>>,
    for_dtype<TimestepEmbeddingArgs, timestep_embedding_typed<float>, timestep_embedding_typed<bf16>>,
    timestep_mlp,
};

}  // namespace diffrt::cpu::DIFFRT_ISA
