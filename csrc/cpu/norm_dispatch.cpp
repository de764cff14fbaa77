// Picks the norm kernel table of the active ISA (chosen once in isa.cpp).
#include "cpu/kernels.h"
#include "norm.h"

namespace diffrt::cpu {

const NormKernels& norm_kernels() {
  switch (active_isa()) {
#if defined(__aarch64__)
    case Isa::neon: return neon::norm_kernels;
#if defined(DIFFRT_WITH_NEON_BF16)
    case Isa::neon_bf16: return neon_bf16::norm_kernels;
#endif
#else
    case Isa::avx512: return avx512::norm_kernels;
    case Isa::avx512_bf16: return avx512_bf16::norm_kernels;
    case Isa::avx2: return avx2::norm_kernels;
#endif
    default: return scalar::norm_kernels;
  }
}

}  // namespace diffrt::cpu
