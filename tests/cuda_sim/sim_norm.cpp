// Check harness of the CUDA norm kernels: each host entry point of csrc/cuda/norm_kernels.cu (included,
// not copied) runs on small shapes — odd sizes, groups of one channel and of all channels, NCHW and
// channels-last, rows shorter and longer than a block, several rows per block (DIFFRT_CUDA_MAX_ROW_BLOCKS),
// large means, timestep embeddings of odd width, the timestep MLP, float32 / bfloat16 / float16 — against
// double-precision references written out below.
// Outputs start as NaN, so an element no thread writes fails.
//   g++ -std=c++17 -O1 -DDIFFRT_CUDA_SIM -Icsrc -Itests/cuda_sim tests/cuda_sim/sim_norm.cpp -o sim_norm
//   nvcc -std=c++17 -O3 -arch=native -Icsrc -x cu tests/cuda_sim/sim_norm.cpp -o cuda_norm_check

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/norm_kernels.cu"
#include "dev/norm_reference.h"
#include "harness.h"

namespace {

using namespace diffrt;
using namespace diffrt::harness;

std::mt19937 rng(2718);

template <typename T>
std::vector<T> random_tensor(int64_t n, double scale = 1.0, double offset = 0.0) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = store_as<T>(float(dist(rng) + offset));
  return v;
}

std::vector<float> random_floats(int64_t n) {
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// |got − ref| ≤ eps(T)·|ref| + 64·eps(float32)·scale; NaN (an unwritten element) fails.
template <typename T>
void compare(const std::string& name, const std::vector<T>& got, const std::vector<double>& ref, double scale) {
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i])), err = std::fabs(g - ref[i]);
    if (err > worst || err != err) worst = err;
    if (!(err <= eps<T>() * std::fabs(ref[i]) + 64 * 1.1920929e-07 * scale)) {
      if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g\n", name.c_str(), i, g, ref[i]);
      ++bad;
    }
  }
  record(name, bad == 0, "max err " + std::to_string(worst));
}

template <typename T>
void check_group_norm(int64_t N, int64_t C, int64_t HW, int64_t G, bool channels_last, bool silu, bool affine,
                      double offset) {
  const int64_t numel = N * C * HW;
  std::vector<T> x = random_tensor<T>(numel, 2.0, offset), out(numel, store_as<T>(NAN));
  std::vector<float> w = random_floats(C), b = random_floats(C);
  Mirror<T> xd(x), od(out);
  Mirror<float> wd(w), bd(b);
  GroupNormArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = N; a.channels = C; a.spatial = HW; a.groups = G; a.channels_last = channels_last;
  a.x = xd.dev(); a.weight = affine ? wd.dev() : nullptr; a.bias = affine ? bd.dev() : nullptr; a.out = od.dev();
  a.eps = 1e-5; a.silu = silu;
  GroupNormArgs host = a;
  host.x = x.data(); host.weight = affine ? w.data() : nullptr; host.bias = affine ? b.data() : nullptr;
  double scale;
  const std::vector<double> ref = reference::group_norm<T>(host, scale);
  cuda::group_norm(a, 0, nullptr);
  od.fetch();
  char name[160];
  std::snprintf(name, sizeof name, "group_norm %s N=%lld C=%lld HW=%lld G=%lld %s%s%s offset=%g", name_of<T>(),
                (long long)N, (long long)C, (long long)HW, (long long)G, channels_last ? "nhwc" : "nchw",
                silu ? " silu" : "", affine ? " affine" : "", offset);
  compare(name, out, ref, scale);
}

template <typename T>
void check_layer_norm(int64_t rows, int64_t dim, bool affine, double offset) {
  std::vector<T> x = random_tensor<T>(rows * dim, 3.0, offset), out(rows * dim, store_as<T>(NAN));
  std::vector<float> w = random_floats(dim), b = random_floats(dim);
  Mirror<T> xd(x), od(out);
  Mirror<float> wd(w), bd(b);
  LayerNormArgs a{};
  a.dtype = dtype_of<T>();
  a.rows = rows; a.dim = dim; a.x = xd.dev(); a.out = od.dev(); a.eps = 1e-5;
  a.weight = affine ? wd.dev() : nullptr; a.bias = affine ? bd.dev() : nullptr;
  LayerNormArgs host = a;
  host.x = x.data(); host.weight = affine ? w.data() : nullptr; host.bias = affine ? b.data() : nullptr;
  double scale;
  const std::vector<double> ref = reference::layer_norm<T>(host, scale);
  cuda::layer_norm(a, 0, nullptr);
  od.fetch();
  char name[160];
  std::snprintf(name, sizeof name, "layer_norm %s rows=%lld dim=%lld%s offset=%g", name_of<T>(), (long long)rows,
                (long long)dim, affine ? " affine" : "", offset);
  compare(name, out, ref, scale);
}

template <typename T>
void check_geglu(int64_t rows, int64_t dim) {
  std::vector<T> x = random_tensor<T>(rows * 2 * dim, 3.0), out(rows * dim, store_as<T>(NAN));
  Mirror<T> xd(x), od(out);
  GegluArgs a{};
  a.dtype = dtype_of<T>();
  a.rows = rows; a.dim = dim; a.x = xd.dev(); a.out = od.dev();
  GegluArgs host = a;
  host.x = x.data();
  double scale;
  const std::vector<double> ref = reference::geglu<T>(host, scale);
  cuda::geglu(a, 0, nullptr);
  od.fetch();
  char name[120];
  std::snprintf(name, sizeof name, "geglu %s rows=%lld dim=%lld", name_of<T>(), (long long)rows, (long long)dim);
  compare(name, out, ref, scale);
}

template <typename T>
void check_timestep_embedding(int64_t batch, int64_t dim, bool flip, double shift) {
  std::vector<double> t(batch);
  for (int64_t n = 0; n < batch; ++n) t[n] = double((n * 379) % 1000) + 0.25 * double(n % 3);
  std::vector<T> out(batch * dim, store_as<T>(NAN));
  Mirror<double> td(t);
  Mirror<T> od(out);
  TimestepEmbeddingArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = batch; a.dim = dim; a.timesteps = td.dev(); a.out = od.dev();
  a.flip_sin_to_cos = flip; a.downscale_freq_shift = shift; a.scale = 1.0; a.max_period = 10000.0;
  TimestepEmbeddingArgs host = a;
  host.timesteps = t.data();
  const std::vector<double> ref = reference::timestep_embedding(host);
  cuda::timestep_embedding(a, 0, nullptr);
  od.fetch();
  char name[120];
  std::snprintf(name, sizeof name, "timestep_embedding %s batch=%lld dim=%lld%s shift=%g", name_of<T>(),
                (long long)batch, (long long)dim, flip ? " flip" : "", shift);
  compare(name, out, ref, 1.0);
}

// Weights of dtype T; dims off the warp width and more output rows than one block's warps, with and
// without biases.
template <typename T>
void check_timestep_mlp(int64_t batch, int64_t in_dim, int64_t hidden_dim, int64_t out_dim, bool biases) {
  std::vector<double> t(batch);
  for (int64_t n = 0; n < batch; ++n) t[n] = double((n * 379) % 1000) + 0.25 * double(n % 3);
  std::vector<T> w1 = random_tensor<T>(hidden_dim * in_dim, 1.0 / std::sqrt(double(in_dim)));
  std::vector<T> b1 = random_tensor<T>(hidden_dim, 0.5);
  std::vector<T> w2 = random_tensor<T>(out_dim * hidden_dim, 1.0 / std::sqrt(double(hidden_dim)));
  std::vector<T> b2 = random_tensor<T>(out_dim, 0.5);
  std::vector<T> out(batch * out_dim, store_as<T>(NAN));
  Mirror<double> td(t);
  Mirror<T> w1d(w1), b1d(b1), w2d(w2), b2d(b2), od(out);
  TimestepMlpArgs a{};
  a.dtype = dtype_of<T>();
  a.batch = batch; a.in_dim = in_dim; a.hidden_dim = hidden_dim; a.out_dim = out_dim; a.timesteps = td.dev();
  a.weight_1 = w1d.dev(); a.bias_1 = biases ? b1d.dev() : nullptr; a.weight_2 = w2d.dev();
  a.bias_2 = biases ? b2d.dev() : nullptr; a.out = od.dev();
  a.flip_sin_to_cos = true; a.downscale_freq_shift = 0.0; a.scale = 1.0; a.max_period = 10000.0;
  TimestepMlpArgs host = a;
  host.timesteps = t.data(); host.weight_1 = w1.data(); host.bias_1 = biases ? b1.data() : nullptr;
  host.weight_2 = w2.data(); host.bias_2 = biases ? b2.data() : nullptr;
  double scale;
  const std::vector<double> ref = reference::timestep_mlp<T>(host, scale);
  cuda::timestep_mlp(a, 0, nullptr);
  od.fetch();
  char name[120];
  std::snprintf(name, sizeof name, "timestep_mlp %s batch=%lld %lld>%lld>%lld%s", name_of<T>(), (long long)batch,
                (long long)in_dim, (long long)hidden_dim, (long long)out_dim, biases ? " bias" : "");
  compare(name, out, ref, scale);
}

template <typename T>
void run_for_dtype() {
  for (bool channels_last : {false, true})
    for (bool silu : {false, true}) {
      check_group_norm<T>(2, 6, 35, 3, channels_last, silu, true, 0.0);
      check_group_norm<T>(1, 4, 3, 4, channels_last, silu, true, 0.0);     // groups of one channel
      check_group_norm<T>(3, 8, 297, 1, channels_last, silu, false, 0.0);  // one group, rows > a block
    }
  check_group_norm<T>(2, 4, 300, 2, false, true, true, 1000.0);  // large mean
  check_group_norm<T>(2, 4, 300, 2, true, false, true, -1000.0);
  check_layer_norm<T>(3, 300, true, 0.0);
  check_layer_norm<T>(5, 1, false, 0.0);
  check_layer_norm<T>(4, 1000, true, 5000.0);
  check_geglu<T>(3, 7);
  check_geglu<T>(5, 300);
  check_timestep_embedding<T>(3, 321, false, 1.0);
  check_timestep_embedding<T>(300, 8, true, 0.0);  // more elements than one block
  check_timestep_mlp<T>(2, 40, 70, 19, true);
  check_timestep_mlp<T>(3, 7, 5, 9, false);  // dims below the warp width, no biases
}

int run_checks() {
  run_for_dtype<float>();
  run_for_dtype<bf16>();
  run_for_dtype<f16>();
  return summary();
}

}  // namespace

int main() {
  try {
    return run_checks();
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 2;
  }
}
