// The CPU kernel table. csrc/cpu/*_kernels.cpp are compiled once per instruction set of the target
// architecture (x86-64: scalar, avx2, avx512, avx512_bf16; aarch64: scalar, neon, neon_bf16; see CMakeLists.txt),
// each into its own namespace, and isa.cpp picks the best table the running CPU supports.
#pragma once
#include <string>
#include <vector>

#include "ops.h"

// DIFFRT_ISA_IS(name): whether this translation unit is the `name` kernel set (DIFFRT_ISA=name), for the
// choices the compiler's feature macros cannot make (aarch64's scalar and neon sets both see __ARM_NEON).
#define DIFFRT_ISA_ID_scalar 1
#define DIFFRT_ISA_ID_avx2 2
#define DIFFRT_ISA_ID_avx512 3
#define DIFFRT_ISA_ID_avx512_bf16 4
#define DIFFRT_ISA_ID_neon 5
#define DIFFRT_ISA_ID_neon_bf16 6
#define DIFFRT_ISA_PASTE_(a, b) a##b
#define DIFFRT_ISA_PASTE(a, b) DIFFRT_ISA_PASTE_(a, b)
#define DIFFRT_ISA_IS(name) (DIFFRT_ISA_PASTE(DIFFRT_ISA_ID_, DIFFRT_ISA) == DIFFRT_ISA_ID_##name)

namespace diffrt::cpu {

struct SamplerKernels {
  void (*ddim_step)(const DdimStepArgs&);
  void (*cfg_combine)(const CfgCombineArgs&);
  void (*mask_blend)(const MaskBlendArgs&);
  void (*diffedit_mask)(const DiffEditMaskArgs&);
  void (*euler_step)(const EulerStepArgs&);
  void (*dpm_solver_2m_step)(const DpmSolver2mStepArgs&);
};

// Values are names only: which ISAs exist, and their order, is per architecture (compiled_isas()).
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3, avx512_bf16 = 4, neon_bf16 = 5 };

namespace scalar { extern const SamplerKernels sampler_kernels; }
namespace avx2 { extern const SamplerKernels sampler_kernels; }
namespace avx512 { extern const SamplerKernels sampler_kernels; }
namespace avx512_bf16 { extern const SamplerKernels sampler_kernels; }
namespace neon { extern const SamplerKernels sampler_kernels; }
namespace neon_bf16 { extern const SamplerKernels sampler_kernels; }

const char* isa_name(Isa isa);
std::vector<std::string> compiled_isas();  // this architecture's kernel sets, narrowest first
Isa best_supported_isa();         // what this CPU (and OS) can run
std::vector<std::string> supported_isas();  // compiled_isas() up to best_supported_isa()
Isa active_isa();                 // best_supported_isa(), or DIFFRT_CPU_ISA, or set_active_isa()
const std::string& isa_env_warning();  // why DIFFRT_CPU_ISA was ignored (bad or unsupported value), or ""
void set_active_isa(Isa isa);     // throws std::invalid_argument if the CPU cannot run it
Isa parse_isa(const std::string& name);  // throws std::invalid_argument
const SamplerKernels& sampler_kernels();  // table of the active ISA

}  // namespace diffrt::cpu
