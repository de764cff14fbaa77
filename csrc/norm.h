// Normalisation and activation kernels of a UNet body: GroupNorm (+ SiLU), LayerNorm, GEGLU, the
// sinusoidal timestep embedding and the timestep-embedding MLP.
// The argument structs (plain pointers, sizes and scalars), the per-element math shared by the CPU
// and CUDA kernels, and the CPU kernel table (one per ISA; cpu/norm_dispatch.cpp picks the active one).
//
//   group_norm  y[n,c,p] = act((x[n,c,p] − μ[n,g])·rstd[n,g]·γ[c] + β[c]),  g = c / (C/G),
//               μ, σ² the biased mean and variance over the C/G channels × HW pixels of group g,
//               rstd = 1/√(σ² + eps), act = identity or SiLU (v·sigmoid(v))
//   layer_norm  y[r,i] = (x[r,i] − μ[r])·rstd[r]·γ[i] + β[i]   over the last dim D
//   geglu       y[r,i] = a[r,i]·gelu(g[r,i]),  [a | g] = x[r, 0:2D] (diffusers' GEGLU: hidden first,
//               gate second), gelu(v) = v/2·(1 + erf(v/√2)) (the exact, erf form)
// Storage float32 or bfloat16 (float16 too on CUDA); γ, β are float32; all math in float32, per-group
// and per-row statistics merged in double.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

typedef struct CUstream_st* cudaStream_t;  // as in the CUDA runtime headers

namespace diffrt {

struct GroupNormArgs {
  DType dtype;
  int64_t batch, channels, spatial;  // N, C, HW
  int64_t groups;                    // G, dividing C
  bool channels_last;                // x, out laid out (N, HW, C) instead of (N, C, HW)
  const void* x;
  const float* weight;  // γ, (C,) or nullptr (1)
  const float* bias;    // β, (C,) or nullptr (0)
  void* out;            // same shape and layout as x
  double eps;
  bool silu;  // fuse SiLU after the affine (diffusers' norm → nonlinearity)
  int num_threads;
};

struct LayerNormArgs {
  DType dtype;
  int64_t rows, dim;    // x, out: (rows, dim), normalised over dim
  const void* x;
  const float* weight;  // γ, (dim,) or nullptr (1)
  const float* bias;    // β, (dim,) or nullptr (0)
  void* out;
  double eps;
  int num_threads;
};

struct GegluArgs {
  DType dtype;
  int64_t rows, dim;  // x: (rows, 2·dim) = [hidden | gate]; out: (rows, dim)
  const void* x;
  void* out;
  int num_threads;
};

// diffusers' get_timestep_embedding (DDPM's sinusoidal features): with h = ⌊dim/2⌋,
//   freq_j = exp(−ln(max_period)·j/(h − downscale_freq_shift)),  arg = scale·t·freq_j,  j < h
//   out = [sin(arg) | cos(arg)] ([cos | sin] when flip_sin_to_cos), a zero column appended when dim is odd.
// Computed in double (the arguments reach ~10³ rad, where float32 loses 4 digits of the phase), stored as dtype.
struct TimestepEmbeddingArgs {
  DType dtype;             // of out
  int64_t batch, dim;      // out: (batch, dim)
  const double* timesteps; // (batch,)
  void* out;
  bool flip_sin_to_cos;
  double downscale_freq_shift;
  double scale;
  double max_period;
  int num_threads;
};

// freq_j of timestep_embedding's formula above, j < ⌊dim/2⌋.
DIFFRT_HD double timestep_frequency(const TimestepEmbeddingArgs& a, int64_t j) {
  return exp(-log(a.max_period) * double(j) / (double(a.dim / 2) - a.downscale_freq_shift));
}

// Column c of the embedding of timestep t (timestep_embedding's formula above).
DIFFRT_HD double timestep_embedding_element(const TimestepEmbeddingArgs& a, double t, int64_t c) {
  const int64_t half = a.dim / 2;
  if (c >= 2 * half) return 0.0;  // the padding column of an odd dim
  const int64_t j = c < half ? c : c - half;
  const bool first_half = c < half;
  const double arg = a.scale * t * timestep_frequency(a, j);
  return (first_half != a.flip_sin_to_cos) ? sin(arg) : cos(arg);
}

// diffusers' Timesteps + TimestepEmbedding (act_fn "silu", no cond_proj, no post_act) in one call:
//   e = timestep_embedding(t) (in_dim wide),  h = SiLU(W1·e + b1) (hidden_dim),  out = W2·h + b2 (out_dim).
// W1 (hidden_dim, in_dim), W2 (out_dim, hidden_dim) and the biases are nn.Linear's, stored as dtype and read
// converted on load; e and h stay float32 (never rounded to dtype), every dot product accumulates in float32;
// out is rounded to dtype once. Bytes moved: the two weight matrices, read once per call (memory-bound).
struct TimestepMlpArgs {
  DType dtype;              // of weight_1, bias_1, weight_2, bias_2 and out (float16 on the CPU too)
  int64_t batch, in_dim, hidden_dim, out_dim;
  const double* timesteps;  // (batch,)
  const void* weight_1;     // (hidden_dim, in_dim)
  const void* bias_1;       // (hidden_dim,) or nullptr (0)
  const void* weight_2;     // (out_dim, hidden_dim)
  const void* bias_2;       // (out_dim,) or nullptr (0)
  void* out;                // (batch, out_dim)
  bool flip_sin_to_cos;     // the sinusoid's parameters, as in TimestepEmbeddingArgs
  double downscale_freq_shift;
  double scale;
  double max_period;
  int num_threads;
};

// The sinusoid of a TimestepMlpArgs as the TimestepEmbeddingArgs that timestep_embedding_element reads.
DIFFRT_HD TimestepEmbeddingArgs mlp_sinusoid(const TimestepMlpArgs& a) {
  TimestepEmbeddingArgs e{};
  e.dtype = DType::f32;
  e.batch = a.batch;
  e.dim = a.in_dim;
  e.timesteps = a.timesteps;
  e.flip_sin_to_cos = a.flip_sin_to_cos;
  e.downscale_freq_shift = a.downscale_freq_shift;
  e.scale = a.scale;
  e.max_period = a.max_period;
  return e;
}

// ---- per-element math (host and device) ---------------------------------------------------------

DIFFRT_HD float silu_element(float v) { return v / (1.f + expf(-v)); }

DIFFRT_HD float gelu_element(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }

// Count, mean and M2 = Σ(v − mean)² of a set of values, merged by Chan et al.'s formula
//   n = n_a + n_b,  δ = mean_b − mean_a,  mean = mean_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n
// (no cancellation however large the mean: the statistics never hold Σv²).
struct NormMoments {
  double n, mean, m2;

  DIFFRT_HD void merge(const NormMoments& b) {
    if (b.n == 0) return;
    if (n == 0) {
      *this = b;
      return;
    }
    const double total = n + b.n, d = b.mean - mean;
    mean += d * (b.n / total);
    m2 += b.m2 + d * d * (n * b.n / total);
    n = total;
  }
};

// 1/√(σ² + eps) of the biased variance σ² = M2/n (0 values: σ² = 0). Rounding can leave M2 a hair below 0.
DIFFRT_HD float norm_rstd(const NormMoments& m, double eps) {
  const double var = m.n > 0 ? m.m2 / m.n : 0.0;
  return float(1.0 / sqrt((var > 0.0 ? var : 0.0) + eps));
}

namespace cpu {

struct NormKernels {
  void (*group_norm)(const GroupNormArgs&);
  void (*layer_norm)(const LayerNormArgs&);
  void (*geglu)(const GegluArgs&);
  void (*timestep_embedding)(const TimestepEmbeddingArgs&);
  void (*timestep_mlp)(const TimestepMlpArgs&);
};

namespace scalar { extern const NormKernels norm_kernels; }
namespace avx2 { extern const NormKernels norm_kernels; }
namespace avx512 { extern const NormKernels norm_kernels; }
namespace avx512_bf16 { extern const NormKernels norm_kernels; }
namespace neon { extern const NormKernels norm_kernels; }
namespace neon_bf16 { extern const NormKernels norm_kernels; }

const NormKernels& norm_kernels();  // table of the active ISA (cpu/norm_dispatch.cpp)

}  // namespace cpu

// CUDA entry points (csrc/cuda/norm_kernels.cu, builds with CUDA only): the same structs (num_threads
// ignored), the tensors' device and the stream to enqueue on.
namespace cuda {
void group_norm(const GroupNormArgs& a, int device, cudaStream_t stream);
void layer_norm(const LayerNormArgs& a, int device, cudaStream_t stream);
void geglu(const GegluArgs& a, int device, cudaStream_t stream);
void timestep_embedding(const TimestepEmbeddingArgs& a, int device, cudaStream_t stream);
void timestep_mlp(const TimestepMlpArgs& a, int device, cudaStream_t stream);
}  // namespace cuda
}  // namespace diffrt
