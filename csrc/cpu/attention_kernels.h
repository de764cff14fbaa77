// The CPU attention kernel table, one per instruction set (like SamplerKernels in kernels.h);
// attention_dispatch.cpp returns the table of the ISA that cpu::active_isa() selects.
#pragma once
#include "attention.h"

namespace diffrt::cpu {

struct AttentionKernels {
  void (*forward)(const AttentionForwardArgs&);
  void (*backward)(const AttentionBackwardArgs&);
  bool bf16_dot_product;  // bfloat16 runs on _mm512_dpbf16_ps / vbfdotq_f32 (else it is converted to float32)
};

namespace scalar { extern const AttentionKernels attention_kernels; }
namespace avx2 { extern const AttentionKernels attention_kernels; }
namespace avx512 { extern const AttentionKernels attention_kernels; }
namespace avx512_bf16 { extern const AttentionKernels attention_kernels; }
namespace neon { extern const AttentionKernels attention_kernels; }
namespace neon_bf16 { extern const AttentionKernels attention_kernels; }

const AttentionKernels& attention_kernels();  // table of the active ISA

}  // namespace diffrt::cpu
