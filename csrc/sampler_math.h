// Per-sample DDIM / classifier-free-guidance coefficients and the per-element update.
// Shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda): the math lives here once.
//
// Notation (Song et al. 2021, "Denoising Diffusion Implicit Models"):
//   x_t      noisy sample at step t,     ᾱ_t  cumulative alpha at t (alphas_cumprod[t])
//   m        model output: ε (epsilon), v (v_prediction) or x̂0 (sample)
//   x̂0      predicted clean sample,      ε̂    predicted noise
// eq. 12:  x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z
//          σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)                         (eq. 16)
// Inversion (x_t → x_next, used by DiffEdit / Imagic / unCLIP variations) is eq. 12 at η = 0 with
// ᾱ_prev replaced by ᾱ_next.
#pragma once
#include <cmath>

#include "common.h"

namespace diffrt {

enum class Prediction : int { epsilon = 0, v_prediction = 1, sample = 2 };
enum class ClipMode : int { none = 0, fixed = 1, dynamic = 2 };

// Every quantity of eq. 12 is affine in (x_t, m), so each sample needs only these scalars.
struct DdimCoeffs {
  float x0_x, x0_m;     // x̂0 = x0_x·x_t + x0_m·m
  float eps_x, eps_m;   // ε̂  = eps_x·x_t + eps_m·m
  float epsc_x, epsc_x0;  // ε̂ recomputed from a clipped x̂0: ε̂ = epsc_x·x_t + epsc_x0·x̂0
  float prev_x0, prev_eps, prev_z;  // x_prev = prev_x0·x̂0 + prev_eps·ε̂ + prev_z·z
};

// Host-side, in double: ᾱ values near 0 or 1 lose digits in float32.
inline DdimCoeffs ddim_coefficients(double alpha_t, double alpha_prev, double eta, Prediction pred) {
  const double sa = std::sqrt(alpha_t), sb = std::sqrt(1.0 - alpha_t);  // √ᾱ_t, √(1−ᾱ_t)
  DdimCoeffs k{};
  switch (pred) {
    case Prediction::epsilon:  // x̂0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t   (eq. 9)
      k.x0_x = float(1.0 / sa); k.x0_m = float(-sb / sa);
      k.eps_x = 0.f; k.eps_m = 1.f;
      break;
    case Prediction::v_prediction:  // v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022)
      k.x0_x = float(sa); k.x0_m = float(-sb);
      k.eps_x = float(sb); k.eps_m = float(sa);
      break;
    case Prediction::sample:  // ε̂ = (x_t − √ᾱ_t·x̂0)/√(1−ᾱ_t)
      k.x0_x = 0.f; k.x0_m = 1.f;
      k.eps_x = float(1.0 / sb); k.eps_m = float(-sa / sb);
      break;
  }
  k.epsc_x = alpha_t < 1.0 ? float(1.0 / sb) : 0.f;
  k.epsc_x0 = alpha_t < 1.0 ? float(-sa / sb) : 0.f;
  double sigma = 0.0;
  if (eta > 0.0) sigma = eta * std::sqrt((1.0 - alpha_prev) / (1.0 - alpha_t)) * std::sqrt(1.0 - alpha_t / alpha_prev);
  k.prev_x0 = float(std::sqrt(alpha_prev));
  k.prev_eps = float(std::sqrt(std::fmax(0.0, 1.0 - alpha_prev - sigma * sigma)));
  k.prev_z = float(sigma);
  return k;
}

// Classifier-free guidance with rescale, folded into two per-sample weights on [uncond; cond]:
//   ε̃ = ε_u + w·(ε_c − ε_u)                                   (Ho & Salimans 2022)
//   ε̃ ← φ·ε̃·std(ε_c)/std(ε̃) + (1−φ)·ε̃ = r·ε̃,  r = 1 − φ + φ·std(ε_c)/std(ε̃)   (Lin et al. 2023)
// so ε̃ = r(1−w)·ε_u + r·w·ε_c. std is the unbiased per-sample std over all elements (as diffusers).
// Host and device: the CUDA kernels evaluate it right after their on-device std reduction.
struct GuidanceWeights {
  float uncond, cond;
};

DIFFRT_HD GuidanceWeights guidance_weights(double w, double rescale, double std_cond, double std_cfg) {
  double r = 1.0;
  if (rescale != 0.0 && std_cfg > 0.0) r = 1.0 - rescale + rescale * std_cond / std_cfg;
  return GuidanceWeights{float(r * (1.0 - w)), float(r * w)};
}

// One element of the DDIM update. `lim` and `divisor` implement both clip modes:
//   fixed:   x̂0 ← clamp(x̂0, −range, range)              (lim = range, divisor = 1)
//   dynamic: x̂0 ← clamp(x̂0, −s, s)/s  (Imagen, Saharia et al. 2022; lim = s, divisor = s)
// A true division (not ·1/s) keeps |x̂0| ≤ 1 exactly after thresholding.
template <bool kClip, bool kRecomputeEps>
DIFFRT_HD float ddim_element(const DdimCoeffs& k, float x, float m, float z, float lim, float divisor, float* x0_out) {
  float x0 = k.x0_x * x + k.x0_m * m;
  float eps = k.eps_x * x + k.eps_m * m;
  if (kClip) {
    x0 = clampf(x0, -lim, lim) / divisor;
    if (kRecomputeEps) eps = k.epsc_x * x + k.epsc_x0 * x0;
  }
  *x0_out = x0;
  return k.prev_x0 * x0 + k.prev_eps * eps + k.prev_z * z;
}

// out = m·a + (1−m)·b: for a binary mask this returns a or b bit-exactly (b + m·(a−b) would not).
DIFFRT_HD float blend_element(float m, float a, float b) { return m * a + (1.f - m) * b; }

}  // namespace diffrt
