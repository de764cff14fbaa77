// Runs the CUDA sampler kernels on the CPU: csrc/cuda/sampler_kernels.cu is compiled unchanged by
// g++ against cuda_shim.h (threads, barriers, shared memory, warp shuffles) and each host entry
// point runs on small shapes — odd sizes, rows shorter than a block, rows of several partial
// blocks, several samples, float32 / bfloat16 / float16 — against the double-precision reference
// (csrc/dev/reference.h). Outputs start as NaN, so an element no thread writes fails.
//
//   g++ -std=c++17 -O1 -pthread -DDIFFRT_CUDA_SIM -Icsrc -Itests/cuda_sim tests/cuda_sim/sim_check.cpp -o sim_check
//   ./sim_check
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/sampler_kernels.cu"
#include "dev/reference.h"

namespace {

using namespace diffrt;

std::mt19937 rng(4321);
int failures = 0, checks = 0;

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, bf16> ? DType::bf16 : std::is_same_v<T, f16> ? DType::f16 : DType::f32;
}
template <typename T>
const char* name_of() {
  return std::is_same_v<T, bf16> ? "bf16" : std::is_same_v<T, f16> ? "f16 " : "f32 ";
}
template <typename T>
constexpr double eps() {  // unit roundoff ×2 of the storage dtype
  return std::is_same_v<T, bf16> ? 0.0078125 : std::is_same_v<T, f16> ? 0.0009765625 : 1.1920929e-07;
}

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

void record(const std::string& name, bool ok, const std::string& detail) {
  ++checks;
  failures += !ok;
  std::printf("%-66s %s  %s\n", name.c_str(), ok ? "ok  " : "FAIL", detail.c_str());
}

// |got − ref| ≤ eps(T)·|ref| + 64·eps(float32)·scale (NaN fails); prints the first mismatches.
template <typename T>
void compare(const std::string& name, const T* got, const std::vector<double>& ref, double scale) {
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i])), err = std::fabs(g - ref[i]);
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
  auto out = poisoned<T>(N * M), x0 = poisoned<T>(N * M);
  std::vector<double> a_t(N), a_prev(N), w(N);
  for (int64_t r = 0; r < N; ++r) {
    a_t[r] = 0.1 + 0.7 * double(r + 1) / double(N + 1);
    a_prev[r] = std::min(0.99, a_t[r] + 0.15);
    w[r] = 1.0 + 2.5 * double(r);
  }
  const std::vector<T> x_in = x;  // the reference reads the original x_t when the step runs in place
  DdimStepArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = N; a.numel = M;
  a.sample = x.data(); a.model = model.data(); a.model_cond = c.guided ? model.data() + N * M : nullptr;
  a.noise = c.eta > 0 ? z.data() : nullptr;
  a.out = c.in_place ? x.data() : out.data();
  a.out_x0 = c.write_x0 ? x0.data() : nullptr;
  a.alpha_t = a_t.data(); a.alpha_prev = a_prev.data(); a.guidance_scale = w.data();
  a.eta = c.eta; a.guidance_rescale = c.rescale; a.prediction = c.pred; a.clip = c.clip;
  a.clip_range = c.clip_range; a.dynamic_quantile = c.quantile; a.dynamic_max = c.dynamic_max;
  a.use_clipped_model_output = c.use_clipped;
  cuda::ddim_step(a, 0, nullptr);

  DdimStepArgs ra = a;
  ra.sample = x_in.data();
  std::vector<double> ref, ref_x0;
  reference::ddim_step<T>(ra, ref, ref_x0);
  const double scale = (1 + 2 * w.back()) * 7.5 / std::sqrt(std::min(a_t[0], 1 - a_t.back()));
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
  CfgCombineArgs a{dtype_of<T>(), N, M, model.data(), model.data() + N * M, out.data(), w.data(), rescale, 0};
  cuda::cfg_combine(a, 0, nullptr);
  std::vector<double> ref;
  reference::cfg_combine<T>(a, ref);
  compare(std::string("cfg_combine ") + name_of<T>() + " N=" + std::to_string(N) + " M=" + std::to_string(M) +
              " rescale=" + std::to_string(rescale).substr(0, 3),
          out.data(), ref, (1 + 2 * 9.0) * 5.0);
}

template <typename T>
void check_mask_blend(int64_t N, int64_t C, int64_t S, bool shared_mask, bool binary) {
  auto a_ = random_tensor<T>(N * C * S), b_ = random_tensor<T>(N * C * S, 1e-3);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<T> m((shared_mask ? 1 : N) * S);
  for (auto& v : m) v = store_as<T>(binary ? float(u(rng) > 0.5f) : u(rng));
  auto out = poisoned<T>(N * C * S);
  MaskBlendArgs a{dtype_of<T>(), N, C, S, m.data(), shared_mask ? 0 : S, a_.data(), b_.data(), out.data(), 0};
  cuda::mask_blend(a, 0, nullptr);
  const std::string name = std::string("mask_blend ") + name_of<T>() + " " + std::to_string(N) + "x" +
                           std::to_string(C) + "x" + std::to_string(S) + (shared_mask ? " shared" : " per-sample") +
                           (binary ? " binary" : " soft");
  if (binary) {  // a binary mask returns a or b bit-exactly
    int64_t bad = 0;
    for (int64_t k = 0; k < N * C * S; ++k) {
      const int64_t i = k % S, n = k / (C * S);
      const T want = load(m[(shared_mask ? 0 : n) * S + i]) > 0.5f ? a_[k] : b_[k];
      bad += std::memcmp(&out[k], &want, sizeof(T)) != 0;
    }
    record(name, bad == 0, bad ? std::to_string(bad) + " elements differ" : "bit-exact");
    return;
  }
  std::vector<double> ref;
  reference::mask_blend<T>(a, ref);
  compare(name, out.data(), ref, 10.0);
}

template <typename T>
void check_diffedit(int64_t B, int64_t n, int64_t C, int64_t S, double threshold) {
  auto q = random_tensor<T>(B * n * C * S), r = random_tensor<T>(B * n * C * S);
  std::vector<float> out(B * S, NAN);
  DiffEditMaskArgs a{dtype_of<T>(), B, n, C, S, q.data(), r.data(), out.data(), 2.0, threshold, 0};
  cuda::diffedit_mask(a, 0, nullptr);
  const std::string name = std::string("diffedit_mask ") + name_of<T>() + " " + std::to_string(B) + "x" +
                           std::to_string(n) + "x" + std::to_string(C) + "x" + std::to_string(S) +
                           (threshold >= 0 ? " binary" : " soft");
  if (threshold >= 0) {  // compare the decision where float32 and float64 cannot disagree
    DiffEditMaskArgs soft = a;
    soft.threshold = -1.0;
    std::vector<double> ref;
    reference::diffedit_mask<T>(soft, ref);
    int64_t bad = 0, decided = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
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
  reference::diffedit_mask<T>(a, ref);
  compare(name, out.data(), ref, double(n * C));
}

// Guidance rescale sums in a fixed order: two runs agree bit for bit.
void check_deterministic() {
  const int64_t N = 2, M = 3001;
  auto model = random_tensor<float>(2 * N * M);
  std::vector<float> out1(N * M), out2(N * M);
  std::vector<double> w = {3.0, 7.5};
  CfgCombineArgs a{DType::f32, N, M, model.data(), model.data() + N * M, out1.data(), w.data(), 0.7, 0};
  cuda::cfg_combine(a, 0, nullptr);
  a.out = out2.data();
  cuda::cfg_combine(a, 0, nullptr);
  record("cfg_combine rescale: two runs bit-identical", std::memcmp(out1.data(), out2.data(), N * M * 4) == 0, "");
}

// A launch the device would refuse becomes a C++ exception naming the op.
void check_launch_error_is_reported() {
  std::string message;
  try {
    cuda::launch("mask_blend", cuda::mask_blend_kernel<float>, dim3(1, 70000), dim3(256), nullptr,
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

}  // namespace

int main() {
  std::printf("diffrt CUDA sampler kernels under the host simulation (blocks of %d threads)\n", cuda::kThreads);
  check_launch_error_is_reported();
  // Shapes: a row shorter than one block (M=91), one just past a block's 4 items/thread (1031),
  // rows of three partial blocks (2635), many tiny rows (7).
  for (auto [N, M] : {std::pair<int64_t, int64_t>{1, 91}, {3, 2635}, {2, 1031}, {5, 7}}) {
    ddim_suite<float>(N, M);
    ddim_suite<bf16>(N, M);
  }
  ddim_suite<f16>(3, 2635);

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
  check_cfg<float>(2, 1, 0.7);  // one element: std undefined, the weights stay unrescaled
  check_deterministic();

  check_mask_blend<float>(3, 5, 527, false, false);
  check_mask_blend<float>(2, 3, 1031, true, false);
  check_mask_blend<bf16>(2, 4, 91, false, false);
  check_mask_blend<f16>(2, 4, 1031, true, false);
  check_mask_blend<float>(2, 3, 1031, false, true);
  check_mask_blend<bf16>(2, 3, 527, true, true);
  check_mask_blend<f16>(1, 2, 91, false, true);

  check_diffedit<float>(2, 10, 4, 527, -1.0);
  check_diffedit<float>(1, 3, 4, 2635, -1.0);
  check_diffedit<bf16>(1, 3, 4, 1031, -1.0);
  check_diffedit<f16>(2, 2, 3, 91, -1.0);
  check_diffedit<float>(2, 4, 4, 1031, 0.5);

  record("every workspace allocation freed", cuda_sim::live_allocations == 0,
         std::to_string(cuda_sim::live_allocations.load()) + " live");
  std::printf(failures ? "FAILED: %d of %d checks\n" : "ALL OK (%d checks)\n", failures ? failures : checks, checks);
  return failures ? 1 : 0;
}
