// The CPU kernel table of the downsampling-conv conditioning (Imagen Editor): a strided conv over
// [image | mask] that writes its C output channels straight into a channel slice of a preallocated
// NCHW buffer (the UNet input [x_t | cond]). Compiled once per ISA like kernels.h's table;
// downsample_dispatch.cpp picks the table of cpu::active_isa().
#pragma once
#include <cstdint>

#include "common.h"
#include "cpu/kernels.h"

namespace diffrt {

// out[n, channel_offset + c, oy, ox] = bias[c] + Σ_{ci, ky, kx} weight[c, ci, ky, kx] · x[n, ci, oy·s − p + ky, ox·s − p + kx]
// with x = [image | mask] along channels and zero outside the image (padding p).
struct DownsampleCondArgs {
  DType dtype;                    // storage of image, mask, weight, bias and out; math in float32
  int64_t batch;                  // N
  int64_t image_channels;         // Ci (3 for RGB)
  int64_t mask_channels;          // Cm (1)
  int64_t height, width;          // H, W of image and mask
  const void* image;              // (N, Ci, H, W) dense
  const void* mask;               // (N or 1, Cm, H, W) dense
  int64_t mask_batch_stride;      // Cm·H·W, or 0 to use one mask for the whole batch
  const void* weight;             // (C, Ci + Cm, k, k) dense
  const void* bias;               // (C,) or nullptr
  int64_t out_channels;           // C
  int64_t kernel_size, stride, padding;
  int64_t out_height, out_width;  // H' = (H + 2p − k)/s + 1, W' likewise
  void* out;                      // base of an (N, C_total, H', W') buffer; each (H', W') plane dense
  int64_t out_batch_stride;       // elements between samples (C_total·H'·W' for a dense buffer)
  int64_t out_channel_stride;     // elements between channels (H'·W')
  int64_t channel_offset;         // first channel of the slice written
  int num_threads;
};

namespace cpu {

struct DownsampleKernels {
  void (*downsample_cond)(const DownsampleCondArgs&);
};

namespace scalar { extern const DownsampleKernels downsample_kernels; }
namespace avx2 { extern const DownsampleKernels downsample_kernels; }
namespace avx512 { extern const DownsampleKernels downsample_kernels; }
namespace avx512_bf16 { extern const DownsampleKernels downsample_kernels; }
namespace neon { extern const DownsampleKernels downsample_kernels; }
namespace neon_bf16 { extern const DownsampleKernels downsample_kernels; }

const DownsampleKernels& downsample_kernels();  // table of the active ISA

}  // namespace cpu
}  // namespace diffrt
