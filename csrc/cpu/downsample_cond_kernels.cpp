// CPU kernel of downsample_cond: the strided conv of Imagen Editor's image+mask conditioning,
// written into a channel slice of the UNet input buffer. Compiled once per ISA (DIFFRT_ISA).
//
// The conv is an im2col GEMM per output row (n, oy):
//   patch[ox][K] = x[n, ci, oy·s − p + ky, ox·s − p + kx],   K = (ci, ky, kx), Ck² values (Ck = Ci + Cm)
//   acc[ox][c]   = bias[c] + Σ_K patch[ox][K] · wpack[K][c]
// For k = s the patches tile the image, so packing them reads every input element once; float32
// micro-tiles whose window lies inside the image skip the copy and read the image in place. The GEMM is
// 2·N·H'·W'·C·Ck² flops (1024→64, k = s = 16, C = 64: 0.54 GFLOP per image) against reading
// N·Ck·H·W input elements (16 MB in float32) and writing N·C·H'·W' (1 MB): compute-bound, so the
// register-blocked micro-kernel below (R pixels × NV vectors of channels, K blocked to stay in L1)
// is what sets the speed. All math in float32; bfloat16 is widened when packed and rounded on store.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/downsample_kernels.h"
#include "cpu/parallel.h"

#ifndef DIFFRT_ISA
#error "DIFFRT_ISA must name the instruction set this file is compiled for"
#endif

// Vector width and accumulator budget per ISA (32 zmm / 16 ymm / 32 NEON q / 16 xmm registers; the rest
// hold the weight vectors and the broadcast pixel).
#if defined(__AVX512F__)
#define DIFFRT_DS_LANES 16
#define DIFFRT_DS_ACC_REGS 24
#define DIFFRT_DS_MAX_NV 4
#define DIFFRT_DS_WIDE_REGISTER_FILE 1
#elif defined(__aarch64__)
#define DIFFRT_DS_LANES 4
#define DIFFRT_DS_ACC_REGS 24
#define DIFFRT_DS_MAX_NV 4
#define DIFFRT_DS_WIDE_REGISTER_FILE 1
#elif defined(__AVX2__)
#define DIFFRT_DS_LANES 8
#define DIFFRT_DS_ACC_REGS 12
#define DIFFRT_DS_MAX_NV 2
#else
#define DIFFRT_DS_LANES 4
#define DIFFRT_DS_ACC_REGS 12
#define DIFFRT_DS_MAX_NV 2
#endif

namespace diffrt::cpu::DIFFRT_ISA {
namespace {

constexpr int kLanes = DIFFRT_DS_LANES;
typedef float vfloat __attribute__((vector_size(DIFFRT_DS_LANES * sizeof(float))));
typedef float vfloat_unaligned __attribute__((vector_size(DIFFRT_DS_LANES * sizeof(float)), aligned(alignof(float))));

inline vfloat loadv(const float* p) { return *reinterpret_cast<const vfloat_unaligned*>(p); }
inline void storev(float* p, vfloat v) { *reinterpret_cast<vfloat_unaligned*>(p) = v; }

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], FreeDeleter>;

// Zeroed, 64-byte aligned scratch (cache-line aligned rows load without splits).
FloatBuffer zeroed_floats(int64_t n) {
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) & ~size_t(63);
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  std::fill(p, p + bytes / sizeof(float), 0.f);
  return FloatBuffer(p);
}

// acc[r][0 : NV·L] = init[r][0 : NV·L] + Σ_{j<nrows, kx<k} rows[j][offset + r·pixel_stride + kx] · w[j·k + kx][0 : NV·L]
// for R pixels. The A operand is addressed by source row (j: one (ci, ky) of the kernel window), so it
// is either the packed patch (pixel_stride K) or, for float32 pixels away from the border, the image
// itself (pixel_stride s: no copy at all). R·NV vector accumulators stay in registers; each (j, kx)
// costs NV vector loads, R broadcasts and R·NV FMAs. `init` is the bias row (init_stride 0) for the
// first chunk of K, else acc itself. PS is pixel_stride when known at compile time (0: the argument): then
// the R broadcasts of a step are constant offsets from one pointer, instead of R index registers that
// spill on AVX2's 16 general-purpose registers.
template <int R, int NV, int KW, int PS = 0>
inline void gemm_micro_kernel(const float* const* rows, int64_t offset, int64_t pixel_stride, int64_t nrows,
                              int64_t kernel_size, const float* w, const float* init, int64_t init_stride, float* acc,
                              int64_t acc_stride) {
  const int64_t k = KW ? KW : kernel_size;
  if constexpr (PS != 0) pixel_stride = PS;
  vfloat sum[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) sum[r][v] = loadv(init + r * init_stride + v * kLanes);
  for (int64_t j = 0; j < nrows; ++j) {
    const float* src = rows[j] + offset;
    // Unrolled only with 32 vector registers (AVX-512, aarch64): unrolling kx lets the compiler hoist the
    // next steps' loads, which spills an accumulator with 16 (R·NV + NV + 1 live values); 32 have room.
#if !defined(DIFFRT_DS_WIDE_REGISTER_FILE)
#pragma GCC unroll 1
#endif
    for (int64_t kx = 0; kx < k; ++kx, w += NV * kLanes) {
      vfloat wv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) wv[v] = loadv(w + v * kLanes);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const float x = src[r * pixel_stride + kx];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) sum[r][v] += x * wv[v];
      }
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) storev(acc + r * acc_stride + v * kLanes, sum[r][v]);
}

template <typename T>
const T* typed(const void* p) {
  return static_cast<const T*>(p);
}

template <typename T>
const T* input_plane(const DownsampleCondArgs& a, int64_t n, int64_t ci) {
  const int64_t HW = a.height * a.width;
  return ci < a.image_channels ? typed<T>(a.image) + (n * a.image_channels + ci) * HW
                               : typed<T>(a.mask) + n * a.mask_batch_stride + (ci - a.image_channels) * HW;
}

// Patches of pixels [ox_begin, ox_end) of one output row: patch[ox][(ci·k + ky)·k + kx], written
// in order (one pixel's K values after another: the patch is bigger than L1, and filling it column-wise
// would miss on every 64-byte store). KW is the kernel width when known at compile time (0: a.kernel_size),
// so that an interior patch row is one vector copy (k = 16: one 64-byte load and store in float32).
// The source lines of the pixel kPrefetchPixels ahead are requested now: a pixel reads Ck·k lines from
// as many image rows, more streams than the hardware prefetcher follows.
constexpr int64_t kPrefetchPixels = 4;

template <typename T, int KW>
void pack_patches(const DownsampleCondArgs& a, int64_t n, int64_t oy, int64_t ox_begin, int64_t ox_end, float* patch,
                  int64_t K) {
  const int64_t k = KW ? KW : a.kernel_size, s = a.stride, p = a.padding, H = a.height, W = a.width;
  const int64_t Ck = a.image_channels + a.mask_channels;
  for (int64_t ox = ox_begin; ox < ox_end; ++ox) {
    const int64_t ix0 = ox * s - p;
    const bool interior = ix0 >= 0 && ix0 + k <= W;
    float* dst = patch + ox * K;
    for (int64_t ci = 0; ci < Ck; ++ci) {
      const T* plane = input_plane<T>(a, n, ci);
      for (int64_t ky = 0; ky < k; ++ky, dst += k) {
        const int64_t iy = oy * s - p + ky;
        if (iy < 0 || iy >= H) {
          std::fill(dst, dst + k, 0.f);
          continue;
        }
        const T* row = plane + iy * W;
        if (interior) {
          __builtin_prefetch(row + ix0 + kPrefetchPixels * s, 0, 3);
#pragma omp simd
          for (int64_t kx = 0; kx < k; ++kx) dst[kx] = load(row[ix0 + kx]);
        } else {
          for (int64_t kx = 0; kx < k; ++kx) dst[kx] = (ix0 + kx >= 0 && ix0 + kx < W) ? load(row[ix0 + kx]) : 0.f;
        }
      }
    }
  }
}

#if defined(__AVX512F__)
// 16×16 transpose in registers: stage t swaps bit t of the row and the column index (4 stages of
// 16 two-source permutes, instead of 256 scalar loads and stores).
inline void transpose16(__m512 r[16]) {
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) {
    const int b = 1 << t;
    alignas(64) int lo[16], hi[16];
    for (int j = 0; j < 16; ++j) {
      lo[j] = (j & b) ? 16 + (j ^ b) : j;
      hi[j] = (j & b) ? 16 + j : (j | b);
    }
    const __m512i idx_lo = _mm512_load_si512(lo), idx_hi = _mm512_load_si512(hi);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 x = r[i], y = r[i | b];
      r[i] = _mm512_permutex2var_ps(x, idx_lo, y);
      r[i | b] = _mm512_permutex2var_ps(x, idx_hi, y);
    }
  }
}

template <typename T>
inline void store_pixels(T* dst, __m512 v, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    if (count == 16)
      _mm512_storeu_ps(dst, v);
    else
      _mm512_mask_storeu_ps(dst, __mmask16((1u << count) - 1), v);
  } else {
    alignas(64) float tmp[16];
    _mm512_store_ps(tmp, v);
    for (int64_t i = 0; i < count; ++i) dst[i] = store_as<T>(tmp[i]);
  }
}
#elif defined(__AVX2__)
// 8×8 transpose in registers: pairs of rows interleaved, then 64-bit pairs, then 128-bit halves.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const int b = 4 * h;
    u[b + 0] = _mm256_shuffle_ps(t[b + 0], t[b + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[b + 1] = _mm256_shuffle_ps(t[b + 0], t[b + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[b + 2] = _mm256_shuffle_ps(t[b + 1], t[b + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[b + 3] = _mm256_shuffle_ps(t[b + 1], t[b + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

template <typename T>
inline void store_pixels(T* dst, __m256 v, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    if (count == 8) return _mm256_storeu_ps(dst, v);
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int64_t i = 0; i < count; ++i) dst[i] = store_as<T>(tmp[i]);
}
#endif

// out[c][oy][ox] = acc[ox][c]: the (W', C) tile of one output row into the NCHW channel slice.
// acc has C_padded columns (a multiple of the vector width) and at least round_up(W', 16) rows.
template <typename T>
void store_row(const float* acc, int64_t C_padded, int64_t C, int64_t Wo, T* dst_row, int64_t channel_stride) {
#if defined(__AVX512F__) || defined(__AVX2__)
  // kTile × kTile blocks (pixels × channels) transposed in registers, stored as channel rows of pixels.
#if defined(__AVX512F__)
  constexpr int kTile = 16;
  using Tile = __m512;
  auto load_row = [](const float* p) { return _mm512_loadu_ps(p); };
  auto transpose = [](Tile* r) { transpose16(r); };
#else
  constexpr int kTile = 8;
  using Tile = __m256;
  auto load_row = [](const float* p) { return _mm256_loadu_ps(p); };
  auto transpose = [](Tile* r) { transpose8(r); };
#endif
  for (int64_t c0 = 0; c0 < C; c0 += kTile) {
    for (int64_t ox0 = 0; ox0 < Wo; ox0 += kTile) {
      Tile r[kTile];
#pragma GCC unroll 16
      for (int i = 0; i < kTile; ++i) r[i] = load_row(acc + (ox0 + i) * C_padded + c0);
      transpose(r);
      const int64_t channels = std::min<int64_t>(kTile, C - c0), pixels = std::min<int64_t>(kTile, Wo - ox0);
      for (int64_t j = 0; j < channels; ++j) store_pixels<T>(dst_row + (c0 + j) * channel_stride + ox0, r[j], pixels);
    }
  }
#else
  for (int64_t c = 0; c < C; ++c) {
    T* dst = dst_row + c * channel_stride;
    for (int64_t ox = 0; ox < Wo; ++ox) dst[ox] = store_as<T>(acc[ox * C_padded + c]);
  }
#endif
}

// Fetches the input rows the next output row will read into L2 while this row's GEMM runs: for
// k = 16 that is 64 rows of 4 KB scattered a whole image row apart, which the hardware prefetcher
// (it stops at page boundaries) would otherwise leave to demand misses.
template <typename T>
struct NextRowPrefetch {
  const DownsampleCondArgs& a;
  int64_t n = 0, oy = 0, next_source_row = 0, source_rows = 0;

  void start(int64_t row) {
    n = row / a.out_height;
    oy = row % a.out_height;
    next_source_row = 0;
    source_rows = (a.image_channels + a.mask_channels) * a.kernel_size;
  }
  // Prefetches source rows until `done` of `total` steps have requested their share.
  void advance(int64_t done, int64_t total) {
    const int64_t want = std::min(source_rows, (done * source_rows + total - 1) / total);
    for (; next_source_row < want; ++next_source_row) {
      const int64_t ci = next_source_row / a.kernel_size, ky = next_source_row % a.kernel_size;
      const int64_t iy = oy * a.stride - a.padding + ky;
      if (iy < 0 || iy >= a.height) continue;
      const char* row = reinterpret_cast<const char*>(input_plane<T>(a, n, ci) + iy * a.width);
      const int64_t bytes = a.width * int64_t(sizeof(T));
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
    }
  }
};

template <typename T, int NV, int KW>
void downsample_cond_blocked(const DownsampleCondArgs& a) {
  constexpr int R = DIFFRT_DS_ACC_REGS / NV;  // pixels per micro-tile
  constexpr int64_t kBlockC = int64_t(NV) * kLanes;  // channels per micro-tile
  const int64_t C = a.out_channels, k = a.kernel_size;
  const int64_t K = (a.image_channels + a.mask_channels) * k * k;
  const int64_t Wo = a.out_width, Wo_padded = (Wo + R - 1) / R * R;
  const int64_t acc_rows = std::max(Wo_padded, (Wo + 15) / 16 * 16);
  const int64_t channel_blocks = (C + kBlockC - 1) / kBlockC, C_padded = channel_blocks * kBlockC;
  // K chunk: whole source rows (ci, ky) of k values; the weight chunk (kc·kBlockC) and the row's A
  // operand chunk (W'·kc) together stay within ~32 KB of L1 while every micro-tile runs over them.
  const int64_t source_rows = (a.image_channels + a.mask_channels) * k;
  const int64_t kc_max = std::max<int64_t>(16, 8192 / (kBlockC + Wo_padded));
  const int64_t chunk_rows = std::max<int64_t>(1, kc_max / k);

  // wpack[block][K][kBlockC] = weight[block·kBlockC + j, K]; zero for the padding channels j ≥ C.
  FloatBuffer wpack = zeroed_floats(K * C_padded);
  const T* weight = typed<T>(a.weight);
  for (int64_t c = 0; c < C; ++c) {
    float* dst = wpack.get() + (c / kBlockC) * K * kBlockC + (c % kBlockC);
    for (int64_t i = 0; i < K; ++i) dst[i * kBlockC] = load(weight[c * K + i]);
  }
  FloatBuffer bias_row = zeroed_floats(C_padded);
  if (a.bias)
    for (int64_t c = 0; c < C; ++c) bias_row[c] = load(typed<T>(a.bias)[c]);

  const int64_t rows = a.batch * a.out_height;
  const int64_t macs = rows * Wo * C * K;
  const int nt = int(std::min<int64_t>(rows, macs < (int64_t(1) << 20) ? 1 : std::max(1, a.num_threads)));
  T* out = static_cast<T*>(a.out);
  const int64_t s = a.stride, p = a.padding, tiles = Wo_padded / R;
  const int64_t steps = (source_rows + chunk_rows - 1) / chunk_rows * channel_blocks * tiles;  // calls per row
  // A float32 micro-tile reads the image in place when its whole window lies inside the image.
  auto tile_inside_columns = [&](int64_t ox) { return ox + R <= Wo && ox * s - p >= 0 && (ox + R - 1) * s - p + k <= a.width; };

  parallel_region(rows, nt, [&](DynamicItems& work) {
    int64_t row;
    if (!work.claim(row)) return;  // the work is gone: no scratch
    FloatBuffer patch = zeroed_floats(Wo_padded * K);
    FloatBuffer acc = zeroed_floats(acc_rows * C_padded);
    std::unique_ptr<const float*[]> patch_rows(new const float*[source_rows]);
    std::unique_ptr<const float*[]> image_rows(new const float*[source_rows]);
    for (int64_t q = 0; q < source_rows; ++q) patch_rows[q] = patch.get() + q * k;
    NextRowPrefetch<T> prefetch{a};
    // Rows handed out one at a time: on a shared machine a descheduled thread must not hold back a
    // static share (rows are tens of microseconds each, so the hand-out costs nothing). A thread then
    // tends to get rows t, t + nt, ..., which is the row it prefetches.
    do {
      const int64_t n = row / a.out_height, oy = row % a.out_height;
      const bool direct_row = std::is_same_v<T, float> && oy * s - p >= 0 && oy * s - p + k <= a.height;
      if (direct_row) {
        for (int64_t q = 0; q < source_rows; ++q)
          image_rows[q] = reinterpret_cast<const float*>(input_plane<T>(a, n, q / k)) + (oy * s - p + q % k) * a.width - p;
      }
      for (int64_t ox = 0; ox < Wo_padded; ox += R)
        if (!(direct_row && tile_inside_columns(ox))) pack_patches<T, KW>(a, n, oy, ox, std::min(ox + R, Wo), patch.get(), K);
      prefetch.start(std::min(row + nt, rows - 1));
      int64_t step = 0;
      for (int64_t q0 = 0; q0 < source_rows; q0 += chunk_rows) {
        const int64_t nrows = std::min(chunk_rows, source_rows - q0);
        for (int64_t b = 0; b < channel_blocks; ++b) {
          const float* w = wpack.get() + b * K * kBlockC + q0 * k * kBlockC;
          for (int64_t ox = 0; ox < Wo_padded; ox += R) {
            float* tile = acc.get() + ox * C_padded + b * kBlockC;
            const float* init = q0 == 0 ? bias_row.get() + b * kBlockC : tile;
            const int64_t init_stride = q0 == 0 ? 0 : C_padded;
            if (direct_row && tile_inside_columns(ox) && KW != 0 && s == KW)  // k = s: the patches tile the image
              gemm_micro_kernel<R, NV, KW, KW>(image_rows.get() + q0, ox * s, s, nrows, k, w, init, init_stride, tile,
                                               C_padded);
            else if (direct_row && tile_inside_columns(ox))
              gemm_micro_kernel<R, NV, KW>(image_rows.get() + q0, ox * s, s, nrows, k, w, init, init_stride, tile, C_padded);
            else
              gemm_micro_kernel<R, NV, KW>(patch_rows.get() + q0, ox * K, K, nrows, k, w, init, init_stride, tile, C_padded);
            prefetch.advance(++step, steps);
          }
        }
      }
      store_row<T>(acc.get(), C_padded, C, Wo,
                   out + n * a.out_batch_stride + a.channel_offset * a.out_channel_stride + oy * Wo,
                   a.out_channel_stride);
    } while (work.claim(row));
  });
}

// Common kernel widths get a compile-time copy width in the patch packing.
template <typename T, int NV>
void downsample_cond_for_width(const DownsampleCondArgs& a) {
  switch (a.kernel_size) {
    case 2: return downsample_cond_blocked<T, NV, 2>(a);
    case 4: return downsample_cond_blocked<T, NV, 4>(a);
    case 8: return downsample_cond_blocked<T, NV, 8>(a);
    case 16: return downsample_cond_blocked<T, NV, 16>(a);
    default: return downsample_cond_blocked<T, NV, 0>(a);
  }
}

template <typename T>
void downsample_cond_typed(const DownsampleCondArgs& a) {
  // As many channel vectors per micro-tile as C fills (fewer means less padding work, more pixels).
  const int64_t vectors = (a.out_channels + kLanes - 1) / kLanes;
  switch (std::min<int64_t>(vectors, DIFFRT_DS_MAX_NV)) {
    case 1: return downsample_cond_for_width<T, 1>(a);
#if DIFFRT_DS_MAX_NV >= 4
    case 3: return downsample_cond_for_width<T, 3>(a);
    case 4: return downsample_cond_for_width<T, 4>(a);
#endif
    default: return downsample_cond_for_width<T, 2>(a);
  }
}

// No input channels: every output is the empty sum, bias[c] (or 0).
template <typename T>
void bias_only(const DownsampleCondArgs& a) {
  T* out = static_cast<T*>(a.out);
  const int64_t plane = a.out_height * a.out_width;
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t c = 0; c < a.out_channels; ++c) {
      const T value = a.bias ? typed<T>(a.bias)[c] : store_as<T>(0.f);
      std::fill_n(out + n * a.out_batch_stride + (a.channel_offset + c) * a.out_channel_stride, plane, value);
    }
}

void downsample_cond(const DownsampleCondArgs& a) {
  if (a.batch <= 0 || a.out_channels <= 0 || a.out_height <= 0 || a.out_width <= 0) return;
  const bool no_inputs = a.image_channels + a.mask_channels <= 0;
  if (a.dtype == DType::bf16)
    no_inputs ? bias_only<bf16>(a) : downsample_cond_typed<bf16>(a);
  else
    no_inputs ? bias_only<float>(a) : downsample_cond_typed<float>(a);
}

}  // namespace

extern const DownsampleKernels downsample_kernels{downsample_cond};

}  // namespace diffrt::cpu::DIFFRT_ISA
