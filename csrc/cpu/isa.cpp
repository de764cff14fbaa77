// Run-time instruction-set dispatch: on x86-64 CPUID (with the OS's XSAVE state check) picks the widest
// kernel table the CPU can run; on aarch64 that is neon (Advanced SIMD is part of the base architecture), or
// neon_bf16 where the OS reports the BF16 extension (Linux: HWCAP2_BF16; macOS: hw.optional.arm.FEAT_BF16).
// DIFFRT_CPU_ISA (x86-64: scalar|avx2|avx512|avx512_bf16, aarch64: scalar|neon|neon_bf16) or set_active_isa() lowers it
// (a bad DIFFRT_CPU_ISA falls back to the widest, with a warning: isa_env_warning()).
#include <atomic>
#include <cstdlib>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace diffrt::cpu {

namespace {
// The kernel sets CMakeLists.txt compiles for this architecture, narrowest first; an ISA can run when
// it comes no later in this list than best_supported_isa().
#if defined(__aarch64__) && defined(DIFFRT_WITH_NEON_BF16)  // CMakeLists.txt: when the compiler has +bf16
constexpr Isa kCompiledIsas[] = {Isa::scalar, Isa::neon, Isa::neon_bf16};
#elif defined(__aarch64__)
constexpr Isa kCompiledIsas[] = {Isa::scalar, Isa::neon};
#else
constexpr Isa kCompiledIsas[] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512_bf16};
#endif

int rank(Isa isa) {  // position in kCompiledIsas, −1 for another architecture's ISA
  for (int i = 0; i < int(std::size(kCompiledIsas)); ++i)
    if (kCompiledIsas[i] == isa) return i;
  return -1;
}

bool can_run(Isa isa) { return rank(isa) >= 0 && rank(isa) <= rank(best_supported_isa()); }

// "scalar, avx2, avx512", or with last = " or ": "scalar, avx2 or avx512"
std::string joined(const std::vector<std::string>& names, const char* last = ", ") {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i == 0 ? "" : i + 1 == names.size() ? last : ", ") + names[i];
  return s;
}
}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::neon: return "neon";
    case Isa::neon_bf16: return "neon_bf16";
    default: return "scalar";
  }
}

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (Isa isa : kCompiledIsas) names.emplace_back(isa_name(isa));
  return names;
}

namespace {
// Whether the OS reports the Armv8.6 BF16 extension (BFDOT, BFMMLA, BFCVT) for this CPU.
[[maybe_unused]] bool cpu_has_arm_bf16() {
#if defined(__aarch64__) && defined(__linux__)
  constexpr unsigned long kHwcap2Bf16 = 1ul << 14;  // HWCAP2_BF16 of <asm/hwcap.h>
  return (getauxval(AT_HWCAP2) & kHwcap2Bf16) != 0;
#elif defined(__aarch64__) && defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_BF16", &value, &size, nullptr, 0) == 0 && value != 0;
#else
  return false;
#endif
}
}  // namespace

Isa best_supported_isa() {
#if defined(__aarch64__)
  // Advanced SIMD is mandatory in AArch64 (Linux, macOS and Windows all require it).
  return rank(Isa::neon_bf16) >= 0 && cpu_has_arm_bf16() ? Isa::neon_bf16 : Isa::neon;
#elif defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::avx512_bf16 : Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::scalar;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : kCompiledIsas)
    if (can_run(isa)) names.emplace_back(isa_name(isa));
  return names;
}

Isa parse_isa(const std::string& name) {  // only this architecture's names
  for (Isa isa : kCompiledIsas)
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (expected " + joined(compiled_isas(), " or ") + ")");
}

namespace {
std::string g_env_warning;  // written once, by the first active_isa() (at import), before any reader

// DIFFRT_CPU_ISA lowers the choice; a value that names no ISA, or one this CPU cannot run, must not
// stop diffrt from importing (python -m diffrt.info is how one finds out what went wrong): the best
// supported ISA runs instead and isa_env_warning() says why, for the bindings to raise as a RuntimeWarning.
Isa initial_isa() {
  const Isa best = best_supported_isa();
  const char* env = std::getenv("DIFFRT_CPU_ISA");
  if (!env || !*env) return best;
  const std::string value(env);
  const std::string fallback = std::string("; using ") + isa_name(best) + ", the best this CPU supports";
  Isa requested;
  try {
    requested = parse_isa(value);
  } catch (const std::invalid_argument&) {
    g_env_warning = "DIFFRT_CPU_ISA='" + value + "' names no CPU instruction set (valid: " + joined(compiled_isas()) +
                    ")" + fallback;
    return best;
  }
  if (!can_run(requested)) {
    g_env_warning = "DIFFRT_CPU_ISA='" + value + "' cannot run on this CPU (valid: " + joined(compiled_isas()) +
                    "; this CPU supports " + joined(supported_isas()) + ")" + fallback;
    return best;
  }
  return requested;
}
// Resolved on first use (not during static initialisation), once the bindings can report a warning.
std::atomic<int> g_active{-1};
}  // namespace

const std::string& isa_env_warning() {
  active_isa();
  return g_env_warning;
}

Isa active_isa() {
  int isa = g_active.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = int(initial_isa());
    g_active.store(isa, std::memory_order_relaxed);
  }
  return Isa(isa);
}

void set_active_isa(Isa isa) {
  if (!can_run(isa))
    throw std::invalid_argument(std::string("this CPU cannot run the ") + isa_name(isa) + " kernels (best: " +
                                isa_name(best_supported_isa()) + ")");
  g_active.store(int(isa), std::memory_order_relaxed);
}

const SamplerKernels& sampler_kernels() {
  switch (active_isa()) {
#if defined(__aarch64__)
    case Isa::neon: return neon::sampler_kernels;
#if defined(DIFFRT_WITH_NEON_BF16)
    case Isa::neon_bf16: return neon_bf16::sampler_kernels;
#endif
#else
    case Isa::avx512: return avx512::sampler_kernels;
    case Isa::avx512_bf16: return avx512_bf16::sampler_kernels;
    case Isa::avx2: return avx2::sampler_kernels;
#endif
    default: return scalar::sampler_kernels;
  }
}

}  // namespace diffrt::cpu
