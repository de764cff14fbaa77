// CUDA kernels for the sampler ops: DDIM step / inversion with fused guidance, CFG combination,
// mask blending and the DiffEdit mask estimate. The per-element math is csrc/sampler_math.h, shared
// with the CPU kernels; this file adds the launch geometry and the per-sample reductions.
// Storage float32, bfloat16 or float16; arithmetic float32; per-sample statistics in double.
//
// Geometry: a 2-D grid, blockIdx.y = sample ("row"), blockIdx.x strides over the row's elements,
// so per-sample parameters are one broadcast load per block and no element index is divided.
// The one-pass elementwise kernels move 16 bytes per access (4 float32 or 8 16-bit values) when
// every pointer is 16-byte aligned and rows are a whole number of such packs; otherwise one element.
// Per-sample sums are block reductions (warp shuffles, then shared memory) written as one partial
// per block and added in a fixed order by a second kernel: deterministic, no atomics on globals.
//
// Memory traffic per call (N samples of M elements, s bytes per element):
//   ddim_step          read x, m (both halves when guided) [, z]; write x_prev [, x̂0]   one pass
//     + guidance_rescale   two extra reads of both model halves (per-sample mean, then the squared
//                          deviations from it: a two-pass std, accurate at any |mean|/std)
//     + dynamic threshold  one extra read of x and m, a 4-byte |x̂0| per element written to scratch,
//                          then read back 4 or 5 times by one block per sample (radix select)
//   cfg_combine        read ε_u, ε_c; write ε̃                  (+ two reads of both for rescale)
//   mask_blend         read a, b, mask (1/C of a); write out
//   diffedit_mask      read ε_q, ε_r once; write the map, then read and rewrite it to normalise
//   euler_step         read x, m [, z]; write x_prev [, x̂0]                   one pass
//   dpm_solver_2m_step read x, m [, x̂0_last]; write x_prev [, x̂0]            one pass
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/launch.h"
#include "sampler_math.h"

namespace diffrt::cuda {
namespace {

constexpr int kThreads = 256;            // threads per block: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kItemsPerThread = 4;       // elements per thread before the row loop wraps
constexpr int64_t kMaxBlocksPerRow = 1024;
#ifndef DIFFRT_CUDA_MAX_ROW_BLOCKS  // the simulation lowers it, to run the row loops on small batches
#define DIFFRT_CUDA_MAX_ROW_BLOCKS 65535  // CUDA's limit on gridDim.y
#endif
constexpr int64_t kMaxGridY = DIFFRT_CUDA_MAX_ROW_BLOCKS;  // rows beyond it loop within a block

// Everything one sample needs: DDIM coefficients, guidance weights, clip bounds. Filled on the host;
// guidance_rescale rewrites `g` and dynamic thresholding rewrites `lim`/`divisor` on the device.
struct RowParams {
  DdimCoeffs k;
  GuidanceWeights g;  // ε̃ = g.scale·(ε_u + g.w·(ε_c − ε_u)) when guided
  double w;           // guidance scale, for the rescale statistics
  float mean_cond, mean_cfg;  // rescale: the row's mean of ε_c and of ε̃ (pass 1), the shift of pass 2
  float lim, divisor; // sampler_math.h ddim_element
};

template <typename T>
struct DdimTensors {
  const T* x;
  const T* model;       // ε_u (guided) or the model output
  const T* model_cond;  // ε_c, or nullptr
  const T* noise;       // z, or nullptr
  T* out;
  T* out_x0;            // or nullptr
};

dim3 row_grid(int64_t rows, int64_t row_len) {
  const int64_t per_block = int64_t(kThreads) * kItemsPerThread;
  int64_t bx = (row_len + per_block - 1) / per_block;
  bx = bx < 1 ? 1 : (bx > kMaxBlocksPerRow ? kMaxBlocksPerRow : bx);
  return dim3(unsigned(bx), unsigned(rows < kMaxGridY ? rows : kMaxGridY));
}

dim3 rows_grid(int64_t rows) { return dim3(unsigned(rows < kMaxGridY ? rows : kMaxGridY)); }

// kVec consecutive elements, read or written with one access (16 bytes when kVec = 16 / sizeof(T)).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
constexpr int kPackOf = 16 / int(sizeof(T));

// Pack number i of p (p must be aligned to a pack: see packs_fit).
template <int kVec, typename T>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p, int64_t i) {
#if defined(DIFFRT_CUDA_SIM)
  if (reinterpret_cast<uintptr_t>(p + i * kVec) % alignof(Pack<T, kVec>)) __builtin_trap();  // a misaligned pack
#endif
  return reinterpret_cast<const Pack<T, kVec>*>(p)[i];
}
template <int kVec, typename T>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const Pack<T, kVec>& v) {
#if defined(DIFFRT_CUDA_SIM)
  if (reinterpret_cast<uintptr_t>(p + i * kVec) % alignof(Pack<T, kVec>)) __builtin_trap();
#endif
  reinterpret_cast<Pack<T, kVec>*>(p)[i] = v;
}

// Whether rows of row_len elements can be read in 16-byte packs through all these pointers.
template <typename T>
bool packs_fit(int64_t row_len, std::initializer_list<const void*> pointers) {
  if (row_len % kPackOf<T>) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}

// This thread's first element (or pack) of a row and the stride to its next (coalesced:
// neighbouring threads touch neighbouring elements).
__device__ __forceinline__ int64_t row_begin() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t row_step() { return int64_t(gridDim.x) * blockDim.x; }

// Sums K doubles over the block; the totals are valid in thread 0. Every thread of the block must
// call it (it synchronises), with blockDim.x a multiple of 32 and at most kThreads.
template <int K>
__device__ void block_sum(double (&v)[K]) {
  __shared__ double warp_total[kWarps][K];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k)
    for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
  if (lane == 0)
    for (int k = 0; k < K; ++k) warp_total[warp][k] = v[k];
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < K; ++k) {
      v[k] = lane < int(blockDim.x / 32) ? warp_total[lane][k] : 0.0;
      for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
    }
  }
  __syncthreads();  // warp_total may be reused by the next call
}

// ---- guidance rescale: per-sample std of ε_c and of ε̃ = ε_u + w(ε_c − ε_u) --------------------
// Two passes over the row (raw Σv² loses the variance at large |mean|/std): pass 1 the means, pass 2
// Σd and Σd² of d = v − mean, so M2 = Σd² − (Σd)²/n (the correction term absorbs the mean's own
// rounding). Per-thread sums in double, block sums, partials added in a fixed order.

// Pass 1: Σε_c, Σε̃ over this block's slice of the row → partial[row][block][2].
template <typename T>
__global__ void __launch_bounds__(kThreads)
guidance_sum_kernel(const T* uncond, const T* cond, const RowParams* rows, int64_t batch, int64_t numel,
                    double* partial) {
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const float w = float(rows[r].w);
    const int64_t o = r * numel;
    double s[2] = {0.0, 0.0};
    for (int64_t i = row_begin(); i < numel; i += row_step()) {
      const float u = load(uncond[o + i]), c = load(cond[o + i]);
      s[0] += c;
      s[1] += u + w * (c - u);
    }
    block_sum(s);
    if (threadIdx.x == 0)
      for (int j = 0; j < 2; ++j) partial[(r * gridDim.x + blockIdx.x) * 2 + j] = s[j];
  }
}

// One block per row adds its `parts` partials in a fixed order → the row's means.
__global__ void __launch_bounds__(kThreads)
guidance_mean_kernel(RowParams* rows, int64_t batch, int64_t numel, const double* partial, int parts) {
  for (int64_t r = blockIdx.x; r < batch; r += gridDim.x) {
    double s[2] = {0.0, 0.0};
    for (int p = threadIdx.x; p < parts; p += blockDim.x)
      for (int j = 0; j < 2; ++j) s[j] += partial[(r * parts + p) * 2 + j];
    block_sum(s);
    if (threadIdx.x == 0) {
      rows[r].mean_cond = float(s[0] / double(numel));
      rows[r].mean_cfg = float(s[1] / double(numel));
    }
  }
}

// Pass 2: Σd, Σd² for ε_c and for ε̃ (d = v − mean) → partial[row][block][4].
template <typename T>
__global__ void __launch_bounds__(kThreads)
guidance_dev_kernel(const T* uncond, const T* cond, const RowParams* rows, int64_t batch, int64_t numel,
                    double* partial) {
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const float w = float(rows[r].w), mc = rows[r].mean_cond, mg = rows[r].mean_cfg;
    const int64_t o = r * numel;
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t i = row_begin(); i < numel; i += row_step()) {
      const float u = load(uncond[o + i]), c = load(cond[o + i]);
      const double d = c - mc, e = (u + w * (c - u)) - mg;
      s[0] += d; s[1] += d * d; s[2] += e; s[3] += e * e;
    }
    block_sum(s);
    if (threadIdx.x == 0)
      for (int j = 0; j < 4; ++j) partial[(r * gridDim.x + blockIdx.x) * 4 + j] = s[j];
  }
}

// One block per row adds the pass-2 partials in a fixed order; the unbiased stds give the rescaled
// weights (sampler_math.h guidance_weights), which replace the row's `g`.
__global__ void __launch_bounds__(kThreads)
guidance_rescale_kernel(RowParams* rows, int64_t batch, int64_t numel, const double* partial, int parts,
                        double rescale) {
  for (int64_t r = blockIdx.x; r < batch; r += gridDim.x) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    for (int p = threadIdx.x; p < parts; p += blockDim.x)
      for (int j = 0; j < 4; ++j) s[j] += partial[(r * parts + p) * 4 + j];
    block_sum(s);
    if (threadIdx.x == 0) {
      const double n = double(numel);
      const double std_cond = unbiased_std(s[1] - s[0] * s[0] / n, n);
      const double std_cfg = unbiased_std(s[3] - s[2] * s[2] / n, n);
      rows[r].g = guidance_weights(rows[r].w, rescale, std_cond, std_cfg);
      fold_guidance_scale(rows[r].k, rows[r].g.scale);  // the DDIM step applies r through x0_m, eps_m
    }
  }
}

// ---- dynamic thresholding: s = clamp(quantile_p |x̂0|, 1, max) per sample ------------------------

// |x̂0| of every element into scratch (x̂0 from the guided, possibly rescaled, model output).
template <typename T, Prediction P, bool kGuided>
__global__ void __launch_bounds__(kThreads)
abs_x0_kernel(DdimTensors<T> t, const RowParams* rows, int64_t batch, int64_t numel, float* scratch) {
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const RowParams p = rows[r];
    const int64_t o = r * numel;
    for (int64_t i = row_begin(); i < numel; i += row_step()) {
      float m = load(t.model[o + i]);
      if constexpr (kGuided) m = guided_element<false>(p.g, m, load(t.model_cond[o + i]));  // r is in p.k
      scratch[o + i] = abs_x0_element<P>(p.k, load(t.x[o + i]), m);
    }
  }
}

// torch.quantile's linear interpolation: with v sorted, pos = p(M−1), lo = ⌊pos⌋, hi = ⌈pos⌉,
// q = lerp(v[lo], v[hi], pos − lo) (sampler_math.h quantile_lerp), NaN when any value is NaN.
// One block per sample finds v[lo] by radix select:
// the values are ≥ 0, so their float bits order like the values; each of four passes builds a
// 256-bin shared histogram of the next 8 bits over the elements that match the bits chosen so
// far and picks the bin holding rank lo. v[lo+1] equals v[lo] when that value repeats past rank
// lo, else a fifth pass takes the smallest value above it (none when pos is whole). NaN (|x̂0| bits
// above those of inf) is counted in the first pass. Cost: the row is read 4–5 times by one
// block (4 B per element each), and equal values contend on one shared counter — small next to
// a model evaluation, but serial per sample for very large rows.
__global__ void __launch_bounds__(kThreads)
dynamic_threshold_kernel(RowParams* rows, int64_t batch, int64_t numel, const float* scratch, double p,
                         double max_s) {
  __shared__ unsigned hist[256];
  __shared__ uint32_t chosen_bits;
  __shared__ unsigned chosen_rank, chosen_count, min_above, any_nan;
  for (int64_t r = blockIdx.x; r < batch; r += gridDim.x) {
    const float* v = scratch + r * numel;
    const double pos = p * double(numel - 1);
    const int64_t lo = int64_t(floor(pos));
    const double weight = pos - double(lo);
    if (threadIdx.x == 0) any_nan = 0u;
    uint32_t prefix = 0, prefix_mask = 0;
    unsigned rank = unsigned(lo), count = 0;  // rank among the elements matching `prefix`
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) {
        const uint32_t u = float_to_bits(v[i]);
        if ((u & prefix_mask) == prefix) atomicAdd(&hist[(u >> shift) & 0xffu], 1u);
        if (shift == 24 && u > 0x7f800000u) any_nan = 1u;  // a benign race: every writer stores 1
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        unsigned b = 0, k = rank;
        while (k >= hist[b]) k -= hist[b++];  // rank < number of matching elements, so b < 256
        chosen_bits = prefix | (uint32_t(b) << shift);
        chosen_rank = k;
        chosen_count = hist[b];
      }
      __syncthreads();
      prefix = chosen_bits;
      rank = chosen_rank;
      count = chosen_count;  // after the last pass: how many elements equal v[lo]
      prefix_mask |= 0xffu << shift;
    }
    const float below = bits_to_float(prefix);
    float above = below;
    if (weight > 0.0 && rank + 1 >= count) {  // v[lo] does not repeat past rank lo: v[lo+1] is the next value
      if (threadIdx.x == 0) min_above = 0xffffffffu;
      __syncthreads();
      uint32_t mine = 0xffffffffu;
      for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) {
        const uint32_t u = float_to_bits(v[i]);
        if (u > prefix && u < mine) mine = u;
      }
      atomicMin(&min_above, mine);
      __syncthreads();
      above = bits_to_float(min_above);
    }
    if (threadIdx.x == 0) {
      const double q = any_nan ? double(NAN) : quantile_lerp(below, above, weight);
      const double s = dynamic_threshold_scale(q, max_s);  // s = clamp(q, min=1, max), as torch.clamp
      rows[r].lim = float(s);
      rows[r].divisor = float(s);
    }
    __syncthreads();  // the shared words are reused for the next row
  }
}

// ---- the DDIM update (eq. 12), one pass --------------------------------------------------------

// Indices below count packs of kVec elements (kVec = 1: single elements).
template <typename T, int kVec, Prediction P, bool kGuided, bool kClip, bool kRecomputeEps>
__global__ void __launch_bounds__(kThreads)
ddim_step_kernel(DdimTensors<T> t, const RowParams* rows, int64_t batch, int64_t numel) {
  const int64_t packs = numel / kVec;
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const RowParams p = rows[r];
    for (int64_t i = row_begin(); i < packs; i += row_step()) {
      const int64_t e = r * packs + i;
      const Pack<T, kVec> x = load_pack<kVec>(t.x, e), mu = load_pack<kVec>(t.model, e);
      Pack<T, kVec> mc{}, z{}, x_prev, x0;
      if constexpr (kGuided) mc = load_pack<kVec>(t.model_cond, e);
      if (t.noise) z = load_pack<kVec>(t.noise, e);  // noise and x̂0: uniform branches, no extra kernels
      for (int j = 0; j < kVec; ++j) {
        float m = load(mu.v[j]);
        if constexpr (kGuided) m = guided_element<false>(p.g, m, load(mc.v[j]));  // r is in p.k
        float x0j;
        const float xp = ddim_element<P, kClip, kRecomputeEps>(p.k, load(x.v[j]), m, t.noise ? load(z.v[j]) : 0.f,
                                                            p.lim, p.divisor, &x0j);
        x_prev.v[j] = store_as<T>(xp);
        x0.v[j] = store_as<T>(x0j);
      }
      store_pack<kVec>(t.out, e, x_prev);  // out may alias x: each pack is read before it is written
      if (t.out_x0) store_pack<kVec>(t.out_x0, e, x0);
    }
  }
}

// ---- σ-space steps (Euler, Euler ancestral, DPM-Solver++ 2M), one pass -------------------------

template <typename T>
struct SigmaStepTensors {
  const T* x;
  const T* model;
  const T* x0_last;  // DPM-Solver++ 2M second order, or nullptr
  const T* noise;    // Euler ancestral, or nullptr
  T* out;
  T* out_x0;         // or nullptr
};

template <typename T, int kVec, Prediction P, bool kSecondOrder, bool kNoise>
__global__ void __launch_bounds__(kThreads)
sigma_step_kernel(SigmaStepTensors<T> t, const SigmaStepCoeffs* coeffs, int64_t batch, int64_t numel) {
  const int64_t packs = numel / kVec;
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const SigmaStepCoeffs k = coeffs[r];
    for (int64_t i = row_begin(); i < packs; i += row_step()) {
      const int64_t e = r * packs + i;
      const Pack<T, kVec> x = load_pack<kVec>(t.x, e), m = load_pack<kVec>(t.model, e);
      Pack<T, kVec> last{}, z{}, x_prev, x0;
      if constexpr (kSecondOrder) last = load_pack<kVec>(t.x0_last, e);
      if constexpr (kNoise) z = load_pack<kVec>(t.noise, e);
      for (int j = 0; j < kVec; ++j) {
        float x0j;
        const float xp = sigma_step_element<P, kSecondOrder, kNoise>(
            k, load(x.v[j]), load(m.v[j]), kSecondOrder ? load(last.v[j]) : 0.f, kNoise ? load(z.v[j]) : 0.f, &x0j);
        x_prev.v[j] = store_as<T>(xp);
        x0.v[j] = store_as<T>(x0j);
      }
      store_pack<kVec>(t.out, e, x_prev);  // out may alias x: each pack is read before it is written
      if (t.out_x0) store_pack<kVec>(t.out_x0, e, x0);
    }
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
cfg_combine_kernel(const T* uncond, const T* cond, T* out, const RowParams* rows, int64_t batch, int64_t numel) {
  const int64_t packs = numel / kVec;
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    const GuidanceWeights g = rows[r].g;
    for (int64_t i = row_begin(); i < packs; i += row_step()) {
      const int64_t e = r * packs + i;
      const Pack<T, kVec> u = load_pack<kVec>(uncond, e), c = load_pack<kVec>(cond, e);
      Pack<T, kVec> o;
      for (int j = 0; j < kVec; ++j) o.v[j] = store_as<T>(guided_element(g, load(u.v[j]), load(c.v[j])));
      store_pack<kVec>(out, e, o);
    }
  }
}

// Rows are (sample, channel) planes; the mask row is the sample's (or the one shared mask).
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
mask_blend_kernel(const T* mask, int64_t mask_batch_stride, const T* a, const T* b, T* out, int64_t planes,
                  int64_t channels, int64_t spatial) {
  const int64_t packs = spatial / kVec;
  for (int64_t r = blockIdx.y; r < planes; r += gridDim.y) {
    const T* m = mask + (r / channels) * mask_batch_stride;
    for (int64_t i = row_begin(); i < packs; i += row_step()) {
      const int64_t e = r * packs + i;
      const Pack<T, kVec> mi = load_pack<kVec>(m, i), ai = load_pack<kVec>(a, e), bi = load_pack<kVec>(b, e);
      Pack<T, kVec> o;
      for (int j = 0; j < kVec; ++j) o.v[j] = store_as<T>(blend_element(load(mi.v[j]), load(ai.v[j]), load(bi.v[j])));
      store_pack<kVec>(out, e, o);
    }
  }
}

// DiffEdit (Couairon et al. 2022, §3.2), pass 1: each thread owns pixels of one image and adds
// |ε_q − ε_r| over the n·C planes (plane by plane, so a warp reads 32 neighbouring pixels),
// writes the mean; the block's sum of its map values → partial[image][block].
template <typename T>
__global__ void __launch_bounds__(kThreads)
diffedit_map_kernel(const T* query, const T* ref, float* out, int64_t batch, int64_t planes, int64_t spatial,
                    float inv_planes, double* partial) {
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    float map_sum = 0.f;
    for (int64_t i = row_begin(); i < spatial; i += row_step()) {
      float acc = 0.f;
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t k = (r * planes + p) * spatial + i;
        acc += fabsf(load(query[k]) - load(ref[k]));
      }
      acc *= inv_planes;
      out[r * spatial + i] = acc;
      map_sum += acc;
    }
    double s[1] = {map_sum};
    block_sum(s);
    if (threadIdx.x == 0) partial[r * gridDim.x + blockIdx.x] = s[0];
  }
}

// Pass 2: bound = clamp_ratio · mean(map) (every block adds the image's partials in the same
// order), then map = min(map, bound)/bound, binarised at > threshold unless threshold < 0
// (sampler_math.h diffedit_normalise_element: a NaN bound gives a NaN map).
__global__ void __launch_bounds__(kThreads)
diffedit_normalise_kernel(float* out, int64_t batch, int64_t spatial, const double* partial, int parts,
                          double clamp_ratio, double threshold) {
  __shared__ float bound_shared;
  for (int64_t r = blockIdx.y; r < batch; r += gridDim.y) {
    if (threadIdx.x == 0) {
      double sum = 0.0;
      for (int p = 0; p < parts; ++p) sum += partial[r * parts + p];
      bound_shared = float(clamp_ratio * sum / double(spatial));
    }
    __syncthreads();
    const float bound = bound_shared, thr = threshold >= 0.0 ? float(threshold) : -1.f;
    float* map = out + r * spatial;
    for (int64_t i = row_begin(); i < spatial; i += row_step()) map[i] = diffedit_normalise_element(map[i], bound, thr);
    __syncthreads();  // bound_shared is rewritten for the next row
  }
}

// ---- host side ---------------------------------------------------------------------------------


// Runs fn with the pack width: with_pack<T>(fits, [&](auto kv) { f<decltype(kv)::value>(); }).
template <typename T, typename F>
void with_pack(bool fits, F&& fn) {
  if (fits)
    fn(std::integral_constant<int, kPackOf<T>>{});
  else
    fn(std::integral_constant<int, 1>{});
}

template <typename F>
void with_dtype(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); break;
    case DType::bf16: fn(bf16{}); break;
    case DType::f16: fn(f16{}); break;
    default: throw std::invalid_argument("diffrt CUDA: unsupported dtype code");
  }
}

// Per-sample parameters on the host (ᾱ in double, sampler_math.h), as the CPU kernels compute them.
std::vector<RowParams> host_row_params(int64_t batch, const double* alpha_t, const double* alpha_prev, double eta,
                                       Prediction pred, const double* guidance_scale, ClipMode clip,
                                       double clip_range) {
  std::vector<RowParams> rows(batch);
  for (int64_t r = 0; r < batch; ++r) {
    RowParams& p = rows[r];
    p.k = alpha_t ? ddim_coefficients(alpha_t[r], alpha_prev[r], eta, pred) : DdimCoeffs{};
    p.w = guidance_scale ? guidance_scale[r] : 0.0;
    p.g = guidance_weights(p.w, 0.0, 1.0, 1.0);
    p.mean_cond = p.mean_cfg = 0.f;
    p.lim = clip == ClipMode::fixed ? float(clip_range) : 0.f;
    p.divisor = 1.f;
  }
  return rows;
}

// Copies the rows to the device and, with guidance_rescale, replaces their weights by the rescaled ones.
template <typename T>
RowParams* upload_rows(const char* op, Workspace& ws, const std::vector<RowParams>& host, const T* uncond,
                       const T* cond, int64_t numel, double rescale, cudaStream_t stream) {
  const int64_t batch = int64_t(host.size());
  RowParams* rows = ws.take<RowParams>(batch);
  // From pageable memory this returns once the bytes are staged, so `host` may go out of scope.
  check(cudaMemcpyAsync(rows, host.data(), batch * sizeof(RowParams), cudaMemcpyHostToDevice, stream), op,
        "copying per-sample parameters");
  if (cond && rescale != 0.0) {
    const dim3 grid = row_grid(batch, numel);
    double* partial = ws.take<double>(size_t(batch) * grid.x * 4);  // pass 1 uses the first half
    launch(op, guidance_sum_kernel<T>, grid, dim3(kThreads), stream, uncond, cond, static_cast<const RowParams*>(rows),
           batch, numel, partial);
    launch(op, guidance_mean_kernel, rows_grid(batch), dim3(kThreads), stream, rows, batch, numel,
           static_cast<const double*>(partial), int(grid.x));
    launch(op, guidance_dev_kernel<T>, grid, dim3(kThreads), stream, uncond, cond, static_cast<const RowParams*>(rows),
           batch, numel, partial);
    launch(op, guidance_rescale_kernel, rows_grid(batch), dim3(kThreads), stream, rows, batch, numel,
           static_cast<const double*>(partial), int(grid.x), rescale);
  }
  return rows;
}

size_t rows_workspace_bytes(int64_t batch, int64_t numel, bool rescale) {
  return Workspace::aligned(batch * sizeof(RowParams)) +
         (rescale ? Workspace::aligned(size_t(batch) * row_grid(batch, numel).x * 4 * sizeof(double)) : 0);
}

template <typename T>
void ddim_step_typed(const DdimStepArgs& a, cudaStream_t stream) {
  const char* op = "ddim_step";
  const int64_t N = a.batch, M = a.numel;
  const bool guided = a.model_cond != nullptr;
  const bool rescale = guided && a.guidance_rescale != 0.0;
  const bool dynamic = a.clip == ClipMode::dynamic;
  if (dynamic && uint64_t(M) > std::numeric_limits<unsigned>::max())
    throw std::invalid_argument("diffrt CUDA ddim_step: dynamic thresholding supports at most 2^32 - 1 elements per sample");
  const DdimTensors<T> t{in<T>(a.sample), in<T>(a.model), in<T>(a.model_cond), in<T>(a.noise),
                         out_ptr<T>(a.out), out_ptr<T>(a.out_x0)};

  Workspace ws(rows_workspace_bytes(N, M, rescale) + (dynamic ? Workspace::aligned(size_t(N) * M * sizeof(float)) : 0),
               stream, op);
  RowParams* rows = upload_rows(op, ws,
                                host_row_params(N, a.alpha_t, a.alpha_prev, a.eta, a.prediction,
                                                guided ? a.guidance_scale : nullptr, a.clip, a.clip_range),
                                t.model, t.model_cond, M, rescale ? a.guidance_rescale : 0.0, stream);
  const dim3 grid = row_grid(N, M), block(kThreads);
  if (dynamic) {
    float* scratch = ws.take<float>(size_t(N) * M);
    with_prediction(a.prediction, [&](auto kp) {
      using Pred = decltype(kp);
      with_flag(guided, [&](auto kg) {
        launch(op, abs_x0_kernel<T, Pred::value, decltype(kg)::value>, grid, block, stream, t,
               static_cast<const RowParams*>(rows), N, M, scratch);
      });
    });
    launch(op, dynamic_threshold_kernel, rows_grid(N), block, stream, rows, N, M,
           static_cast<const float*>(scratch), a.dynamic_quantile, a.dynamic_max);
  }
  const bool clip = a.clip != ClipMode::none;
  const bool packed = packs_fit<T>(M, {t.x, t.model, t.model_cond, t.noise, t.out, t.out_x0});
  with_pack<T>(packed, [&](auto kv) {
    using Vec = decltype(kv);  // types, so the nested lambdas need not capture the tags
    with_prediction(a.prediction, [&](auto kp) {
      using Pred = decltype(kp);
      with_flag(guided, [&](auto kg) {
        using Guided = decltype(kg);
        with_flag(clip, [&](auto kc) {
          using Clip = decltype(kc);
          with_flag(clip && a.use_clipped_model_output, [&](auto kr) {
            using Recompute = decltype(kr);
            if constexpr (Clip::value || !Recompute::value)  // recomputing ε̂ needs a clipped x̂0: no such kernel
              launch(op, ddim_step_kernel<T, Vec::value, Pred::value, Guided::value, Clip::value, Recompute::value>,
                     row_grid(N, M / Vec::value), block, stream, t, static_cast<const RowParams*>(rows), N, M);
          });
        });
      });
    });
  });
}

template <typename T>
void cfg_combine_typed(const CfgCombineArgs& a, cudaStream_t stream) {
  const char* op = "cfg_combine";
  const bool rescale = a.guidance_rescale != 0.0;
  const T* u = in<T>(a.uncond);
  const T* c = in<T>(a.cond);
  Workspace ws(rows_workspace_bytes(a.batch, a.numel, rescale), stream, op);
  RowParams* rows = upload_rows(
      op, ws, host_row_params(a.batch, nullptr, nullptr, 0.0, Prediction::epsilon, a.guidance_scale, ClipMode::none, 0.0),
      u, c, a.numel, a.guidance_rescale, stream);
  with_pack<T>(packs_fit<T>(a.numel, {u, c, a.out}), [&](auto kv) {
    using Vec = decltype(kv);
    launch(op, cfg_combine_kernel<T, Vec::value>, row_grid(a.batch, a.numel / Vec::value), dim3(kThreads), stream,
           u, c, out_ptr<T>(a.out), static_cast<const RowParams*>(rows), a.batch, a.numel);
  });
}

template <typename T>
void mask_blend_typed(const MaskBlendArgs& a, cudaStream_t stream) {
  const int64_t planes = a.batch * a.channels;
  with_pack<T>(packs_fit<T>(a.spatial, {a.mask, a.a, a.b, a.out}), [&](auto kv) {
    using Vec = decltype(kv);
    launch("mask_blend", mask_blend_kernel<T, Vec::value>, row_grid(planes, a.spatial / Vec::value), dim3(kThreads),
           stream, in<T>(a.mask), a.mask_batch_stride, in<T>(a.a), in<T>(a.b), out_ptr<T>(a.out), planes,
           a.channels, a.spatial);
  });
}

template <typename T>
void diffedit_mask_typed(const DiffEditMaskArgs& a, cudaStream_t stream) {
  const char* op = "diffedit_mask";
  const int64_t planes = a.draws * a.channels;
  const dim3 grid = row_grid(a.batch, a.spatial);
  Workspace ws(Workspace::aligned(size_t(a.batch) * grid.x * sizeof(double)), stream, op);
  double* partial = ws.take<double>(size_t(a.batch) * grid.x);
  launch(op, diffedit_map_kernel<T>, grid, dim3(kThreads), stream, in<T>(a.eps_query), in<T>(a.eps_ref), a.out,
         a.batch, planes, a.spatial, 1.f / float(planes), partial);
  launch(op, diffedit_normalise_kernel, grid, dim3(kThreads), stream, a.out, a.batch, a.spatial,
         static_cast<const double*>(partial), int(grid.x), a.clamp_ratio, a.threshold);
}

// Coefficients on the host (double, sampler_math.h), one small copy, one elementwise launch.
template <typename T>
void sigma_step_typed(const char* op, const std::vector<SigmaStepCoeffs>& host, Prediction pred, int64_t M,
                      const SigmaStepTensors<T>& t, cudaStream_t stream) {
  const int64_t N = int64_t(host.size());
  Workspace ws(Workspace::aligned(N * sizeof(SigmaStepCoeffs)), stream, op);
  SigmaStepCoeffs* coeffs = ws.take<SigmaStepCoeffs>(N);
  check(cudaMemcpyAsync(coeffs, host.data(), N * sizeof(SigmaStepCoeffs), cudaMemcpyHostToDevice, stream), op,
        "copying per-sample coefficients");
  const bool packed = packs_fit<T>(M, {t.x, t.model, t.x0_last, t.noise, t.out, t.out_x0});
  with_pack<T>(packed, [&](auto kv) {
    using Vec = decltype(kv);
    with_prediction(pred, [&](auto kp) {
      using Pred = decltype(kp);
      with_flag(t.x0_last != nullptr, [&](auto kl) {
        using Second = decltype(kl);
        with_flag(t.noise != nullptr, [&](auto kn) {
          launch(op, sigma_step_kernel<T, Vec::value, Pred::value, Second::value, decltype(kn)::value>,
                 row_grid(N, M / Vec::value), dim3(kThreads), stream, t, static_cast<const SigmaStepCoeffs*>(coeffs),
                 N, M);
        });
      });
    });
  });
}

}  // namespace

void euler_step(const EulerStepArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.numel <= 0) return;
  DeviceGuard guard(device, "euler_step");
  std::vector<SigmaStepCoeffs> k(a.batch);
  for (int64_t r = 0; r < a.batch; ++r)
    k[r] = euler_coefficients(a.sigma[r], a.sigma_next[r], a.noise != nullptr, a.prediction);
  with_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const SigmaStepTensors<T> t{in<T>(a.sample), in<T>(a.model), nullptr, in<T>(a.noise), out_ptr<T>(a.out),
                                out_ptr<T>(a.out_x0)};
    sigma_step_typed<T>("euler_step", k, a.prediction, a.numel, t, stream);
  });
}

void dpm_solver_2m_step(const DpmSolver2mStepArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.numel <= 0) return;
  DeviceGuard guard(device, "dpm_solver_2m_step");
  const bool second = a.x0_last != nullptr;
  std::vector<SigmaStepCoeffs> k(a.batch);
  for (int64_t r = 0; r < a.batch; ++r)
    k[r] = dpm_solver_2m_coefficients(a.sigma[r], a.sigma_next[r], second ? a.sigma_last[r] : 0.0, second, a.heun,
                                      a.prediction);
  with_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const SigmaStepTensors<T> t{in<T>(a.sample), in<T>(a.model), in<T>(a.x0_last), nullptr, out_ptr<T>(a.out),
                                out_ptr<T>(a.out_x0)};
    sigma_step_typed<T>("dpm_solver_2m_step", k, a.prediction, a.numel, t, stream);
  });
}


void ddim_step(const DdimStepArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.numel <= 0) return;
  DeviceGuard guard(device, "ddim_step");
  with_dtype(a.dtype, [&](auto tag) { ddim_step_typed<decltype(tag)>(a, stream); });
}

void cfg_combine(const CfgCombineArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.numel <= 0) return;
  DeviceGuard guard(device, "cfg_combine");
  with_dtype(a.dtype, [&](auto tag) { cfg_combine_typed<decltype(tag)>(a, stream); });
}

void mask_blend(const MaskBlendArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.channels <= 0 || a.spatial <= 0) return;
  DeviceGuard guard(device, "mask_blend");
  with_dtype(a.dtype, [&](auto tag) { mask_blend_typed<decltype(tag)>(a, stream); });
}

void diffedit_mask(const DiffEditMaskArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.spatial <= 0) return;  // no draws or channels: the mean over nothing is NaN, as on the CPU
  DeviceGuard guard(device, "diffedit_mask");
  with_dtype(a.dtype, [&](auto tag) { diffedit_mask_typed<decltype(tag)>(a, stream); });
}

}  // namespace diffrt::cuda
