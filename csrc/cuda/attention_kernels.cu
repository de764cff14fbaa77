// Fused multi-head attention on CUDA, FlashAttention-style: the Lq×Lk score matrix is never
// materialised. Same conventions as the CPU kernel (csrc/cpu/attention_kernels.cpp): storage float32,
// bfloat16 or float16, all arithmetic float32; key_padding_mask nonzero = attend; a row with no key to
// attend to is written as zeros with lse = −inf; non-finite inputs give what the CPU kernel (and the
// reference ops.attention_ref) gives.
//
// Forward, one block per (batch·head, tile of BQ query rows), looping over tiles of BK keys staged in
// shared memory, in the log2 domain t = scale·log2(e)·q·k (so the exponential is exp2f):
//   m' = max(m, rowmax t),  l' = l·2^(m−m') + rowsum 2^(t−m'),  O' = O·2^(m−m') + P·V
//   out = O / l,  lse = (m + log2 l)·ln 2  (= ln Σ_j exp(scale·q·k_j); saved for the backward)
// Backward (FlashAttention-2 math, P recomputed from lse), two kernels and no atomics:
//   dq kernel, per (bh, query tile) over key tiles:  D_i = rowsum(dO_i∘O_i) (also written to scratch),
//     P = 2^(t − lse·log2 e),  dP = dO·Vᵀ,  dS = P∘(dP − D),  dQ = scale·dS·K
//   dkv kernel, per (bh, key tile) over query tiles: dV = Pᵀ·dO,  dK = scale·dSᵀ·Q
//
// Thread layout: kThreads threads own the R rows of the block's tile, G = kThreads/R threads per row;
// thread (r, g) holds the columns c = g + G·k (k < Dmax/G) of its row's accumulators, and computes the
// scores of the streamed rows s = g + G·k of the current tile (full dot products from shared memory).
// Row statistics (max, sum) are combined over the G threads through shared memory, in a fixed order,
// so every thread of a row holds bit-identical m and l and the result is deterministic.
// Head dims up to 256, in three compiled buckets (Dmax = 64, 128, 256; the head dim is a runtime loop
// bound). Tiles are sized so that static shared memory stays below 48 KB.
//
// Masked keys (and keys past Lk in the last tile) take no part whatever their k and v hold: their score
// is selected as −inf (exp2 exactly 0) and their rows of the K and V tiles are loaded as zeros (0·NaN
// would be NaN); their dK, dV are written as zeros. While a row has seen no finite score, m = −inf and
// its exponent offset is 0 instead, so its P stays 0 (not 2^0) and no −inf − (−inf) arises.
// Non-finite attended values follow torch's softmax: fmaxf drops NaN, but exp2f(NaN) = NaN reaches l, as
// does a +inf score (2^(inf − inf)); a row with keys whose l is NaN, or 0 (every attended score −inf), is
// written as NaN with lse = NaN.
//
// Memory traffic (forward): read Q, O-sized output once; K and V once per query tile (from L2);
// 4·Lq·Lk·d FLOPs. Scalar FMAs, no tensor cores: this is the portable version of the kernel.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention_kernels.h"
#include "cuda/launch.h"

#if defined(__CUDACC__)
#define DIFFRT_UNROLL _Pragma("unroll")
#else
#define DIFFRT_UNROLL  // the host simulation (g++) does not know the pragma
#endif

namespace diffrt::cuda {
namespace attention_detail {

constexpr int kThreads = 128;  // 4 warps per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kMasked = -INFINITY;  // a masked key's score, and the running max before any finite score

// Forward tiles per head-dim bucket: shared floats (BQ + 2·BK)·(D + 1) + BQ·BK ≤ 12K (48 KB).
template <int D> struct FwdTile;
template <> struct FwdTile<64> { static constexpr int BQ = 32, BK = 32; };
template <> struct FwdTile<128> { static constexpr int BQ = 32, BK = 16; };
template <> struct FwdTile<256> { static constexpr int BQ = 16, BK = 8; };
// Backward: row tile = streamed tile = B; shared floats 4·B·(D + 1) + 2·B·B.
template <int D> struct BwdTile;
template <> struct BwdTile<64> { static constexpr int B = 32; };
template <> struct BwdTile<128> { static constexpr int B = 16; };
template <> struct BwdTile<256> { static constexpr int B = 8; };

template <typename T>
DIFFRT_HD const T* head_ptr(const void* base, const HeadStrides& s, int64_t b, int64_t h) {
  return static_cast<const T*>(base) + b * s.batch + h * s.head;
}

// dst[r][c] = src[(r0 + r)·row_stride + c] for r < ROWS, c < d, as float; rows at or past n are zeros
// (so that 0·garbage never makes a NaN). All threads of the block take part.
template <int ROWS, int LD, typename T>
__device__ void load_tile(float (*dst)[LD], const T* src, int64_t row_stride, int64_t r0, int64_t n, int d) {
  for (int e = threadIdx.x; e < ROWS * d; e += kThreads) {
    const int r = e / d, c = e % d;
    dst[r][c] = r0 + r < n ? load(src[(r0 + r) * row_stride + c]) : 0.f;
  }
}

__device__ inline float dot(const float* a, const float* b, int d) {
  float acc = 0.f;
  for (int c = 0; c < d; ++c) acc = fmaf(a[c], b[c], acc);
  return acc;
}

// Key k0 + j takes part: inside Lk and not masked out.
__device__ inline float key_ok(const uint8_t* mask, int64_t b, int64_t Lk, int64_t key) {
  return key < Lk && (mask == nullptr || mask[b * Lk + key] != 0) ? 1.f : 0.f;
}

// load_tile for K and V: rows of keys that take no part (masked, or at or past Lk) are zeros.
template <int ROWS, int LD, typename T>
__device__ void load_key_tile(float (*dst)[LD], const T* src, int64_t row_stride, int64_t k0, const uint8_t* mask,
                              int64_t b, int64_t Lk, int d) {
  for (int e = threadIdx.x; e < ROWS * d; e += kThreads) {
    const int r = e / d, c = e % d;
    dst[r][c] = key_ok(mask, b, Lk, k0 + r) != 0.f ? load(src[(k0 + r) * row_stride + c]) : 0.f;
  }
}

// lse in the log2 domain, +inf for a row without keys (or past Lq), so that its P = 2^(t − lse2) = 0.
__device__ inline float lse_log2(const float* lse, int64_t row, bool valid) {
  if (!valid) return INFINITY;
  const float v = lse[row];
  return v == -INFINITY ? INFINITY : v * kLog2e;
}

struct FwdParams {
  AttentionForwardArgs a;
  int64_t q_tiles;
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(FwdParams p) {
  constexpr int BQ = FwdTile<D>::BQ, BK = FwdTile<D>::BK, G = kThreads / BQ, NC = D / G, NK = BK / G;
  static_assert(kThreads % BQ == 0 && BK % G == 0 && D % G == 0, "tile shape");
  __shared__ float q_s[BQ][D + 1];  // +1: rows in different banks
  __shared__ float k_s[BK][D + 1];
  __shared__ float v_s[BK][D + 1];
  __shared__ float p_s[BQ][BK];
  __shared__ float max_s[BQ][G], sum_s[BQ][G];
  __shared__ float ok_s[BK];
  __shared__ int any_key_s;  // the batch item attends to some key

  const AttentionForwardArgs& a = p.a;
  const int d = int(a.head_dim);
  const int64_t Lq = a.q_len, Lk = a.kv_len;
  const int64_t bh = blockIdx.x / p.q_tiles, q0 = (blockIdx.x % p.q_tiles) * BQ;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const float c2 = a.scale * kLog2e;

  load_tile<BQ>(q_s, head_ptr<T>(a.q, a.q_strides, b, h), a.q_strides.row, q0, Lq, d);
  const T* kh = head_ptr<T>(a.k, a.k_strides, b, h);
  const T* vh = head_ptr<T>(a.v, a.v_strides, b, h);

  float o[NC];
DIFFRT_UNROLL
  for (int k = 0; k < NC; ++k) o[k] = 0.f;
  float m = kMasked, l = 0.f;
  if (threadIdx.x == 0) any_key_s = 0;  // ordered before the loop's writes by its first barrier

  for (int64_t k0 = 0; k0 < Lk; k0 += BK) {
    __syncthreads();  // the previous tile's readers are done (and q_s is visible the first time)
    load_key_tile<BK>(k_s, kh, a.k_strides.row, k0, a.key_padding_mask, b, Lk, d);
    load_key_tile<BK>(v_s, vh, a.v_strides.row, k0, a.key_padding_mask, b, Lk, d);
    if (threadIdx.x < BK) {
      const float ok = key_ok(a.key_padding_mask, b, Lk, k0 + threadIdx.x);
      ok_s[threadIdx.x] = ok;
      if (ok != 0.f) any_key_s = 1;
    }
    __syncthreads();

    // t = c2·q·k for this thread's keys, and the row max over the G threads of the row.
    float t[NK], mx = kMasked;
DIFFRT_UNROLL
    for (int k = 0; k < NK; ++k) {
      const int j = g + G * k;
      t[k] = ok_s[j] != 0.f ? c2 * dot(q_s[r], k_s[j], d) : kMasked;
      mx = fmaxf(mx, t[k]);
    }
    max_s[r][g] = mx;
    __syncthreads();
    float m_new = m;
    for (int gg = 0; gg < G; ++gg) m_new = fmaxf(m_new, max_s[r][gg]);
    const float m_used = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(m - m_used);  // 2^(m − m'); 0 while no finite score was seen
    m = m_new;
    float psum = 0.f;
DIFFRT_UNROLL
    for (int k = 0; k < NK; ++k) {
      const float pk = exp2f(t[k] - m_used);
      p_s[r][g + G * k] = pk;
      psum += pk;
    }
    sum_s[r][g] = psum;
    __syncthreads();

    // l' = l·α + rowsum P;  O' = O·α + P·V (this thread's columns).
    float rowsum = 0.f;
    for (int gg = 0; gg < G; ++gg) rowsum += sum_s[r][gg];
    l = l * alpha + rowsum;
DIFFRT_UNROLL
    for (int k = 0; k < NC; ++k) o[k] *= alpha;
    for (int j = 0; j < BK; ++j) {
      const float pj = p_s[r][j];
DIFFRT_UNROLL
      for (int k = 0; k < NC; ++k) o[k] = fmaf(pj, v_s[j][g + G * k], o[k]);
    }
  }

  // out = O / l, lse = (m + log2 l)·ln 2; zeros and −inf for a row without keys; NaN (both) for a row
  // with keys whose l is NaN or 0. The last write to any_key_s precedes the loop's last barrier.
  if (q0 + r < Lq) {
    const bool has_key = Lk > 0 && any_key_s != 0, finite = has_key && l > 0.f;
    const float inv = 1.f / l, fill = has_key ? NAN : 0.f;
    T* out = const_cast<T*>(head_ptr<T>(a.out, a.out_strides, b, h)) + (q0 + r) * a.out_strides.row;
DIFFRT_UNROLL
    for (int k = 0; k < NC; ++k) {
      const int c = g + G * k;
      if (c < d) out[c] = store_as<T>(finite ? o[k] * inv : fill);
    }
    if (a.lse && g == 0) a.lse[bh * Lq + q0 + r] = finite ? (m + log2f(l)) * kLn2 : has_key ? NAN : -INFINITY;
  }
}

struct BwdParams {
  AttentionBackwardArgs a;
  int64_t tiles;  // row tiles per (batch·head): of queries for the dq kernel, of keys for the dkv kernel
  float* delta;   // (B·H, Lq) scratch: D_i = rowsum(dO_i∘O_i), written by the dq kernel
};

// dQ, and D for the dkv kernel. Rows: queries; streamed: key tiles.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_backward_dq_kernel(BwdParams p) {
  // With B < G (D = 256) some threads score nothing: NK = ⌈B/G⌉ with a bound check.
  constexpr int B = BwdTile<D>::B, G = kThreads / B, NC = D / G, NK = (B + G - 1) / G;
  static_assert(kThreads % B == 0 && D % G == 0, "tile shape");
  __shared__ float q_s[B][D + 1];
  __shared__ float do_s[B][D + 1];
  __shared__ float k_s[B][D + 1];
  __shared__ float v_s[B][D + 1];
  __shared__ float ds_s[B][B];
  __shared__ float sum_s[B][G];
  __shared__ float ok_s[B];

  const AttentionBackwardArgs& a = p.a;
  const int d = int(a.head_dim);
  const int64_t Lq = a.q_len, Lk = a.kv_len;
  const int64_t bh = blockIdx.x / p.tiles, q0 = (blockIdx.x % p.tiles) * B;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const bool row_ok = q0 + r < Lq;
  const float c2 = a.scale * kLog2e;

  load_tile<B>(q_s, head_ptr<T>(a.q, a.q_strides, b, h), a.q_strides.row, q0, Lq, d);
  load_tile<B>(do_s, head_ptr<T>(a.dout, a.dout_strides, b, h), a.dout_strides.row, q0, Lq, d);
  __syncthreads();

  // D_i = rowsum(dO_i∘O_i): partial sums over this thread's columns, combined in a fixed order.
  float part = 0.f;
  if (row_ok) {
    const T* orow = head_ptr<T>(a.out, a.out_strides, b, h) + (q0 + r) * a.out_strides.row;
DIFFRT_UNROLL
    for (int k = 0; k < NC; ++k) {
      const int c = g + G * k;
      if (c < d) part = fmaf(do_s[r][c], load(orow[c]), part);
    }
  }
  sum_s[r][g] = part;
  __syncthreads();
  float delta = 0.f;
  for (int gg = 0; gg < G; ++gg) delta += sum_s[r][gg];
  if (row_ok && g == 0) p.delta[bh * Lq + q0 + r] = delta;
  const float lse2 = lse_log2(a.lse, bh * Lq + q0 + r, row_ok);

  const T* kh = head_ptr<T>(a.k, a.k_strides, b, h);
  const T* vh = head_ptr<T>(a.v, a.v_strides, b, h);
  float dq[NC];
DIFFRT_UNROLL
  for (int k = 0; k < NC; ++k) dq[k] = 0.f;

  for (int64_t k0 = 0; k0 < Lk; k0 += B) {
    __syncthreads();  // previous tile's readers done (sum_s read too)
    load_key_tile<B>(k_s, kh, a.k_strides.row, k0, a.key_padding_mask, b, Lk, d);
    load_key_tile<B>(v_s, vh, a.v_strides.row, k0, a.key_padding_mask, b, Lk, d);
    if (threadIdx.x < B) ok_s[threadIdx.x] = key_ok(a.key_padding_mask, b, Lk, k0 + threadIdx.x);
    __syncthreads();
    // P = 2^(t − lse2),  dS = P∘(dO·vᵀ − D)
DIFFRT_UNROLL
    for (int k = 0; k < NK; ++k) {
      const int j = g + G * k;
      if (j >= B) break;
      const float pk = ok_s[j] != 0.f ? exp2f(c2 * dot(q_s[r], k_s[j], d) - lse2) : 0.f;
      ds_s[r][j] = pk * (dot(do_s[r], v_s[j], d) - delta);
    }
    __syncthreads();
    // dQ += dS·K (scaled at the end)
    for (int j = 0; j < B; ++j) {
      const float dsj = ds_s[r][j];
DIFFRT_UNROLL
      for (int k = 0; k < NC; ++k) dq[k] = fmaf(dsj, k_s[j][g + G * k], dq[k]);
    }
  }

  if (row_ok) {
    T* out = static_cast<T*>(a.dq) + (bh * Lq + q0 + r) * a.head_dim;
DIFFRT_UNROLL
    for (int k = 0; k < NC; ++k) {
      const int c = g + G * k;
      if (c < d) out[c] = store_as<T>(a.scale * dq[k]);
    }
  }
}

// dK, dV. Rows: keys; streamed: query tiles (with lse and D per query).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_backward_dkv_kernel(BwdParams p) {
  constexpr int B = BwdTile<D>::B, G = kThreads / B, NC = D / G, NQ = (B + G - 1) / G;
  __shared__ float k_s[B][D + 1];
  __shared__ float v_s[B][D + 1];
  __shared__ float q_s[B][D + 1];
  __shared__ float do_s[B][D + 1];
  __shared__ float p_s[B][B];   // [query][key]
  __shared__ float ds_s[B][B];  // [query][key]
  __shared__ float lse2_s[B], delta_s[B];

  const AttentionBackwardArgs& a = p.a;
  const int d = int(a.head_dim);
  const int64_t Lq = a.q_len, Lk = a.kv_len;
  const int64_t bh = blockIdx.x / p.tiles, k0 = (blockIdx.x % p.tiles) * B;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const float c2 = a.scale * kLog2e;
  const bool key_live = key_ok(a.key_padding_mask, b, Lk, k0 + r) != 0.f;

  load_key_tile<B>(k_s, head_ptr<T>(a.k, a.k_strides, b, h), a.k_strides.row, k0, a.key_padding_mask, b, Lk, d);
  load_key_tile<B>(v_s, head_ptr<T>(a.v, a.v_strides, b, h), a.v_strides.row, k0, a.key_padding_mask, b, Lk, d);
  const T* qh = head_ptr<T>(a.q, a.q_strides, b, h);
  const T* doh = head_ptr<T>(a.dout, a.dout_strides, b, h);
  float dk[NC], dv[NC];
DIFFRT_UNROLL
  for (int k = 0; k < NC; ++k) dk[k] = dv[k] = 0.f;

  for (int64_t q0 = 0; q0 < Lq; q0 += B) {
    __syncthreads();  // previous tile's readers done (k_s, v_s visible the first time)
    load_tile<B>(q_s, qh, a.q_strides.row, q0, Lq, d);
    load_tile<B>(do_s, doh, a.dout_strides.row, q0, Lq, d);
    if (threadIdx.x < B) {
      const bool ok = q0 + threadIdx.x < Lq;
      lse2_s[threadIdx.x] = lse_log2(a.lse, bh * Lq + q0 + threadIdx.x, ok);
      delta_s[threadIdx.x] = ok ? p.delta[bh * Lq + q0 + threadIdx.x] : 0.f;
    }
    __syncthreads();
    // P_ij and dS_ij for this key j = r and the queries i = g + G·k.
DIFFRT_UNROLL
    for (int k = 0; k < NQ; ++k) {
      const int i = g + G * k;
      if (i >= B) break;
      const float pk = key_live ? exp2f(c2 * dot(q_s[i], k_s[r], d) - lse2_s[i]) : 0.f;
      p_s[i][r] = pk;
      ds_s[i][r] = pk * (dot(do_s[i], v_s[r], d) - delta_s[i]);
    }
    __syncthreads();
    // dV += Pᵀ·dO,  dK += dSᵀ·Q (scaled at the end)
    for (int i = 0; i < B; ++i) {
      const float pi = p_s[i][r], dsi = ds_s[i][r];
DIFFRT_UNROLL
      for (int k = 0; k < NC; ++k) {
        dv[k] = fmaf(pi, do_s[i][g + G * k], dv[k]);
        dk[k] = fmaf(dsi, q_s[i][g + G * k], dk[k]);
      }
    }
  }

  if (k0 + r < Lk) {  // a masked key: exactly 0, even where a NaN row made its dS NaN
    T* dko = static_cast<T*>(a.dk) + (bh * Lk + k0 + r) * a.head_dim;
    T* dvo = static_cast<T*>(a.dv) + (bh * Lk + k0 + r) * a.head_dim;
DIFFRT_UNROLL
    for (int k = 0; k < NC; ++k) {
      const int c = g + G * k;
      if (c < d) {
        dko[c] = store_as<T>(key_live ? a.scale * dk[k] : 0.f);
        dvo[c] = store_as<T>(key_live ? dv[k] : 0.f);
      }
    }
  }
}

template <typename F>
void for_dtype(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); return;
    case DType::bf16: fn(bf16{}); return;
    case DType::f16: fn(f16{}); return;
  }
  throw std::invalid_argument("attention: unsupported dtype for the CUDA kernels");
}

// Calls fn(std::integral_constant<int, Dmax>) for the smallest bucket that holds head_dim.
template <typename F>
void for_head_dim(const char* op, int64_t d, F&& fn) {
  if (d <= 0 || d > kAttentionMaxHeadDim)
    throw std::invalid_argument(std::string(op) + ": head_dim must be in [1, " +
                                std::to_string(kAttentionMaxHeadDim) + "] on CUDA, got " + std::to_string(d));
  if (d <= 64) fn(std::integral_constant<int, 64>{});
  else if (d <= 128) fn(std::integral_constant<int, 128>{});
  else fn(std::integral_constant<int, 256>{});
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_grid(const char* op, int64_t blocks) {
  if (blocks > int64_t(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument(std::string(op) + ": too many (batch·heads, tile) blocks for one launch");
}

void forward(const AttentionForwardArgs& a, int device, cudaStream_t stream) {
  const char* op = "attention_forward";
  const int64_t BH = a.batch * a.heads;
  if (BH == 0 || a.q_len == 0) return;
  DeviceGuard guard(device, op);
  for_head_dim(op, a.head_dim, [&](auto dmax) {
    constexpr int D = decltype(dmax)::value;
    const int64_t q_tiles = ceil_div(a.q_len, FwdTile<D>::BQ);
    check_grid(op, BH * q_tiles);
    for_dtype(a.dtype, [&](auto tag) {
      using T = decltype(tag);
      launch(op, attention_forward_kernel<T, D>, dim3(unsigned(BH * q_tiles)), dim3(kThreads), stream,
             FwdParams{a, q_tiles});
    });
  });
}

void backward(const AttentionBackwardArgs& a, int device, cudaStream_t stream) {
  const char* op = "attention_backward";
  if (!a.lse) throw std::invalid_argument("attention_backward needs the forward's lse");
  const int64_t BH = a.batch * a.heads;
  if (BH == 0 || (a.q_len == 0 && a.kv_len == 0)) return;
  DeviceGuard guard(device, op);
  for_head_dim(op, a.head_dim, [&](auto dmax) {
    constexpr int D = decltype(dmax)::value;
    constexpr int B = BwdTile<D>::B;
    const int64_t q_tiles = ceil_div(a.q_len, B), k_tiles = ceil_div(a.kv_len, B);
    check_grid(op, BH * (q_tiles > k_tiles ? q_tiles : k_tiles));
    Workspace ws(Workspace::aligned(size_t(BH * a.q_len) * sizeof(float)), stream, op);
    float* delta = ws.take<float>(size_t(BH * a.q_len));
    for_dtype(a.dtype, [&](auto tag) {
      using T = decltype(tag);
      if (q_tiles)
        launch(op, attention_backward_dq_kernel<T, D>, dim3(unsigned(BH * q_tiles)), dim3(kThreads), stream,
               BwdParams{a, q_tiles, delta});
      if (k_tiles)
        launch(op, attention_backward_dkv_kernel<T, D>, dim3(unsigned(BH * k_tiles)), dim3(kThreads), stream,
               BwdParams{a, k_tiles, delta});
    });
  });
}

}  // namespace attention_detail

void attention_forward(const AttentionForwardArgs& a, int device, cudaStream_t stream) {
  attention_detail::forward(a, device, stream);
}

void attention_backward(const AttentionBackwardArgs& a, int device, cudaStream_t stream) {
  attention_detail::backward(a, device, stream);
}

}  // namespace diffrt::cuda
