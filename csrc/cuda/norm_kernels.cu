// CUDA kernels of group_norm (+ SiLU), layer_norm, geglu, timestep_embedding and timestep_mlp (csrc/norm.h, whose
// per-element math and NormMoments merge they share with the CPU kernels). Storage float32, bfloat16 or float16;
// math float32.
//
// Geometry: group_norm and layer_norm run one block per (sample, group) or row (blockIdx.y, looping when
// there are more than the grid holds). Each thread keeps Welford moments of its strided elements
// (stable for any mean), the block merges them by Chan's formula in a fixed tree order (deterministic),
// then the same block normalises the elements: x is read twice (the second time mostly from L2) and y
// written once. geglu is elementwise over (row, element) with a 2-D grid. timestep_mlp: one warp per output
// feature of each layer (see mlp_linear_kernel).
#include <cstdint>
#include <stdexcept>

#include "cuda/launch.h"
#include "norm.h"

namespace diffrt::cuda {
namespace {

constexpr int kThreads = 256;
#ifndef DIFFRT_CUDA_MAX_ROW_BLOCKS  // the simulation lowers it, to run the row loops on small batches
#define DIFFRT_CUDA_MAX_ROW_BLOCKS 65535  // CUDA's limit on gridDim.y
#endif
constexpr int64_t kMaxGridY = DIFFRT_CUDA_MAX_ROW_BLOCKS;
constexpr int64_t kMaxBlocksPerRow = 1024;

dim3 rows_grid(int64_t rows) { return dim3(1, unsigned(rows < kMaxGridY ? rows : kMaxGridY)); }

// The block's moments of one (per-thread) Welford state each, merged pairwise in shared memory; the total
// is returned to every thread. blockDim.x must be kThreads (a power of two).
__device__ NormMoments block_moments(NormMoments m) {
  __shared__ NormMoments shared[kThreads];
  const int t = threadIdx.x;
  shared[t] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) shared[t].merge(shared[t + s]);
    __syncthreads();
  }
  const NormMoments total = shared[0];
  __syncthreads();  // shared may be reused by the next row
  return total;
}

// Welford's update: n += 1, δ = v − mean, mean += δ/n, M2 += δ·(v − mean).
struct Welford {
  float n = 0.f, mean = 0.f, m2 = 0.f;
  __device__ void add(float v) {
    n += 1.f;
    const float d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  __device__ NormMoments moments() const { return NormMoments{double(n), double(mean), double(m2)}; }
};

// Element i of group (n, g), i over its (C/G)·HW elements: its offset in x and its channel.
template <bool kChannelsLast>
__device__ __forceinline__ void group_element(int64_t n, int64_t g, int64_t i, int64_t C, int64_t cg, int64_t HW,
                                              int64_t* offset, int64_t* channel) {
  if constexpr (kChannelsLast) {  // (N, HW, C): pixel i / cg, channel g·cg + i % cg
    const int64_t p = i / cg, j = i - p * cg;
    *channel = g * cg + j;
    *offset = (n * HW + p) * C + *channel;
  } else {  // (N, C, HW): the group is one contiguous span
    *channel = g * cg + i / HW;
    *offset = (n * C + g * cg) * HW + i;
  }
}

template <typename T, bool kSilu, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
group_norm_kernel(const T* x, const float* weight, const float* bias, T* out, int64_t N, int64_t C, int64_t HW,
                  int64_t G, double eps) {
  const int64_t cg = C / G, len = cg * HW;
  for (int64_t r = blockIdx.y; r < N * G; r += gridDim.y) {
    const int64_t n = r / G, g = r - n * G;
    Welford w;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      int64_t o, c;
      group_element<kChannelsLast>(n, g, i, C, cg, HW, &o, &c);
      w.add(load(x[o]));
    }
    const NormMoments m = block_moments(w.moments());
    const float mean = float(m.mean), rstd = norm_rstd(m, eps);
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      int64_t o, c;
      group_element<kChannelsLast>(n, g, i, C, cg, HW, &o, &c);
      const float s = rstd * (weight ? weight[c] : 1.f), t = bias ? bias[c] : 0.f;
      float v = (load(x[o]) - mean) * s + t;
      if constexpr (kSilu) v = silu_element(v);
      out[o] = store_as<T>(v);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
layer_norm_kernel(const T* x, const float* weight, const float* bias, T* out, int64_t rows, int64_t dim,
                  double eps) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* row = x + r * dim;
    Welford w;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) w.add(load(row[i]));
    const NormMoments m = block_moments(w.moments());
    const float mean = float(m.mean), rstd = norm_rstd(m, eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = (load(row[i]) - mean) * rstd;
      out[r * dim + i] = store_as<T>(v * (weight ? weight[i] : 1.f) + (bias ? bias[i] : 0.f));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
geglu_kernel(const T* x, T* out, int64_t rows, int64_t dim) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* a = x + r * 2 * dim;
    const T* g = a + dim;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < dim; i += int64_t(gridDim.x) * blockDim.x)
      out[r * dim + i] = store_as<T>(load(a[i]) * gelu_element(load(g[i])));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
timestep_embedding_kernel(TimestepEmbeddingArgs a) {
  const int64_t total = a.batch * a.dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / a.dim;
    static_cast<T*>(a.out)[i] = store_as<T>(float(timestep_embedding_element(a, a.timesteps[n], i - n * a.dim)));
  }
}

// timestep_mlp's sinusoid into float32 scratch (batch × in_dim), grid-stride.
__global__ void __launch_bounds__(kThreads)
mlp_sinusoid_kernel(TimestepEmbeddingArgs e, float* emb) {
  const int64_t total = e.batch * e.dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / e.dim;
    emb[i] = float(timestep_embedding_element(e, e.timesteps[n], i - n * e.dim));
  }
}

constexpr int kWarp = 32, kWarpsPerBlock = kThreads / kWarp;

// y[n, j] = act(Σ_k w[j, k]·x[n, k] + bias[j]) for every batch row n: one warp per output feature j (its lanes
// stride over k, so a warp reads its weight row coalesced, once per batch row — later rows from L1/L2), the lane
// sums merged by a fixed xor-shuffle tree. Every lane of a warp shares j, so the shuffles see the whole warp.
template <typename W, bool kSilu, typename Out>
__global__ void __launch_bounds__(kThreads)
mlp_linear_kernel(const W* w, const W* bias, const float* x, Out* y, int64_t batch, int64_t K, int64_t rows) {
  const int lane = int(threadIdx.x % kWarp);
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t j = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; j < rows; j += warps) {
    const W* row = w + j * K;
    const float b = bias ? load(bias[j]) : 0.f;
    for (int64_t n = 0; n < batch; ++n) {
      float sum = 0.f;
      for (int64_t k = lane; k < K; k += kWarp) sum += load(row[k]) * x[n * K + k];
      for (int s = kWarp / 2; s > 0; s /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, s);
      if (lane == 0) {
        float v = sum + b;
        if constexpr (kSilu) v = silu_element(v);
        y[n * rows + j] = store_as<Out>(v);
      }
    }
  }
}

template <typename F>
void with_dtype(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::bf16: return fn(bf16{});
    case DType::f16: return fn(f16{});
  }
  throw std::invalid_argument("the CUDA norm kernels store float32, bfloat16 or float16");
}

}  // namespace

void group_norm(const GroupNormArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.channels <= 0 || a.spatial <= 0) return;
  if (a.groups <= 0 || a.channels % a.groups != 0) throw std::invalid_argument("group_norm: groups must divide channels");
  DeviceGuard guard(device, "group_norm");
  with_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_flag(a.silu, [&](auto ks) {
      with_flag(a.channels_last, [&](auto kc) {
        launch("group_norm", group_norm_kernel<T, decltype(ks)::value, decltype(kc)::value>,
               rows_grid(a.batch * a.groups), dim3(kThreads), stream, in<T>(a.x), a.weight, a.bias, out_ptr<T>(a.out),
               a.batch, a.channels, a.spatial, a.groups, a.eps);
      });
    });
  });
}

void layer_norm(const LayerNormArgs& a, int device, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0) return;
  DeviceGuard guard(device, "layer_norm");
  with_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch("layer_norm", layer_norm_kernel<T>, rows_grid(a.rows), dim3(kThreads), stream, in<T>(a.x), a.weight,
           a.bias, out_ptr<T>(a.out), a.rows, a.dim, a.eps);
  });
}

void geglu(const GegluArgs& a, int device, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0) return;
  DeviceGuard guard(device, "geglu");
  int64_t bx = (a.dim + kThreads - 1) / kThreads;
  bx = bx > kMaxBlocksPerRow ? kMaxBlocksPerRow : bx;
  const dim3 grid(unsigned(bx), unsigned(a.rows < kMaxGridY ? a.rows : kMaxGridY));
  with_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch("geglu", geglu_kernel<T>, grid, dim3(kThreads), stream, in<T>(a.x), out_ptr<T>(a.out), a.rows, a.dim);
  });
}

}  // namespace diffrt::cuda

namespace diffrt::cuda {

// a.timesteps must be device memory here (diffrt.ops passes a float64 tensor on the output's device).
void timestep_embedding(const TimestepEmbeddingArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.dim <= 0) return;
  DeviceGuard guard(device, "timestep_embedding");
  const int64_t total = a.batch * a.dim;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  blocks = blocks > kMaxBlocksPerRow ? kMaxBlocksPerRow : blocks;
  with_dtype(a.dtype, [&](auto tag) {
    launch("timestep_embedding", timestep_embedding_kernel<decltype(tag)>, dim3(unsigned(blocks)), dim3(kThreads),
           stream, a);
  });
}

}  // namespace diffrt::cuda

namespace diffrt::cuda {

// Three launches on one stream: the sinusoid, W1 + b1 → SiLU into float32 scratch h, then W2 + b2 into out.
// a.timesteps must be device memory (diffrt.ops passes a float64 tensor on the weights' device).
void timestep_mlp(const TimestepMlpArgs& a, int device, cudaStream_t stream) {
  if (a.batch <= 0 || a.out_dim <= 0) return;
  const char* op = "timestep_mlp";
  DeviceGuard guard(device, op);
  const int64_t B = a.batch, K = a.in_dim, H = a.hidden_dim, O = a.out_dim;
  Workspace ws(Workspace::aligned(size_t(B * K) * sizeof(float)) + Workspace::aligned(size_t(B * H) * sizeof(float)),
               stream, op);
  float* emb = ws.take<float>(size_t(B * K));
  float* hidden = ws.take<float>(size_t(B * H));
  auto capped = [](int64_t blocks) { return dim3(unsigned(blocks < kMaxBlocksPerRow ? blocks : kMaxBlocksPerRow)); };
  launch(op, mlp_sinusoid_kernel, capped((B * K + kThreads - 1) / kThreads), dim3(kThreads), stream, mlp_sinusoid(a),
         emb);
  with_dtype(a.dtype, [&](auto tag) {
    using W = decltype(tag);
    const W* w1 = in<W>(a.weight_1);
    const W* b1 = in<W>(a.bias_1);
    const W* w2 = in<W>(a.weight_2);
    const W* b2 = in<W>(a.bias_2);
    const float* e = emb;
    const float* h = hidden;
    launch(op, mlp_linear_kernel<W, true, float>, capped((H + kWarpsPerBlock - 1) / kWarpsPerBlock), dim3(kThreads),
           stream, w1, b1, e, hidden, B, K, H);
    launch(op, mlp_linear_kernel<W, false, W>, capped((O + kWarpsPerBlock - 1) / kWarpsPerBlock), dim3(kThreads),
           stream, w2, b2, h, out_ptr<W>(a.out), B, H, O);
  });
}

}  // namespace diffrt::cuda
