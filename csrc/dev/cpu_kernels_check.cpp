// Check-and-time harness of every CPU kernel, in the style of llm.c's dev/cuda: it links the production
// kernels of each ISA compiled for the target (isa.cpp's run-time choice included), runs every op on
// random inputs against double-precision references (dev/reference.h, dev/attention_reference.h and the
// ones below), prints the first mismatches and the max error of each check, and reports effective GB/s.
// No Python, no torch, no OpenMP runtime API: plain g++ builds it for the host or a cross target, e.g.
// aarch64 (tests/test_aarch64_cross.py runs that build under qemu-aarch64):
//
//   CXX=aarch64-linux-gnu-g++; isas="scalar neon neon_bf16"   # x86-64: CXX=g++; isas="scalar avx2 avx512 avx512_bf16"
//   for isa in $isas; do for f in sampler attention downsample_cond norm; do   # flags: CMakeLists.txt's
//     $CXX -std=c++17 -O3 -fopenmp -Icsrc -DDIFFRT_ISA=$isa $DIFFRT_ISA_FLAGS_<arch>_$isa
//          -c csrc/cpu/${f}_kernels.cpp -o $isa-$f.o; done; done
//   $CXX -std=c++17 -O2 -fopenmp -static -Icsrc -DDIFFRT_WITH_NEON_BF16=1 csrc/dev/cpu_kernels_check.cpp csrc/cpu/isa.cpp
//        csrc/cpu/*_dispatch.cpp *.o -o check && qemu-aarch64 ./check --no-timing neon
//
// Arguments: the ISAs to check (default: every one this CPU supports); --no-timing skips the speed runs
// (under emulation only correctness means anything); --seed=N repeats a run's inputs (default: random).
// Exit status 0 and "ALL OK" when every check passes.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cpu/attention_kernels.h"
#include "cpu/downsample_kernels.h"
#include "cpu/kernels.h"
#include "dev/attention_reference.h"
#include "dev/norm_reference.h"
#include "dev/reference.h"
#include "norm.h"

namespace {

using namespace diffrt;

std::mt19937 rng;  // seeded in main(): fresh inputs each run, the seed printed to reproduce one
const int kThreads = int(std::max(1u, std::thread::hardware_concurrency()));
bool timing = true;
constexpr double kEps32 = 1.1920929e-07;

template <typename T>
std::vector<T> random_tensor(int64_t n, double scale = 1.0) {
  std::normal_distribution<float> dist(0.f, float(scale));
  std::vector<T> v(n);
  for (auto& x : v) x = store_as<T>(dist(rng));
  return v;
}

template <typename T>
constexpr double eps() {
  return std::is_same_v<T, bf16> ? 0.0078125 : std::is_same_v<T, f16> ? 0.0009765625 : 1.1920929e-07;
}

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, bf16> ? DType::bf16 : std::is_same_v<T, f16> ? DType::f16 : DType::f32;
}

template <typename T>
const char* name_of() {
  return std::is_same_v<T, bf16> ? "bf16 " : std::is_same_v<T, f16> ? "f16  " : "f32  ";
}

int failures = 0;

// |got[i] − ref[i]| ≤ tol(i) for every i (NaN fails); prints the first mismatches, the max error and
// the max of err/tol (how much of the tolerance the worst element used).
template <typename T, typename Tol>
void compare_with(const std::string& name, const T* got, const std::vector<double>& ref, Tol&& tol) {
  int bad = 0;
  double worst = 0, used = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i])), bound = tol(i);
    const double err = g == ref[i] ? 0.0 : std::fabs(g - ref[i]);  // equal infinities match
    worst = std::max(worst, err);
    used = std::max(used, err / bound);
    if (!(err <= bound)) {
      if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g (tolerance %.3g)\n", name.c_str(), i, g, ref[i], bound);
      ++bad;
    }
  }
  failures += bad > 0;
  std::printf("%-60s %s  max|err| %.3g (%.2f of tol)", name.c_str(), bad ? "FAIL" : "ok  ", worst, used);
}

// |got − ref| ≤ eps(T)·|ref| + 64·eps(float32)·scale: the final rounding to T, plus float32 arithmetic on
// intermediate terms of magnitude `scale`.
template <typename T>
void compare(const std::string& name, const T* got, const std::vector<double>& ref, double scale) {
  compare_with(name, got, ref, [&](size_t i) { return eps<T>() * std::fabs(ref[i]) + 64 * kEps32 * scale; });
}

void report_speed(const std::function<void()>& run, double bytes) {
  if (!timing) {
    std::printf("\n");
    return;
  }
  double best = 1e30;
  for (int rep = 0; rep < 20; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("  %8.1f us  %7.1f GB/s\n", best * 1e6, bytes / best / 1e9);
}

template <typename T>
void check_ddim(const char* label, int64_t N, int64_t M, bool guided, double rescale, Prediction pred, ClipMode clip,
                double eta, bool use_clipped, double offset = 0.0) {
  auto x = random_tensor<T>(N * M), model = random_tensor<T>((guided ? 2 : 1) * N * M), z = random_tensor<T>(N * M);
  for (auto& v : model) v = store_as<T>(load(v) + float(offset));  // large |mean|/std: the rescale std's hard case
  std::vector<T> out(N * M, store_as<T>(NAN)), x0(N * M, store_as<T>(NAN));  // poisoned
  std::vector<double> a_t(N), a_prev(N), w(N);
  for (int64_t r = 0; r < N; ++r) {
    a_t[r] = 0.1 + 0.7 * double(r + 1) / double(N + 1);
    a_prev[r] = std::min(0.99, a_t[r] + 0.15);
    w[r] = 1.0 + 2.5 * double(r);
  }
  DdimStepArgs a{};
  a.dtype = std::is_same_v<T, bf16> ? DType::bf16 : DType::f32;
  a.batch = N; a.numel = M;
  a.sample = x.data(); a.model = model.data(); a.model_cond = guided ? model.data() + N * M : nullptr;
  a.noise = eta > 0 ? z.data() : nullptr; a.out = out.data(); a.out_x0 = x0.data();
  a.alpha_t = a_t.data(); a.alpha_prev = a_prev.data(); a.guidance_scale = w.data();
  a.eta = eta; a.guidance_rescale = rescale; a.prediction = pred; a.clip = clip; a.clip_range = 1.0;
  a.dynamic_quantile = 0.9; a.dynamic_max = 1e30; a.use_clipped_model_output = use_clipped;
  a.num_threads = kThreads;
  cpu::sampler_kernels().ddim_step(a);
  std::vector<double> ref, ref_x0;
  reference::ddim_step<T>(a, ref, ref_x0);
  const double scale = (1 + 2 * w.back()) * (5.0 + offset) / std::sqrt(std::min(a_t[0], 1 - a_t.back()));
  const std::string name = std::string("ddim_step ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  ") + label;
  compare(name + " x0", x0.data(), ref_x0, scale);
  std::printf("\n");
  compare(name, out.data(), ref, scale);
  a.out_x0 = nullptr;
  report_speed([&] { cpu::sampler_kernels().ddim_step(a); },
               double(sizeof(T)) * N * M * ((guided ? 2 : 1) + 2 + (eta > 0 ? 1 : 0)));
}

template <typename T>
void check_mask_blend(int64_t N, int64_t C, int64_t S, bool shared_mask) {
  auto a_ = random_tensor<T>(N * C * S), b_ = random_tensor<T>(N * C * S);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<T> m((shared_mask ? 1 : N) * S);
  for (auto& v : m) v = store_as<T>(u(rng));
  std::vector<T> out(N * C * S, store_as<T>(NAN));
  MaskBlendArgs a{std::is_same_v<T, bf16> ? DType::bf16 : DType::f32, N, C, S, m.data(), shared_mask ? 0 : S,
                  a_.data(), b_.data(), out.data(), kThreads};
  cpu::sampler_kernels().mask_blend(a);
  std::vector<double> ref;
  reference::mask_blend<T>(a, ref);
  compare(std::string("mask_blend ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  ") + std::to_string(N) + "x" +
              std::to_string(C) + "x" + std::to_string(S),
          out.data(), ref, 10.0);
  report_speed([&] { cpu::sampler_kernels().mask_blend(a); }, double(sizeof(T)) * (3 * N * C * S + m.size()));
}

template <typename T>
void check_diffedit(int64_t B, int64_t n, int64_t C, int64_t S, double threshold) {
  auto q = random_tensor<T>(B * n * C * S), r = random_tensor<T>(B * n * C * S);
  std::vector<float> out(B * S, NAN);
  DiffEditMaskArgs a{std::is_same_v<T, bf16> ? DType::bf16 : DType::f32, B, n, C, S, q.data(), r.data(), out.data(),
                     3.0, threshold, kThreads};
  cpu::sampler_kernels().diffedit_mask(a);
  std::vector<double> ref;
  reference::diffedit_mask<T>(a, ref);
  compare(std::string("diffedit_mask soft ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  "), out.data(), ref,
          double(n * C));
  report_speed([&] { cpu::sampler_kernels().diffedit_mask(a); }, double(sizeof(T)) * 2 * B * n * C * S);
}

// Euler (ancestral with noise) and DPM-Solver++(2M) (second order with x̂0_last), all three predictions.
template <typename T>
void check_sigma_steps(int64_t N, int64_t M, Prediction pred) {
  auto x = random_tensor<T>(N * M, 3.0), m = random_tensor<T>(N * M), z = random_tensor<T>(N * M);
  auto last = random_tensor<T>(N * M);
  std::vector<double> sigma(N), sigma_next(N), sigma_last(N);
  for (int64_t r = 0; r < N; ++r) {
    sigma[r] = 0.5 + 3.0 * double(r + 1) / double(N + 1);
    sigma_next[r] = 0.6 * sigma[r];
    sigma_last[r] = 1.5 * sigma[r];
  }
  const DType dt = std::is_same_v<T, bf16> ? DType::bf16 : DType::f32;
  const std::string tag = std::string(std::is_same_v<T, bf16> ? "bf16 " : "f32  ") + "pred=" + std::to_string(int(pred));
  const double scale = 3.0 * (1 + sigma.back());
  std::vector<T> out(N * M, store_as<T>(NAN)), x0(N * M, store_as<T>(NAN));
  std::vector<double> ref, ref_x0;
  EulerStepArgs e{dt, N, M, x.data(), m.data(), z.data(), out.data(), x0.data(), sigma.data(), sigma_next.data(),
                  pred, kThreads};
  cpu::sampler_kernels().euler_step(e);
  reference::euler_step<T>(e, ref, ref_x0);
  compare("euler_ancestral_step " + tag, out.data(), ref, scale);
  report_speed([&] { cpu::sampler_kernels().euler_step(e); }, double(sizeof(T)) * N * M * 5);
  std::fill(out.begin(), out.end(), store_as<T>(NAN));
  DpmSolver2mStepArgs d{dt, N, M, x.data(), m.data(), last.data(), out.data(), x0.data(), sigma.data(),
                        sigma_next.data(), sigma_last.data(), pred, false, kThreads};
  cpu::sampler_kernels().dpm_solver_2m_step(d);
  reference::dpm_solver_2m_step<T>(d, ref, ref_x0);
  compare("dpm_solver_2m_step midpoint " + tag, out.data(), ref, 4 * scale);
  report_speed([&] { cpu::sampler_kernels().dpm_solver_2m_step(d); }, double(sizeof(T)) * N * M * 5);
}


// Classifier-free guidance alone, with and without the std rescale (two-pass in the reference).
template <typename T>
void check_cfg_combine(int64_t N, int64_t M, double rescale, double offset) {
  auto u = random_tensor<T>(N * M), c = random_tensor<T>(N * M);
  for (auto& v : c) v = store_as<T>(load(v) + float(offset));
  std::vector<T> out(N * M, store_as<T>(NAN));
  std::vector<double> w(N);
  for (int64_t r = 0; r < N; ++r) w[r] = 1.0 + 2.5 * double(r);
  CfgCombineArgs a{dtype_of<T>(), N, M, u.data(), c.data(), out.data(), w.data(), rescale, kThreads};
  cpu::sampler_kernels().cfg_combine(a);
  std::vector<double> ref;
  reference::cfg_combine<T>(a, ref);
  compare(std::string("cfg_combine ") + name_of<T>() + "M=" + std::to_string(M) + " rescale=" + std::to_string(rescale) +
              (offset ? " offset" : ""),
          out.data(), ref, (1 + 2 * w.back()) * (5.0 + offset));
  report_speed([&] { cpu::sampler_kernels().cfg_combine(a); }, double(sizeof(T)) * N * M * 3);
}

// ---- attention ---------------------------------------------------------------------------------------

// q, k, v random normal in (B, H, L, d), stored dense or as a (B, L, H, d) buffer seen through strides
// (the layout of a transposed projection). The output uses the same layout.
template <typename T>
void check_attention(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t d, bool masked, bool transposed,
                     bool backward) {
  const reference::AttentionShape shape{B, H, Lq, Lk, d};
  auto strides = [&](int64_t L) {
    return transposed ? HeadStrides{L * H * d, d, H * d} : HeadStrides{H * L * d, L * d, d};
  };
  auto offset = [&](const HeadStrides& s, int64_t bh, int64_t i) { return bh / H * s.batch + bh % H * s.head + i * s.row; };
  auto q = random_tensor<T>(B * H * Lq * d), k = random_tensor<T>(B * H * Lk * d), v = random_tensor<T>(B * H * Lk * d);
  auto dout = random_tensor<T>(B * H * Lq * d);
  const HeadStrides qs = strides(Lq), ks = strides(Lk);
  // Dense double copies in (B, H, L, d) order for the reference.
  auto dense = [&](const std::vector<T>& x, const HeadStrides& s, int64_t L) {
    std::vector<double> r(B * H * L * d);
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t c = 0; c < d; ++c) r[(bh * L + i) * d + c] = double(load(x[offset(s, bh, i) + c]));
    return r;
  };
  const auto q64 = dense(q, qs, Lq), k64 = dense(k, ks, Lk), v64 = dense(v, ks, Lk), do64 = dense(dout, qs, Lq);
  std::vector<uint8_t> mask;
  if (masked) {  // ~30% of the keys off; the last batch item attends to none (its rows must be zeros)
    std::uniform_real_distribution<double> u(0, 1);
    mask.resize(B * Lk);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < Lk; ++j) mask[b * Lk + j] = B > 1 && b == B - 1 ? 0 : (j == 0 || u(rng) > 0.3);
  }
  const float scale = float(1 / std::sqrt(double(d)));
  std::vector<T> out(B * H * Lq * d, store_as<T>(NAN));
  std::vector<float> lse(B * H * Lq, NAN);
  AttentionForwardArgs f{};
  f.dtype = dtype_of<T>();
  f.batch = B; f.heads = H; f.q_len = Lq; f.kv_len = Lk; f.head_dim = d;
  f.q = q.data(); f.k = k.data(); f.v = v.data(); f.q_strides = qs; f.k_strides = ks; f.v_strides = ks;
  f.key_padding_mask = masked ? mask.data() : nullptr; f.out = out.data(); f.out_strides = qs; f.lse = lse.data();
  f.scale = scale; f.num_threads = kThreads;
  cpu::attention_kernels().forward(f);
  std::vector<double> ref_out, ref_lse;
  reference::attention_forward(shape, q64, k64, v64, masked ? mask.data() : nullptr, scale, ref_out, ref_lse);
  // Tolerances. Each output is a convex combination of rows of v accumulated in float32; a rounding error
  // ε in a score s perturbs its weight by ≈ ε·|s|, so the bound grows with the score range |scale|·|q|·|k|.
  // bfloat16 on a dot-product ISA also rounds q·scale and P to bfloat16 (2^-9 relative each).
  auto max_abs = [](const std::vector<double>& x) { double m = 0; for (double e : x) m = std::max(m, std::fabs(e)); return m; };
  auto max_norm = [&](const std::vector<double>& x) {
    double m = 0;
    for (size_t r = 0; r < x.size() / size_t(d); ++r) {
      double n2 = 0;
      for (int64_t c = 0; c < d; ++c) n2 += x[r * d + c] * x[r * d + c];
      m = std::max(m, std::sqrt(n2));
    }
    return m;
  };
  const double score_range = scale * max_norm(q64) * max_norm(k64), vmax = max_abs(v64);
  const bool bf16_dot = std::is_same_v<T, bf16> && cpu::attention_kernels().bf16_dot_product;
  const double score_tol = 4 * kEps32 * (4 + score_range) + (bf16_dot ? 0x1p-8 * (1 + score_range) : 0.0);
  const std::string name = std::string("attention ") + name_of<T>() + std::to_string(B) + "x" + std::to_string(H) +
                           " Lq=" + std::to_string(Lq) + " Lk=" + std::to_string(Lk) + " d=" + std::to_string(d) +
                           (masked ? " masked" : "") + (transposed ? " bLhd" : "");
  auto gathered = [&](const std::vector<T>& x) {  // the strided output in (B, H, Lq, d) order
    std::vector<T> r(B * H * Lq * d);
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < Lq; ++i)
        for (int64_t c = 0; c < d; ++c) r[(bh * Lq + i) * d + c] = x[offset(qs, bh, i) + c];
    return r;
  };
  const auto out_dense = gathered(out);
  compare_with(name + " out", out_dense.data(), ref_out,
               [&](size_t i) { return eps<T>() * std::fabs(ref_out[i]) + vmax * score_tol; });
  std::printf("\n");
  // lse = m + ln l: off by the score error plus l's relative error; −inf (no key) must match exactly.
  compare_with(name + " lse", lse.data(), ref_lse, [&](size_t i) {
    return std::isinf(ref_lse[i]) ? 0.0 : kEps32 * std::fabs(ref_lse[i]) + score_tol;
  });
  report_speed([&] { cpu::attention_kernels().forward(f); }, double(sizeof(T)) * B * H * (2 * Lq + 2 * Lk) * d);
  if (!backward) return;
  std::vector<T> dq(B * H * Lq * d, store_as<T>(NAN)), dk(B * H * Lk * d, store_as<T>(NAN)),
      dv(B * H * Lk * d, store_as<T>(NAN));
  AttentionBackwardArgs g{};
  g.dtype = dtype_of<T>();
  g.batch = B; g.heads = H; g.q_len = Lq; g.kv_len = Lk; g.head_dim = d;
  g.q = q.data(); g.k = k.data(); g.v = v.data(); g.out = out.data(); g.dout = dout.data();
  g.q_strides = qs; g.k_strides = ks; g.v_strides = ks; g.out_strides = qs; g.dout_strides = qs;
  g.key_padding_mask = f.key_padding_mask; g.lse = lse.data();
  g.dq = dq.data(); g.dk = dk.data(); g.dv = dv.data(); g.scale = scale; g.num_threads = kThreads;
  cpu::attention_kernels().backward(g);
  std::vector<double> ref_dq, ref_dk, ref_dv;
  // D = rowsum(dO∘O) from the O the kernel stored (as FlashAttention and torch do): a bfloat16 O's rounding
  // is then part of the reference, not of the tolerance.
  std::vector<double> stored_out(out_dense.size());
  for (size_t i = 0; i < stored_out.size(); ++i) stored_out[i] = double(load(out_dense[i]));
  reference::attention_backward(shape, q64, k64, v64, do64, masked ? mask.data() : nullptr, scale, ref_dq, ref_dk, ref_dv,
                                &stored_out);
  // |dO|·max(|q|, |k|, |v|, 1) bounds every term of dQ, dK, dV; float32 sums of them. On a bfloat16
  // dot-product ISA every product reads bfloat16 operands (P and dS rounded too): 2^-7 of the largest
  // gradient on top.
  const double magnitude = max_abs(do64) * std::max({max_abs(q64), max_abs(k64), vmax, 1.0});
  for (auto [label, got, ref] : {std::tuple{" dq", &dq, &ref_dq}, {" dk", &dk, &ref_dk}, {" dv", &dv, &ref_dv}}) {
    const double extra = bf16_dot ? 0x1p-7 * max_abs(*ref) : 0.0;
    compare_with(name + label, got->data(), *ref,
                 [&](size_t i) { return eps<T>() * std::fabs((*ref)[i]) + 64 * kEps32 * magnitude + extra; });
    std::printf("\n");
  }
}

// ---- norms and activations -------------------------------------------------------------------------

template <typename T>
void check_group_norm(int64_t N, int64_t C, int64_t HW, int64_t G, bool channels_last, bool silu, bool affine,
                      double offset) {
  const int64_t numel = N * C * HW;
  auto x = random_tensor<T>(numel, 2.0);
  for (auto& e : x) e = store_as<T>(load(e) + float(offset));
  auto w = random_tensor<float>(C), b = random_tensor<float>(C);
  std::vector<T> out(numel, store_as<T>(NAN));
  GroupNormArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = N; a.channels = C; a.spatial = HW; a.groups = G; a.channels_last = channels_last;
  a.x = x.data(); a.weight = affine ? w.data() : nullptr; a.bias = affine ? b.data() : nullptr; a.out = out.data();
  a.eps = 1e-5; a.silu = silu; a.num_threads = kThreads;
  double scale;
  const std::vector<double> ref = reference::group_norm<T>(a, scale);
  cpu::norm_kernels().group_norm(a);
  char name[160];
  std::snprintf(name, sizeof name, "group_norm %s%lldx%lldx%lld G=%lld %s%s%s%s", name_of<T>(), (long long)N,
                (long long)C, (long long)HW, (long long)G, channels_last ? "nhwc" : "nchw", silu ? " silu" : "",
                affine ? " affine" : "", offset ? " offset" : "");
  compare(name, out.data(), ref, scale);
  report_speed([&] { cpu::norm_kernels().group_norm(a); }, double(sizeof(T)) * 2 * numel);
}

template <typename T>
void check_layer_norm(int64_t rows, int64_t dim, bool affine, double offset) {
  auto x = random_tensor<T>(rows * dim, 3.0);
  for (auto& e : x) e = store_as<T>(load(e) + float(offset));
  auto w = random_tensor<float>(dim), b = random_tensor<float>(dim);
  std::vector<T> out(rows * dim, store_as<T>(NAN));
  LayerNormArgs a{dtype_of<T>(), rows, dim, x.data(), affine ? w.data() : nullptr, affine ? b.data() : nullptr,
                  out.data(), 1e-5, kThreads};
  double scale;
  const std::vector<double> ref = reference::layer_norm<T>(a, scale);
  cpu::norm_kernels().layer_norm(a);
  char name[160];
  std::snprintf(name, sizeof name, "layer_norm %s%lldx%lld%s%s", name_of<T>(), (long long)rows, (long long)dim,
                affine ? " affine" : "", offset ? " offset" : "");
  compare(name, out.data(), ref, scale);
  report_speed([&] { cpu::norm_kernels().layer_norm(a); }, double(sizeof(T)) * 2 * rows * dim);
}

template <typename T>
void check_geglu(int64_t rows, int64_t dim) {
  auto x = random_tensor<T>(rows * 2 * dim, 3.0);
  std::vector<T> out(rows * dim, store_as<T>(NAN));
  GegluArgs a{dtype_of<T>(), rows, dim, x.data(), out.data(), kThreads};
  double scale;
  const std::vector<double> ref = reference::geglu<T>(a, scale);
  cpu::norm_kernels().geglu(a);
  char name[120];
  std::snprintf(name, sizeof name, "geglu %s%lldx%lld", name_of<T>(), (long long)rows, (long long)dim);
  compare(name, out.data(), ref, scale);
  report_speed([&] { cpu::norm_kernels().geglu(a); }, double(sizeof(T)) * 3 * rows * dim);
}

template <typename T>
void check_timestep_embedding(int64_t batch, int64_t dim, bool flip, double shift) {
  std::vector<double> t(batch);
  for (int64_t n = 0; n < batch; ++n) t[n] = double((n * 379) % 1000) + 0.25 * double(n % 3);
  std::vector<T> out(batch * dim, store_as<T>(NAN));
  TimestepEmbeddingArgs a{dtype_of<T>(), batch, dim, t.data(), out.data(), flip, shift, 1.0, 10000.0, kThreads};
  const std::vector<double> ref = reference::timestep_embedding(a);
  cpu::norm_kernels().timestep_embedding(a);
  char name[120];
  std::snprintf(name, sizeof name, "timestep_embedding %s%lldx%lld%s shift=%g", name_of<T>(), (long long)batch,
                (long long)dim, flip ? " flip" : "", shift);
  compare(name, out.data(), ref, 1.0);
  report_speed([&] { cpu::norm_kernels().timestep_embedding(a); }, double(sizeof(T)) * batch * dim);
}

// Weights of dtype T (float16 too: the CPU kernel reads them converted on load), with and without biases;
// in_dim, hidden_dim and out_dim off the vector widths cover the partial vectors and the row-tile remainders.
template <typename T>
void check_timestep_mlp(int64_t batch, int64_t in_dim, int64_t hidden_dim, int64_t out_dim, bool biases, bool flip) {
  std::vector<double> t(batch);
  for (int64_t n = 0; n < batch; ++n) t[n] = double((n * 379) % 1000) + 0.25 * double(n % 3);
  // nn.Linear's initialisation scale U(±1/√fan_in), here normal: activations of order 1
  auto w1 = random_tensor<T>(hidden_dim * in_dim, 1.0 / std::sqrt(double(in_dim)));
  auto b1 = random_tensor<T>(hidden_dim, 0.5);
  auto w2 = random_tensor<T>(out_dim * hidden_dim, 1.0 / std::sqrt(double(hidden_dim)));
  auto b2 = random_tensor<T>(out_dim, 0.5);
  std::vector<T> out(batch * out_dim, store_as<T>(NAN));
  TimestepMlpArgs a{dtype_of<T>(), batch, in_dim, hidden_dim, out_dim, t.data(), w1.data(),
                    biases ? b1.data() : nullptr, w2.data(), biases ? b2.data() : nullptr, out.data(), flip,
                    flip ? 0.0 : 1.0, 1.0, 10000.0, kThreads};
  double scale;
  const std::vector<double> ref = reference::timestep_mlp<T>(a, scale);
  cpu::norm_kernels().timestep_mlp(a);
  char name[120];
  std::snprintf(name, sizeof name, "timestep_mlp %s%lldx%lld>%lld>%lld%s%s", name_of<T>(), (long long)batch,
                (long long)in_dim, (long long)hidden_dim, (long long)out_dim, biases ? " bias" : "", flip ? " flip" : "");
  compare(name, out.data(), ref, scale);
  report_speed([&] { cpu::norm_kernels().timestep_mlp(a); },
               double(sizeof(T)) * (hidden_dim * in_dim + out_dim * hidden_dim));
}

// ---- downsample_cond -------------------------------------------------------------------------------

// The strided conv over [image | mask] into channels [offset, offset + C) of a wider buffer whose other
// channels must stay untouched. Reference: the direct sum in double; the tolerance is relative to
// Σ|w·x| of each output (float32 sums of Ci+Cm)·k² products, blocked).
template <typename T>
void check_downsample_cond(int64_t N, int64_t Ci, int64_t Cm, int64_t H, int64_t W, int64_t C, int64_t k, int64_t s,
                           int64_t p, bool shared_mask, bool with_bias) {
  const int64_t Ck = Ci + Cm, Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
  const int64_t extra = 3, C_total = C + 2 * extra;  // the slice sits in the middle of the buffer
  auto image = random_tensor<T>(N * Ci * H * W), weight = random_tensor<T>(C * Ck * k * k, 0.2),
       bias = random_tensor<T>(C);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<T> mask((shared_mask ? 1 : N) * Cm * H * W);
  for (auto& e : mask) e = store_as<T>(u(rng) > 0.5f ? 1.f : 0.f);
  const T sentinel = store_as<T>(-12345.f);
  std::vector<T> out(N * C_total * Ho * Wo, sentinel);
  DownsampleCondArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = N; a.image_channels = Ci; a.mask_channels = Cm; a.height = H; a.width = W;
  a.image = image.data(); a.mask = mask.data(); a.mask_batch_stride = shared_mask ? 0 : Cm * H * W;
  a.weight = weight.data(); a.bias = with_bias ? bias.data() : nullptr; a.out_channels = C;
  a.kernel_size = k; a.stride = s; a.padding = p; a.out_height = Ho; a.out_width = Wo;
  a.out = out.data(); a.out_batch_stride = C_total * Ho * Wo; a.out_channel_stride = Ho * Wo; a.channel_offset = extra;
  a.num_threads = kThreads;
  cpu::downsample_kernels().downsample_cond(a);
  std::vector<double> ref(out.size()), abs_sum(out.size(), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C_total; ++c)
      for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const int64_t o = ((n * C_total + c) * Ho + oy) * Wo + ox;
          if (c < extra || c >= extra + C) {
            ref[o] = double(load(sentinel));
            continue;
          }
          const int64_t co = c - extra;
          double acc = with_bias ? double(load(bias[co])) : 0.0, mag = std::fabs(acc);
          for (int64_t ci = 0; ci < Ck; ++ci)
            for (int64_t ky = 0; ky < k; ++ky)
              for (int64_t kx = 0; kx < k; ++kx) {
                const int64_t y = oy * s - p + ky, x = ox * s - p + kx;
                if (y < 0 || y >= H || x < 0 || x >= W) continue;
                const double in = ci < Ci ? double(load(image[((n * Ci + ci) * H + y) * W + x]))
                                          : double(load(mask[((shared_mask ? 0 : n) * Cm + ci - Ci) * H * W + y * W + x]));
                const double term = double(load(weight[((co * Ck + ci) * k + ky) * k + kx])) * in;
                acc += term;
                mag += std::fabs(term);
              }
          ref[o] = acc;
          abs_sum[o] = mag;
        }
  char name[160];
  std::snprintf(name, sizeof name, "downsample_cond %s%lldx(%lld+%lld)x%lldx%lld ->%lld k=%lld s=%lld p=%lld%s%s",
                name_of<T>(), (long long)N, (long long)Ci, (long long)Cm, (long long)H, (long long)W, (long long)C,
                (long long)k, (long long)s, (long long)p, shared_mask ? " shared-mask" : "", with_bias ? "" : " no-bias");
  compare_with(name, out.data(), ref,
               [&](size_t i) { return eps<T>() * std::fabs(ref[i]) + 16 * kEps32 * abs_sum[i]; });
  report_speed([&] { cpu::downsample_kernels().downsample_cond(a); },
               double(sizeof(T)) * (N * Ck * H * W + N * C * Ho * Wo));
}

void check_sampler_kernels() {
  for (auto [N, M] : {std::pair<int64_t, int64_t>{1, 91}, {3, 5 * 31 * 17}, {2, 4 * 64 * 64}, {8, 3 * 256 * 256}}) {
    std::printf("-- N=%lld M=%lld\n", (long long)N, (long long)M);
    check_ddim<float>("eps", N, M, false, 0.0, Prediction::epsilon, ClipMode::none, 0.0, false);
    check_ddim<float>("cfg", N, M, true, 0.0, Prediction::epsilon, ClipMode::none, 0.0, false);
    check_ddim<float>("cfg+rescale v", N, M, true, 0.7, Prediction::v_prediction, ClipMode::none, 0.0, false);
    check_ddim<float>("cfg sample eta=1 dynamic", N, M, true, 0.0, Prediction::sample, ClipMode::dynamic, 1.0, true);
    check_ddim<bf16>("cfg", N, M, true, 0.0, Prediction::epsilon, ClipMode::fixed, 0.5, false);
  }
  check_ddim<float>("cfg+rescale offset 1e4", 2, 4 * 64 * 64, true, 1.0, Prediction::epsilon, ClipMode::none, 0.0, false,
                    1e4);
  // Empty rows and batches write nothing and must not touch memory (a quantile of no elements).
  for (auto [N, M] : {std::pair<int64_t, int64_t>{2, 0}, {0, 5}}) {
    DdimStepArgs a{};
    std::vector<double> one(2, 0.5);
    a.dtype = DType::f32; a.batch = N; a.numel = M; a.alpha_t = one.data(); a.alpha_prev = one.data();
    a.guidance_scale = one.data(); a.clip = ClipMode::dynamic; a.dynamic_quantile = 0.995; a.dynamic_max = 1e30;
    a.guidance_rescale = 0.7; a.num_threads = kThreads;
    cpu::sampler_kernels().ddim_step(a);
    std::printf("ddim_step N=%lld M=%lld (empty)                          ok\n", (long long)N, (long long)M);
  }
  check_mask_blend<float>(3, 5, 31 * 17, false);
  check_mask_blend<float>(8, 3, 256 * 256, true);
  check_mask_blend<bf16>(2, 4, 128 * 128, false);
  for (Prediction pred : {Prediction::epsilon, Prediction::v_prediction, Prediction::sample}) {
    check_sigma_steps<float>(2, 4 * 64 * 64, pred);
    check_sigma_steps<bf16>(3, 31 * 17, pred);
  }
  check_diffedit<float>(2, 10, 4, 64 * 64, -1.0);
  check_diffedit<bf16>(1, 3, 4, 31 * 17, -1.0);
  for (auto [N, M] : {std::pair<int64_t, int64_t>{1, 91}, {3, 5 * 31 * 17}, {2, 4 * 64 * 64}})
    for (double rescale : {0.0, 0.7}) {
      check_cfg_combine<float>(N, M, rescale, 0.0);
      check_cfg_combine<bf16>(N, M, rescale, 0.0);
    }
  check_cfg_combine<float>(2, 4 * 64 * 64, 1.0, 1e4);
}

void check_attention_kernels() {
  for (bool transposed : {false, true}) {
    // Lk tails (not a multiple of any vector width or key tile), one key, one query, head dims 8..128
    for (auto [Lq, Lk, d] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 32}, {7, 77, 40}, {97, 97, 64},
                             {33, 300, 59}, {130, 33, 128}, {5, 9, 8}}) {
      const bool backward = Lq * Lk * d <= 97 * 97 * 64;
      check_attention<float>(2, 2, Lq, Lk, d, Lk > 1, transposed, backward);
      check_attention<bf16>(2, 2, Lq, Lk, d, Lk > 1, transposed, backward);
    }
  }
  check_attention<float>(1, 3, 200, 300, 40, false, false, true);  // several query and key tiles
  check_attention<bf16>(1, 3, 200, 300, 40, false, true, true);
}

void check_norm_kernels() {
  for (bool channels_last : {false, true})
    for (bool silu : {false, true}) {
      check_group_norm<float>(2, 6, 35, 3, channels_last, silu, true, 0.0);
      check_group_norm<float>(1, 4, 3, 4, channels_last, silu, true, 0.0);        // groups of one channel
      check_group_norm<float>(3, 8, 297, 1, channels_last, silu, false, 0.0);     // one group, odd length
      check_group_norm<bf16>(2, 32, 24 * 24, 8, channels_last, silu, true, 0.0);  // several chunks per group
    }
  check_group_norm<float>(2, 64, 64 * 64, 32, false, true, true, 0.0);  // SD's shape class: threads split groups
  check_group_norm<float>(2, 64, 32 * 32, 32, true, true, true, 0.0);
  check_group_norm<float>(2, 4, 300, 2, false, true, true, 1000.0);  // large mean
  check_group_norm<bf16>(2, 4, 300, 2, true, false, true, -1000.0);
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{3, 300}, {5, 1}, {64, 320}, {7, 1283}}) {
    check_layer_norm<float>(rows, dim, true, 0.0);
    check_layer_norm<bf16>(rows, dim, false, 0.0);
  }
  check_layer_norm<float>(4, 777, true, 1000.0);
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{3, 37}, {64, 1280}, {1, 1}}) {
    check_geglu<float>(rows, dim);
    check_geglu<bf16>(rows, dim);
  }
  for (auto [batch, dim] : {std::pair<int64_t, int64_t>{5, 320}, {3, 33}, {2, 2}}) {
    check_timestep_embedding<float>(batch, dim, true, 0.0);
    check_timestep_embedding<bf16>(batch, dim, false, dim > 3 ? 1.0 : 0.0);  // shift < ⌊dim/2⌋
  }
  check_timestep_mlp<float>(2, 320, 1280, 1280, true, true);  // SD's time_embedding; enough rows for every thread
  check_timestep_mlp<bf16>(5, 33, 67, 21, true, false);        // tails and row remainders; odd batch
  check_timestep_mlp<f16>(1, 128, 512, 512, true, true);
  check_timestep_mlp<float>(3, 7, 5, 3, false, false);         // no biases; dims below one vector
  check_timestep_mlp<f16>(2, 1, 9, 2, false, true);            // in_dim 1: the sinusoid's zero column only
}

void check_downsample_kernels() {
  // Channel counts around the vector widths (4, 8, 16 lanes), padding, overlapping windows, odd sizes.
  check_downsample_cond<float>(2, 3, 1, 16, 16, 5, 2, 2, 0, false, true);
  check_downsample_cond<float>(1, 3, 1, 17, 19, 33, 3, 2, 1, true, false);
  check_downsample_cond<float>(2, 3, 1, 32, 32, 64, 4, 4, 0, false, true);
  check_downsample_cond<float>(2, 3, 1, 64, 64, 64, 4, 4, 0, true, true);  // enough work for several threads
  check_downsample_cond<float>(1, 2, 1, 40, 24, 17, 8, 8, 0, false, true);
  check_downsample_cond<float>(1, 3, 1, 31, 31, 12, 5, 3, 2, false, true);
  check_downsample_cond<bf16>(2, 3, 1, 32, 32, 24, 4, 4, 0, false, true);
  check_downsample_cond<bf16>(1, 3, 1, 17, 19, 9, 3, 2, 1, true, false);
  check_downsample_cond<float>(1, 0, 0, 8, 8, 6, 2, 2, 0, false, true);  // no input channels: bias only
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> isas;
  unsigned seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--no-timing")
      timing = false;
    else if (arg.rfind("--seed=", 0) == 0)
      seed = unsigned(std::stoul(arg.substr(7)));
    else
      isas.push_back(arg);
  }
  if (isas.empty()) isas = cpu::supported_isas();
  std::printf("diffrt CPU kernels: compiled%s; this CPU runs", [] {
    std::string s;
    for (const auto& n : cpu::compiled_isas()) s += " " + n;
    return s;
  }().c_str());
  for (const auto& n : cpu::supported_isas()) std::printf(" %s", n.c_str());
  std::printf("; %d threads; --seed=%u\n", kThreads, seed);
  for (const auto& name : isas) {
    try {
      cpu::set_active_isa(cpu::parse_isa(name));  // the bindings' path: dispatch through the active table
    } catch (const std::invalid_argument& e) {
      std::printf("cannot check ISA %s: %s\nFAILED\n", name.c_str(), e.what());
      return 2;
    }
    std::printf("==== ISA %s (bfloat16 attention: %s)\n", cpu::isa_name(cpu::active_isa()),
                cpu::attention_kernels().bf16_dot_product ? "bfloat16 dot products" : "widened to float32");
    rng.seed(seed);
    check_sampler_kernels();
    check_attention_kernels();
    check_norm_kernels();
    check_downsample_kernels();
  }
  std::printf(failures ? "FAILED: %d checks\n" : "ALL OK\n", failures);
  return failures ? 1 : 0;
}
