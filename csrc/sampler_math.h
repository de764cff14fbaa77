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
#include <type_traits>

#include "common.h"

namespace diffrt {

enum class Prediction : int { epsilon = 0, v_prediction = 1, sample = 2 };
enum class ClipMode : int { none = 0, fixed = 1, dynamic = 2 };

// Every quantity of eq. 12 is affine in (x_t, m), so each sample needs only these scalars. A term
// the reference formula does not have (ε̂ = m for ε-prediction, x̂0 = m for x0-prediction) is left
// out at compile time (ddim_element<P>) rather than multiplied by 0, so that an infinite x_t gives
// what the reference gives (0·inf would be NaN).
struct DdimCoeffs {
  float x0_x, x0_m;     // x̂0 = x0_x·x_t + x0_m·m
  float eps_x, eps_m;   // ε̂  = eps_x·x_t + eps_m·m
  float epsc_x, epsc_x0;  // ε̂ recomputed from a clipped x̂0: ε̂ = epsc_x·x_t + epsc_x0·x̂0
  float prev_x0, prev_eps, prev_z;  // x_prev = prev_x0·x̂0 + prev_eps·ε̂ + prev_z·z
};

// c ? x : y with both sides computed and no branch: the auto-vectoriser will not if-convert a float
// ?: under -ftrapping-math (it would have to evaluate the other side speculatively), but keeps this.
DIFFRT_HD float select(bool c, float x, float y) {
  const uint32_t mask = 0u - uint32_t(c);
  return bits_to_float((float_to_bits(x) & mask) | (float_to_bits(y) & ~mask));
}

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

// Classifier-free guidance with rescale on [uncond; cond]:
//   ε̃ = ε_u + w·(ε_c − ε_u)                                   (Ho & Salimans 2022)
//   ε̃ ← φ·ε̃·std(ε_c)/std(ε̃) + (1−φ)·ε̃ = r·ε̃,  r = φ·std(ε_c)/std(ε̃) + 1 − φ   (Lin et al. 2023)
// std is the unbiased per-sample std over all elements (as diffusers); r = 1 when std(ε̃) = 0 (a
// constant ε̃ has no spread to match) and NaN when a std is NaN (a NaN or inf in the sample).
// The element is evaluated in the reference's form (not folded into r(1−w)·ε_u + r·w·ε_c), so
// infinities combine as they do there: ε_u = inf gives inf + w·(ε_c − inf) = NaN for w > 0. The DDIM
// step folds r into the coefficients of m (fold_guidance_scale) instead of multiplying each element.
// Host and device: the CUDA kernels evaluate it right after their on-device std reduction.
struct GuidanceWeights {
  float w, scale;  // ε̃ = scale·(ε_u + w·(ε_c − ε_u))
};

DIFFRT_HD GuidanceWeights guidance_weights(double w, double rescale, double std_cond, double std_cfg) {
  double r = 1.0;
  if (rescale != 0.0 && std_cfg != 0.0) r = rescale * (std_cond / std_cfg) + (1.0 - rescale);
  return GuidanceWeights{float(w), float(r)};
}

// ε_u + w·(ε_c − ε_u), times the rescale factor when kRescale.
template <bool kRescale = true>
DIFFRT_HD float guided_element(const GuidanceWeights& g, float uncond, float cond) {
  const float guided = uncond + g.w * (cond - uncond);
  return kRescale ? g.scale * guided : guided;
}

// The DDIM coefficients of m = r·ε̃ with r applied: x̂0 and ε̂ take x0_m·r and eps_m·r (rounded once).
DIFFRT_HD void fold_guidance_scale(DdimCoeffs& k, float scale) {
  k.x0_m = float(double(k.x0_m) * double(scale));
  k.eps_m = float(double(k.eps_m) * double(scale));
}

// Unbiased variance from a sum of squared deviations M2 over n elements (Chan et al.'s merge keeps
// M2 exact-ish at any mean); NaN stays NaN (a max(0, ·) would turn it into 0, "no spread").
DIFFRT_HD double unbiased_std(double m2, double n) {
  if (n <= 1.0) return 0.0;
  const double var = m2 / (n - 1.0);
  return var < 0.0 ? 0.0 : sqrt(var);
}

// torch.quantile's interpolation between the sorted neighbours v[lo] ≤ q ≤ v[hi] (hi = ⌈pos⌉, so
// hi = lo when pos is whole): torch.lerp's two-sided formula, which is NaN when v[hi] = inf and the
// weight is ≥ 1/2, or when both are inf — the reference's answer, so the kernels give it too.
DIFFRT_HD double quantile_lerp(double below, double above, double weight) {
  return weight < 0.5 ? below + weight * (above - below) : above - (above - below) * (1.0 - weight);
}

// Dynamic thresholding's s = clamp(q, min=1, max) as torch.clamp computes it: NaN stays NaN, and
// max < 1 gives max (min is applied first, then max).
DIFFRT_HD double dynamic_threshold_scale(double q, double max_s) {
  if (q != q) return q;
  const double s = q < 1.0 ? 1.0 : q;
  return s > max_s ? max_s : s;
}

// One element of the DDIM update. `lim` and `divisor` implement both clip modes:
//   fixed:   x̂0 ← clamp(x̂0, −range, range)              (lim = range, divisor = 1)
//   dynamic: x̂0 ← clamp(x̂0, −s, s)/s  (Imagen, Saharia et al. 2022; lim = s, divisor = s)
// A true division (not ·1/s) keeps |x̂0| ≤ 1 exactly after thresholding. clampf keeps a NaN x̂0,
// and a NaN s leaves x̂0 unclamped and then divides by NaN: NaN, as torch's clamp gives.
template <Prediction P>
DIFFRT_HD float x0_element(const DdimCoeffs& k, float x, float m) {
  return P == Prediction::sample ? k.x0_m * m : k.x0_x * x + k.x0_m * m;
}

template <Prediction P, bool kClip, bool kRecomputeEps>
DIFFRT_HD float ddim_element(const DdimCoeffs& k, float x, float m, float z, float lim, float divisor, float* x0_out) {
  float x0 = x0_element<P>(k, x, m);
  float eps = P == Prediction::epsilon ? k.eps_m * m : k.eps_x * x + k.eps_m * m;
  if (kClip) {
    x0 = clampf(x0, -lim, lim) / divisor;
    if (kRecomputeEps) eps = k.epsc_x * x + k.epsc_x0 * x0;
  }
  *x0_out = x0;
  return k.prev_x0 * x0 + k.prev_eps * eps + k.prev_z * z;
}

// |x̂0| for the dynamic-threshold quantile, the same x̂0 as ddim_element's (a NaN stays NaN).
template <Prediction P>
DIFFRT_HD float abs_x0_element(const DdimCoeffs& k, float x, float m) {
  return bits_to_float(float_to_bits(x0_element<P>(k, x, m)) & 0x7fffffffu);
}

// ---- σ-space samplers (Karras et al. 2022 notation, as diffusers' Euler and DPM-Solver schedulers) ----
// σ = √((1−ᾱ)/ᾱ). The per-sample update is affine in x, the model output m and one more tensor, so each
// sample needs only these scalars (computed on the host in double, like ddim_coefficients).
//   x̂0     = x0_x·x + x0_m·m                         (the prediction type's conversion)
//   x_prev = prev_x·x + prev_x0·x̂0 + prev_d·(x̂0 − x̂0_last) + prev_z·z
struct SigmaStepCoeffs {
  float x0_x, x0_m;
  float prev_x, prev_x0, prev_d, prev_z;
};

// Euler / Euler-ancestral on the variance-exploding sample x = x0 + σ·ε (Karras et al. 2022, Alg. 1 with
// γ = 0; k-diffusion's sample_euler_ancestral). The model saw x/√(σ²+1):
//   epsilon: x̂0 = x − σ·m;   v: x̂0 = x/(σ²+1) − m·σ/√(σ²+1);   sample: x̂0 = m
//   d = (x − x̂0)/σ,  x_prev = x + d·(σ_to − σ) = (σ_to/σ)·x + (1 − σ_to/σ)·x̂0 (+ σ_up·z)
// Euler: σ_to = σ_next. Ancestral: σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_to = σ_down = √(σ_next² − σ_up²).
inline SigmaStepCoeffs euler_coefficients(double sigma, double sigma_next, bool ancestral, Prediction pred) {
  SigmaStepCoeffs k{};
  const double s2 = sigma * sigma;
  switch (pred) {
    case Prediction::epsilon: k.x0_x = 1.f; k.x0_m = float(-sigma); break;
    case Prediction::v_prediction: k.x0_x = float(1.0 / (s2 + 1.0)); k.x0_m = float(-sigma / std::sqrt(s2 + 1.0)); break;
    case Prediction::sample: k.x0_x = 0.f; k.x0_m = 1.f; break;
  }
  double sigma_to = sigma_next, sigma_up = 0.0;
  if (ancestral) {
    sigma_up = std::sqrt(std::fmax(0.0, sigma_next * sigma_next * (s2 - sigma_next * sigma_next) / s2));
    sigma_to = std::sqrt(std::fmax(0.0, sigma_next * sigma_next - sigma_up * sigma_up));
  }
  const double ratio = sigma_to / sigma;
  k.prev_x = float(ratio);
  k.prev_x0 = float(1.0 - ratio);
  k.prev_d = 0.f;
  k.prev_z = float(sigma_up);
  return k;
}

// DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) on the variance-preserving sample x = α·x0 + σ_vp·ε with
// α = 1/√(σ²+1), σ_vp = σ·α, λ = log(α/σ_vp) = −log σ. From σ_s (this step) to σ_t (next):
//   h = λ_t − λ_s,  first order: x_t = (σ_vp,t/σ_vp,s)·x − α_t·(e^−h − 1)·D0,  D0 = x̂0
//   second order, with the last step's x̂0 at σ_last: r = (λ_s − λ_last)/h, D1 = (x̂0 − x̂0_last)/r
//     midpoint: x_t = first order − ½·α_t·(e^−h − 1)·D1
//     heun:     x_t = first order + α_t·((e^−h − 1)/h + 1)·D1
// σ_t = 0 (a zero final sigma) is the limit h → ∞: x_t = D0 (first order; diffusers takes it there).
// The model saw x itself (VP): epsilon: x̂0 = (x − σ_vp·m)/α = √(σ²+1)·x − σ·m; v: x̂0 = α·x − σ_vp·m.
inline SigmaStepCoeffs dpm_solver_2m_coefficients(double sigma, double sigma_next, double sigma_last,
                                                  bool second_order, bool heun, Prediction pred) {
  SigmaStepCoeffs k{};
  const double alpha_s = 1.0 / std::sqrt(sigma * sigma + 1.0), sigma_vp_s = sigma * alpha_s;
  switch (pred) {
    case Prediction::epsilon: k.x0_x = float(1.0 / alpha_s); k.x0_m = float(-sigma); break;
    case Prediction::v_prediction: k.x0_x = float(alpha_s); k.x0_m = float(-sigma_vp_s); break;
    case Prediction::sample: k.x0_x = 0.f; k.x0_m = 1.f; break;
  }
  if (sigma_next == 0.0) {  // h = ∞: x_t = x̂0
    k.prev_x = 0.f; k.prev_x0 = 1.f; k.prev_d = 0.f; k.prev_z = 0.f;
    return k;
  }
  const double alpha_t = 1.0 / std::sqrt(sigma_next * sigma_next + 1.0), sigma_vp_t = sigma_next * alpha_t;
  const double h = std::log(sigma) - std::log(sigma_next);  // λ_t − λ_s
  const double phi = std::expm1(-h);                         // e^−h − 1
  k.prev_x = float(sigma_vp_t / sigma_vp_s);
  k.prev_x0 = float(-alpha_t * phi);
  k.prev_d = 0.f;
  if (second_order) {
    const double r = (std::log(sigma_last) - std::log(sigma)) / h;  // h_last / h
    const double c = heun ? alpha_t * (phi / h + 1.0) : -0.5 * alpha_t * phi;
    k.prev_d = float(c / r);
  }
  k.prev_z = 0.f;
  return k;
}

// One element of a σ-space step; x̂0_last is read only when kSecondOrder, z only when kNoise.
template <Prediction P, bool kSecondOrder, bool kNoise>
DIFFRT_HD float sigma_step_element(const SigmaStepCoeffs& k, float x, float m, float x0_last, float z, float* x0_out) {
  const float x0 = P == Prediction::sample ? k.x0_m * m : k.x0_x * x + k.x0_m * m;
  float out = k.prev_x * x + k.prev_x0 * x0;
  if (kSecondOrder) out += k.prev_d * (x0 - x0_last);
  if (kNoise) out += k.prev_z * z;
  *x0_out = x0;
  return out;
}

// Runs fn with the prediction type as a compile-time constant:
// with_prediction(p, [&](auto kp) { f<decltype(kp)::value>(); }).
template <typename F>
inline void with_prediction(Prediction p, F&& fn) {
  switch (p) {
    case Prediction::epsilon: fn(std::integral_constant<Prediction, Prediction::epsilon>{}); break;
    case Prediction::v_prediction: fn(std::integral_constant<Prediction, Prediction::v_prediction>{}); break;
    case Prediction::sample: fn(std::integral_constant<Prediction, Prediction::sample>{}); break;
  }
}

// out = m·a + (1−m)·b, and exactly a where m = 1, exactly b where m = 0: a binary mask selects,
// whatever the other input holds (m·a + (1−m)·b would give NaN for 0·inf, and round b + 0·a).
// A NaN mask gives NaN.
DIFFRT_HD float blend_element(float m, float a, float b) {
  const float soft = m * a + (1.f - m) * b;
  return select(m == 1.f, a, select(m == 0.f, b, soft));
}

// DiffEdit's normalisation of one map value: min(v, bound)/bound, 0 everywhere when bound = 0
// (identical predictions: nothing to edit), binarised at > threshold unless threshold < 0. NaN
// propagates: a NaN bound (a NaN in the image's noise predictions) makes the image's map NaN,
// thresholded or not, rather than a silently empty mask.
DIFFRT_HD float diffedit_normalise_element(float v, float bound, float threshold) {
  const float clamped = select((v < bound) | (v != v), v, bound);  // min that keeps a NaN v or bound
  const float soft = clamped / bound;
  const float out = select((threshold < 0.f) | (soft != soft), soft, select(soft > threshold, 1.f, 0.f));
  return select(bound == 0.f, 0.f, out);
}

}  // namespace diffrt
