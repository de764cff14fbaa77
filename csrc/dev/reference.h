// Plain C++ references for the sampler kernels: one sample at a time, double precision, no SIMD,
// no threads, written to be read against the paper equations (see csrc/sampler_math.h).
// Used by cpu_kernels_check.cpp; the Python references (diffrt.ops.*_ref) are the test oracle.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"

namespace diffrt::reference {

template <typename T>
double at(const void* p, int64_t i) {
  return double(load(static_cast<const T*>(p)[i]));
}

// DDIM step (Song et al. 2021, eq. 12) with optional [uncond; cond] guidance, rescale and clipping.
template <typename T>
void ddim_step(const DdimStepArgs& a, std::vector<double>& out, std::vector<double>& out_x0) {
  const int64_t M = a.numel;
  out.assign(a.batch * M, 0.0);
  out_x0.assign(a.batch * M, 0.0);
  for (int64_t r = 0; r < a.batch; ++r) {
    const int64_t o = r * M;
    // 1. model output, guided: ε̃ = ε_u + w(ε_c − ε_u), rescaled by φ·std(ε_c)/std(ε̃) + (1 − φ)
    std::vector<double> m(M);
    for (int64_t i = 0; i < M; ++i) m[i] = at<T>(a.model, o + i);
    if (a.model_cond) {
      const double w = a.guidance_scale[r];
      std::vector<double> c(M);
      for (int64_t i = 0; i < M; ++i) {
        c[i] = at<T>(a.model_cond, o + i);
        m[i] = m[i] + w * (c[i] - m[i]);
      }
      if (a.guidance_rescale != 0.0 && M > 1) {
        auto stddev = [M](const std::vector<double>& v) {  // two-pass: exact enough at any offset
          double mean = 0, ss = 0;
          for (double x : v) mean += x;
          mean /= double(M);
          for (double x : v) ss += (x - mean) * (x - mean);
          return std::sqrt(ss / double(M - 1));
        };
        const double s_cfg = stddev(m);
        if (s_cfg != 0) {  // a constant ε̃ stays as it is; a NaN std makes the sample NaN
          const double f = a.guidance_rescale * (stddev(c) / s_cfg) + (1.0 - a.guidance_rescale);
          for (double& x : m) x *= f;
        }
      }
    }
    // 2. x̂0 and ε̂ for the prediction type
    const double at_ = a.alpha_t[r], ap = a.alpha_prev[r];
    const double sa = std::sqrt(at_), sb = std::sqrt(1 - at_);
    std::vector<double> x0(M), eps(M);
    for (int64_t i = 0; i < M; ++i) {
      const double x = at<T>(a.sample, o + i);
      switch (a.prediction) {
        case Prediction::epsilon: x0[i] = (x - sb * m[i]) / sa; eps[i] = m[i]; break;
        case Prediction::v_prediction: x0[i] = sa * x - sb * m[i]; eps[i] = sa * m[i] + sb * x; break;
        case Prediction::sample: x0[i] = m[i]; eps[i] = (x - sa * m[i]) / sb; break;
      }
    }
    // 3. clip x̂0: fixed range, or s = clamp(quantile_p |x̂0|, 1, max) then clamp(x̂0, −s, s)/s
    //    (torch.quantile: NaN if any |x̂0| is NaN, neighbours ⌊pos⌋ and ⌈pos⌉, torch.lerp's formula)
    if (a.clip != ClipMode::none) {
      double lim = a.clip_range, div = 1.0;
      if (a.clip == ClipMode::dynamic) {
        std::vector<double> v(M);
        bool has_nan = false;
        for (int64_t i = 0; i < M; ++i) {
          v[i] = std::fabs(x0[i]);
          has_nan = has_nan || std::isnan(v[i]);
        }
        std::sort(v.begin(), v.end());
        const double pos = a.dynamic_quantile * double(M - 1);
        const int64_t lo = int64_t(std::floor(pos)), hi = int64_t(std::ceil(pos));
        const double q = has_nan ? NAN : quantile_lerp(v[lo], v[hi], pos - double(lo));
        lim = div = dynamic_threshold_scale(q, a.dynamic_max);
      }
      for (int64_t i = 0; i < M; ++i) {
        x0[i] = std::isnan(lim) ? NAN : std::min(std::max(x0[i], -lim), lim) / div;
        if (a.use_clipped_model_output) eps[i] = (at<T>(a.sample, o + i) - sa * x0[i]) / sb;
      }
    }
    // 4. σ (eq. 16) and x_prev (eq. 12)
    const double sigma = a.eta > 0 ? a.eta * std::sqrt((1 - ap) / (1 - at_)) * std::sqrt(1 - at_ / ap) : 0.0;
    const double dir = std::sqrt(std::max(0.0, 1 - ap - sigma * sigma));
    for (int64_t i = 0; i < M; ++i) {
      const double z = a.noise ? at<T>(a.noise, o + i) : 0.0;
      out[o + i] = std::sqrt(ap) * x0[i] + dir * eps[i] + sigma * z;
      out_x0[o + i] = x0[i];
    }
  }
}

// Classifier-free guidance alone: ε̃ = ε_u + w(ε_c − ε_u), rescaled as in ddim_step above.
template <typename T>
void cfg_combine(const CfgCombineArgs& a, std::vector<double>& out) {
  const int64_t M = a.numel;
  out.assign(a.batch * M, 0.0);
  for (int64_t r = 0; r < a.batch; ++r) {
    const int64_t o = r * M;
    const double w = a.guidance_scale[r];
    std::vector<double> c(M);
    double mean_c = 0, mean_g = 0;
    for (int64_t i = 0; i < M; ++i) {
      const double u = at<T>(a.uncond, o + i);
      c[i] = at<T>(a.cond, o + i);
      out[o + i] = u + w * (c[i] - u);
      mean_c += c[i] / double(M);
      mean_g += out[o + i] / double(M);
    }
    if (a.guidance_rescale != 0.0 && M > 1) {
      double ss_c = 0, ss_g = 0;
      for (int64_t i = 0; i < M; ++i) {
        ss_c += (c[i] - mean_c) * (c[i] - mean_c);
        ss_g += (out[o + i] - mean_g) * (out[o + i] - mean_g);
      }
      if (ss_g != 0) {
        const double f = a.guidance_rescale * std::sqrt(ss_c / ss_g) + (1.0 - a.guidance_rescale);
        for (int64_t i = 0; i < M; ++i) out[o + i] *= f;
      }
    }
  }
}

template <typename T>
void mask_blend(const MaskBlendArgs& a, std::vector<double>& out) {
  out.assign(a.batch * a.channels * a.spatial, 0.0);
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t c = 0; c < a.channels; ++c)
      for (int64_t i = 0; i < a.spatial; ++i) {
        const int64_t k = (n * a.channels + c) * a.spatial + i;
        const double m = at<T>(a.mask, n * a.mask_batch_stride + i);
        // a binary mask selects (whatever the other input holds); a soft one blends
        out[k] = m == 1 ? at<T>(a.a, k) : m == 0 ? at<T>(a.b, k) : m * at<T>(a.a, k) + (1 - m) * at<T>(a.b, k);
      }
}

// DiffEdit (Couairon et al. 2022, §3.2): mean |ε_q − ε_r| over draws and channels, clamp, normalise.
template <typename T>
void diffedit_mask(const DiffEditMaskArgs& a, std::vector<double>& out) {
  const int64_t S = a.spatial, planes = a.draws * a.channels;
  out.assign(a.batch * S, 0.0);
  for (int64_t b = 0; b < a.batch; ++b) {
    double mean = 0;
    for (int64_t i = 0; i < S; ++i) {
      double acc = 0;
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t k = (b * planes + p) * S + i;
        acc += std::fabs(at<T>(a.eps_query, k) - at<T>(a.eps_ref, k));
      }
      out[b * S + i] = acc / double(planes);
      mean += out[b * S + i] / double(S);
    }
    const double bound = a.clamp_ratio * mean;  // NaN when a prediction is NaN: the whole map is NaN
    for (int64_t i = 0; i < S; ++i) {
      double& v = out[b * S + i];
      v = bound == 0 ? 0.0 : (std::isnan(v) || std::isnan(bound) ? NAN : std::min(v, bound) / bound);
      if (a.threshold >= 0 && !std::isnan(v)) v = v > a.threshold ? 1.0 : 0.0;
    }
  }
}

// x̂0 from the model output on a σ-space sample: Euler's variance-exploding x = x0 + σε (model input
// x/√(σ²+1)), or DPM-Solver's variance-preserving x = α·x0 + σ_vp·ε (α = 1/√(σ²+1), σ_vp = σα).
inline double sigma_x0(Prediction p, bool variance_preserving, double sigma, double x, double m) {
  const double alpha = 1 / std::sqrt(sigma * sigma + 1);
  if (p == Prediction::sample) return m;
  if (variance_preserving)
    return p == Prediction::epsilon ? (x - sigma * alpha * m) / alpha : alpha * x - sigma * alpha * m;
  return p == Prediction::epsilon ? x - sigma * m : m * (-sigma * alpha) + x / (sigma * sigma + 1);
}

// Euler (Karras et al. 2022, Alg. 1 at γ = 0) and Euler ancestral: d = (x − x̂0)/σ, x + d·(σ_to − σ) + σ_up·z.
template <typename T>
void euler_step(const EulerStepArgs& a, std::vector<double>& out, std::vector<double>& out_x0) {
  const int64_t M = a.numel;
  out.assign(a.batch * M, 0.0);
  out_x0.assign(a.batch * M, 0.0);
  for (int64_t r = 0; r < a.batch; ++r) {
    const double s = a.sigma[r], sn = a.sigma_next[r];
    double to = sn, up = 0;
    if (a.noise) {
      up = std::sqrt(sn * sn * (s * s - sn * sn) / (s * s));
      to = std::sqrt(sn * sn - up * up);
    }
    for (int64_t i = r * M; i < (r + 1) * M; ++i) {
      const double x = at<T>(a.sample, i), x0 = sigma_x0(a.prediction, false, s, x, at<T>(a.model, i));
      out[i] = x + (x - x0) / s * (to - s) + (a.noise ? up * at<T>(a.noise, i) : 0.0);
      out_x0[i] = x0;
    }
  }
}

// DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), λ = log α − log σ_vp; D0 = x̂0, D1 = (x̂0 − x̂0_last)/r.
template <typename T>
void dpm_solver_2m_step(const DpmSolver2mStepArgs& a, std::vector<double>& out, std::vector<double>& out_x0) {
  const int64_t M = a.numel;
  out.assign(a.batch * M, 0.0);
  out_x0.assign(a.batch * M, 0.0);
  auto alpha = [](double s) { return 1 / std::sqrt(s * s + 1); };
  auto lambda = [&](double s) { return std::log(alpha(s)) - std::log(s * alpha(s)); };
  for (int64_t r = 0; r < a.batch; ++r) {
    const double s = a.sigma[r], t = a.sigma_next[r];
    const double h = lambda(t) - lambda(s), at_ = alpha(t), st = t * alpha(t), ss = s * alpha(s);
    for (int64_t i = r * M; i < (r + 1) * M; ++i) {
      const double x = at<T>(a.sample, i), x0 = sigma_x0(a.prediction, true, s, x, at<T>(a.model, i));
      out_x0[i] = x0;
      if (t == 0) {
        out[i] = x0;
        continue;
      }
      double v = st / ss * x - at_ * (std::exp(-h) - 1) * x0;
      if (a.x0_last) {
        const double r0 = (lambda(s) - lambda(a.sigma_last[r])) / h, d1 = (x0 - at<T>(a.x0_last, i)) / r0;
        v += a.heun ? at_ * ((std::exp(-h) - 1) / h + 1) * d1 : -0.5 * at_ * (std::exp(-h) - 1) * d1;
      }
      out[i] = v;
    }
  }
}

}  // namespace diffrt::reference
