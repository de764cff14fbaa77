// Picks the downsample_cond kernel table of the active ISA (chosen once in isa.cpp).
#include "cpu/downsample_kernels.h"

namespace diffrt::cpu {

const DownsampleKernels& downsample_kernels() {
  switch (active_isa()) {
#if defined(__aarch64__)
    case Isa::neon: return neon::downsample_kernels;
#if defined(DIFFRT_WITH_NEON_BF16)
    case Isa::neon_bf16: return neon_bf16::downsample_kernels;
#endif
#else
    case Isa::avx512: return avx512::downsample_kernels;
    case Isa::avx512_bf16: return avx512_bf16::downsample_kernels;
    case Isa::avx2: return avx2::downsample_kernels;
#endif
    default: return scalar::downsample_kernels;
  }
}

}  // namespace diffrt::cpu
