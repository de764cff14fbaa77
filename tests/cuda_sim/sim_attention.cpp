// Check harness of the CUDA attention kernels: csrc/cuda/attention_kernels.cu (included, not copied)
// runs forward and backward on small shapes — Lq, Lk ∈ {1, 7, 33, 70} (partial tiles at both ends),
// head dims in all three compiled buckets (32 … 256, odd ones included), padded keys, a batch whose
// keys are all masked (rows of zeros, lse = −inf, zero gradients), strided inputs, float32 / bfloat16 /
// float16, NaN and ±inf in q, k, v at masked and attended keys — against the double-precision reference
// csrc/dev/attention_reference.h. Outputs start as NaN (as a finite sentinel in the non-finite cases),
// so an element no thread writes fails; the backward scratch starts as NaN too (cuda_shim.h).
//
// Without a GPU (tests/test_cuda_simulation.py):
//   g++ -std=c++17 -O1 -DDIFFRT_CUDA_SIM -Icsrc -Itests/cuda_sim tests/cuda_sim/sim_attention.cpp -o sim_attention
// On a GPU the same cases build with nvcc, and time forward and backward (TFLOP/s) on larger shapes:
//   nvcc -std=c++17 -O3 -arch=native -Icsrc -x cu tests/cuda_sim/sim_attention.cpp -o cuda_attention_check
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/attention_kernels.cu"
#include "dev/attention_reference.h"
#include "harness.h"

namespace {

using namespace diffrt;
using namespace diffrt::harness;

std::mt19937 rng(2024);
// |got − ref| ≤ eps(T)·|ref| + atol·max(max|ref|, floor), atol = 2·eps(T) + 64·eps(float32): the output's
// rounding plus float32 sums of up to a few hundred terms; ±inf must match exactly, NaN only where the
// reference is NaN. floor: the size of the terms when the result cancels (gradients through a softmax
// over one key are exactly 0).
template <typename G>
void compare(const std::string& name, const G* got, const std::vector<double>& ref, double rel, double floor = 0) {
  double scale = floor;
  for (double r : ref)
    if (std::isfinite(r)) scale = std::max(scale, std::fabs(r));
  const double atol = (2 * rel + 64 * 1.1920929e-07) * std::max(scale, 1e-30);
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(load(got[i]));
    bool ok;
    if (std::isnan(ref[i])) {
      ok = std::isnan(g);
    } else if (std::isinf(ref[i])) {
      ok = g == ref[i];
    } else {
      const double err = std::fabs(g - ref[i]);
      worst = std::max(worst, err);
      ok = err <= rel * std::fabs(ref[i]) + atol;
    }
    if (!ok) {
      if (bad < 3) std::printf("  mismatch %s[%zu]: got %.8g want %.8g\n", name.c_str(), i, g, ref[i]);
      ++bad;
    }
  }
  char detail[96];
  std::snprintf(detail, sizeof detail, "max|err| %.3g (scale %.3g)", worst, scale);
  record(name, bad == 0, detail);
}

enum class Mask { none, padded };  // padded: batch 0 random keys off, batch 1 (if any) every key off
// Non-finite values put into the inputs (after the mask is drawn; see poison()).
enum class Poison { none, masked, attended };

// A (B, H, L, d) tensor with rows `pad` elements longer than d (strided when pad > 0), its loaded values
// densely as double, and its strides.
template <typename T>
struct Input {
  std::vector<T> data;
  std::vector<double> dense;
  HeadStrides strides;
  Input(int64_t B, int64_t H, int64_t L, int64_t d, int64_t pad, double scale) {
    const int64_t row = d + pad;
    strides = HeadStrides{H * L * row, L * row, row};
    data.assign(B * H * L * row + 1, store_as<T>(NAN));  // padding is NaN: it must never be read
    dense.resize(B * H * L * d);
    dim = d;
    std::normal_distribution<float> dist(0.f, float(scale));
    for (int64_t r = 0; r < B * H * L; ++r)
      for (int64_t c = 0; c < d; ++c) set(r, c, dist(rng));
  }
  // Element c of row r (of all B·H·L rows) becomes x (rounded to T).
  void set(int64_t r, int64_t c, float x) {
    data[r * strides.row + c] = store_as<T>(x);
    dense[r * dim + c] = double(load(data[r * strides.row + c]));
  }
  double get(int64_t r, int64_t c) const { return dense[r * dim + c]; }
  int64_t dim = 0;
};

// Poison::masked: NaN, +inf, −inf (in turn) in k and v of every masked key of batch 0, and NaN/inf in q,
// k, v of batch 1, whose keys are all masked: none of it may show. Poison::attended (needs B ≥ 3, H ≥ 2,
// Lq ≥ 3): in batch 0 head 0, a NaN query row, a query row whose attended scores are all −inf, and an
// attended key with k = −inf in one column (−inf scores drop it, +inf scores make NaN rows); in batch 0
// head 1, +inf and NaN in v of attended keys; in batch 2 head 0, a NaN in an attended key.
template <typename T>
void poison(Poison kind, Input<T>& q, Input<T>& k, Input<T>& v, const std::vector<uint8_t>& mask, int64_t B, int64_t H,
            int64_t Lq, int64_t Lk, int64_t d) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const auto on = [&](int64_t b, int64_t j) { return mask[b * Lk + j] != 0; };
  const auto last_on = [&](int64_t b) {
    int64_t j = Lk - 1;
    while (j > 0 && !on(b, j)) --j;
    return j;
  };
  if (kind == Poison::masked) {
    const float values[] = {nan, inf, -inf};
    int n = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Lk; ++j)
        if (!on(0, j)) {
          k.set(h * Lk + j, (3 * n) % d, values[n % 3]);
          v.set(h * Lk + j, (5 * n + 1) % d, values[(n + 1) % 3]);
          ++n;
        }
    if (B > 1) {
      q.set(H * Lq, 0, nan);
      k.set(H * Lk, d - 1, inf);
      v.set(H * Lk + Lk - 1, 0, nan);
    }
    return;
  }
  if (kind != Poison::attended) return;
  // batch 0, head 0 (rows 0 … Lq−1 of q, keys 0 … Lk−1 of k and v)
  q.set(0, d / 2, nan);
  q.set(1, 1, -inf);
  for (int64_t j = 0; j < Lk; ++j) k.set(j, 1, float(std::fabs(k.get(j, 1)) + 0.25));  // row 1: all −inf
  k.set(last_on(0), 0, -inf);
  // batch 0, head 1
  v.set(Lk + last_on(0), 2, inf);
  v.set(Lk, d - 1, nan);  // key 0 always attends
  // batch 2, head 0
  k.set(2 * H * Lk + last_on(2), 3, nan);
}

template <typename T>
void check_attention(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t d, Mask mask_kind, int64_t pad = 0,
                     double q_scale = 1.0, Poison poison_kind = Poison::none) {
  char tag[160];
  std::snprintf(tag, sizeof tag, "%s B%ld H%ld Lq%ld Lk%ld d%ld%s%s%s", name_of<T>(), long(B), long(H), long(Lq),
                long(Lk), long(d), mask_kind == Mask::padded ? " masked" : "", pad ? " strided" : "",
                poison_kind == Poison::masked ? " nonfinite-masked" : poison_kind == Poison::attended ? " nonfinite" : "");
  Input<T> q(B, H, Lq, d, pad, q_scale), k(B, H, Lk, d, pad, 1.0), v(B, H, Lk, d, pad, 1.0), dout(B, H, Lq, d, 0, 1.0);
  std::vector<uint8_t> mask(B * Lk + 1, 1);
  if (mask_kind == Mask::padded) {
    std::bernoulli_distribution keep(0.65);
    for (int64_t j = 0; j < Lk; ++j) mask[j] = keep(rng);
    for (int64_t b = 1; b < B; ++b)
      for (int64_t j = 0; j < Lk; ++j) mask[b * Lk + j] = b == 1 ? 0 : keep(rng);
    for (int64_t b = 0; b < B && poison_kind != Poison::none; ++b)
      if (b != 1) mask[b * Lk] = 1;  // every batch item but 1 attends to key 0
  }
  poison(poison_kind, q, k, v, mask, B, H, Lq, Lk, d);
  // Outputs start as NaN, or as a finite sentinel where NaN is an expected result.
  const T unwritten = store_as<T>(poison_kind == Poison::none ? NAN : 7777.f);
  const uint8_t* mask_ptr = mask_kind == Mask::padded ? mask.data() : nullptr;
  const double scale = 1.0 / std::sqrt(double(d));
  const int64_t BH = B * H;

  std::vector<T> out(BH * Lq * d + 1, unwritten);
  std::vector<float> lse(BH * Lq + 1, load(unwritten));
  Mirror<T> mq(q.data), mk(k.data), mv(v.data), mdo(dout.data), mout(out);
  Mirror<uint8_t> mmask(mask);
  Mirror<float> mlse(lse);

  AttentionForwardArgs f{};
  f.dtype = dtype_of<T>();
  f.batch = B, f.heads = H, f.q_len = Lq, f.kv_len = Lk, f.head_dim = d;
  f.q = mq.dev(), f.k = mk.dev(), f.v = mv.dev();
  f.q_strides = q.strides, f.k_strides = k.strides, f.v_strides = v.strides;
  f.key_padding_mask = mask_ptr ? mmask.dev() : nullptr;
  f.out = mout.dev();
  f.out_strides = HeadStrides{H * Lq * d, Lq * d, d};
  f.lse = mlse.dev();
  f.scale = float(scale);
  cuda::attention_forward(f, 0, nullptr);
  mout.fetch();
  mlse.fetch();

  reference::AttentionShape shape{B, H, Lq, Lk, d};
  std::vector<double> ref_out, ref_lse;
  reference::attention_forward(shape, q.dense, k.dense, v.dense, mask_ptr, scale, ref_out, ref_lse);
  record(std::string("attention_forward writes nothing past out, lse ") + tag,
         float_to_bits(load(out.back())) == float_to_bits(load(unwritten)) &&
             float_to_bits(lse.back()) == float_to_bits(load(unwritten)), "");
  compare(std::string("attention_forward out ") + tag, out.data(), ref_out, eps<T>());
  compare(std::string("attention_forward lse ") + tag, lse.data(), ref_lse, 1.1920929e-07);

  // Backward from the kernel's own O and lse, as in training.
  std::vector<T> dq(BH * Lq * d, unwritten), dk(BH * Lk * d, unwritten), dv(BH * Lk * d, unwritten);
  Mirror<T> mdq(dq), mdk(dk), mdv(dv);
  AttentionBackwardArgs g{};
  g.dtype = dtype_of<T>();
  g.batch = B, g.heads = H, g.q_len = Lq, g.kv_len = Lk, g.head_dim = d;
  g.q = mq.dev(), g.k = mk.dev(), g.v = mv.dev(), g.out = mout.dev(), g.dout = mdo.dev();
  g.q_strides = q.strides, g.k_strides = k.strides, g.v_strides = v.strides, g.out_strides = f.out_strides;
  g.dout_strides = dout.strides;
  g.key_padding_mask = f.key_padding_mask;
  g.lse = mlse.dev();
  g.dq = mdq.dev(), g.dk = mdk.dev(), g.dv = mdv.dev();
  g.scale = float(scale);
  cuda::attention_backward(g, 0, nullptr);
  mdq.fetch();
  mdk.fetch();
  mdv.fetch();
  std::vector<double> ref_dq, ref_dk, ref_dv;
  reference::attention_backward(shape, q.dense, k.dense, v.dense, dout.dense, mask_ptr, scale, ref_dq, ref_dk, ref_dv);
  // The kernel's D uses the stored (rounded) O: allow the bf16/f16 rounding of O on top.
  const double rel = std::is_same_v<T, float> ? eps<T>() : 2 * eps<T>();
  compare(std::string("attention_backward dq ") + tag, dq.data(), ref_dq, rel, 1.0);
  compare(std::string("attention_backward dk ") + tag, dk.data(), ref_dk, rel, 1.0);
  compare(std::string("attention_backward dv ") + tag, dv.data(), ref_dv, rel, 1.0);
}

void check_head_dim_limit() {
  AttentionForwardArgs f{};
  f.batch = f.heads = f.q_len = f.kv_len = 1;
  f.head_dim = cuda::kAttentionMaxHeadDim + 1;
  bool thrown = false;
  try {
    cuda::attention_forward(f, 0, nullptr);
  } catch (const std::invalid_argument& e) {
    thrown = std::string(e.what()).find("head_dim") != std::string::npos;
  }
  record("head_dim > 256 is refused with an error naming it", thrown, "");
}

#if !defined(DIFFRT_CUDA_SIM)
// Best of 10 runs (CUDA events) of forward and backward at a diffusion-UNet-like shape, as TFLOP/s over
// 4·B·H·Lq·Lk·d (forward) and 10·B·H·Lq·Lk·d (backward, P recomputed) FLOPs.
template <typename T>
void report_speed(int64_t B, int64_t H, int64_t L, int64_t d) {
  Input<T> q(B, H, L, d, 0, 1.0), k(B, H, L, d, 0, 1.0), v(B, H, L, d, 0, 1.0), dout(B, H, L, d, 0, 1.0);
  std::vector<T> out(B * H * L * d), dq(out.size()), dk(out.size()), dv(out.size());
  std::vector<float> lse(B * H * L);
  Mirror<T> mq(q.data), mk(k.data), mv(v.data), mdo(dout.data), mout(out), mdq(dq), mdk(dk), mdv(dv);
  Mirror<float> mlse(lse);
  const HeadStrides dense{H * L * d, L * d, d};
  AttentionForwardArgs f{dtype_of<T>(), B, H, L, L, d, mq.dev(), mk.dev(), mv.dev(), dense, dense, dense, nullptr,
                         mout.dev(), dense, mlse.dev(), float(1.0 / std::sqrt(double(d))), 0};
  AttentionBackwardArgs g{dtype_of<T>(), B, H, L, L, d, mq.dev(), mk.dev(), mv.dev(), mout.dev(), mdo.dev(),
                          dense, dense, dense, dense, dense, nullptr, mlse.dev(), mdq.dev(), mdk.dev(), mdv.dev(),
                          f.scale, 0};
  const double flops = double(B * H) * double(L) * double(L) * double(d);
  for (int pass = 0; pass < 2; ++pass) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    float best = 1e30f;
    for (int rep = 0; rep < 11; ++rep) {
      cudaEventRecord(start);
      if (pass == 0) cuda::attention_forward(f, 0, nullptr);
      else cuda::attention_backward(g, 0, nullptr);
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0.f;
      cudaEventElapsedTime(&ms, start, stop);
      if (rep) best = std::min(best, ms);  // the first run warms up
    }
    cuda::check(cudaGetLastError(), "check", "timed runs");
    std::printf("attention_%s %s B%ld H%ld L%ld d%ld  %9.1f us  %6.2f TFLOP/s\n", pass ? "backward" : "forward ",
                name_of<T>(), long(B), long(H), long(L), long(d), best * 1e3,
                (pass ? 10 : 4) * flops / (best * 1e-3) / 1e12);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
}
#endif

int run_checks() {
  const int64_t lens[] = {1, 7, 33, 70};
  const int64_t dims[] = {32, 40, 59, 64};
  // float32: every (Lq, Lk, d) of the grid with padded keys and a fully masked batch.
  for (int64_t Lq : lens)
    for (int64_t Lk : lens)
      for (int64_t d : dims) check_attention<float>(2, 2, Lq, Lk, d, Mask::padded);
  // Without a mask, strided inputs, a sharper softmax, the larger head-dim buckets.
  check_attention<float>(1, 3, 70, 33, 64, Mask::none);
  check_attention<float>(2, 1, 33, 70, 40, Mask::none, 3);
  check_attention<float>(2, 2, 70, 70, 59, Mask::padded, 5, 4.0);
  check_attention<float>(3, 1, 33, 70, 100, Mask::padded);
  check_attention<float>(1, 2, 70, 33, 128, Mask::none, 1);
  check_attention<float>(2, 1, 33, 20, 200, Mask::padded);
  check_attention<float>(1, 1, 7, 33, 256, Mask::none);
  // bfloat16 and float16 storage.
  for (int64_t d : {40, 64}) {
    check_attention<bf16>(2, 2, 7, 33, d, Mask::padded);
    check_attention<bf16>(2, 2, 70, 70, d, Mask::padded);
    check_attention<bf16>(1, 2, 33, 1, d, Mask::none, 2);
    check_attention<f16>(2, 2, 33, 7, d, Mask::padded);
    check_attention<f16>(2, 2, 70, 33, d, Mask::none);
    check_attention<f16>(2, 1, 1, 70, d, Mask::padded, 3);
  }
  check_attention<bf16>(2, 1, 33, 70, 96, Mask::padded);
  check_attention<f16>(2, 1, 70, 7, 160, Mask::padded);
  check_attention<bf16>(1, 1, 20, 9, 256, Mask::none);
  check_attention<f16>(2, 1, 9, 20, 256, Mask::padded);
  // No keys at all: zeros and lse = −inf.
  check_attention<float>(1, 2, 7, 0, 40, Mask::none);
  // NaN and ±inf at masked keys (no effect) and at attended ones (as torch's softmax), several key tiles.
  for (Poison kind : {Poison::masked, Poison::attended}) {
    check_attention<float>(3, 2, 7, 33, 40, Mask::padded, 0, 1.0, kind);
    check_attention<float>(3, 2, 33, 70, 64, Mask::padded, 2, 1.0, kind);
    check_attention<float>(3, 2, 9, 20, 160, Mask::padded, 0, 1.0, kind);
    check_attention<bf16>(3, 2, 33, 70, 40, Mask::padded, 0, 1.0, kind);
    check_attention<f16>(3, 2, 7, 33, 64, Mask::padded, 1, 1.0, kind);
  }
  check_attention<float>(3, 2, 33, 70, 40, Mask::none, 0, 1.0, Poison::attended);
  check_head_dim_limit();
#if defined(DIFFRT_CUDA_SIM)
  record("every workspace allocation freed", cuda_sim::live_allocations == 0,
         std::to_string(cuda_sim::live_allocations.load()) + " live");
#else
  report_speed<float>(2, 8, 4096, 64);
  report_speed<bf16>(2, 8, 4096, 64);
  report_speed<f16>(2, 8, 4096, 64);
  report_speed<bf16>(2, 10, 1024, 128);
#endif
  return harness::summary();
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
