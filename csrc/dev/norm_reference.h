// Plain C++ references for the norm and activation kernels (csrc/norm.h): double precision, no SIMD, no
// threads. Each returns the result and `scale`, the magnitude the float32 rounding of the kernel is
// relative to (its tolerance is eps(T)·|ref| + c·eps(float32)·scale). The args' pointers must be host
// pointers. Used by cpu_kernels_check.cpp and the CUDA host simulation (tests/cuda_sim/sim_norm.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "norm.h"

namespace diffrt::reference {

// GroupNorm: two-pass mean and biased variance per (n, g), then γ, β and SiLU.
template <typename T>
std::vector<double> group_norm(const GroupNormArgs& a, double& scale) {
  const int64_t N = a.batch, C = a.channels, HW = a.spatial, cg = C / a.groups;
  const T* x = static_cast<const T*>(a.x);
  const float *w = static_cast<const float*>(a.weight), *b = static_cast<const float*>(a.bias);
  auto at = [&](int64_t n, int64_t c, int64_t p) { return a.channels_last ? (n * HW + p) * C + c : (n * C + c) * HW + p; };
  std::vector<double> ref(N * C * HW);
  scale = 1.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < a.groups; ++g) {
      double sum = 0, sq = 0, amax = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t p = 0; p < HW; ++p) sum += double(load(x[at(n, c, p)]));
      const double mean = sum / double(cg * HW);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t p = 0; p < HW; ++p) {
          const double v = double(load(x[at(n, c, p)]));
          sq += (v - mean) * (v - mean);
          amax = std::max(amax, std::fabs(v));
        }
      const double rstd = 1.0 / std::sqrt(sq / double(cg * HW) + a.eps);
      // float32 holds x − μ to eps·|x|: the normalised value is off by eps·|x|·rstd, times |γ| ≤ ~3
      scale = std::max(scale, 3.0 * (2 * amax * rstd + 1.0) * 3.0);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t p = 0; p < HW; ++p) {
          double v = (double(load(x[at(n, c, p)])) - mean) * rstd;
          if (w) v = v * w[c] + b[c];
          if (a.silu) v = v / (1.0 + std::exp(-v));
          ref[at(n, c, p)] = v;
        }
    }
  return ref;
}

// LayerNorm over the last dim of each row.
template <typename T>
std::vector<double> layer_norm(const LayerNormArgs& a, double& scale) {
  const int64_t rows = a.rows, dim = a.dim;
  const T* x = static_cast<const T*>(a.x);
  const float *w = static_cast<const float*>(a.weight), *b = static_cast<const float*>(a.bias);
  std::vector<double> ref(rows * dim);
  scale = 1.0;
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0, sq = 0, amax = 0;
    for (int64_t i = 0; i < dim; ++i) sum += double(load(x[r * dim + i]));
    const double mean = sum / double(dim);
    for (int64_t i = 0; i < dim; ++i) {
      const double v = double(load(x[r * dim + i]));
      sq += (v - mean) * (v - mean);
      amax = std::max(amax, std::fabs(v));
    }
    const double rstd = 1.0 / std::sqrt(sq / double(dim) + a.eps);
    scale = std::max(scale, 3.0 * (2 * amax * rstd + 1.0) * 3.0);
    for (int64_t i = 0; i < dim; ++i) {
      const double v = (double(load(x[r * dim + i])) - mean) * rstd;
      ref[r * dim + i] = w ? v * w[i] + b[i] : v;
    }
  }
  return ref;
}

// GEGLU: h·gelu(g) for each row [h | g], gelu(g) = g/2·(1 + erf(g/√2)).
template <typename T>
std::vector<double> geglu(const GegluArgs& a, double& scale) {
  const int64_t rows = a.rows, dim = a.dim;
  const T* x = static_cast<const T*>(a.x);
  std::vector<double> ref(rows * dim);
  scale = 1.0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim; ++i) {
      const double h = double(load(x[r * 2 * dim + i])), g = double(load(x[r * 2 * dim + dim + i]));
      ref[r * dim + i] = h * 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)));
      scale = std::max(scale, std::fabs(h) * std::max(1.0, std::fabs(g)));
    }
  return ref;
}

// diffusers' get_timestep_embedding: [sin | cos] (or [cos | sin]) of t·exp(−ln(max_period)·j/(half − shift));
// an odd dim's last column is 0.
inline std::vector<double> timestep_embedding(const TimestepEmbeddingArgs& a) {
  const int64_t dim = a.dim, half = dim / 2;
  const double* t = static_cast<const double*>(a.timesteps);
  std::vector<double> ref(a.batch * dim, 0.0);
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t j = 0; j < half; ++j) {
      const double arg = a.scale * t[n] *
                         std::exp(-std::log(a.max_period) * double(j) / (double(half) - a.downscale_freq_shift));
      ref[n * dim + j] = a.flip_sin_to_cos ? std::cos(arg) : std::sin(arg);
      ref[n * dim + half + j] = a.flip_sin_to_cos ? std::sin(arg) : std::cos(arg);
    }
  return ref;
}

// timestep_mlp: the sinusoid above, then out = W2·SiLU(W1·e + b1) + b2 in double. scale is the largest
// out-element of the same chain on absolute values, |W2|·(|W1|·|e| + |b1|) + |b2|: it bounds the float32
// rounding of both layers' sums (an error in h reaches out through |W2|, SiLU's slope being ≤ 1.1).
template <typename W>
std::vector<double> timestep_mlp(const TimestepMlpArgs& a, double& scale) {
  const int64_t B = a.batch, K = a.in_dim, H = a.hidden_dim, O = a.out_dim;
  TimestepEmbeddingArgs e = mlp_sinusoid(a);
  const std::vector<double> emb = timestep_embedding(e);
  const W *w1 = static_cast<const W*>(a.weight_1), *b1 = static_cast<const W*>(a.bias_1);
  const W *w2 = static_cast<const W*>(a.weight_2), *b2 = static_cast<const W*>(a.bias_2);
  std::vector<double> ref(B * O), h(H), h_abs(H);
  scale = 1.0;
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t j = 0; j < H; ++j) {
      double v = b1 ? double(load(b1[j])) : 0.0, v_abs = std::fabs(v);
      for (int64_t k = 0; k < K; ++k) {
        v += double(load(w1[j * K + k])) * emb[n * K + k];
        v_abs += std::fabs(double(load(w1[j * K + k])) * emb[n * K + k]);
      }
      h[j] = v / (1.0 + std::exp(-v));
      h_abs[j] = v_abs;
    }
    for (int64_t j = 0; j < O; ++j) {
      double v = b2 ? double(load(b2[j])) : 0.0, v_abs = std::fabs(v);
      for (int64_t k = 0; k < H; ++k) {
        v += double(load(w2[j * H + k])) * h[k];
        v_abs += std::fabs(double(load(w2[j * H + k]))) * h_abs[k];
      }
      ref[n * O + j] = v;
      scale = std::max(scale, v_abs);
    }
  }
  return ref;
}

}  // namespace diffrt::reference
