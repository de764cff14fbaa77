// Check harness of the CUDA sampler kernels: each host entry point of csrc/cuda/sampler_kernels.cu
// (included, not copied) runs on small shapes — odd sizes, rows shorter than a block, rows of
// several partial blocks, several samples, float32 / bfloat16 / float16 — against the
// double-precision reference (csrc/dev/reference.h). Outputs start as NaN, so an element no thread
// writes fails.
//
// Without a GPU, g++ compiles it against the host simulation cuda_shim.h (threads, barriers, shared
// memory, warp shuffles) — tests/test_cuda_simulation.py does this:
//   g++ -std=c++17 -O1 -pthread -DDIFFRT_CUDA_SIM -Icsrc -Itests/cuda_sim tests/cuda_sim/sim_check.cpp -o sim_check
// On a GPU, nvcc compiles the same cases for the device and adds timings (GB/s) on larger shapes:
//   nvcc -std=c++17 -O3 -arch=native -Icsrc -x cu tests/cuda_sim/sim_check.cpp -o cuda_check

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/sampler_kernels.cu"
#include "dev/reference.h"
#include "harness.h"

namespace {

using namespace diffrt;
using namespace diffrt::harness;

std::mt19937 rng(4321);
template <typename T>
std::vector<T> random_tensor(int64_t n, double scale = 1.0) {
  std::normal_distribution<float> dist(0.f, float(scale));
  std::vector<T> v(n);
  for (auto& x : v) x = store_as<T>(dist(rng));
  return v;
}

template <typename T>
std::vector<T> poisoned(int64_t n) {
  return std::vector<T>(n, store_as<T>(NAN));
}

// |got − ref| ≤ eps(T)·|ref| + 64·eps(float32)·scale (an unexpected NaN fails); where the reference
// is NaN or ±inf (non-finite inputs), got must be the same. Prints the first mismatches.
template <typename T>
void compare(const std::string& name, const T* got, const std::vector<double>& ref, double scale) {
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i])), err = std::fabs(g - ref[i]);
    if (!std::isfinite(ref[i])) {
      if (!(std::isnan(ref[i]) ? std::isnan(g) : g == ref[i])) {
        if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g\n", name.c_str(), i, g, ref[i]);
        ++bad;
      }
      continue;
    }
    if (err > worst) worst = err;
    if (!(err <= eps<T>() * std::fabs(ref[i]) + 64 * 1.1920929e-07 * scale)) {
      if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g\n", name.c_str(), i, g, ref[i]);
      ++bad;
    }
  }
  char detail[64];
  std::snprintf(detail, sizeof detail, "max|err| %.3g", worst);
  record(name, bad == 0, detail);
}

enum class Model { normal, ties };  // ties: values on a coarse grid, so |x̂0| repeats (quantile ties)

struct DdimCase {
  const char* label;
  bool guided = false;
  double rescale = 0.0;
  Prediction pred = Prediction::epsilon;
  ClipMode clip = ClipMode::none;
  double clip_range = 1.0, quantile = 0.9, dynamic_max = 1e30;
  double eta = 0.0;
  bool use_clipped = false, write_x0 = true, in_place = false;
  Model model = Model::normal;
  char poison_where = 0;  // 'x', 'u' (uncond) or 'c' (cond): set poison_count elements of sample 0 to poison
  float poison = 0.f;
  int poison_count = 0;
  double offset = 0.0;  // added to x and the model output (large |mean|/std for the rescale std)
};

template <typename T>
void check_ddim(int64_t N, int64_t M, const DdimCase& c) {
  auto x = random_tensor<T>(N * M);
  auto model = random_tensor<T>((c.guided ? 2 : 1) * N * M, 1.5);
  if (c.model == Model::ties) {
    std::uniform_int_distribution<int> step(-6, 6);
    for (auto& v : model) v = store_as<T>(0.5f * float(step(rng)));
  }
  auto z = random_tensor<T>(N * M);
  if (c.offset != 0.0) {
    for (auto& v : x) v = store_as<T>(load(v) + float(c.offset));
    for (auto& v : model) v = store_as<T>(load(v) + float(c.offset));
  }
  if (c.poison_where) {
    T* target = c.poison_where == 'x' ? x.data() : c.poison_where == 'u' ? model.data() : model.data() + N * M;
    for (int k = 0; k < c.poison_count; ++k) target[(k * 7919) % M] = store_as<T>(c.poison);
  }
  auto out = poisoned<T>(N * M), x0 = poisoned<T>(N * M);
  std::vector<double> a_t(N), a_prev(N), w(N);
  for (int64_t r = 0; r < N; ++r) {
    a_t[r] = 0.1 + 0.7 * double(r + 1) / double(N + 1);
    a_prev[r] = std::min(0.99, a_t[r] + 0.15);
    w[r] = 1.0 + 2.5 * double(r);
  }
  const std::vector<T> x_in = x;  // the reference reads the original x_t when the step runs in place
  Mirror<T> dx(x), dmodel(model), dz(z), dout(out), dx0(x0);
  DdimStepArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = N; a.numel = M;
  a.sample = dx.dev(); a.model = dmodel.dev(); a.model_cond = c.guided ? dmodel.dev() + N * M : nullptr;
  a.noise = c.eta > 0 ? dz.dev() : nullptr;
  a.out = c.in_place ? dx.dev() : dout.dev();
  a.out_x0 = c.write_x0 ? dx0.dev() : nullptr;
  a.alpha_t = a_t.data(); a.alpha_prev = a_prev.data(); a.guidance_scale = w.data();
  a.eta = c.eta; a.guidance_rescale = c.rescale; a.prediction = c.pred; a.clip = c.clip;
  a.clip_range = c.clip_range; a.dynamic_quantile = c.quantile; a.dynamic_max = c.dynamic_max;
  a.use_clipped_model_output = c.use_clipped;
  cuda::ddim_step(a, 0, nullptr);
  dx.fetch(); dout.fetch(); dx0.fetch();

  DdimStepArgs ra = a;  // the same arguments over the host copies
  ra.sample = x_in.data(); ra.model = model.data(); ra.model_cond = c.guided ? model.data() + N * M : nullptr;
  ra.noise = c.eta > 0 ? z.data() : nullptr;
  std::vector<double> ref, ref_x0;
  reference::ddim_step<T>(ra, ref, ref_x0);
  const double scale = (1 + 2 * w.back()) * (7.5 + c.offset) / std::sqrt(std::min(a_t[0], 1 - a_t.back()));
  const std::string name = std::string("ddim_step ") + name_of<T>() + " N=" + std::to_string(N) +
                           " M=" + std::to_string(M) + " " + c.label;
  if (c.write_x0) compare(name + " x0", x0.data(), ref_x0, scale);
  compare(name, c.in_place ? x.data() : out.data(), ref, scale);
}

template <typename T>
void check_cfg(int64_t N, int64_t M, double rescale) {
  auto model = random_tensor<T>(2 * N * M);
  auto out = poisoned<T>(N * M);
  std::vector<double> w(N);
  for (int64_t r = 0; r < N; ++r) w[r] = 9.0 * double(r) / double(N > 1 ? N - 1 : 1);
  Mirror<T> dmodel(model), dout(out);
  CfgCombineArgs a{dtype_of<T>(), N, M, dmodel.dev(), dmodel.dev() + N * M, dout.dev(), w.data(), rescale, 0};
  cuda::cfg_combine(a, 0, nullptr);
  dout.fetch();
  CfgCombineArgs ra = a;
  ra.uncond = model.data(); ra.cond = model.data() + N * M;
  std::vector<double> ref;
  reference::cfg_combine<T>(ra, ref);
  compare(std::string("cfg_combine ") + name_of<T>() + " N=" + std::to_string(N) + " M=" + std::to_string(M) +
              " rescale=" + std::to_string(rescale).substr(0, 3),
          out.data(), ref, (1 + 2 * 9.0) * 5.0);
}

template <typename T>
void check_mask_blend(int64_t N, int64_t C, int64_t S, bool shared_mask, bool binary, bool non_finite = false) {
  auto a_ = random_tensor<T>(N * C * S), b_ = random_tensor<T>(N * C * S, 1e-3);
  if (non_finite)  // a binary mask selects whatever the other input holds; a soft one follows m·a + (1−m)·b
    for (int64_t k = 0; k < N * C * S; k += 5) (k % 2 ? a_ : b_)[k] = store_as<T>(k % 3 ? INFINITY : NAN);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<T> m((shared_mask ? 1 : N) * S);
  for (auto& v : m) v = store_as<T>(binary ? float(u(rng) > 0.5f) : u(rng));
  auto out = poisoned<T>(N * C * S);
  Mirror<T> dm(m), da(a_), db(b_), dout(out);
  MaskBlendArgs a{dtype_of<T>(), N, C, S, dm.dev(), shared_mask ? 0 : S, da.dev(), db.dev(), dout.dev(), 0};
  cuda::mask_blend(a, 0, nullptr);
  dout.fetch();
  MaskBlendArgs ra = a;
  ra.mask = m.data(); ra.a = a_.data(); ra.b = b_.data();
  const std::string name = std::string("mask_blend ") + name_of<T>() + " " + std::to_string(N) + "x" +
                           std::to_string(C) + "x" + std::to_string(S) + (shared_mask ? " shared" : " per-sample") +
                           (binary ? " binary" : " soft") + (non_finite ? " inf/NaN" : "");
  if (binary) {  // a binary mask returns a or b bit-exactly
    int64_t bad = 0;
    for (int64_t k = 0; k < N * C * S; ++k) {
      const int64_t i = k % S, n = k / (C * S);
      const T want = load(m[(shared_mask ? 0 : n) * S + i]) > 0.5f ? a_[k] : b_[k];
      bad += std::memcmp(&out[k], &want, sizeof(T)) != 0 && !(std::isnan(load(want)) && std::isnan(load(out[k])));
    }
    record(name, bad == 0, bad ? std::to_string(bad) + " elements differ" : "bit-exact");
    return;
  }
  std::vector<double> ref;
  reference::mask_blend<T>(ra, ref);
  compare(name, out.data(), ref, 10.0);
}

template <typename T>
void check_diffedit(int64_t B, int64_t n, int64_t C, int64_t S, double threshold, bool nan_in_first = false) {
  auto q = random_tensor<T>(B * n * C * S), r = random_tensor<T>(B * n * C * S);
  if (nan_in_first) q[S / 2] = store_as<T>(NAN);  // image 0's map is NaN everywhere, the others unaffected
  std::vector<float> out(B * S, NAN);
  Mirror<T> dq(q), dr(r);
  Mirror<float> dout(out);
  DiffEditMaskArgs a{dtype_of<T>(), B, n, C, S, dq.dev(), dr.dev(), dout.dev(), 2.0, threshold, 0};
  cuda::diffedit_mask(a, 0, nullptr);
  dout.fetch();
  DiffEditMaskArgs ra = a;
  ra.eps_query = q.data(); ra.eps_ref = r.data();
  const std::string name = std::string("diffedit_mask ") + name_of<T>() + " " + std::to_string(B) + "x" +
                           std::to_string(n) + "x" + std::to_string(C) + "x" + std::to_string(S) +
                           (threshold >= 0 ? " binary" : " soft") + (nan_in_first ? " NaN" : "");
  if (threshold >= 0) {  // compare the decision where float32 and float64 cannot disagree
    DiffEditMaskArgs soft = ra;
    soft.threshold = -1.0;
    std::vector<double> ref;
    reference::diffedit_mask<T>(soft, ref);
    int64_t bad = 0, decided = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isnan(ref[i])) {  // a NaN map stays NaN when thresholded
        bad += !std::isnan(out[i]);
        continue;
      }
      if (!(out[i] == 0.f || out[i] == 1.f)) ++bad;
      if (std::fabs(ref[i] - threshold) > 1e-5) {
        ++decided;
        bad += out[i] != (ref[i] > threshold ? 1.f : 0.f);
      }
    }
    record(name, bad == 0, std::to_string(decided) + " of " + std::to_string(ref.size()) + " decided");
    return;
  }
  std::vector<double> ref;
  reference::diffedit_mask<T>(ra, ref);
  compare(name, out.data(), ref, double(n * C));
}

// Euler / Euler ancestral (noise) and DPM-Solver++(2M) (first order, midpoint, heun, zero final σ).
template <typename T>
void check_sigma_steps(int64_t N, int64_t M, Prediction pred, bool in_place) {
  auto x = random_tensor<T>(N * M, 3.0), model = random_tensor<T>(N * M), z = random_tensor<T>(N * M);
  auto last = random_tensor<T>(N * M);
  std::vector<double> sigma(N), sigma_next(N), sigma_last(N);
  for (int64_t r = 0; r < N; ++r) {
    sigma[r] = 0.4 + 2.5 * double(r + 1) / double(N + 1);
    sigma_next[r] = r == N - 1 && N > 1 ? 0.0 : 0.6 * sigma[r];
    sigma_last[r] = 1.7 * sigma[r];
  }
  const std::string tag = std::string(name_of<T>()) + " N=" + std::to_string(N) + " M=" + std::to_string(M) +
                          " pred=" + std::to_string(int(pred)) + (in_place ? " in place" : "");
  const double scale = 3.0 * (1 + sigma.back());
  for (int variant = 0; variant < 5; ++variant) {  // euler, ancestral, dpm 1st, dpm midpoint, dpm heun
    std::vector<T> xs = x, out = poisoned<T>(N * M), x0 = poisoned<T>(N * M);
    Mirror<T> dx(xs), dmodel(model), dz(z), dlast(last), dout(out), dx0(x0);
    std::vector<double> ref, ref_x0;
    std::string name;
    if (variant < 2) {
      EulerStepArgs a{dtype_of<T>(), N, M, dx.dev(), dmodel.dev(), variant ? dz.dev() : nullptr,
                      in_place ? dx.dev() : dout.dev(), dx0.dev(), sigma.data(), sigma_next.data(), pred, 0};
      cuda::euler_step(a, 0, nullptr);
      EulerStepArgs ra = a;
      ra.sample = x.data(); ra.model = model.data(); ra.noise = variant ? z.data() : nullptr;
      reference::euler_step<T>(ra, ref, ref_x0);
      name = std::string(variant ? "euler_ancestral_step " : "euler_step ") + tag;
    } else {
      DpmSolver2mStepArgs a{dtype_of<T>(), N, M, dx.dev(), dmodel.dev(), variant > 2 ? dlast.dev() : nullptr,
                            in_place ? dx.dev() : dout.dev(), dx0.dev(), sigma.data(), sigma_next.data(),
                            sigma_last.data(), pred, variant == 4, 0};
      cuda::dpm_solver_2m_step(a, 0, nullptr);
      DpmSolver2mStepArgs ra = a;
      ra.sample = x.data(); ra.model = model.data(); ra.x0_last = variant > 2 ? last.data() : nullptr;
      reference::dpm_solver_2m_step<T>(ra, ref, ref_x0);
      name = std::string("dpm_solver_2m_step ") + (variant == 2 ? "1st " : variant == 3 ? "midpoint " : "heun ") + tag;
    }
    dx.fetch(); dout.fetch(); dx0.fetch();
    compare(name + " x0", x0.data(), ref_x0, scale);
    compare(name, in_place ? xs.data() : out.data(), ref, scale);
  }
}

// Guidance rescale sums in a fixed order: two runs agree bit for bit.
void check_deterministic() {
  const int64_t N = 2, M = 3001;
  auto model = random_tensor<float>(2 * N * M);
  std::vector<float> out1(N * M), out2(N * M);
  std::vector<double> w = {3.0, 7.5};
  Mirror<float> dmodel(model), dout1(out1), dout2(out2);
  CfgCombineArgs a{DType::f32, N, M, dmodel.dev(), dmodel.dev() + N * M, dout1.dev(), w.data(), 0.7, 0};
  cuda::cfg_combine(a, 0, nullptr);
  a.out = dout2.dev();
  cuda::cfg_combine(a, 0, nullptr);
  dout1.fetch(); dout2.fetch();
  record("cfg_combine rescale: two runs bit-identical", std::memcmp(out1.data(), out2.data(), N * M * 4) == 0, "");
}

// A launch the device would refuse becomes a C++ exception naming the op.
void check_launch_error_is_reported() {
  std::string message;
  try {
    cuda::launch("mask_blend", cuda::mask_blend_kernel<float, 1>, dim3(1, 70000), dim3(256), nullptr,
                 static_cast<const float*>(nullptr), int64_t(0), static_cast<const float*>(nullptr),
                 static_cast<const float*>(nullptr), static_cast<float*>(nullptr), int64_t(0), int64_t(1), int64_t(0));
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  const bool ok = message.find("mask_blend") != std::string::npos && message.find("kernel launch") != std::string::npos &&
                  message.find("cudaErrorInvalidConfiguration") != std::string::npos;
  record("an invalid launch raises a clear C++ exception", ok, "\"" + message + "\"");
}

template <typename T>
void ddim_suite(int64_t N, int64_t M) {
  DdimCase c;
  c.label = "eps";
  check_ddim<T>(N, M, c);
  c = {}; c.label = "cfg"; c.guided = true; c.write_x0 = false;
  check_ddim<T>(N, M, c);
  c = {}; c.label = "cfg+rescale v"; c.guided = true; c.rescale = 0.7; c.pred = Prediction::v_prediction;
  check_ddim<T>(N, M, c);
  c = {}; c.label = "cfg sample eta=1 dynamic p=.9 clipped-eps"; c.guided = true; c.pred = Prediction::sample;
  c.clip = ClipMode::dynamic; c.eta = 1.0; c.use_clipped = true;
  check_ddim<T>(N, M, c);
  c = {}; c.label = "fixed clip 0.5 eta=0.5 in place"; c.clip = ClipMode::fixed; c.clip_range = 0.5; c.eta = 0.5;
  c.in_place = true;
  check_ddim<T>(N, M, c);
}

#if !defined(DIFFRT_CUDA_SIM)
// Best of 20 runs (CUDA events), as effective GB/s over the bytes the op must move.
template <typename F>
void report_speed(const std::string& name, double bytes, F&& run) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  run();
  float best = 1e30f;
  for (int rep = 0; rep < 20; ++rep) {
    cudaEventRecord(start);
    run();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, start, stop);
    best = std::min(best, ms);
  }
  cuda::check(cudaGetLastError(), "check", "timed runs");
  std::printf("%-50s %9.1f us  %7.1f GB/s\n", name.c_str(), best * 1e3, bytes / (best * 1e-3) / 1e9);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

template <typename T>
void speed_suite(int64_t N, int64_t M) {
  auto x = random_tensor<T>(N * M), model = random_tensor<T>(2 * N * M), out = poisoned<T>(N * M);
  Mirror<T> dx(x), dmodel(model), dout(out);
  std::vector<double> a_t(N, 0.3), a_prev(N, 0.5), w(N, 7.5);
  DdimStepArgs a{};
  a.dtype = dtype_of<T>(); a.batch = N; a.numel = M;
  a.sample = dx.dev(); a.model = dmodel.dev(); a.model_cond = dmodel.dev() + N * M; a.out = dout.dev();
  a.alpha_t = a_t.data(); a.alpha_prev = a_prev.data(); a.guidance_scale = w.data();
  a.dynamic_quantile = 0.995; a.dynamic_max = 1e30;
  const std::string tag = std::string(name_of<T>()) + " N=" + std::to_string(N) + " M=" + std::to_string(M);
  const double s = sizeof(T);
  report_speed("ddim_step cfg " + tag, s * N * M * 4, [&] { cuda::ddim_step(a, 0, nullptr); });
  a.guidance_rescale = 0.7;
  report_speed("ddim_step cfg+rescale " + tag, s * N * M * 4, [&] { cuda::ddim_step(a, 0, nullptr); });
  a.guidance_rescale = 0.0;
  a.clip = ClipMode::dynamic;
  report_speed("ddim_step cfg+dynamic threshold " + tag, s * N * M * 4, [&] { cuda::ddim_step(a, 0, nullptr); });
  MaskBlendArgs b{dtype_of<T>(), N, 1, M, dx.dev(), M, dmodel.dev(), dmodel.dev() + N * M, dout.dev(), 0};
  report_speed("mask_blend " + tag, s * N * M * 4, [&] { cuda::mask_blend(b, 0, nullptr); });
}
#endif

int run_checks() {
#if defined(DIFFRT_CUDA_SIM)
  std::printf("diffrt CUDA sampler kernels under the host simulation (blocks of %d threads)\n", cuda::kThreads);
#else
  std::printf("diffrt CUDA sampler kernels on the GPU (blocks of %d threads)\n", cuda::kThreads);
#endif
  check_launch_error_is_reported();
  // Shapes: a row shorter than one block (M=91), one just past a block's 4 items/thread (1031),
  // rows of three partial blocks (2635), many tiny rows (7) — all read element by element — and
  // rows of whole 16-byte packs, read pack by pack: 1000 (one partial block), 4104 (float32: two
  // blocks of 4-element packs, the second partial).
  for (auto [N, M] : {std::pair<int64_t, int64_t>{1, 91}, {3, 2635}, {2, 1031}, {5, 7}, {3, 1000}, {2, 4104}}) {
    ddim_suite<float>(N, M);
    ddim_suite<bf16>(N, M);
  }
  ddim_suite<f16>(3, 2635);
  ddim_suite<f16>(2, 4104);

  // Dynamic thresholding edge cases: heavy ties, the maximum (p = 1), an exact rank (pos integral),
  // a bound below the quantile, a single element per sample, unguided, no x̂0 output.
  DdimCase c;
  c.label = "dynamic p=.9 ties"; c.pred = Prediction::sample; c.clip = ClipMode::dynamic; c.model = Model::ties;
  check_ddim<float>(3, 2635, c);
  check_ddim<bf16>(2, 1031, c);
  c.label = "dynamic p=1 ties"; c.quantile = 1.0;
  check_ddim<float>(3, 2635, c);
  c.label = "dynamic p=.5 exact rank"; c.quantile = 0.5; c.model = Model::normal;
  check_ddim<float>(2, 1031, c);  // pos = 515
  c.label = "dynamic p=.995 max 1.7 cfg+rescale"; c.quantile = 0.995; c.dynamic_max = 1.7; c.guided = true;
  c.rescale = 0.5; c.pred = Prediction::epsilon;
  check_ddim<f16>(3, 2635, c);
  check_ddim<float>(4, 1, c);
  c = {}; c.label = "dynamic p=.3 v no-x0"; c.pred = Prediction::v_prediction; c.clip = ClipMode::dynamic;
  c.quantile = 0.3; c.write_x0 = false;
  check_ddim<float>(2, 1031, c);

  for (double rescale : {0.0, 0.5}) {
    check_cfg<float>(1, 91, rescale);
    check_cfg<float>(3, 2635, rescale);
    check_cfg<bf16>(3, 2635, rescale);
    check_cfg<f16>(2, 1031, rescale);
  }
  check_cfg<float>(2, 4104, 0.5);
  check_cfg<bf16>(3, 1000, 0.0);
  check_cfg<f16>(2, 4104, 0.7);
  check_cfg<float>(2, 1, 0.7);  // one element: std undefined, the weights stay unrescaled

  // Guidance rescale at a large offset (|mean|/std ≈ 10⁴): the two-pass std keeps its digits.
  c = {}; c.label = "cfg+rescale offset 1e4"; c.guided = true; c.rescale = 1.0; c.offset = 1e4;
  check_ddim<float>(3, 2635, c);
  // Non-finite inputs give the reference's NaN / inf elements: a NaN |x̂0| makes the quantile (and the
  // sample) NaN; inf in ε_u makes ε̃ = inf + w(ε_c − inf) NaN and its std NaN; eleven and twelve infinities
  // put one or both quantile neighbours at inf (torch.lerp's NaN); inf x_t under ε-prediction keeps ε̂ = m.
  c = {}; c.label = "dynamic p=.9 NaN x"; c.clip = ClipMode::dynamic; c.poison_where = 'x'; c.poison = NAN;
  c.poison_count = 1;
  check_ddim<float>(2, 1031, c);
  c.label = "dynamic p=.99 11 inf"; c.quantile = 0.99; c.poison = INFINITY; c.poison_count = 11;
  check_ddim<float>(2, 1031, c);
  c.label = "dynamic p=.99 12 inf clipped-eps"; c.poison_count = 12; c.use_clipped = true;
  check_ddim<bf16>(2, 1031, c);
  c = {}; c.label = "eps inf x"; c.poison_where = 'x'; c.poison = INFINITY; c.poison_count = 3;
  check_ddim<float>(2, 1031, c);
  c = {}; c.label = "cfg+rescale inf uncond"; c.guided = true; c.rescale = 0.7; c.poison_where = 'u';
  c.poison = INFINITY; c.poison_count = 2;
  check_ddim<float>(3, 2635, c);
  c.label = "cfg sample -inf cond"; c.rescale = 0.0; c.pred = Prediction::sample; c.poison_where = 'c';
  c.poison = -INFINITY;
  check_ddim<f16>(2, 1031, c);
  check_deterministic();

  check_mask_blend<float>(3, 5, 527, false, false);
  check_mask_blend<float>(2, 3, 1031, true, false);
  check_mask_blend<bf16>(2, 4, 91, false, false);
  check_mask_blend<f16>(2, 4, 1031, true, false);
  check_mask_blend<float>(2, 3, 1031, false, true);
  check_mask_blend<bf16>(2, 3, 527, true, true);
  check_mask_blend<f16>(1, 2, 91, false, true);
  check_mask_blend<float>(2, 3, 4104, false, false);
  check_mask_blend<bf16>(3, 2, 1000, true, false);
  check_mask_blend<f16>(2, 2, 1000, false, true);
  check_mask_blend<float>(2, 3, 1031, false, true, true);
  check_mask_blend<bf16>(2, 3, 1000, true, true, true);
  check_mask_blend<float>(2, 3, 1031, true, false, true);

  for (Prediction pred : {Prediction::epsilon, Prediction::v_prediction, Prediction::sample}) {
    check_sigma_steps<float>(3, 2635, pred, false);
    check_sigma_steps<bf16>(2, 1031, pred, pred == Prediction::v_prediction);
  }
  check_sigma_steps<float>(2, 4104, Prediction::epsilon, true);  // 16-byte packs
  check_sigma_steps<bf16>(3, 1000, Prediction::v_prediction, false);
  check_sigma_steps<f16>(5, 7, Prediction::epsilon, false);
  check_sigma_steps<f16>(2, 4104, Prediction::sample, false);

  check_diffedit<float>(2, 10, 4, 527, -1.0);
  check_diffedit<float>(1, 3, 4, 2635, -1.0);
  check_diffedit<bf16>(1, 3, 4, 1031, -1.0);
  check_diffedit<f16>(2, 2, 3, 91, -1.0);
  check_diffedit<float>(2, 4, 4, 1031, 0.5);
  check_diffedit<bf16>(3, 2, 4, 1000, -1.0);  // three images: with the row-block limit lowered, a block loops
  check_diffedit<float>(3, 3, 2, 527, 0.5);
  check_diffedit<float>(2, 3, 2, 527, -1.0, true);
  check_diffedit<bf16>(3, 2, 2, 1031, 0.5, true);

#if defined(DIFFRT_CUDA_SIM)
  record("every workspace allocation freed", cuda_sim::live_allocations == 0,
         std::to_string(cuda_sim::live_allocations.load()) + " live");
#else
  speed_suite<float>(8, 4 * 128 * 128);
  speed_suite<bf16>(8, 4 * 128 * 128);
  speed_suite<f16>(8, 4 * 128 * 128);
#endif
  return harness::summary();
}

}  // namespace

int main() {
  try {
    return run_checks();
  } catch (const std::exception& e) {  // e.g. no usable GPU for the nvcc build
    std::printf("error: %s\n", e.what());
    return 2;
  }
}
