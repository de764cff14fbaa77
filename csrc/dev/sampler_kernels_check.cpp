// Check-and-time harness for the CPU sampler kernels, in the style of llm.c's dev/cuda: it
// #includes the production source (compiled for the ISA given by -DDIFFRT_ISA and the matching -m
// flags), runs every kernel on random inputs against the double-precision reference, prints the
// first mismatches, and reports effective GB/s.
//
//   g++ -std=c++17 -O3 -fopenmp -Icsrc -DDIFFRT_ISA=avx512 -mavx512f -mavx512bw -mavx512vl \
//       -mavx512dq -mavx512bf16 -mavx2 -mfma csrc/dev/sampler_kernels_check.cpp -o check && ./check
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/sampler_kernels.cpp"
#include "dev/reference.h"

// Threads the kernels may use: DIFFRT_CHECK_THREADS, else the hardware's.
int check_threads() {
  static const int n = [] {
    const char* env = std::getenv("DIFFRT_CHECK_THREADS");
    const int hw = int(std::thread::hardware_concurrency());
    return env && *env ? std::max(1, std::atoi(env)) : std::max(1, hw);
  }();
  return n;
}

#define DIFFRT_STR2(x) #x
#define DIFFRT_STR(x) DIFFRT_STR2(x)

namespace {

using namespace diffrt;
namespace isa = diffrt::cpu::DIFFRT_ISA;

std::mt19937 rng(1234);

template <typename T>
std::vector<T> random_tensor(int64_t n, double scale = 1.0) {
  std::normal_distribution<float> dist(0.f, float(scale));
  std::vector<T> v(n);
  for (auto& x : v) x = store_as<T>(dist(rng));
  return v;
}

template <typename T>
constexpr double eps() {
  return std::is_same_v<T, bf16> ? 0.0078125 : 1.1920929e-07;
}

int failures = 0;

// |got − ref| ≤ eps(T)·|ref| + 64·eps(float32)·scale; prints the first mismatches.
template <typename T>
void compare(const std::string& name, const T* got, const std::vector<double>& ref, double scale) {
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i])), err = std::fabs(g - ref[i]);
    worst = std::max(worst, err);
    if (!(err <= eps<T>() * std::fabs(ref[i]) + 64 * 1.1920929e-07 * scale)) {
      if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g\n", name.c_str(), i, g, ref[i]);
      ++bad;
    }
  }
  failures += bad > 0;
  std::printf("%-52s %s  max|err| %.3g", name.c_str(), bad ? "FAIL" : "ok  ", worst);
}

void report_speed(const std::function<void()>& run, double bytes) {
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
  a.num_threads = check_threads();
  isa::sampler_kernels.ddim_step(a);
  std::vector<double> ref, ref_x0;
  reference::ddim_step<T>(a, ref, ref_x0);
  const double scale = (1 + 2 * w.back()) * (5.0 + offset) / std::sqrt(std::min(a_t[0], 1 - a_t.back()));
  const std::string name = std::string("ddim_step ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  ") + label;
  compare(name + " x0", x0.data(), ref_x0, scale);
  std::printf("\n");
  compare(name, out.data(), ref, scale);
  a.out_x0 = nullptr;
  report_speed([&] { isa::sampler_kernels.ddim_step(a); },
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
                  a_.data(), b_.data(), out.data(), check_threads()};
  isa::sampler_kernels.mask_blend(a);
  std::vector<double> ref;
  reference::mask_blend<T>(a, ref);
  compare(std::string("mask_blend ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  ") + std::to_string(N) + "x" +
              std::to_string(C) + "x" + std::to_string(S),
          out.data(), ref, 10.0);
  report_speed([&] { isa::sampler_kernels.mask_blend(a); }, double(sizeof(T)) * (3 * N * C * S + m.size()));
}

template <typename T>
void check_diffedit(int64_t B, int64_t n, int64_t C, int64_t S, double threshold) {
  auto q = random_tensor<T>(B * n * C * S), r = random_tensor<T>(B * n * C * S);
  std::vector<float> out(B * S, NAN);
  DiffEditMaskArgs a{std::is_same_v<T, bf16> ? DType::bf16 : DType::f32, B, n, C, S, q.data(), r.data(), out.data(),
                     3.0, threshold, check_threads()};
  isa::sampler_kernels.diffedit_mask(a);
  std::vector<double> ref;
  reference::diffedit_mask<T>(a, ref);
  compare(std::string("diffedit_mask soft ") + (std::is_same_v<T, bf16> ? "bf16 " : "f32  "), out.data(), ref,
          double(n * C));
  report_speed([&] { isa::sampler_kernels.diffedit_mask(a); }, double(sizeof(T)) * 2 * B * n * C * S);
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
                  pred, check_threads()};
  isa::sampler_kernels.euler_step(e);
  reference::euler_step<T>(e, ref, ref_x0);
  compare("euler_ancestral_step " + tag, out.data(), ref, scale);
  report_speed([&] { isa::sampler_kernels.euler_step(e); }, double(sizeof(T)) * N * M * 5);
  std::fill(out.begin(), out.end(), store_as<T>(NAN));
  DpmSolver2mStepArgs d{dt, N, M, x.data(), m.data(), last.data(), out.data(), x0.data(), sigma.data(),
                        sigma_next.data(), sigma_last.data(), pred, false, check_threads()};
  isa::sampler_kernels.dpm_solver_2m_step(d);
  reference::dpm_solver_2m_step<T>(d, ref, ref_x0);
  compare("dpm_solver_2m_step midpoint " + tag, out.data(), ref, 4 * scale);
  report_speed([&] { isa::sampler_kernels.dpm_solver_2m_step(d); }, double(sizeof(T)) * N * M * 5);
}

}  // namespace

int main() {
  std::printf("diffrt CPU sampler kernels, ISA %s, %d threads\n", DIFFRT_STR(DIFFRT_ISA), check_threads());
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
    a.guidance_rescale = 0.7; a.num_threads = check_threads();
    isa::sampler_kernels.ddim_step(a);
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
  std::printf(failures ? "FAILED: %d checks\n" : "ALL OK\n", failures);
  return failures ? 1 : 0;
}
