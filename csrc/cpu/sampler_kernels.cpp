// CPU kernels for the sampler ops: DDIM step / inversion with fused guidance, CFG combination,
// mask blending and the DiffEdit mask estimate. Compiled once per ISA (DIFFRT_ISA = scalar, avx2,
// avx512); the loops are written for the auto-vectoriser (`omp simd`), all math in float32.
//
// Memory traffic per call (N samples of M elements, s = bytes per element):
//   ddim_step          read x, m (2 halves when guided) [, z]; write x_prev [, x̂0]   one pass
//     + guidance_rescale   one extra read of both model halves (per-sample std)
//     + dynamic threshold  one extra read of x, m and a scratch write/read of |x̂0|
//   cfg_combine        read ε_u, ε_c; write ε̃
//   mask_blend         read a, b, mask (1/C of a); write out
//   diffedit_mask      read ε_q, ε_r once; write one float map per image
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

#ifndef DIFFRT_ISA
#error "DIFFRT_ISA must name the instruction set this file is compiled for"
#endif

namespace diffrt::cpu::DIFFRT_ISA {
namespace {

// Per-sample sums for guidance_rescale: Σε_c, Σε_c², Σε̃, Σε̃² with ε̃ = ε_u + w(ε_c − ε_u).
// Accumulated in double per thread, then combined; returns the two unbiased stds per sample.
template <typename T>
void guidance_stds(int64_t batch, int64_t numel, const T* uncond, const T* cond, const double* w, int num_threads,
                   std::vector<double>& std_cond, std::vector<double>& std_cfg) {
  const int max_threads = std::max(1, num_threads);
  std::vector<double> partial(size_t(max_threads) * batch * 4, 0.0);
  parallel_rows(batch, numel, num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const float wr = float(w[r]);
    double sc = 0, scc = 0, sg = 0, sgg = 0;
    const int64_t o = r * numel;
    // Lane-wise float accumulators over short blocks vectorise reliably (a double chain per element
    // is latency-bound, and GCC drops `omp simd reduction` in some instantiations); block sums are
    // then added in double.
    constexpr int kLanes = 16;
    constexpr int64_t kBlock = 64 * kLanes;
    for (int64_t b0 = o + b; b0 < o + e; b0 += kBlock) {
      const int64_t e0 = std::min(o + e, b0 + kBlock);
      float fc[kLanes] = {}, fcc[kLanes] = {}, fg[kLanes] = {}, fgg[kLanes] = {};
      int64_t i = b0;
      for (; i + kLanes <= e0; i += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const float u = load(uncond[i + j]), c = load(cond[i + j]);
          const float g = u + wr * (c - u);
          fc[j] += c; fcc[j] += c * c; fg[j] += g; fgg[j] += g * g;
        }
      }
      for (int j = 0; i < e0; ++i, ++j) {
        const float u = load(uncond[i]), c = load(cond[i]);
        const float g = u + wr * (c - u);
        fc[j] += c; fcc[j] += c * c; fg[j] += g; fgg[j] += g * g;
      }
      for (int j = 0; j < kLanes; ++j) {
        sc += fc[j]; scc += fcc[j]; sg += fg[j]; sgg += fgg[j];
      }
    }
    double* p = &partial[(size_t(omp_get_thread_num()) * batch + r) * 4];
    p[0] += sc; p[1] += scc; p[2] += sg; p[3] += sgg;
  });
  std_cond.assign(batch, 0.0);
  std_cfg.assign(batch, 0.0);
  const double n = double(numel);
  for (int64_t r = 0; r < batch; ++r) {
    double s[4] = {0, 0, 0, 0};
    for (int t = 0; t < max_threads; ++t)
      for (int j = 0; j < 4; ++j) s[j] += partial[(size_t(t) * batch + r) * 4 + j];
    if (numel > 1) {
      std_cond[r] = std::sqrt(std::max(0.0, (s[1] - s[0] * s[0] / n) / (n - 1)));
      std_cfg[r] = std::sqrt(std::max(0.0, (s[3] - s[2] * s[2] / n) / (n - 1)));
    }
  }
}

std::vector<GuidanceWeights> guidance_weights_for(int64_t batch, int64_t numel, const double* w, double rescale,
                                                  const std::vector<double>& std_cond,
                                                  const std::vector<double>& std_cfg) {
  std::vector<GuidanceWeights> g(batch);
  for (int64_t r = 0; r < batch; ++r)
    g[r] = rescale != 0.0 ? guidance_weights(w[r], rescale, std_cond[r], std_cfg[r])
                          : guidance_weights(w[r], 0.0, 1.0, 1.0);
  return g;
}

// torch.quantile's default ("linear"): sorted v, position p·(n−1), interpolate its two neighbours.
double quantile_linear(float* v, int64_t n, double p) {
  const double pos = p * double(n - 1);
  const int64_t lo = int64_t(std::floor(pos));
  std::nth_element(v, v + lo, v + n);
  const double below = v[lo];
  if (lo + 1 >= n) return below;
  const double above = *std::min_element(v + lo + 1, v + n);
  return below + (pos - double(lo)) * (above - below);
}

template <typename T, bool kGuided, bool kNoise, bool kClip, bool kRecompute, bool kWriteX0>
void ddim_pass(const DdimStepArgs& a, const DdimCoeffs* k, const GuidanceWeights* g, const float* lim,
               const float* divisor) {
  const T* x = in<T>(a.sample);
  const T* mu = in<T>(a.model);
  const T* mc = in<T>(a.model_cond);
  const T* z = in<T>(a.noise);
  T* xp = out_ptr<T>(a.out);
  T* x0o = out_ptr<T>(a.out_x0);
  const int64_t M = a.numel;
  parallel_rows(a.batch, M, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const DdimCoeffs kr = k[r];
    const float gu = kGuided ? g[r].uncond : 1.f, gc = kGuided ? g[r].cond : 0.f;
    const float l = kClip ? lim[r] : 0.f, d = kClip ? divisor[r] : 1.f;
    const int64_t o = r * M;
#pragma omp simd
    for (int64_t i = o + b; i < o + e; ++i) {
      float m = load(mu[i]);
      if constexpr (kGuided) m = gu * m + gc * load(mc[i]);
      const float zi = kNoise ? load(z[i]) : 0.f;
      float x0;
      const float v = ddim_element<kClip, kRecompute>(kr, load(x[i]), m, zi, l, d, &x0);
      xp[i] = store_as<T>(v);
      if constexpr (kWriteX0) x0o[i] = store_as<T>(x0);
    }
  });
}

// |x̂0| per element into `scratch`, for the dynamic-threshold quantile.
template <typename T, bool kGuided>
void abs_x0_pass(const DdimStepArgs& a, const DdimCoeffs* k, const GuidanceWeights* g, float* scratch) {
  const T* x = in<T>(a.sample);
  const T* mu = in<T>(a.model);
  const T* mc = in<T>(a.model_cond);
  const int64_t M = a.numel;
  parallel_rows(a.batch, M, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const float x0x = k[r].x0_x, x0m = k[r].x0_m;
    const float gu = kGuided ? g[r].uncond : 1.f, gc = kGuided ? g[r].cond : 0.f;
    const int64_t o = r * M;
#pragma omp simd
    for (int64_t i = o + b; i < o + e; ++i) {
      float m = load(mu[i]);
      if constexpr (kGuided) m = gu * m + gc * load(mc[i]);
      scratch[i] = std::fabs(x0x * load(x[i]) + x0m * m);
    }
  });
}

template <typename T>
void ddim_step_typed(const DdimStepArgs& a) {
  const int64_t N = a.batch;
  const bool guided = a.model_cond != nullptr;
  std::vector<DdimCoeffs> k(N);
  for (int64_t r = 0; r < N; ++r) k[r] = ddim_coefficients(a.alpha_t[r], a.alpha_prev[r], a.eta, a.prediction);

  std::vector<GuidanceWeights> g;
  if (guided) {
    std::vector<double> std_cond, std_cfg;
    if (a.guidance_rescale != 0.0)
      guidance_stds(N, a.numel, in<T>(a.model), in<T>(a.model_cond), a.guidance_scale, a.num_threads, std_cond,
                    std_cfg);
    g = guidance_weights_for(N, a.numel, a.guidance_scale, a.guidance_rescale, std_cond, std_cfg);
  }

  std::vector<float> lim(N, 0.f), divisor(N, 1.f);
  if (a.clip == ClipMode::fixed) {
    std::fill(lim.begin(), lim.end(), float(a.clip_range));
  } else if (a.clip == ClipMode::dynamic) {
    std::vector<float> scratch(size_t(N) * a.numel);
    with_flag(guided, [&](auto kg) { abs_x0_pass<T, decltype(kg)::value>(a, k.data(), g.data(), scratch.data()); });
    parallel_for(N, a.num_threads, [&](int64_t r) {
      double s = quantile_linear(scratch.data() + r * a.numel, a.numel, a.dynamic_quantile);
      s = std::min(std::max(s, 1.0), a.dynamic_max);  // s = max(1, q), bounded above
      lim[r] = float(s);
      divisor[r] = float(s);
    });
  }

  const bool clip = a.clip != ClipMode::none;
  with_flag(guided, [&](auto kg) {
    with_flag(a.noise != nullptr, [&](auto kn) {
      with_flag(clip, [&](auto kc) {
        with_flag(clip && a.use_clipped_model_output, [&](auto kr) {
          with_flag(a.out_x0 != nullptr, [&](auto kx) {
            ddim_pass<T, decltype(kg)::value, decltype(kn)::value, decltype(kc)::value, decltype(kr)::value,
                      decltype(kx)::value>(a, k.data(), g.data(), lim.data(), divisor.data());
          });
        });
      });
    });
  });
}

void ddim_step(const DdimStepArgs& a) {
  if (a.dtype == DType::bf16)
    ddim_step_typed<bf16>(a);
  else
    ddim_step_typed<float>(a);
}

template <typename T>
void cfg_combine_typed(const CfgCombineArgs& a) {
  const T* u = in<T>(a.uncond);
  const T* c = in<T>(a.cond);
  T* o = out_ptr<T>(a.out);
  std::vector<double> std_cond, std_cfg;
  if (a.guidance_rescale != 0.0)
    guidance_stds(a.batch, a.numel, u, c, a.guidance_scale, a.num_threads, std_cond, std_cfg);
  const auto g = guidance_weights_for(a.batch, a.numel, a.guidance_scale, a.guidance_rescale, std_cond, std_cfg);
  const int64_t M = a.numel;
  parallel_rows(a.batch, M, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const float gu = g[r].uncond, gc = g[r].cond;
    const int64_t off = r * M;
#pragma omp simd
    for (int64_t i = off + b; i < off + e; ++i) o[i] = store_as<T>(gu * load(u[i]) + gc * load(c[i]));
  });
}

void cfg_combine(const CfgCombineArgs& a) {
  if (a.dtype == DType::bf16)
    cfg_combine_typed<bf16>(a);
  else
    cfg_combine_typed<float>(a);
}

template <typename T>
void mask_blend_typed(const MaskBlendArgs& a) {
  const T* m = in<T>(a.mask);
  const T* x = in<T>(a.a);
  const T* y = in<T>(a.b);
  T* o = out_ptr<T>(a.out);
  const int64_t S = a.spatial;
  parallel_rows(a.batch * a.channels, S, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const T* mr = m + (r / a.channels) * a.mask_batch_stride;
    const T* xr = x + r * S;
    const T* yr = y + r * S;
    T* orow = o + r * S;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) orow[i] = store_as<T>(blend_element(load(mr[i]), load(xr[i]), load(yr[i])));
  });
}

void mask_blend(const MaskBlendArgs& a) {
  if (a.dtype == DType::bf16)
    mask_blend_typed<bf16>(a);
  else
    mask_blend_typed<float>(a);
}

// DiffEdit (Couairon et al. 2022, §3.2): map = mean over draws and channels of |ε_q − ε_r|,
// clamped at clamp_ratio·mean(map), divided by that bound, optionally binarised.
template <typename T>
void diffedit_mask_typed(const DiffEditMaskArgs& a) {
  const T* q = in<T>(a.eps_query);
  const T* ref = in<T>(a.eps_ref);
  const int64_t S = a.spatial, planes = a.draws * a.channels;
  const float inv_planes = 1.f / float(planes);
  constexpr int64_t kBlock = 2048;  // accumulator block kept in L1 while all planes stream by
  parallel_rows(a.batch, S, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    float* acc = a.out + r * S;
    for (int64_t b0 = b; b0 < e; b0 += kBlock) {
      const int64_t e0 = std::min(e, b0 + kBlock);
      for (int64_t i = b0; i < e0; ++i) acc[i] = 0.f;
      for (int64_t p = 0; p < planes; ++p) {
        const T* qp = q + (r * planes + p) * S;
        const T* rp = ref + (r * planes + p) * S;
#pragma omp simd
        for (int64_t i = b0; i < e0; ++i) acc[i] += std::fabs(load(qp[i]) - load(rp[i]));
      }
#pragma omp simd
      for (int64_t i = b0; i < e0; ++i) acc[i] *= inv_planes;
    }
  });
  // Normalise each image's map (S floats: small next to the n·C planes read above).
  parallel_for(a.batch, a.num_threads, [&](int64_t r) {
    float* map = a.out + r * S;
    double sum = 0.0;
    for (int64_t i = 0; i < S; ++i) sum += map[i];
    const float bound = float(a.clamp_ratio * sum / double(S));
    const float inv = bound > 0.f ? 1.f / bound : 0.f;
    const bool binary = a.threshold >= 0.0;
    const float thr = float(a.threshold);
    for (int64_t i = 0; i < S; ++i) {
      const float v = std::min(map[i], bound) * inv;
      map[i] = binary ? (v > thr ? 1.f : 0.f) : v;
    }
  });
}

void diffedit_mask(const DiffEditMaskArgs& a) {
  if (a.dtype == DType::bf16)
    diffedit_mask_typed<bf16>(a);
  else
    diffedit_mask_typed<float>(a);
}

}  // namespace

extern const SamplerKernels sampler_kernels = {ddim_step, cfg_combine, mask_blend, diffedit_mask};

}  // namespace diffrt::cpu::DIFFRT_ISA
