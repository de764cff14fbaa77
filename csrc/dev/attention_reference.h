// Plain C++ reference of fused attention: double precision, one (batch·head, query row) at a time,
// the Lq×Lk scores materialised. Inputs are the stored values (bf16/f16 already rounded, read through
// load()); q, k, v dense (B, H, L, d) here. Used by tests/cuda_sim/sim_attention.cpp.
//   forward:  P = softmax(scale·q·kᵀ over attended keys),  out = P·v,  lse = ln Σ_j exp(scale·q·k_j)
//             a row with no attended key: out = 0, lse = −inf
//             non-finite values as torch's softmax (ops.attention_ref): a NaN or +inf score, or attended
//             scores all −inf, make the row's P (and out, lse) NaN; a −inf score gives P = 0 (0·v still
//             counts). Masked keys are skipped: their k and v never enter any sum, their dk, dv are 0.
//   backward: dV = Pᵀ·dO,  dP = dO·vᵀ,  dS = P∘(dP − D) with D_i = rowsum(P_i∘dP_i) = rowsum(dO_i∘O_i),
//             dQ = scale·dS·k,  dK = scale·dSᵀ·q
//             (stored_out: D from that O, e.g. the forward's output rounded to bfloat16, as the kernels do)
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace diffrt::reference {

struct AttentionShape {
  int64_t batch, heads, q_len, kv_len, head_dim;
};

// P (Lq × Lk) of one (b, h); rows without keys are all zero. lse per row.
inline void attention_probs(const AttentionShape& s, const double* q, const double* k, const uint8_t* mask, int64_t b,
                            double scale, std::vector<double>& p, std::vector<double>& lse) {
  const int64_t Lq = s.q_len, Lk = s.kv_len, d = s.head_dim;
  p.assign(Lq * Lk, 0.0);
  lse.assign(Lq, -std::numeric_limits<double>::infinity());
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t i = 0; i < Lq; ++i) {
    double m = -inf;
    bool has_key = false, has_nan = false;
    for (int64_t j = 0; j < Lk; ++j) {
      if (mask && !mask[b * Lk + j]) continue;
      double acc = 0;
      for (int64_t c = 0; c < d; ++c) acc += q[i * d + c] * k[j * d + c];
      p[i * Lk + j] = scale * acc;
      has_key = true;
      has_nan |= std::isnan(scale * acc);
      m = std::max(m, scale * acc);
    }
    if (!has_key) continue;
    if (has_nan || std::isinf(m)) {  // NaN, +inf, or every score −inf: exp(s − m) is NaN somewhere
      for (int64_t j = 0; j < Lk; ++j) p[i * Lk + j] = !mask || mask[b * Lk + j] ? nan : 0.0;
      lse[i] = nan;
      continue;
    }
    double l = 0;
    for (int64_t j = 0; j < Lk; ++j) {
      const bool on = !mask || mask[b * Lk + j];
      p[i * Lk + j] = on ? std::exp(p[i * Lk + j] - m) : 0.0;
      l += p[i * Lk + j];
    }
    for (int64_t j = 0; j < Lk; ++j) p[i * Lk + j] /= l;
    lse[i] = m + std::log(l);
  }
}

inline void attention_forward(const AttentionShape& s, const std::vector<double>& q, const std::vector<double>& k,
                              const std::vector<double>& v, const uint8_t* mask, double scale,
                              std::vector<double>& out, std::vector<double>& lse) {
  const int64_t Lq = s.q_len, Lk = s.kv_len, d = s.head_dim, BH = s.batch * s.heads;
  out.assign(BH * Lq * d, 0.0);
  lse.assign(BH * Lq, 0.0);
  std::vector<double> p, l;
  for (int64_t bh = 0; bh < BH; ++bh) {
    attention_probs(s, q.data() + bh * Lq * d, k.data() + bh * Lk * d, mask, bh / s.heads, scale, p, l);
    for (int64_t i = 0; i < Lq; ++i) {
      lse[bh * Lq + i] = l[i];
      for (int64_t j = 0; j < Lk; ++j)
        if (!mask || mask[bh / s.heads * Lk + j])
          for (int64_t c = 0; c < d; ++c) out[(bh * Lq + i) * d + c] += p[i * Lk + j] * v[(bh * Lk + j) * d + c];
    }
  }
}

inline void attention_backward(const AttentionShape& s, const std::vector<double>& q, const std::vector<double>& k,
                               const std::vector<double>& v, const std::vector<double>& dout, const uint8_t* mask,
                               double scale, std::vector<double>& dq, std::vector<double>& dk,
                               std::vector<double>& dv, const std::vector<double>* stored_out = nullptr) {
  const int64_t Lq = s.q_len, Lk = s.kv_len, d = s.head_dim, BH = s.batch * s.heads;
  dq.assign(BH * Lq * d, 0.0);
  dk.assign(BH * Lk * d, 0.0);
  dv.assign(BH * Lk * d, 0.0);
  std::vector<double> p, l, ds(Lk);
  for (int64_t bh = 0; bh < BH; ++bh) {
    const double* qh = q.data() + bh * Lq * d;
    const double* kh = k.data() + bh * Lk * d;
    const double* vh = v.data() + bh * Lk * d;
    const double* doh = dout.data() + bh * Lq * d;
    attention_probs(s, qh, kh, mask, bh / s.heads, scale, p, l);
    const int64_t b = bh / s.heads;
    for (int64_t i = 0; i < Lq; ++i) {
      double D = 0;
      for (int64_t j = 0; j < Lk; ++j) {
        if (mask && !mask[b * Lk + j]) continue;
        double dp = 0;
        for (int64_t c = 0; c < d; ++c) dp += doh[i * d + c] * vh[j * d + c];
        ds[j] = dp;
        D += p[i * Lk + j] * dp;
      }
      if (stored_out) {  // D from the stored O (rounded to its dtype), as the kernels compute it
        D = 0;
        for (int64_t c = 0; c < d; ++c) D += doh[i * d + c] * (*stored_out)[(bh * Lq + i) * d + c];
      }
      for (int64_t j = 0; j < Lk; ++j) {
        if (mask && !mask[b * Lk + j]) continue;
        const double pij = p[i * Lk + j], dsij = pij * (ds[j] - D);
        for (int64_t c = 0; c < d; ++c) {
          dv[(bh * Lk + j) * d + c] += pij * doh[i * d + c];
          dk[(bh * Lk + j) * d + c] += scale * dsij * qh[i * d + c];
          dq[(bh * Lq + i) * d + c] += scale * dsij * kh[j * d + c];
        }
      }
    }
  }
}

}  // namespace diffrt::reference
