// Plain argument structs for the sampler kernels: pointers, sizes and scalars, no framework types.
// Tensors are dense and row-major; a "row" is one sample of `numel` elements.
#pragma once
#include <cstdint>

#include "common.h"
#include "sampler_math.h"

namespace diffrt {

struct DdimStepArgs {
  DType dtype;
  int64_t batch;           // N samples
  int64_t numel;           // elements per sample
  const void* sample;      // x_t, N rows
  const void* model;       // model output, N rows; with guidance the unconditional half
  const void* model_cond;  // conditional half of a batched [uncond; cond] output, or nullptr
  const void* noise;       // z, N rows, or nullptr (σ must then be 0)
  void* out;               // x_prev, N rows (may alias `sample`)
  void* out_x0;            // x̂0 after clipping, N rows, or nullptr
  const double* alpha_t;   // N values each
  const double* alpha_prev;
  const double* guidance_scale;  // N values, read only when model_cond != nullptr
  double eta;
  double guidance_rescale;
  Prediction prediction;
  ClipMode clip;
  double clip_range;         // ClipMode::fixed
  double dynamic_quantile;   // ClipMode::dynamic: p of the per-sample quantile of |x̂0|
  double dynamic_max;        // ClipMode::dynamic: upper bound of s
  bool use_clipped_model_output;
  int num_threads;
};

struct CfgCombineArgs {
  DType dtype;
  int64_t batch, numel;
  const void* uncond;
  const void* cond;
  void* out;
  const double* guidance_scale;  // N values
  double guidance_rescale;
  int num_threads;
};

struct MaskBlendArgs {
  DType dtype;
  int64_t batch, channels, spatial;  // a, b, out: (batch, channels, spatial)
  const void* mask;                  // (batch or 1, spatial), same dtype as a
  int64_t mask_batch_stride;         // spatial, or 0 to broadcast one mask over the batch
  const void* a;
  const void* b;
  void* out;
  int num_threads;
};

struct DiffEditMaskArgs {
  DType dtype;
  int64_t batch, draws, channels, spatial;  // eps_query / eps_ref: (batch, draws, channels, spatial)
  const void* eps_query;
  const void* eps_ref;
  float* out;          // (batch, spatial), float32
  double clamp_ratio;  // clamp the map at clamp_ratio · mean(map) before normalising
  double threshold;    // binarise at > threshold; negative: return the soft map
  int num_threads;
};

// Euler / Euler-ancestral step in σ space (sampler_math.h euler_coefficients): one pass over x, m [, z].
struct EulerStepArgs {
  DType dtype;
  int64_t batch, numel;
  const void* sample;   // x at σ (the unscaled sample, x = x0 + σ·ε)
  const void* model;    // model output for x/√(σ²+1)
  const void* noise;    // z for the ancestral step, or nullptr (plain Euler)
  void* out;            // x_prev (may alias `sample`)
  void* out_x0;         // x̂0, or nullptr
  const double* sigma;       // N values each, σ > 0
  const double* sigma_next;  // 0 ≤ σ_next ≤ σ when ancestral
  Prediction prediction;
  int num_threads;
};

// DPM-Solver++(2M) step (sampler_math.h dpm_solver_2m_coefficients): one pass over x, m [, x̂0_last].
struct DpmSolver2mStepArgs {
  DType dtype;
  int64_t batch, numel;
  const void* sample;   // x at σ (variance preserving: x = α·x0 + σ_vp·ε)
  const void* model;    // model output for x
  const void* x0_last;  // the previous step's x̂0 (second order), or nullptr (first order)
  void* out;            // x_prev (may alias `sample`)
  void* out_x0;         // x̂0, or nullptr (the next step's x0_last)
  const double* sigma;       // N values each, σ > 0
  const double* sigma_next;  // σ of the next step, ≥ 0
  const double* sigma_last;  // σ of the previous step, read when x0_last is set
  Prediction prediction;
  bool heun;            // solver_type: false midpoint (diffusers' default), true heun
  int num_threads;
};

}  // namespace diffrt
