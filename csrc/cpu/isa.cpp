// Run-time instruction-set dispatch: CPUID (with the OS's XSAVE state check) picks the widest
// kernel table the CPU can run; DIFFRT_CPU_ISA=scalar|avx2|avx512|avx512_bf16 or set_active_isa() lowers it
// (a bad DIFFRT_CPU_ISA falls back to the widest, with a warning: isa_env_warning()).
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace diffrt::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa best_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
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
  for (int i = 0; i <= int(best_supported_isa()); ++i) names.emplace_back(isa_name(Isa(i)));
  return names;
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  if (name == "avx512_bf16") return Isa::avx512_bf16;
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (expected scalar, avx2, avx512 or avx512_bf16)");
}

namespace {
std::string g_env_warning;  // written once, by the first active_isa() (at import), before any reader

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

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
    g_env_warning = "DIFFRT_CPU_ISA='" + value + "' names no CPU instruction set (valid: scalar, avx2, avx512, avx512_bf16)" + fallback;
    return best;
  }
  if (int(requested) > int(best)) {
    g_env_warning = "DIFFRT_CPU_ISA='" + value + "' cannot run on this CPU (valid: scalar, avx2, avx512, avx512_bf16; this CPU "
                    "supports " + joined(supported_isas()) + ")" + fallback;
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
  if (int(isa) > int(best_supported_isa()))
    throw std::invalid_argument(std::string("this CPU cannot run the ") + isa_name(isa) + " kernels (best: " +
                                isa_name(best_supported_isa()) + ")");
  g_active.store(int(isa), std::memory_order_relaxed);
}

const SamplerKernels& sampler_kernels() {
  switch (active_isa()) {
    case Isa::avx512: return avx512::sampler_kernels;
    case Isa::avx512_bf16: return avx512_bf16::sampler_kernels;
    case Isa::avx2: return avx2::sampler_kernels;
    default: return scalar::sampler_kernels;
  }
}

}  // namespace diffrt::cpu
