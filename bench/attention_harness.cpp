// Stand-alone check-and-time harness for the CPU attention kernel (no Python, no torch): it #includes the
// production source for one ISA, checks it against a plain double-precision reference on a small case,
// then times forward and backward on the shape given on the command line. Build, from the repo root:
//
//   g++ -O3 -std=gnu++17 -fopenmp-simd -pthread -Icsrc -DDIFFRT_ISA=avx512_bf16 -mavx2 -mfma -mf16c -mavx512f \
//       -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mprefer-vector-width=512 bench/attention_harness.cpp \
//       csrc/cpu/thread_pool.cpp -o attention_harness
//   ./attention_harness BH Lq Lk d bf16(0|1) threads [reps]      e.g.  ./attention_harness 16 4096 4096 64 1 2
//
// (The other variants take their flags from CMakeLists.txt's DIFFRT_ISA_FLAGS_<arch>_<isa>.)
#include "cpu/attention_kernels.cpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>

#define DIFFRT_STR_(x) #x
#define DIFFRT_STR(x) DIFFRT_STR_(x)

namespace {

using namespace diffrt;
const cpu::AttentionKernels& kernels = cpu::DIFFRT_ISA::attention_kernels;

struct Problem {
  int64_t bh, lq, lk, d;
  bool is_bf16;
  std::vector<float> q, k, v, dout;  // float32 values (already rounded to bfloat16 when bf16)
  std::vector<uint16_t> qb, kb, vb, doutb;
  Problem(int64_t bh_, int64_t lq_, int64_t lk_, int64_t d_, bool bf, unsigned seed)
      : bh(bh_), lq(lq_), lk(lk_), d(d_), is_bf16(bf) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    auto fill = [&](std::vector<float>& x, std::vector<uint16_t>& xb, int64_t n) {
      x.resize(n);
      xb.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        x[i] = normal(gen);
        xb[i] = to_bf16(x[i]).bits;
        if (bf) x[i] = load(diffrt::bf16{xb[i]});
      }
    };
    fill(q, qb, bh * lq * d);
    fill(k, kb, bh * lk * d);
    fill(v, vb, bh * lk * d);
    fill(dout, doutb, bh * lq * d);
  }
  const void* ptr(const std::vector<float>& x, const std::vector<uint16_t>& xb) const {
    return is_bf16 ? static_cast<const void*>(xb.data()) : static_cast<const void*>(x.data());
  }
};

AttentionForwardArgs forward_args(const Problem& p, void* out, float* lse, int threads) {
  AttentionForwardArgs a{};
  a.dtype = p.is_bf16 ? DType::bf16 : DType::f32;
  a.batch = 1, a.heads = p.bh, a.q_len = p.lq, a.kv_len = p.lk, a.head_dim = p.d;
  a.q = p.ptr(p.q, p.qb), a.k = p.ptr(p.k, p.kb), a.v = p.ptr(p.v, p.vb);
  a.q_strides = a.out_strides = {p.bh * p.lq * p.d, p.lq * p.d, p.d};
  a.k_strides = a.v_strides = {p.bh * p.lk * p.d, p.lk * p.d, p.d};
  a.out = out, a.lse = lse, a.scale = float(1.0 / std::sqrt(double(p.d))), a.num_threads = threads;
  return a;
}

// out = softmax(scale·q·kᵀ)·v in double, one head at a time.
std::vector<double> reference(const Problem& p) {
  std::vector<double> out(p.bh * p.lq * p.d, 0.0), s(p.lk);
  const double scale = 1.0 / std::sqrt(double(p.d));
  for (int64_t h = 0; h < p.bh; ++h)
    for (int64_t i = 0; i < p.lq; ++i) {
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < p.lk; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < p.d; ++c) acc += double(p.q[(h * p.lq + i) * p.d + c]) * p.k[(h * p.lk + j) * p.d + c];
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      for (int64_t j = 0; j < p.lk; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int64_t j = 0; j < p.lk; ++j)
        for (int64_t c = 0; c < p.d; ++c) out[(h * p.lq + i) * p.d + c] += s[j] / sum * p.v[(h * p.lk + j) * p.d + c];
    }
  return out;
}

bool check(int64_t lq, int64_t lk, int64_t d, bool bf) {
  Problem p(2, lq, lk, d, bf, 1);
  std::vector<float> out(p.bh * lq * d);
  std::vector<uint16_t> outb(out.size());
  kernels.forward(forward_args(p, bf ? static_cast<void*>(outb.data()) : out.data(), nullptr, 2));
  const std::vector<double> ref = reference(p);
  double err = 0, vmax = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = bf ? load(bf16{outb[i]}) : out[i];
    err = std::max(err, std::abs(o - ref[i]));
  }
  for (float x : p.v) vmax = std::max(vmax, double(std::abs(x)));
  // float32: a few eps; bfloat16: the output's own rounding (2^-8 relative) plus P rounded to bfloat16.
  const double tol = (bf ? 0x1p-8 : 16 * 0x1p-23) * vmax;
  std::printf("check %-4s Lq=%-4lld Lk=%-4lld d=%-3lld max|err| %.3g (tol %.3g) %s\n", bf ? "bf16" : "f32",
              (long long)lq, (long long)lk, (long long)d, err, tol, err <= tol ? "ok" : "FAIL");
  return err <= tol;
}

template <typename F>
double best_seconds(int reps, F&& fn) {
  fn();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  bool ok = true;
  for (bool bf : {false, true})
    for (auto [lq, lk, d] : {std::array<int64_t, 3>{97, 77, 40}, {130, 300, 64}, {7, 1025, 59}})
      ok = check(lq, lk, d, bf) && ok;
  if (argc < 7) {
    std::printf("usage: %s BH Lq Lk d bf16 threads [reps]\n", argv[0]);
    return ok ? 0 : 1;
  }
  const Problem p(atoll(argv[1]), atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), atoi(argv[5]) != 0, 2u);
  const int threads = atoi(argv[6]), reps = argc > 7 ? atoi(argv[7]) : 3;
  std::vector<float> out(p.bh * p.lq * p.d), lse(p.bh * p.lq), dq(out.size()), dk(p.bh * p.lk * p.d), dv(dk.size());
  std::vector<uint16_t> outb(out.size()), dqb(out.size()), dkb(dk.size()), dvb(dk.size());
  auto pick = [&](std::vector<float>& f, std::vector<uint16_t>& b) {
    return p.is_bf16 ? static_cast<void*>(b.data()) : static_cast<void*>(f.data());
  };
  const AttentionForwardArgs fa = forward_args(p, pick(out, outb), lse.data(), threads);
  const double flops = 4.0 * p.bh * p.lq * p.lk * p.d;
  const double tf = best_seconds(reps, [&] { kernels.forward(fa); });
  AttentionBackwardArgs ba{};
  ba.dtype = fa.dtype, ba.batch = 1, ba.heads = p.bh, ba.q_len = p.lq, ba.kv_len = p.lk, ba.head_dim = p.d;
  ba.q = fa.q, ba.k = fa.k, ba.v = fa.v, ba.out = fa.out, ba.dout = p.ptr(p.dout, p.doutb);
  ba.q_strides = ba.out_strides = ba.dout_strides = fa.q_strides;
  ba.k_strides = ba.v_strides = fa.k_strides;
  ba.lse = lse.data(), ba.dq = pick(dq, dqb), ba.dk = pick(dk, dkb), ba.dv = pick(dv, dvb);
  ba.scale = fa.scale, ba.num_threads = threads;
  const double tb = best_seconds(reps, [&] { kernels.backward(ba); });
  std::printf("%s (BH=%lld, Lq=%lld, Lk=%lld, d=%lld) %s, %d threads: forward %.1f GFLOP/s (%.2f ms), "
              "backward %.1f GFLOP/s (%.2f ms)\n", DIFFRT_STR(DIFFRT_ISA), (long long)p.bh, (long long)p.lq,
              (long long)p.lk, (long long)p.d, p.is_bf16 ? "bf16" : "f32", threads, flops / tf / 1e9, tf * 1e3,
              2.5 * flops / tb / 1e9, tb * 1e3);
  return ok ? 0 : 1;
}
