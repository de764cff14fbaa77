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
//   euler_step         read x, m [, z]; write x_prev [, x̂0]                         one pass
//   dpm_solver_2m_step read x, m [, x̂0_last]; write x_prev [, x̂0]                  one pass
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

#ifndef DIFFRT_ISA
#error "DIFFRT_ISA must name the instruction set this file is compiled for"
#endif

namespace diffrt::cpu::DIFFRT_ISA {
namespace {

// Per-sample moments for guidance_rescale: count, mean and M2 = Σ(v − mean)² of ε_c and of
// ε̃ = ε_u + w(ε_c − ε_u). Raw sums Σv, Σv² lose every digit of the variance once |mean|/std is large
// (float32 v² carries ~7 digits: at |mean|/std = 10⁴ the variance is below its rounding), so each
// chunk of kChunk elements is read twice while it sits in L1: a shift m̃ near its mean, then Σd and
// Σd² of d = v − m̃, giving M2 = Σd² − (Σd)²/n free of cancellation (the second term corrects the
// shift's distance from the mean). Both in float vector lanes (d is of the order of the std, ≤ 64 terms per lane), the
// lanes added in double. Chunks merge by Chan et al.'s formula
//   n = n_a + n_b,  δ = mean_b − mean_a,  mean = mean_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n
// in a fixed order: chunk boundaries are fixed offsets within the row and tiles of kTileChunks
// chunks are the unit of work, so any thread count gives the same bits.
struct Moments {
  double n = 0, mean_c = 0, m2_c = 0, mean_g = 0, m2_g = 0;

  void merge(const Moments& b) {
    if (b.n == 0) return;
    if (n == 0) {
      *this = b;
      return;
    }
    const double total = n + b.n, dc = b.mean_c - mean_c, dg = b.mean_g - mean_g, f = n * b.n / total;
    mean_c += dc * (b.n / total);
    mean_g += dg * (b.n / total);
    m2_c += b.m2_c + dc * dc * f;
    m2_g += b.m2_g + dg * dg * f;
    n = total;
  }
};

constexpr int64_t kChunk = 1024;      // elements summed twice from L1 (8 KB of float32 per half)
constexpr int64_t kTileChunks = 16;   // chunks per unit of parallel work

// GCC vector types for the chunk sums: accumulators that stay in registers whatever the
// instantiation (the auto-vectoriser kept lane arrays in memory here), lanes added in a fixed order.
#if defined(__AVX2__)
constexpr int kVec = 8;  // also with AVX-512: 256-bit accumulators measured faster for this reduction
#else
constexpr int kVec = 4;  // the scalar build: SSE2 registers
#endif
typedef float vfloat __attribute__((vector_size(kVec * sizeof(float))));

template <typename T>
inline vfloat load_vec(const T* p) {
  vfloat v;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (int j = 0; j < kVec; ++j) v[j] = load(p[j]);
  }
  return v;
}

inline double lane_sum(vfloat v) {
  double s = 0;
  for (int j = 0; j < kVec; ++j) s += v[j];
  return s;
}

template <typename T>
Moments chunk_moments(const T* uncond, const T* cond, int64_t len, float w) {
  // Pass 1: the shift m̃, the mean of the chunk's first kShiftSample elements. Any shift works (the
  // correction term below removes its offset exactly); rounding grows with (m̃ − mean)²/variance,
  // which for the mean of a fixed subset of a fraction f of the chunk is at most (1 − f)/f = 7.
  constexpr int64_t kShiftSample = kChunk / 8;
  const int64_t sample = std::min(len, kShiftSample), sample_body = sample / (2 * kVec) * (2 * kVec);
  vfloat su0{}, su1{}, sc0{}, sc1{};
  for (int64_t i = 0; i < sample_body; i += 2 * kVec) {
    su0 += load_vec(uncond + i); su1 += load_vec(uncond + i + kVec);
    sc0 += load_vec(cond + i); sc1 += load_vec(cond + i + kVec);
  }
  double su = lane_sum(su0) + lane_sum(su1), sc = lane_sum(sc0) + lane_sum(sc1);
  for (int64_t i = sample_body; i < sample; ++i) {
    su += load(uncond[i]);
    sc += load(cond[i]);
  }
  const double mean_u = su / double(sample), mean_c = sc / double(sample);
  const float mc = float(mean_c), mg = float(mean_u + w * (mean_c - mean_u));  // ε̃ is linear in (ε_u, ε_c)
  const int64_t body = len / (2 * kVec) * (2 * kVec);  // two vectors per step: two independent add chains
  const double n = double(len);
  // Pass 2, from L1: Σd, Σd² of d = v − m̃ (of the order of the std: no cancellation in float).
  vfloat d0{}, d1{}, dd0{}, dd1{}, e0{}, e1{}, ee0{}, ee1{};
  for (int64_t i = 0; i < body; i += 2 * kVec) {
    const vfloat u0 = load_vec(uncond + i), u1 = load_vec(uncond + i + kVec);
    const vfloat v0 = load_vec(cond + i), v1 = load_vec(cond + i + kVec);
    const vfloat x0 = v0 - mc, x1 = v1 - mc;
    const vfloat y0 = (u0 + w * (v0 - u0)) - mg, y1 = (u1 + w * (v1 - u1)) - mg;
    d0 += x0; d1 += x1; dd0 += x0 * x0; dd1 += x1 * x1;
    e0 += y0; e1 += y1; ee0 += y0 * y0; ee1 += y1 * y1;
  }
  double s1c = lane_sum(d0) + lane_sum(d1), s2c = lane_sum(dd0) + lane_sum(dd1);
  double s1g = lane_sum(e0) + lane_sum(e1), s2g = lane_sum(ee0) + lane_sum(ee1);
  for (int64_t i = body; i < len; ++i) {
    const float u = load(uncond[i]), c = load(cond[i]);
    const float d = c - mc, e = (u + w * (c - u)) - mg;
    s1c += d; s2c += double(d) * d; s1g += e; s2g += double(e) * e;
  }
  Moments m;
  m.n = n;
  m.mean_c = mc + s1c / n;
  m.m2_c = s2c - s1c * s1c / n;
  m.mean_g = mg + s1g / n;
  m.m2_g = s2g - s1g * s1g / n;
  return m;
}

// The two unbiased per-sample stds of guidance_rescale (std(ε_c), std(ε̃)); 0 for one element.
template <typename T>
void guidance_stds(int64_t batch, int64_t numel, const T* uncond, const T* cond, const double* w, int num_threads,
                   std::vector<double>& std_cond, std::vector<double>& std_cfg) {
  std_cond.assign(batch, 0.0);
  std_cfg.assign(batch, 0.0);
  if (batch <= 0 || numel <= 0) return;
  const int64_t tile = kChunk * kTileChunks, tiles_per_row = (numel + tile - 1) / tile, tiles = batch * tiles_per_row;
  std::vector<Moments> partial(tiles);
  auto run_tile = [&](int64_t t) {
    const int64_t r = t / tiles_per_row, begin = (t % tiles_per_row) * tile, end = std::min(numel, begin + tile);
    const int64_t o = r * numel;
    Moments acc;
    for (int64_t b = begin; b < end; b += kChunk)
      acc.merge(chunk_moments(uncond + o + b, cond + o + b, std::min(kChunk, end - b), float(w[r])));
    partial[t] = acc;
  };
  // each tile writes its own partial, so the result is the same for any thread count or order
  parallel_for(tiles, batch * numel < kMinParallelElements ? 1 : num_threads, run_tile);
  for (int64_t r = 0; r < batch; ++r) {
    Moments row;
    for (int64_t t = 0; t < tiles_per_row; ++t) row.merge(partial[r * tiles_per_row + t]);
    std_cond[r] = unbiased_std(row.m2_c, row.n);
    std_cfg[r] = unbiased_std(row.m2_g, row.n);
  }
}

std::vector<GuidanceWeights> guidance_weights_for(int64_t batch, const double* w, double rescale,
                                                  const std::vector<double>& std_cond,
                                                  const std::vector<double>& std_cfg) {
  std::vector<GuidanceWeights> g(batch);
  for (int64_t r = 0; r < batch; ++r)
    g[r] = rescale != 0.0 ? guidance_weights(w[r], rescale, std_cond[r], std_cfg[r])
                          : guidance_weights(w[r], 0.0, 1.0, 1.0);
  return g;
}

// torch.quantile's default ("linear") over n ≥ 1 values (reordered in place): sorted v, position
// pos = p·(n−1), q = lerp(v[⌊pos⌋], v[⌈pos⌉], pos − ⌊pos⌋) with torch.lerp's formula; NaN when any
// value is NaN (torch sorts NaN last and returns it). Empty rows have no quantile (NaN).
double quantile_linear(float* v, int64_t n, double p) {
  if (n <= 0) return std::nan("");
  int64_t nans = 0;
#pragma omp simd reduction(+ : nans)
  for (int64_t i = 0; i < n; ++i) nans += v[i] != v[i];
  if (nans) return std::nan("");
  const double pos = p * double(n - 1);
  const int64_t lo = std::min<int64_t>(int64_t(std::floor(pos)), n - 1);
  std::nth_element(v, v + lo, v + n);
  const double below = v[lo];
  const double weight = pos - double(lo);
  if (weight == 0.0) return quantile_lerp(below, below, 0.0);  // ⌈pos⌉ = ⌊pos⌋
  const double above = *std::min_element(v + lo + 1, v + n);
  return quantile_lerp(below, above, weight);
}

template <typename T, Prediction P, bool kGuided, bool kNoise, bool kClip, bool kRecompute, bool kWriteX0>
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
    const GuidanceWeights gr = kGuided ? g[r] : GuidanceWeights{0.f, 1.f};
    const float l = kClip ? lim[r] : 0.f, d = kClip ? divisor[r] : 1.f;
    const int64_t o = r * M;
#pragma omp simd
    for (int64_t i = o + b; i < o + e; ++i) {
      float m = load(mu[i]);
      if constexpr (kGuided) m = guided_element<false>(gr, m, load(mc[i]));  // r is folded into kr
      const float zi = kNoise ? load(z[i]) : 0.f;
      float x0;
      const float v = ddim_element<P, kClip, kRecompute>(kr, load(x[i]), m, zi, l, d, &x0);
      xp[i] = store_as<T>(v);
      if constexpr (kWriteX0) x0o[i] = store_as<T>(x0);
    }
  });
}

// |x̂0| per element into `scratch`, for the dynamic-threshold quantile.
template <typename T, Prediction P, bool kGuided>
void abs_x0_pass(const DdimStepArgs& a, const DdimCoeffs* k, const GuidanceWeights* g, float* scratch) {
  const T* x = in<T>(a.sample);
  const T* mu = in<T>(a.model);
  const T* mc = in<T>(a.model_cond);
  const int64_t M = a.numel;
  parallel_rows(a.batch, M, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const DdimCoeffs kr = k[r];
    const GuidanceWeights gr = kGuided ? g[r] : GuidanceWeights{0.f, 1.f};
    const int64_t o = r * M;
#pragma omp simd
    for (int64_t i = o + b; i < o + e; ++i) {
      float m = load(mu[i]);
      if constexpr (kGuided) m = guided_element<false>(gr, m, load(mc[i]));  // r is folded into kr
      scratch[i] = abs_x0_element<P>(kr, load(x[i]), m);
    }
  });
}

template <typename T>
void ddim_step_typed(const DdimStepArgs& a) {
  const int64_t N = a.batch;
  if (N <= 0 || a.numel <= 0) return;  // nothing to write (and no quantile of an empty row)
  const bool guided = a.model_cond != nullptr;
  std::vector<DdimCoeffs> k(N);
  for (int64_t r = 0; r < N; ++r) k[r] = ddim_coefficients(a.alpha_t[r], a.alpha_prev[r], a.eta, a.prediction);

  std::vector<GuidanceWeights> g;
  if (guided) {
    std::vector<double> std_cond, std_cfg;
    if (a.guidance_rescale != 0.0)
      guidance_stds(N, a.numel, in<T>(a.model), in<T>(a.model_cond), a.guidance_scale, a.num_threads, std_cond,
                    std_cfg);
    g = guidance_weights_for(N, a.guidance_scale, a.guidance_rescale, std_cond, std_cfg);
    for (int64_t r = 0; r < N; ++r) fold_guidance_scale(k[r], g[r].scale);
  }

  std::vector<float> lim(N, 0.f), divisor(N, 1.f);
  if (a.clip == ClipMode::fixed) {
    std::fill(lim.begin(), lim.end(), float(a.clip_range));
  } else if (a.clip == ClipMode::dynamic) {
    std::vector<float> scratch(size_t(N) * a.numel);
    with_prediction(a.prediction, [&](auto kp) {
      using Pred = decltype(kp);
      with_flag(guided, [&](auto kg) {
        abs_x0_pass<T, Pred::value, decltype(kg)::value>(a, k.data(), g.data(), scratch.data());
      });
    });
    parallel_for(N, a.num_threads, [&](int64_t r) {
      const double q = quantile_linear(scratch.data() + r * a.numel, a.numel, a.dynamic_quantile);
      const double s = dynamic_threshold_scale(q, a.dynamic_max);  // s = clamp(q, min=1, max)
      lim[r] = float(s);
      divisor[r] = float(s);
    });
  }

  const bool clip = a.clip != ClipMode::none;
  with_prediction(a.prediction, [&](auto kp) {
    using Pred = decltype(kp);  // types, so the nested lambdas need not capture the tags
    with_flag(guided, [&](auto kg) {
      using Guided = decltype(kg);
      with_flag(a.noise != nullptr, [&](auto kn) {
        using Noise = decltype(kn);
        with_flag(clip, [&](auto kc) {
          using Clip = decltype(kc);
          with_flag(clip && a.use_clipped_model_output, [&](auto kr) {
            using Recompute = decltype(kr);
            with_flag(a.out_x0 != nullptr, [&](auto kx) {
              if constexpr (Clip::value || !Recompute::value)  // recomputing ε̂ needs a clipped x̂0
                ddim_pass<T, Pred::value, Guided::value, Noise::value, Clip::value, Recompute::value,
                          decltype(kx)::value>(a, k.data(), g.data(), lim.data(), divisor.data());
            });
          });
        });
      });
    });
  });
}

template <typename T>
void cfg_combine_typed(const CfgCombineArgs& a) {
  const T* u = in<T>(a.uncond);
  const T* c = in<T>(a.cond);
  T* o = out_ptr<T>(a.out);
  if (a.batch <= 0 || a.numel <= 0) return;
  std::vector<double> std_cond, std_cfg;
  if (a.guidance_rescale != 0.0)
    guidance_stds(a.batch, a.numel, u, c, a.guidance_scale, a.num_threads, std_cond, std_cfg);
  const auto g = guidance_weights_for(a.batch, a.guidance_scale, a.guidance_rescale, std_cond, std_cfg);
  const int64_t M = a.numel;
  with_flag(a.guidance_rescale != 0.0, [&](auto kr) {
    parallel_rows(a.batch, M, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
      const GuidanceWeights gr = g[r];
      const int64_t off = r * M;
#pragma omp simd
      for (int64_t i = off + b; i < off + e; ++i)
        o[i] = store_as<T>(guided_element<decltype(kr)::value>(gr, load(u[i]), load(c[i])));
    });
  });
}

template <typename T>
void mask_blend_typed(const MaskBlendArgs& a) {
  const T* m = in<T>(a.mask);
  const T* x = in<T>(a.a);
  const T* y = in<T>(a.b);
  T* o = out_ptr<T>(a.out);
  const int64_t S = a.spatial;
  if (a.batch <= 0 || a.channels <= 0 || S <= 0) return;
  parallel_rows(a.batch * a.channels, S, a.num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const T* mr = m + (r / a.channels) * a.mask_batch_stride;
    const T* xr = x + r * S;
    const T* yr = y + r * S;
    T* orow = o + r * S;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) orow[i] = store_as<T>(blend_element(load(mr[i]), load(xr[i]), load(yr[i])));
  });
}

// DiffEdit (Couairon et al. 2022, §3.2): map = mean over draws and channels of |ε_q − ε_r|,
// clamped at clamp_ratio·mean(map), divided by that bound, optionally binarised
// (sampler_math.h diffedit_normalise_element: NaN in, NaN map out). With no draws or channels the
// mean is 0/0 = NaN, as the reference's mean over nothing.
template <typename T>
void diffedit_mask_typed(const DiffEditMaskArgs& a) {
  const T* q = in<T>(a.eps_query);
  const T* ref = in<T>(a.eps_ref);
  const int64_t S = a.spatial, planes = a.draws * a.channels;
  if (a.batch <= 0 || S <= 0) return;
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
    const float thr = a.threshold >= 0.0 ? float(a.threshold) : -1.f;
    for (int64_t i = 0; i < S; ++i) map[i] = diffedit_normalise_element(map[i], bound, thr);
  });
}

// x̂0 conversion and the σ-space update of one row, all elements in one pass (sampler_math.h
// sigma_step_element). `last` is x̂0_last (DPM-Solver++ 2M) and `z` the noise (Euler ancestral).
template <typename T, Prediction P, bool kSecondOrder, bool kNoise, bool kWriteX0>
void sigma_step_pass(int64_t batch, int64_t M, int num_threads, const SigmaStepCoeffs* k, const void* sample,
                     const void* model, const void* last, const void* noise, void* out, void* out_x0) {
  const T* x = in<T>(sample);
  const T* m = in<T>(model);
  const T* xl = in<T>(last);
  const T* z = in<T>(noise);
  T* xp = out_ptr<T>(out);
  T* x0o = out_ptr<T>(out_x0);
  parallel_rows(batch, M, num_threads, [&](int64_t r, int64_t b, int64_t e) {
    const SigmaStepCoeffs kr = k[r];
    const int64_t o = r * M;
#pragma omp simd
    for (int64_t i = o + b; i < o + e; ++i) {
      float x0;
      const float v = sigma_step_element<P, kSecondOrder, kNoise>(kr, load(x[i]), load(m[i]),
                                                                  kSecondOrder ? load(xl[i]) : 0.f,
                                                                  kNoise ? load(z[i]) : 0.f, &x0);
      xp[i] = store_as<T>(v);
      if constexpr (kWriteX0) x0o[i] = store_as<T>(x0);
    }
  });
}

template <typename T>
void run_sigma_step(const std::vector<SigmaStepCoeffs>& k, Prediction pred, int64_t batch, int64_t M, int threads,
                    const void* sample, const void* model, const void* last, const void* noise, void* out,
                    void* out_x0) {
  with_prediction(pred, [&](auto kp) {
    using Pred = decltype(kp);
    with_flag(last != nullptr, [&](auto kl) {
      using Second = decltype(kl);
      with_flag(noise != nullptr, [&](auto kn) {
        using Noise = decltype(kn);
        with_flag(out_x0 != nullptr, [&](auto kx) {
          sigma_step_pass<T, Pred::value, Second::value, Noise::value, decltype(kx)::value>(
              batch, M, threads, k.data(), sample, model, last, noise, out, out_x0);
        });
      });
    });
  });
}

template <typename T>
void euler_step_typed(const EulerStepArgs& a) {
  if (a.batch <= 0 || a.numel <= 0) return;
  std::vector<SigmaStepCoeffs> k(a.batch);
  for (int64_t r = 0; r < a.batch; ++r)
    k[r] = euler_coefficients(a.sigma[r], a.sigma_next[r], a.noise != nullptr, a.prediction);
  run_sigma_step<T>(k, a.prediction, a.batch, a.numel, a.num_threads, a.sample, a.model, nullptr, a.noise, a.out,
                    a.out_x0);
}

template <typename T>
void dpm_solver_2m_step_typed(const DpmSolver2mStepArgs& a) {
  if (a.batch <= 0 || a.numel <= 0) return;
  std::vector<SigmaStepCoeffs> k(a.batch);
  const bool second = a.x0_last != nullptr;
  for (int64_t r = 0; r < a.batch; ++r)
    k[r] = dpm_solver_2m_coefficients(a.sigma[r], a.sigma_next[r], second ? a.sigma_last[r] : 0.0, second, a.heun,
                                      a.prediction);
  run_sigma_step<T>(k, a.prediction, a.batch, a.numel, a.num_threads, a.sample, a.model, a.x0_last, nullptr, a.out,
                    a.out_x0);
}

// A table entry: the kernel instantiated for the storage dtype. The CPU kernels store float32 or bfloat16
// (the bindings refuse float16 before a kernel runs).
template <typename Args, void (*F32)(const Args&), void (*BF16)(const Args&)>
void for_dtype(const Args& a) {
  switch (a.dtype) {
    case DType::f32: return F32(a);
    case DType::bf16: return BF16(a);
    default: throw std::invalid_argument("the CPU sampler kernels store float32 or bfloat16");
  }
}

}  // namespace

extern const SamplerKernels sampler_kernels = {
    for_dtype<DdimStepArgs, ddim_step_typed<float>, ddim_step_typed<bf16>>,
    for_dtype<CfgCombineArgs, cfg_combine_typed<float>, cfg_combine_typed<bf16>>,
    for_dtype<MaskBlendArgs, mask_blend_typed<float>, mask_blend_typed<bf16>>,
    for_dtype<DiffEditMaskArgs, diffedit_mask_typed<float>, diffedit_mask_typed<bf16>>,
    for_dtype<EulerStepArgs, euler_step_typed<float>, euler_step_typed<bf16>>,
    for_dtype<DpmSolver2mStepArgs, dpm_solver_2m_step_typed<float>, dpm_solver_2m_step_typed<bf16>>,
};

}  // namespace diffrt::cpu::DIFFRT_ISA
