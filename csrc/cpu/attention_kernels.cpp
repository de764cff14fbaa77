// Fused multi-head attention on the CPU, FlashAttention-style: the Lq×Lk score matrix is never
// materialised. Compiled once per ISA (DIFFRT_ISA = scalar, avx2, avx512, avx512_bf16, neon, neon_bf16), like
// sampler_kernels.cpp.
//
// Forward, per (batch·head, query tile of kQueryTile rows), over key tiles of ≤ kKeyTile keys, in the
// log2 domain t = scale·log2(e)·q·k (so the softmax exponential is a cheap exp2):
//   m_new = max(m, rowmax(t));  l = l·2^(m−m_new) + rowsum(2^(t−m_new));  O = O·2^(m−m_new) + P·V
//   out = O / l,  lse = (m + log2 l)·ln 2  (= ln Σ_j exp(scale·q·k_j); saved for the backward)
// Backward (FlashAttention-2), per (batch·head, key tile), over query tiles, recomputing P from lse:
//   P = exp(scale·QKᵀ − lse),  dV += Pᵀ·dO,  dP = dO·Vᵀ,  dS = P∘(dP − D) with D_i = rowsum(dO_i∘O_i),
//   dK += scale·dSᵀ·Q,  dQ += scale·dS·K.
//
// Every matrix product is one register-blocked micro-kernel: C[R×(NC·W)] (+)= A·B, with A read by
// broadcasting scalars (any strides, so Pᵀ and dSᵀ need no transpose) and B read as W-wide vectors.
// K, V are packed once per (batch·head) so that B is always contiguous and zero-padded: Kᵀ per key tile
// (d × tile) for Q·Kᵀ, V (keys × d) for P·V; the head dim is padded to a multiple of W.
// bfloat16 on AVX512-BF16: every product (Q·Kᵀ and P·V forward; all five backward) runs on
// _mm512_dpbf16_ps (pairs along the reduction dim packed next to each other; P and dS rounded to bfloat16
// as FlashAttention does), all sums in float32. On Arm BF16 (neon_bf16) the forward's two products run on
// vbfdotq_f32, the same pair dot product on 4 lanes. Elsewhere bfloat16 is widened to float32 while packing.
// aarch64's neon sets use the float32 micro-kernels on 4-lane NEON vectors (an 8 × 12 register tile).
//
// Masked keys (key_padding_mask, and the padding of Lk to a multiple of W) take no part at all, whatever
// their k and v hold: their score is replaced (selected, not added: NaN + −inf is NaN) by −inf, whose
// exp2 is exactly 0, and their rows of K and V are packed as zeros (0·NaN would be NaN), so they add
// exactly 0 to O, l and every gradient, and their dK, dV rows are written as zeros. A row without any
// attended key is written as zeros (lse = −inf).
// Non-finite values among the attended keys follow torch's softmax (the reference ops.attention_ref):
// NaN reaches P through exp2(NaN) = NaN (the max reductions may drop it; exp2 and the sums never do),
// so l is NaN, as it is for a +inf score (2^(inf − inf)); a row whose l is NaN, or 0 although it has
// attended keys (every attended score −inf), is written as NaN with lse = NaN. A −inf score just gets
// P = 0, and 0·v of its key still takes part (NaN for a NaN or inf v, as in the reference).
//
// Memory traffic (forward): read Q, K, V once (K, V once more from the packed copy per query tile, from
// L2/L3), write O and lse; 4·Lk·d FLOPs per 8·d bytes of Q and O, so compute-bound for any Lk ≳ 8.
// Time goes to the two products (≈ 90% of the FMA / dpbf16 issue rate inside the micro-kernels) and to
// the softmax's exp2 pass (≈ 10% of the float32 and 20% of the bfloat16 forward at Lq = Lk = 4096, d = 64).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "cpu/attention_kernels.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
// aarch64: the neon sets use intrinsics; the scalar set is the portable code (a fallback for debugging).
#if defined(__aarch64__) && !DIFFRT_ISA_IS(scalar)
#define DIFFRT_ATTENTION_NEON 1
#include <arm_neon.h>
#endif
// bfloat16 dot products: _mm512_dpbf16_ps (AVX512-BF16) or vbfdotq_f32 (Armv8.6 BF16, forward only).
#if defined(__AVX512BF16__) || (defined(DIFFRT_ATTENTION_NEON) && defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC))
#define DIFFRT_BF16_DOT 1
#endif

#ifndef DIFFRT_ISA
#error "DIFFRT_ISA must name the instruction set this file is compiled for"
#endif

namespace diffrt::cpu::DIFFRT_ISA {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();
// A masked key's score, and the running max of a row that has seen no finite score yet (which then
// subtracts 0 instead, so that its exponents never meet −inf − (−inf)).
constexpr float kMasked = -kInf;

// ---- W-wide float vectors ------------------------------------------------------------------------

#if defined(__AVX512F__)
constexpr int W = 16;
constexpr int kRows = 6, kMaxNC = 4;  // 24 accumulators of 32 zmm registers
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float x) { return _mm512_set1_ps(x); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
// x where the key is attended (bias 0), −inf where it is masked (bias −inf).
inline vf vkeep(vf x, vf bias) {
  return _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(bias, _mm512_setzero_ps(), _CMP_LT_OQ), bias);
}
// 2^x for x ≤ 0 or NaN: 2^n·2^f, n = round(x), |f| ≤ ½; 2^f by a degree-5 minimax polynomial (relative
// error 9e-8, 1.9e-7 evaluated in float32); scalef applies 2^n and underflows to exactly 0. Non-finite x
// needs no clamp: for x = −inf, f = −inf − (−inf) is a quiet NaN and scalef(QNaN, −inf) = +0 (the SDM's
// VSCALEFPS special cases); for x = NaN, scalef(QNaN, QNaN) is NaN.
inline vf vexp2(vf x) {
  const vf n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = _mm512_sub_ps(x, n);
  vf p = _mm512_set1_ps(1.3264727080430985e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.671512862324629e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550733745645653e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022242081840833e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469775965884e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#elif defined(__AVX2__)
constexpr int W = 8;
// 12 accumulators + 2 vectors of B + 1 broadcast of 16 ymm registers. A 2×5 block for d = 40 (5 vectors)
// measured slower on Zen 4 than 6×2 + 6×2 + 6×1: with no register left for B, its FMAs read B from memory
// and the loads set the pace.
constexpr int kRows = 6, kMaxNC = 2;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float x) { return _mm256_set1_ps(x); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline float hmax(vf v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// As the AVX-512 version; 2^n is built in the exponent bits, and x < −126 (−inf included) gives 0. NaN
// passes: the keep mask is "not less than" (true for NaN) and max_ps returns its second operand, x.
inline vf vexp2(vf x) {
  const vf keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.f), _CMP_NLT_UQ);
  x = _mm256_max_ps(_mm256_set1_ps(-126.f), x);
  const vf n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = _mm256_sub_ps(x, n);
  vf p = _mm256_set1_ps(1.3264727080430985e-3f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.671512862324629e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550733745645653e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022242081840833e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931469775965884e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}
// x where the key is attended (bias +0), −inf where it is masked (bias −inf: blendv reads the sign bit).
inline vf vkeep(vf x, vf bias) { return _mm256_blendv_ps(x, bias, bias); }
#elif defined(DIFFRT_ATTENTION_NEON)
constexpr int W = 4;
// 24 accumulators + 3 vectors of B + 1 broadcast of 32 q registers (the usual 8×12 Arm sgemm tile).
constexpr int kRows = 8, kMaxNC = 3;
using vf = float32x4_t;
inline vf vzero() { return vdupq_n_f32(0.f); }
inline vf vset1(float x) { return vdupq_n_f32(x); }
inline vf vload(const float* p) { return vld1q_f32(p); }
inline void vstore(float* p, vf v) { vst1q_f32(p, v); }
inline vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
inline vf vmul(vf a, vf b) { return vmulq_f32(a, b); }
inline vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
inline vf vsub(vf a, vf b) { return vsubq_f32(a, b); }
inline vf vmax(vf a, vf b) { return vmaxq_f32(a, b); }  // FMAX: NaN if either is NaN
inline float hmax(vf v) { return vmaxvq_f32(v); }
inline float hsum(vf v) { return vaddvq_f32(v); }
// As the AVX2 version: 2^n built in the exponent bits, x < −126 (−inf included) gives 0; NaN passes (the
// keep mask is "not less than", and FMAX and the polynomial keep NaN).
inline vf vexp2(vf x) {
  const uint32x4_t keep = vmvnq_u32(vcltq_f32(x, vdupq_n_f32(-126.f)));
  x = vmaxq_f32(vdupq_n_f32(-126.f), x);
  const vf n = vrndnq_f32(x);
  const vf f = vsubq_f32(x, n);
  vf p = vdupq_n_f32(1.3264727080430985e-3f);
  p = vfmaq_f32(vdupq_n_f32(9.671512862324629e-3f), p, f);
  p = vfmaq_f32(vdupq_n_f32(5.550733745645653e-2f), p, f);
  p = vfmaq_f32(vdupq_n_f32(2.4022242081840833e-1f), p, f);
  p = vfmaq_f32(vdupq_n_f32(6.931469775965884e-1f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f), p, f);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vmulq_f32(p, vreinterpretq_f32_s32(e))), keep));
}
// x where the key is attended (bias +0), −inf where it is masked (bias −inf).
inline vf vkeep(vf x, vf bias) { return vbslq_f32(vcltzq_f32(bias), bias, x); }
#else
constexpr int W = 1;
constexpr int kRows = 4, kMaxNC = 4;
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vset1(float x) { return x; }
inline vf vload(const float* p) { return *p; }
inline void vstore(float* p, vf v) { *p = v; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float hmax(vf v) { return v; }
inline float hsum(vf v) { return v; }
inline vf vexp2(vf x) { return std::exp2(x); }
inline vf vkeep(vf x, vf bias) { return bias < 0.f ? bias : x; }
#endif

#if defined(DIFFRT_BF16_DOT)
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif

// Measured best of 48–144 query rows × 64–256 keys (Zen 5, d = 40 and 64): larger key tiles amortise the
// per-row softmax bookkeeping; the working set (Q, S, O tiles ≈ 100 KB at d = 64) lives in L2.
constexpr int64_t kQueryTile = 96;  // rows of Q per work item (a multiple of kRows)
constexpr int64_t kKeyTile = 128;   // keys per online-softmax step; Lk ≤ 2·kKeyTile is one tile

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- the micro-kernels -----------------------------------------------------------------------------

// What the micro-kernel does with the product X = out_scale·A·B (the score modes fuse the softmax's
// elementwise work into the epilogue, while X is still in registers):
//   zero:       C = X
//   load:       C = C + X
//   scale_rows: C = row_aux[r]·C + X                  (the online softmax's O·2^(m−m_new) + P·V)
//   scores:     C = keep(X);  row_aux[r·W..] = max(row_aux[r·W..], C)   (per-lane running row max)
//   probs:      C = 2^keep(X − row_aux[r])             (P recomputed from the log-sum-exp)
// keep() replaces the columns of masked keys by −inf (bias per column: 0 = attend, −inf = masked;
// nullptr when no column of the block is masked).
enum class Init { zero, load, scale_rows, scores, probs };

// The epilogue shared by the float32 and bfloat16 micro-kernels (see Init).
template <int R, int NC, Init init>
inline void store_block(vf (&acc)[R][NC], float* C, int64_t c_rs, float* row_aux, float out_scale, const float* bias) {
  const vf s = vset1(out_scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* c = C + r * c_rs;
    [[maybe_unused]] vf row_max;
    if constexpr (init == Init::scores) row_max = vload(row_aux + r * W);
#pragma GCC unroll 8
    for (int v = 0; v < NC; ++v) {
      vf base = vzero();
      if constexpr (init == Init::load) base = vload(c + v * W);
      if constexpr (init == Init::scale_rows) base = vmul(vload(c + v * W), vset1(row_aux[r]));
      if constexpr (init == Init::probs) base = vset1(-row_aux[r]);
      vf x = vfma(acc[r][v], s, base);
      if constexpr (init == Init::scores || init == Init::probs)
        if (bias) x = vkeep(x, vload(bias + v * W));
      if constexpr (init == Init::probs) x = vexp2(x);
      if constexpr (init == Init::scores) row_max = vmax(row_max, x);
      vstore(c + v * W, x);
    }
    if constexpr (init == Init::scores) vstore(row_aux + r * W, row_max);
  }
}

// C[r][j] = init(C, out_scale · Σ_k A[r·a_rs + k·a_ks] · B[k·b_ks + j]),  r < R, j < NC·W.
template <int R, int NC, Init init>
void gemm_block(int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t b_ks, float* C,
                int64_t c_rs, float* row_aux, float out_scale, const float* bias) {
  vf acc[R][NC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NC; ++v) acc[r][v] = vzero();
  for (int64_t k = 0; k < K; ++k) {
    vf b[NC];
#pragma GCC unroll 8
    for (int v = 0; v < NC; ++v) b[v] = vload(B + k * b_ks + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf a = vset1(A[r * a_rs + k * a_ks]);
#pragma GCC unroll 8
      for (int v = 0; v < NC; ++v) acc[r][v] = vfma(a, b[v], acc[r][v]);
    }
  }
  store_block<R, NC, init>(acc, C, c_rs, row_aux, out_scale, bias);
}

#if defined(DIFFRT_BF16_DOT)
// W lanes of bfloat16 pairs, and the pair dot product: lane j += a[2j]·b[2j] + a[2j+1]·b[2j+1] (float32).
#if defined(__AVX512BF16__)
using vbf = __m512bh;
inline vbf bf_load(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline vbf bf_broadcast(uint32_t pair) { return (__m512bh)_mm512_set1_epi32(int(pair)); }
inline vf bf_dot(vf acc, vbf a, vbf b) { return _mm512_dpbf16_ps(acc, a, b); }
// W floats → W bfloat16 at dst, rounded to nearest even (NaN stays NaN).
inline void bf_store(uint16_t* dst, vf x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(x)); }
#else
using vbf = bfloat16x8_t;
inline vbf bf_load(const uint16_t* p) { return vreinterpretq_bf16_u16(vld1q_u16(p)); }
inline vbf bf_broadcast(uint32_t pair) { return vreinterpretq_bf16_u32(vdupq_n_u32(pair)); }
inline vf bf_dot(vf acc, vbf a, vbf b) { return vbfdotq_f32(acc, a, b); }
inline void bf_store(uint16_t* dst, vf x) { vst1_u16(dst, vreinterpret_u16_bf16(vcvt_bf16_f32(x))); }  // BFCVTN
#endif

// The bfloat16 twin: A and B hold bfloat16 pairs along the reduction dim; one bf_dot adds
// A[r][2p]·B[2p][j] + A[r][2p+1]·B[2p+1][j] into float32 lane j. A row r: uint32 pairs at r·a_rs + p·a_ks;
// B: pair row p at p·b_ks (bfloat16 elements), lane j's pair at 2j.
template <int R, int NC, Init init>
void gemm_block_bf16(int64_t K_pairs, const uint32_t* A, int64_t a_rs, int64_t a_ks, const uint16_t* B, int64_t b_ks,
                     float* C, int64_t c_rs, float* row_aux, float out_scale, const float* bias) {
  vf acc[R][NC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NC; ++v) acc[r][v] = vzero();
  for (int64_t p = 0; p < K_pairs; ++p) {
    vbf b[NC];
#pragma GCC unroll 8
    for (int v = 0; v < NC; ++v) b[v] = bf_load(B + p * b_ks + v * 2 * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vbf a = bf_broadcast(A[r * a_rs + p * a_ks]);
#pragma GCC unroll 8
      for (int v = 0; v < NC; ++v) acc[r][v] = bf_dot(acc[r][v], a, b[v]);
    }
  }
  store_block<R, NC, init>(acc, C, c_rs, row_aux, out_scale, bias);
}
#endif

// Tables of micro-kernels indexed [rows − 1][column vectors − 1], for the edge blocks.
using GemmFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, float*, float,
                        const float*);
template <Init init, int R, int... NC>
constexpr std::array<GemmFn, kMaxNC> gemm_row(std::integer_sequence<int, NC...>) {
  return {&gemm_block<R, NC + 1, init>...};
}
template <Init init, int... R>
constexpr std::array<std::array<GemmFn, kMaxNC>, kRows> gemm_table(std::integer_sequence<int, R...>) {
  return {gemm_row<init, R + 1>(std::make_integer_sequence<int, kMaxNC>{})...};
}
template <Init init>
constexpr auto kGemm = gemm_table<init>(std::make_integer_sequence<int, kRows>{});

// row_aux of the row block starting at r0: W lanes per row for the running max, one float otherwise.
inline float* row_aux_at(Init init, float* row_aux, int64_t r0) {
  return row_aux ? row_aux + r0 * (init == Init::scores ? W : 1) : nullptr;
}

// Width of the next column panel: the remaining vectors split evenly into panels of ≤ kMaxNC (5 → 3 + 2,
// not 4 + 1: a single-vector panel has too few independent accumulators to hide the FMA latency).
inline int64_t column_chunk(int64_t remaining) {
  const int64_t panels = (remaining + kMaxNC - 1) / kMaxNC;
  return (remaining + panels - 1) / panels;
}

// Rows of memory a forward work item will touch soon (the next item's Q, its own output), prefetched a
// few cache lines after every micro-kernel call so that their DRAM latency hides behind the FMAs. Without
// it, packing a Q tile and writing its output stall on DRAM each time: ≈ 10% of cross-attention (one key
// step per query tile), whose FMAs per Q byte are few. Used by the AVX2 table only: AVX-512's wider
// micro-kernels leave the hardware prefetchers enough time on their own.
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr bool kRowPrefetch = true;
#else
constexpr bool kRowPrefetch = false;
#endif
class RowPrefetch {
 public:
  void add(const void* base, int64_t row_stride_bytes, int64_t row_bytes, int64_t rows) {
    if (count_ < 2 && rows > 0 && row_bytes > 0)
      ranges_[count_++] = Range{static_cast<const char*>(base), row_stride_bytes, row_bytes, rows};
  }
  void issue(int lines) {
    for (; lines > 0 && range_ < count_; --lines) {
      const Range& r = ranges_[range_];
      __builtin_prefetch(r.base + row_ * r.stride + offset_, 0, 3);
      if ((offset_ += 64) >= r.bytes) {
        offset_ = 0;
        if (++row_ == r.rows) row_ = 0, ++range_;
      }
    }
  }

 private:
  struct Range {
    const char* base;
    int64_t stride, bytes, rows;
  };
  Range ranges_[2];
  int count_ = 0, range_ = 0;
  int64_t row_ = 0, offset_ = 0;
};
constexpr int kPrefetchLinesPerBlock = 6;

// C (rows × col_vecs·W) = init(C) + out_scale · A (rows × K) · B (K × col_vecs·W). Column panels of B
// (K × kMaxNC·W) stay in L1 while every row block of A streams past them.
template <Init init>
void gemm(int64_t rows, int64_t col_vecs, int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
          int64_t b_ks, float* C, int64_t c_rs, float* row_aux = nullptr, float out_scale = 1.f,
          const float* bias = nullptr, RowPrefetch* prefetch = nullptr) {
  for (int64_t c0 = 0, nc = 0; c0 < col_vecs; c0 += nc) {
    nc = column_chunk(col_vecs - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int nr = int(std::min<int64_t>(kRows, rows - r0));
      kGemm<init>[nr - 1][nc - 1](K, A + r0 * a_rs, a_rs, a_ks, B + c0 * W, b_ks, C + r0 * c_rs + c0 * W, c_rs,
                                  row_aux_at(init, row_aux, r0), out_scale, bias ? bias + c0 * W : nullptr);
      if (prefetch) prefetch->issue(kPrefetchLinesPerBlock);
    }
  }
}

#if defined(DIFFRT_BF16_DOT)
using GemmBf16Fn = void (*)(int64_t, const uint32_t*, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t,
                            float*, float, const float*);
template <Init init, int R, int... NC>
constexpr std::array<GemmBf16Fn, kMaxNC> gemm_bf16_row(std::integer_sequence<int, NC...>) {
  return {&gemm_block_bf16<R, NC + 1, init>...};
}
template <Init init, int... R>
constexpr std::array<std::array<GemmBf16Fn, kMaxNC>, kRows> gemm_bf16_table(std::integer_sequence<int, R...>) {
  return {gemm_bf16_row<init, R + 1>(std::make_integer_sequence<int, kMaxNC>{})...};
}
template <Init init>
constexpr auto kGemmBf16 = gemm_bf16_table<init>(std::make_integer_sequence<int, kRows>{});

// As gemm(), on bfloat16 pairs: A is rows × K_pairs uint32, B is K_pairs pair rows of b_ks elements.
template <Init init>
void gemm_bf16(int64_t rows, int64_t col_vecs, int64_t K_pairs, const uint32_t* A, int64_t a_rs, int64_t a_ks,
               const uint16_t* B, int64_t b_ks, float* C, int64_t c_rs, float* row_aux = nullptr, float out_scale = 1.f,
               const float* bias = nullptr) {
  for (int64_t c0 = 0, nc = 0; c0 < col_vecs; c0 += nc) {
    nc = column_chunk(col_vecs - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int nr = int(std::min<int64_t>(kRows, rows - r0));
      kGemmBf16<init>[nr - 1][nc - 1](K_pairs, A + r0 * a_rs, a_rs, a_ks, B + c0 * 2 * W, b_ks,
                                      C + r0 * c_rs + c0 * W, c_rs, row_aux_at(init, row_aux, r0), out_scale,
                                      bias ? bias + c0 * W : nullptr);
    }
  }
}
#endif

// ---- shapes, tiles and masks -------------------------------------------------------------------------

inline uint16_t bf16_bits(float x) { return to_bf16(x).bits; }
inline uint16_t bf16_bits(bf16 x) { return x.bits; }

// Key tiles: Lk split into tiles of equal width (a multiple of W, ≤ kKeyTile unless Lk ≤ 2·kKeyTile, when
// one tile holds every key: cross-attention over 77 text tokens is a single online-softmax step).
// Tile t covers keys [t·width, t·width + width_t); packed buffers hold tile t at offset t·width·dp.
struct KeyTiles {
  int64_t count = 0, width = 0, padded_len = 0;
  int64_t begin(int64_t t) const { return t * width; }
  int64_t size(int64_t t) const { return std::min(width, padded_len - t * width); }
};

KeyTiles key_tiles(int64_t kv_len) {
  KeyTiles kt;
  kt.padded_len = round_up(kv_len, W);
  if (kv_len == 0) return kt;
  const int64_t want = kv_len <= 2 * kKeyTile ? 1 : (kv_len + kKeyTile - 1) / kKeyTile;
  kt.width = round_up((kv_len + want - 1) / want, W);
  kt.count = (kv_len + kt.width - 1) / kt.width;
  return kt;
}

// Which keys take part: per key 0 = attend, −inf = masked by key_padding_mask or padding beyond Lk (see
// vkeep). One row per batch item (or a single row without a mask), which tiles have a masked key at all,
// and whether a batch item attends to any key.
struct KeyBias {
  std::vector<float> bias;
  std::vector<uint8_t> tile_biased, any_key;
  int64_t rows = 0;
  const float* row(int64_t b) const { return bias.data() + (rows == 1 ? 0 : b) * stride; }
  bool biased(int64_t b, int64_t t) const { return tile_biased[(rows == 1 ? 0 : b) * tiles + t]; }
  bool masked(int64_t b, int64_t j) const { return row(b)[j] != 0.f; }
  bool has_key(int64_t b) const { return any_key[rows == 1 ? 0 : b]; }
  int64_t stride = 0, tiles = 0;
};

KeyBias key_bias(const uint8_t* mask, int64_t batch, int64_t kv_len, const KeyTiles& kt) {
  KeyBias kb;
  kb.rows = mask ? batch : 1;
  kb.stride = kt.padded_len;
  kb.tiles = kt.count;
  kb.bias.assign(size_t(kb.rows * kb.stride), 0.f);
  kb.tile_biased.assign(size_t(kb.rows * kb.tiles), 0);
  kb.any_key.assign(size_t(kb.rows), 0);
  for (int64_t b = 0; b < kb.rows; ++b) {
    float* row = kb.bias.data() + b * kb.stride;
    for (int64_t j = 0; j < kt.padded_len; ++j) {
      if (j >= kv_len || (mask && !mask[b * kv_len + j]))
        row[j] = kMasked;
      else
        kb.any_key[b] = 1;
    }
    for (int64_t t = 0; t < kt.count; ++t)
      for (int64_t j = kt.begin(t); j < kt.begin(t) + kt.size(t); ++j)
        if (row[j] != 0.f) kb.tile_biased[b * kb.tiles + t] = 1;
  }
  return kb;
}

template <typename T>
const T* head_ptr(const void* base, const HeadStrides& s, int64_t b, int64_t h) {
  return static_cast<const T*>(base) + b * s.batch + h * s.head;
}
template <typename T>
T* head_ptr(void* base, const HeadStrides& s, int64_t b, int64_t h) {
  return static_cast<T*>(base) + b * s.batch + h * s.head;
}

// One row of d elements → float32, zero-filled up to dp (a multiple of W).
inline void load_row(const float* s, int64_t d, int64_t dp, float* o) {
#if defined(__AVX512F__)
  for (int64_t c = 0; c < dp; c += W) {
    const __mmask16 m = c + W <= d ? __mmask16(0xffff) : __mmask16(c < d ? (1u << (d - c)) - 1 : 0);
    _mm512_storeu_ps(o + c, _mm512_maskz_loadu_ps(m, s + c));
  }
#else
  int64_t c = 0;
#if defined(__AVX2__) || defined(DIFFRT_ATTENTION_NEON)
  for (; c + W <= d; c += W) vstore(o + c, vload(s + c));
#endif
  for (; c < d; ++c) o[c] = s[c];
  for (; c < dp; ++c) o[c] = 0.f;
#endif
}
inline void load_row(const bf16* s, int64_t d, int64_t dp, float* o) {
#if defined(__AVX512F__)
  for (int64_t c = 0; c < dp; c += W) {
    const __mmask16 m = c + W <= d ? __mmask16(0xffff) : __mmask16(c < d ? (1u << (d - c)) - 1 : 0);
    const __m256i bits = _mm256_maskz_loadu_epi16(m, s + c);
    _mm512_storeu_ps(o + c, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
  }
#else
  int64_t c = 0;
#if defined(__AVX2__)
  for (; c + W <= d; c += W) {  // bfloat16 bits are the top half of the float32
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c));
    _mm256_storeu_ps(o + c, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
  }
#elif defined(DIFFRT_ATTENTION_NEON)
  for (; c + W <= d; c += W)  // bfloat16 bits are the top half of the float32
    vst1q_f32(o + c, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(&s[c].bits), 16)));
#endif
  for (; c < d; ++c) o[c] = load(s[c]);
  for (; c < dp; ++c) o[c] = 0.f;
#endif
}

// d elements of scale·src → dst (float32, or bfloat16 rounded to nearest even).
inline void store_row(const float* src, float scale, int64_t d, float* dst) {
  int64_t c = 0;
  for (; c + W <= d; c += W) vstore(dst + c, vmul(vload(src + c), vset1(scale)));
  for (; c < d; ++c) dst[c] = src[c] * scale;
}
inline void store_row(const float* src, float scale, int64_t d, bf16* dst) {
  int64_t c = 0;
#if defined(DIFFRT_BF16_DOT)
  for (; c + W <= d; c += W) bf_store(&dst[c].bits, vmul(vload(src + c), vset1(scale)));
#elif defined(__AVX2__) && !defined(__AVX512F__)
  // to_bf16 on 8 lanes: round to nearest even, (u + 0x7fff + bit 16 of u) >> 16; NaN → (u >> 16) | 0x40.
  for (; c + W <= d; c += W) {
    const __m256i u = _mm256_castps_si256(_mm256_mul_ps(_mm256_loadu_ps(src + c), _mm256_set1_ps(scale)));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i bits = _mm256_blendv_epi8(rounded, quiet, nan);  // each lane ≤ 0xffff: packus is exact
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c), _mm256_castsi256_si128(packed));
  }
#endif
  for (; c < d; ++c) dst[c] = to_bf16(src[c] * scale);
}

// rows × d (row stride `stride`) → rows × dp float32, zero-padded columns; with key_bias, the rows of
// masked keys (key_bias[i] ≠ 0) are zeros.
template <typename T>
void pack_rows_f32(const T* src, int64_t stride, int64_t rows, int64_t d, int64_t dp, float* dst,
                   const float* key_bias = nullptr) {
  for (int64_t i = 0; i < rows; ++i) {
    if (key_bias && key_bias[i] != 0.f)
      std::fill(dst + i * dp, dst + (i + 1) * dp, 0.f);
    else
      load_row(src + i * stride, d, dp, dst + i * dp);
  }
}

// d copies of value → dst (a row of the output).
template <typename T>
void fill_row(T* dst, int64_t d, float value) {
  std::fill(dst, dst + d, store_as<T>(value));
}

// Keys [0, Lk) of one head → per key tile a d × width float32 block (Kᵀ), zero-padded; masked keys
// (key_bias[j] ≠ 0) are left as zeros.
template <typename T>
void pack_transposed_f32(const T* src, int64_t stride, int64_t kv_len, int64_t d, int64_t dp, const KeyTiles& kt,
                         const float* key_bias, float* dst) {
  std::fill(dst, dst + kt.padded_len * dp, 0.f);
  for (int64_t t = 0; t < kt.count; ++t) {
    const int64_t k0 = kt.begin(t), w = kt.size(t);
    float* tile = dst + k0 * dp;
    for (int64_t j = k0; j < std::min(kv_len, k0 + w); ++j) {
      if (key_bias[j] != 0.f) continue;
      const T* s = src + j * stride;
      for (int64_t c = 0; c < d; ++c) tile[c * w + (j - k0)] = load(s[c]);
    }
  }
}

// ---- forward -------------------------------------------------------------------------------------------

// Per-thread scratch of the forward.
struct ForwardScratch {
  std::vector<float> q, s, o, m, l, alpha, row_sum, row_max;
  std::vector<uint16_t> q_bf16, p_bf16;
};

// One online-softmax step over a tile of scores t (rows × width, log2 domain, masked keys at −inf,
// row stride width; row_max holds W lanes of each row's max, from the scores epilogue): updates m, l,
// writes alpha = 2^(m_old − m_new) and P = 2^(t − m_new) (into t itself, or as bfloat16 into p_bf16).
// A row with no finite score so far keeps m = −inf and subtracts 0 instead: P = 2^(−inf − 0) = 0, and
// α = 2^(−inf − m_used) = 0. NaN scores may be dropped by the max, but not by exp2 or the sums: l turns NaN.
void softmax_step(int64_t rows, int64_t width, float* t, const float* row_max, float* m, float* l, float* alpha,
                  float* row_sum, uint16_t* p_bf16) {
  const int64_t nv = width / W;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = t + r * width;
    const float m_new = std::max(m[r], hmax(vload(row_max + r * W)));
    const float m_used = m_new == -kInf ? 0.f : m_new;
    alpha[r] = m[r] - m_used;                           // exponentiated below, W rows at a time
    m[r] = m_new;
    const vf mu = vset1(m_used);
    vf sum = vzero();
    for (int64_t v = 0; v < nv; ++v) {
      const vf p = vexp2(vsub(vload(row + v * W), mu));
      sum = vadd(sum, p);
#if defined(DIFFRT_BF16_DOT)
      if (p_bf16) {
        bf_store(p_bf16 + r * width + v * W, p);
        continue;
      }
#endif
      vstore(row + v * W, p);
    }
    row_sum[r] = hsum(sum);
  }
  int64_t r = 0;
  for (; r + W <= rows; r += W) {
    const vf al = vexp2(vload(alpha + r));
    vstore(alpha + r, al);
    vstore(l + r, vfma(vload(l + r), al, vload(row_sum + r)));
  }
  for (; r < rows; ++r) {
    alpha[r] = std::exp2(alpha[r]);
    l[r] = l[r] * alpha[r] + row_sum[r];
  }
}

template <typename T, bool kDot>
void forward_typed(const AttentionForwardArgs& a) {
  const int64_t BH = a.batch * a.heads, Lq = a.q_len, Lk = a.kv_len, d = a.head_dim;
  const int64_t dp = round_up(d, W);  // W is even, so pairs never straddle rows
  const KeyTiles kt = key_tiles(Lk);
  const KeyBias kb = key_bias(a.key_padding_mask, a.batch, Lk, kt);
  const int64_t q_tiles = (Lq + kQueryTile - 1) / kQueryTile;
  const int64_t items = BH * q_tiles;
  const float c = a.scale * kLog2e;  // t = c·q·k
  if (items == 0) return;

  // Packed K and V of every head (float32, or bfloat16 pairs for the dot-product path).
  const int64_t head_elems = kt.padded_len * dp;
  // Left uninitialised here: each head's packing writes all of its slice, in parallel.
  const size_t packed_elems = size_t(BH * head_elems);
  std::unique_ptr<float[]> kt_f32(kDot ? nullptr : new float[packed_elems]);
  std::unique_ptr<float[]> v_f32(kDot ? nullptr : new float[packed_elems]);
  std::unique_ptr<uint16_t[]> kt_b16(kDot ? new uint16_t[packed_elems] : nullptr);
  std::unique_ptr<uint16_t[]> v_b16(kDot ? new uint16_t[packed_elems] : nullptr);
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, items)));

  // Every head is packed before any query tile runs (a tile reads its head's packed K and V).
  parallel_for(BH, nt, [&](int64_t bh) {
      const int64_t b = bh / a.heads, h = bh % a.heads;
      const T* k = head_ptr<T>(a.k, a.k_strides, b, h);
      const T* v = head_ptr<T>(a.v, a.v_strides, b, h);
      if (kDot) {
        // Kᵀ tile: pair row p = (k[j][2p], k[j][2p+1]) for j in the tile; V: pair row = keys (2i, 2i+1).
        uint16_t* kp = kt_b16.get() + bh * head_elems;
        uint16_t* vp = v_b16.get() + bh * head_elems;
        std::fill(kp, kp + head_elems, uint16_t(0));
        std::fill(vp, vp + head_elems, uint16_t(0));
        for (int64_t t = 0; t < kt.count; ++t) {
          const int64_t k0 = kt.begin(t), w = kt.size(t);
          for (int64_t j = k0; j < std::min(Lk, k0 + w); ++j)
            if (!kb.masked(b, j))  // masked keys stay zero
              for (int64_t cc = 0; cc < d; ++cc)
                kp[k0 * dp + (cc / 2) * 2 * w + (j - k0) * 2 + (cc & 1)] = bf16_bits(k[j * a.k_strides.row + cc]);
        }
        for (int64_t j = 0; j < Lk; ++j)
          if (!kb.masked(b, j))
            for (int64_t cc = 0; cc < d; ++cc)
              vp[(j / 2) * 2 * dp + cc * 2 + (j & 1)] = bf16_bits(v[j * a.v_strides.row + cc]);
      } else {
        pack_transposed_f32(k, a.k_strides.row, Lk, d, dp, kt, kb.row(b), kt_f32.get() + bh * head_elems);
        float* vp = v_f32.get() + bh * head_elems;
        pack_rows_f32(v, a.v_strides.row, Lk, d, dp, vp, kb.row(b));
        std::fill(vp + Lk * dp, vp + head_elems, 0.f);
      }
  });

  parallel_region(items, nt, [&](DynamicItems& work) {
    int64_t item;
    if (!work.claim(item)) return;  // the work is gone: no scratch
    ForwardScratch s;
    s.q.resize(size_t(kQueryTile * dp));
    s.o.resize(size_t(kQueryTile * dp));
    s.s.resize(size_t(kQueryTile * std::max<int64_t>(kt.width, 1)));
    s.m.resize(kQueryTile);
    s.l.resize(kQueryTile);
    s.alpha.resize(kQueryTile);
    s.row_sum.resize(kQueryTile);
    s.row_max.resize(kQueryTile * W);
    if (kDot) {
      s.q_bf16.resize(size_t(kQueryTile * dp));
      s.p_bf16.resize(size_t(kQueryTile * std::max<int64_t>(kt.width, 1)));
    }

    do {  // items are ≥ 10 µs, handed out one at a time
      const int64_t bh = item / q_tiles, q0 = (item % q_tiles) * kQueryTile;
      const int64_t b = bh / a.heads, h = bh % a.heads;
      const int64_t rows = std::min(kQueryTile, Lq - q0);
      const T* q = head_ptr<T>(a.q, a.q_strides, b, h) + q0 * a.q_strides.row;
      if (kDot) {
        for (int64_t i = 0; i < rows; ++i) {
          std::memcpy(s.q_bf16.data() + i * dp, q + i * a.q_strides.row, size_t(d) * sizeof(uint16_t));
          std::fill(s.q_bf16.data() + i * dp + d, s.q_bf16.data() + (i + 1) * dp, uint16_t(0));
        }
      } else {
        pack_rows_f32(q, a.q_strides.row, rows, d, dp, s.q.data());
      }
      std::fill(s.m.begin(), s.m.end(), kMasked);
      std::fill(s.l.begin(), s.l.end(), 0.f);
      // This item's output rows, then the Q rows of the item this thread most likely draws next.
      RowPrefetch prefetch;
      if (kRowPrefetch) {
        prefetch.add(head_ptr<T>(a.out, a.out_strides, b, h) + q0 * a.out_strides.row,
                     a.out_strides.row * int64_t(sizeof(T)), d * int64_t(sizeof(T)), rows);
        if (const int64_t next = item + nt; next < items) {
          const int64_t next_bh = next / q_tiles, next_q0 = (next % q_tiles) * kQueryTile;
          prefetch.add(head_ptr<T>(a.q, a.q_strides, next_bh / a.heads, next_bh % a.heads) + next_q0 * a.q_strides.row,
                       a.q_strides.row * int64_t(sizeof(T)), d * int64_t(sizeof(T)), std::min(kQueryTile, Lq - next_q0));
        }
      }
      RowPrefetch* const row_prefetch = kRowPrefetch ? &prefetch : nullptr;

      for (int64_t t = 0; t < kt.count; ++t) {
        const int64_t k0 = kt.begin(t), w = kt.size(t);
        const float* bias = kb.biased(b, t) ? kb.row(b) + k0 : nullptr;
        std::fill(s.row_max.begin(), s.row_max.end(), kMasked);
        // t = c·Q·Kᵀ + bias (rows × w) and its row max (the reduction runs over d, not the padded dp), then the online-softmax step, then O = O·alpha + P·V.
#if defined(DIFFRT_BF16_DOT)
        if (kDot) {
          const uint16_t* ktile = kt_b16.get() + bh * head_elems + k0 * dp;
          const uint16_t* vtile = v_b16.get() + bh * head_elems + k0 * dp;
          gemm_bf16<Init::scores>(rows, w / W, (d + 1) / 2, reinterpret_cast<const uint32_t*>(s.q_bf16.data()), dp / 2,
                                  1, ktile, 2 * w, s.s.data(), w, s.row_max.data(), c, bias);
          softmax_step(rows, w, s.s.data(), s.row_max.data(), s.m.data(), s.l.data(), s.alpha.data(), s.row_sum.data(), s.p_bf16.data());
          const uint32_t* p_pairs = reinterpret_cast<const uint32_t*>(s.p_bf16.data());
          if (t == 0)
            gemm_bf16<Init::zero>(rows, dp / W, w / 2, p_pairs, w / 2, 1, vtile, 2 * dp, s.o.data(), dp);
          else
            gemm_bf16<Init::scale_rows>(rows, dp / W, w / 2, p_pairs, w / 2, 1, vtile, 2 * dp, s.o.data(), dp,
                                        s.alpha.data());
          continue;
        }
#endif
        const float* ktile = kt_f32.get() + bh * head_elems + k0 * dp;
        const float* vtile = v_f32.get() + bh * head_elems + k0 * dp;
        gemm<Init::scores>(rows, w / W, d, s.q.data(), dp, 1, ktile, w, s.s.data(), w, s.row_max.data(), c,
                           bias, row_prefetch);
        softmax_step(rows, w, s.s.data(), s.row_max.data(), s.m.data(), s.l.data(), s.alpha.data(), s.row_sum.data(), nullptr);
        if (t == 0)  // O starts as P·V: no rescale, and O needs no zeroing
          gemm<Init::zero>(rows, dp / W, w, s.s.data(), w, 1, vtile, dp, s.o.data(), dp, nullptr, 1.f,
                           nullptr, row_prefetch);
        else
          gemm<Init::scale_rows>(rows, dp / W, w, s.s.data(), w, 1, vtile, dp, s.o.data(), dp, s.alpha.data(), 1.f,
                                 nullptr, row_prefetch);
      }

      // out = O / l, lse = (m + log2 l)·ln 2; zeros and −inf for a row without keys; NaN for a row with
      // keys whose l is NaN (a NaN or +inf score) or 0 (every attended score −inf), as torch's softmax.
      T* out = head_ptr<T>(a.out, a.out_strides, b, h) + q0 * a.out_strides.row;
      const bool has_key = kb.has_key(b);
      for (int64_t i = 0; i < rows; ++i) {
        const float l = s.l[i];
        float lse;
        if (has_key && l > 0.f) {
          store_row(s.o.data() + i * dp, 1.f / l, d, out + i * a.out_strides.row);
          lse = (s.m[i] + std::log2(l)) * kLn2;
        } else {
          lse = has_key ? std::numeric_limits<float>::quiet_NaN() : -kInf;
          fill_row(out + i * a.out_strides.row, d, has_key ? lse : 0.f);
        }
        if (a.lse) a.lse[bh * Lq + q0 + i] = lse;
      }
    } while (work.claim(item));
  });
}

void attention_forward(const AttentionForwardArgs& a) {
  if (a.dtype == DType::bf16) {
    if constexpr (kBf16Dot)
      forward_typed<bf16, true>(a);
    else
      forward_typed<bf16, false>(a);
  } else {
    forward_typed<float, false>(a);
  }
}

// ---- backward ------------------------------------------------------------------------------------------

// dQ = Σ over key chunks of the float32 partials (chunk-major: [chunk][bh][Lq][dp]).
template <typename T>
void sum_dq_partials(const AttentionBackwardArgs& a, const float* dq_partial, int64_t chunks, int64_t dp, int nt) {
  const int64_t BH = a.batch * a.heads, Lq = a.q_len, d = a.head_dim;
  parallel_for(BH, nt, [&](int64_t bh) {
    T* dq_out = static_cast<T*>(a.dq) + bh * Lq * d;
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t cc = 0; cc < d; ++cc) {
        float acc = 0.f;
        for (int64_t ch = 0; ch < chunks; ++ch) acc += dq_partial[size_t(((ch * BH + bh) * Lq + i) * dp + cc)];
        dq_out[i * d + cc] = store_as<T>(acc);
      }
  });
}

template <typename T>
void backward_typed(const AttentionBackwardArgs& a) {
  const int64_t BH = a.batch * a.heads, Lq = a.q_len, Lk = a.kv_len, d = a.head_dim;
  const int64_t dp = round_up(d, W);
  const KeyTiles kt = key_tiles(Lk);
  const KeyBias kb = key_bias(a.key_padding_mask, a.batch, Lk, kt);
  const float c = a.scale * kLog2e;
  const int threads = std::max(1, a.num_threads);
  // Each item owns whole key tiles, so dK, dV need no synchronisation; dQ gets one float32 partial per
  // key chunk, summed at the end. With fewer heads than threads a head's key tiles are split in chunks.
  const int64_t chunks = BH >= threads || kt.count == 0 ? 1 : std::min<int64_t>(kt.count, (threads + BH - 1) / BH);
  const int64_t items = BH * chunks;
  if (BH == 0) return;
  // One float32 dQ per (key chunk, head); each item zeroes its own (first touch on the thread that uses it).
  std::unique_ptr<float[]> dq_partial(new float[size_t(chunks * BH * Lq * dp)]);
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(threads, items)));

  // Each thread packs a head's Q, dO, K, V once and keeps them while it draws items of the same head.
  parallel_region(items, nt, [&](DynamicItems& work) {
    int64_t item;
    if (!work.claim(item)) return;  // the work is gone: no scratch
    const size_t q_elems = size_t(Lq * dp), k_elems = size_t(kt.padded_len * dp);
    std::vector<float> q(q_elems), dout(q_elems), delta(static_cast<size_t>(Lq)), lse2(static_cast<size_t>(Lq));
    std::vector<float> k(k_elems), kt_packed(k_elems), vt_packed(k_elems);
    const int64_t width = std::max<int64_t>(kt.width, 1);
    std::vector<float> p(size_t(kQueryTile * width)), ds(size_t(kQueryTile * width));
    std::vector<float> dk(size_t(width * dp)), dv(size_t(width * dp));
    int64_t packed_bh = -1;

    do {
      const int64_t bh = item / chunks, chunk = item % chunks;
      const int64_t b = bh / a.heads, h = bh % a.heads;
      if (packed_bh != bh) {
        // Q, dO as float32 rows; D_i = rowsum(dO_i ∘ O_i); lse in the log2 domain (+inf for a row with no
        // key, so that its P = 2^(t − inf) = 0); K as rows (for dQ), Kᵀ and Vᵀ per key tile.
        packed_bh = bh;
        pack_rows_f32(head_ptr<T>(a.q, a.q_strides, b, h), a.q_strides.row, Lq, d, dp, q.data());
        pack_rows_f32(head_ptr<T>(a.dout, a.dout_strides, b, h), a.dout_strides.row, Lq, d, dp, dout.data());
        const T* o = head_ptr<T>(a.out, a.out_strides, b, h);
        for (int64_t i = 0; i < Lq; ++i) {
          float acc = 0.f;
          for (int64_t cc = 0; cc < d; ++cc) acc += dout[i * dp + cc] * load(o[i * a.out_strides.row + cc]);
          delta[i] = acc;
          const float lse = a.lse[bh * Lq + i];
          lse2[i] = lse == -kInf ? kInf : lse * kLog2e;  // no key: P = 2^(t − inf) = 0
        }
        const T* kh = head_ptr<T>(a.k, a.k_strides, b, h);
        pack_rows_f32(kh, a.k_strides.row, Lk, d, dp, k.data(), kb.row(b));
        std::fill(k.begin() + Lk * dp, k.end(), 0.f);
        pack_transposed_f32(kh, a.k_strides.row, Lk, d, dp, kt, kb.row(b), kt_packed.data());
        pack_transposed_f32(head_ptr<T>(a.v, a.v_strides, b, h), a.v_strides.row, Lk, d, dp, kt, kb.row(b),
                            vt_packed.data());
      }
      float* dq = dq_partial.get() + (chunk * BH + bh) * Lq * dp;
      std::fill(dq, dq + Lq * dp, 0.f);
      const int64_t t_begin = kt.count * chunk / chunks, t_end = kt.count * (chunk + 1) / chunks;
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t k0 = kt.begin(t), w = kt.size(t), nv = w / W;
        const float* bias = kb.biased(b, t) ? kb.row(b) + k0 : nullptr;
        std::fill(dk.begin(), dk.end(), 0.f);
        std::fill(dv.begin(), dv.end(), 0.f);
        for (int64_t q0 = 0; q0 < Lq; q0 += kQueryTile) {
          const int64_t rows = std::min(kQueryTile, Lq - q0);
          const float* qi = q.data() + q0 * dp;
          const float* doi = dout.data() + q0 * dp;
          // P = 2^(c·Q·Kᵀ + bias − lse2)
          gemm<Init::probs>(rows, nv, d, qi, dp, 1, kt_packed.data() + k0 * dp, w, p.data(), w, lse2.data() + q0, c,
                            bias);
          // dV += Pᵀ·dO_i
          gemm<Init::load>(w, dp / W, rows, p.data(), 1, w, doi, dp, dv.data(), dp);
          // dP = dO_i·Vᵀ, then dS = scale·P∘(dP − D)
          gemm<Init::zero>(rows, nv, d, doi, dp, 1, vt_packed.data() + k0 * dp, w, ds.data(), w);
          for (int64_t r = 0; r < rows; ++r) {
            const vf dr = vset1(delta[q0 + r]), sc = vset1(a.scale);
            float* dsr = ds.data() + r * w;
            const float* pr = p.data() + r * w;
            for (int64_t v = 0; v < nv; ++v)
              vstore(dsr + v * W, vmul(vmul(vload(pr + v * W), sc), vsub(vload(dsr + v * W), dr)));
          }
          // dK += dSᵀ·Q_i,  dQ_i += dS·K
          gemm<Init::load>(w, dp / W, rows, ds.data(), 1, w, qi, dp, dk.data(), dp);
          gemm<Init::load>(rows, dp / W, w, ds.data(), w, 1, k.data() + k0 * dp, dp, dq + q0 * dp, dp);
        }
        T* dk_out = head_ptr<T>(a.dk, HeadStrides{a.heads * Lk * d, Lk * d, d}, b, h);
        T* dv_out = head_ptr<T>(a.dv, HeadStrides{a.heads * Lk * d, Lk * d, d}, b, h);
        for (int64_t j = k0; j < std::min(Lk, k0 + w); ++j) {
          const bool masked = kb.masked(b, j);  // exactly 0, even where a NaN row made dS NaN
          for (int64_t cc = 0; cc < d; ++cc) {
            dk_out[j * d + cc] = store_as<T>(masked ? 0.f : dk[(j - k0) * dp + cc]);
            dv_out[j * d + cc] = store_as<T>(masked ? 0.f : dv[(j - k0) * dp + cc]);
          }
        }
      }
    } while (work.claim(item));
  });
  sum_dq_partials<T>(a, dq_partial.get(), chunks, dp, nt);
}

#if defined(__AVX512BF16__)
// The bfloat16 backward on _mm512_dpbf16_ps: all five products take bfloat16 pairs along their reduction
// dim, P and dS are rounded to bfloat16 for the products that consume them (as FlashAttention does), and
// every sum is float32. Products reducing over queries (dV, dK) are computed transposed, dVᵀ = dOᵀ·P and
// dKᵀ = Qᵀ·dS, so that their pairs come from two adjacent rows of P / dS (one convert + one permute per
// 32 values) instead of a transpose; dO and Q are also packed once per head as pairs of adjacent rows,
// read column-wise (a_ks = dp) as the A operand.

// 16 uint32 pairs (bf16(a_j) low, bf16(b_j) high) from two rows of 16 floats.
inline __m512i pair_rows_bf16(__m512 a, __m512 b) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a));  // [a | b] → a0 b0 a1 b1 …
}

// Pairs of adjacent rows of a bfloat16 matrix (rows × dp, row stride dp) → ⌈rows/2⌉ rows of dp uint32.
void pair_rows(const uint16_t* x, int64_t rows, int64_t dp, uint32_t* out) {
  for (int64_t r = 0; r < rows; r += 2)
    for (int64_t c = 0; c < dp; c += W) {
      const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * dp + c)));
      const __m512i b = r + 1 < rows
          ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + (r + 1) * dp + c)))
          : _mm512_setzero_si512();
      _mm512_storeu_si512(out + (r / 2) * dp + c, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
    }
}

// rows × width float32 (row stride width) → ⌈rows/2⌉ pair rows of width uint32 (row 2p with row 2p + 1).
void pair_rows(const float* x, int64_t rows, int64_t width, uint32_t* out) {
  for (int64_t r = 0; r < rows; r += 2)
    for (int64_t j = 0; j < width; j += W) {
      const __m512 a = _mm512_loadu_ps(x + r * width + j);
      const __m512 b = r + 1 < rows ? _mm512_loadu_ps(x + (r + 1) * width + j) : _mm512_setzero_ps();
      _mm512_storeu_si512(out + (r / 2) * width + j, pair_rows_bf16(a, b));
    }
}

void backward_bf16_dot(const AttentionBackwardArgs& a) {
  const int64_t BH = a.batch * a.heads, Lq = a.q_len, Lk = a.kv_len, d = a.head_dim;
  const int64_t dp = round_up(d, W), lq2 = round_up(Lq, 2), d_pairs = (d + 1) / 2;
  const KeyTiles kt = key_tiles(Lk);
  const KeyBias kb = key_bias(a.key_padding_mask, a.batch, Lk, kt);
  const float c = a.scale * kLog2e;
  const int threads = std::max(1, a.num_threads);
  const int64_t chunks = BH >= threads || kt.count == 0 ? 1 : std::min<int64_t>(kt.count, (threads + BH - 1) / BH);
  const int64_t items = BH * chunks;
  if (BH == 0) return;
  // One float32 dQ per (key chunk, head); each item zeroes its own (first touch on the thread that uses it).
  std::unique_ptr<float[]> dq_partial(new float[size_t(chunks * BH * Lq * dp)]);
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
  const HeadStrides dense_kv{a.heads * Lk * d, Lk * d, d};

  parallel_region(items, nt, [&](DynamicItems& work) {
    int64_t item;
    if (!work.claim(item)) return;  // the work is gone: no scratch
    const int64_t width = std::max<int64_t>(kt.width, 1), k_elems = kt.padded_len * dp;
    // Per head: Q, dO as bfloat16 rows (pairs along d) and as pairs of adjacent rows; Kᵀ, Vᵀ per key tile
    // and K as pairs of adjacent keys; D and lse in the log2 domain.
    const size_t q_elems = size_t(Lq * dp), kv_elems = size_t(k_elems), pair_elems = size_t(lq2 / 2 * dp);
    std::vector<uint16_t> q(q_elems), dout(q_elems), kt_pairs(kv_elems), vt_pairs(kv_elems), k_pairs(kv_elems);
    std::vector<uint32_t> q_t(pair_elems), dout_t(pair_elems);
    std::vector<float> delta(static_cast<size_t>(Lq)), lse2(static_cast<size_t>(Lq));
    // Per query tile.
    std::vector<float> p(size_t(kQueryTile * width)), ds(size_t(kQueryTile * width));
    std::vector<uint32_t> p_pairs(size_t(kQueryTile / 2 * width)), ds_pairs(size_t(kQueryTile / 2 * width));
    std::vector<uint16_t> ds_rows(size_t(kQueryTile * width));
    std::vector<float> dk_t(size_t(d * width)), dv_t(size_t(d * width));
    int64_t packed_bh = -1;

    do {
      const int64_t bh = item / chunks, chunk = item % chunks;
      const int64_t b = bh / a.heads, h = bh % a.heads;
      if (packed_bh != bh) {
        packed_bh = bh;
        const bf16* qh = head_ptr<bf16>(a.q, a.q_strides, b, h);
        const bf16* doh = head_ptr<bf16>(a.dout, a.dout_strides, b, h);
        const bf16* oh = head_ptr<bf16>(a.out, a.out_strides, b, h);
        const bf16* kh = head_ptr<bf16>(a.k, a.k_strides, b, h);
        const bf16* vh = head_ptr<bf16>(a.v, a.v_strides, b, h);
        std::vector<float> row(static_cast<size_t>(dp)), orow(static_cast<size_t>(dp));
        for (int64_t i = 0; i < Lq; ++i) {
          const bf16* qi = qh + i * a.q_strides.row;
          const bf16* doi = doh + i * a.dout_strides.row;
          std::memcpy(q.data() + i * dp, qi, size_t(d) * sizeof(uint16_t));
          std::memcpy(dout.data() + i * dp, doi, size_t(d) * sizeof(uint16_t));
          std::fill(q.data() + i * dp + d, q.data() + (i + 1) * dp, uint16_t(0));
          std::fill(dout.data() + i * dp + d, dout.data() + (i + 1) * dp, uint16_t(0));
          load_row(doi, d, dp, row.data());
          load_row(oh + i * a.out_strides.row, d, dp, orow.data());
          __m512 acc = _mm512_setzero_ps();
          for (int64_t cc = 0; cc < dp; cc += W)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(row.data() + cc), _mm512_loadu_ps(orow.data() + cc), acc);
          delta[i] = _mm512_reduce_add_ps(acc);
          const float lse = a.lse[bh * Lq + i];
          lse2[i] = lse == -kInf ? kInf : lse * kLog2e;  // no key: P = 2^(t − inf) = 0
        }
        pair_rows(q.data(), Lq, dp, q_t.data());
        pair_rows(dout.data(), Lq, dp, dout_t.data());
        std::fill(kt_pairs.begin(), kt_pairs.end(), uint16_t(0));
        std::fill(vt_pairs.begin(), vt_pairs.end(), uint16_t(0));
        std::fill(k_pairs.begin(), k_pairs.end(), uint16_t(0));
        for (int64_t t = 0; t < kt.count; ++t) {
          const int64_t k0 = kt.begin(t), w = kt.size(t);
          for (int64_t j = k0; j < std::min(Lk, k0 + w); ++j)
            for (int64_t cc = 0; cc < d && !kb.masked(b, j); ++cc) {  // masked keys stay zero
              const int64_t at = k0 * dp + (cc / 2) * 2 * w + (j - k0) * 2 + (cc & 1);
              kt_pairs[at] = kh[j * a.k_strides.row + cc].bits;
              vt_pairs[at] = vh[j * a.v_strides.row + cc].bits;
              k_pairs[(j / 2) * 2 * dp + cc * 2 + (j & 1)] = kh[j * a.k_strides.row + cc].bits;
            }
        }
      }
      float* dq = dq_partial.get() + (chunk * BH + bh) * Lq * dp;
      std::fill(dq, dq + Lq * dp, 0.f);
      const int64_t t_begin = kt.count * chunk / chunks, t_end = kt.count * (chunk + 1) / chunks;
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t k0 = kt.begin(t), w = kt.size(t), nv = w / W;
        const float* bias = kb.biased(b, t) ? kb.row(b) + k0 : nullptr;
        const uint16_t* ktile = kt_pairs.data() + k0 * dp;
        const uint16_t* vtile = vt_pairs.data() + k0 * dp;
        std::fill(dk_t.begin(), dk_t.end(), 0.f);
        std::fill(dv_t.begin(), dv_t.end(), 0.f);
        for (int64_t q0 = 0; q0 < Lq; q0 += kQueryTile) {
          const int64_t rows = std::min(kQueryTile, Lq - q0), row_pairs = (rows + 1) / 2;
          const uint32_t* qi = reinterpret_cast<const uint32_t*>(q.data() + q0 * dp);
          const uint32_t* doi = reinterpret_cast<const uint32_t*>(dout.data() + q0 * dp);
          // P = 2^(c·Q·Kᵀ + bias − lse2);  dVᵀ += dOᵀ·P
          gemm_bf16<Init::probs>(rows, nv, d_pairs, qi, dp / 2, 1, ktile, 2 * w, p.data(), w, lse2.data() + q0, c,
                                 bias);
          pair_rows(p.data(), rows, w, p_pairs.data());
          gemm_bf16<Init::load>(d, nv, row_pairs, dout_t.data() + q0 / 2 * dp, 1, dp,
                                reinterpret_cast<const uint16_t*>(p_pairs.data()), 2 * w, dv_t.data(), w);
          // dP = dO·Vᵀ;  dS = scale·P∘(dP − D)
          gemm_bf16<Init::zero>(rows, nv, d_pairs, doi, dp / 2, 1, vtile, 2 * w, ds.data(), w);
          for (int64_t r = 0; r < rows; ++r) {
            const __m512 dr = _mm512_set1_ps(delta[q0 + r]), sc = _mm512_set1_ps(a.scale);
            float* dsr = ds.data() + r * w;
            const float* pr = p.data() + r * w;
            for (int64_t v = 0; v < nv; ++v) {
              const __m512 x =
                  _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(pr + v * W), sc), _mm512_sub_ps(_mm512_loadu_ps(dsr + v * W), dr));
              _mm512_storeu_ps(dsr + v * W, x);
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(ds_rows.data() + r * w + v * W), (__m256i)_mm512_cvtneps_pbh(x));
            }
          }
          // dKᵀ += Qᵀ·dS;  dQ_i += dS·K
          pair_rows(ds.data(), rows, w, ds_pairs.data());
          gemm_bf16<Init::load>(d, nv, row_pairs, q_t.data() + q0 / 2 * dp, 1, dp,
                                reinterpret_cast<const uint16_t*>(ds_pairs.data()), 2 * w, dk_t.data(), w);
          gemm_bf16<Init::load>(rows, dp / W, w / 2, reinterpret_cast<const uint32_t*>(ds_rows.data()), w / 2, 1,
                                k_pairs.data() + k0 * dp, 2 * dp, dq + q0 * dp, dp);
        }
        bf16* dk_out = head_ptr<bf16>(a.dk, dense_kv, b, h);
        bf16* dv_out = head_ptr<bf16>(a.dv, dense_kv, b, h);
        for (int64_t j = k0; j < std::min(Lk, k0 + w); ++j) {
          const bool masked = kb.masked(b, j);  // exactly 0, even where a NaN row made dS NaN
          for (int64_t cc = 0; cc < d; ++cc) {
            dk_out[j * d + cc] = to_bf16(masked ? 0.f : dk_t[cc * w + (j - k0)]);
            dv_out[j * d + cc] = to_bf16(masked ? 0.f : dv_t[cc * w + (j - k0)]);
          }
        }
      }
    } while (work.claim(item));
  });
  sum_dq_partials<bf16>(a, dq_partial.get(), chunks, dp, nt);
}
#endif

void attention_backward(const AttentionBackwardArgs& a) {
#if defined(__AVX512BF16__)
  if (a.dtype == DType::bf16) return backward_bf16_dot(a);
#endif
  if (a.dtype == DType::bf16)
    backward_typed<bf16>(a);
  else
    backward_typed<float>(a);
}

}  // namespace

extern const AttentionKernels attention_kernels = {attention_forward, attention_backward, kBf16Dot};

}  // namespace diffrt::cpu::DIFFRT_ISA
