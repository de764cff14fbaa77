// Picks the attention kernel table of the active ISA (the selector lives beside isa.cpp's).
#include "cpu/attention_kernels.h"
#include "cpu/kernels.h"

namespace diffrt::cpu {

const AttentionKernels& attention_kernels() {
  switch (active_isa()) {
#if defined(__aarch64__)
    case Isa::neon: return neon::attention_kernels;
#if defined(DIFFRT_WITH_NEON_BF16)
    case Isa::neon_bf16: return neon_bf16::attention_kernels;
#endif
#else
    case Isa::avx512: return avx512::attention_kernels;
    case Isa::avx512_bf16: return avx512_bf16::attention_kernels;
    case Isa::avx2: return avx2::attention_kernels;
#endif
    default: return scalar::attention_kernels;
  }
}

}  // namespace diffrt::cpu
