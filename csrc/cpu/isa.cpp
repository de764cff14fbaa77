// Run-time instruction-set dispatch: CPUID (with the OS's XSAVE state check) picks the widest
// kernel table the CPU can run; DIFFRT_CPU_ISA=scalar|avx2|avx512 or set_active_isa() lowers it.
#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "cpu/kernels.h"

namespace diffrt::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa best_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16"))
    return Isa::avx512;
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
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (expected scalar, avx2 or avx512)");
}

namespace {
Isa initial_isa() {
  Isa best = best_supported_isa();
  if (const char* env = std::getenv("DIFFRT_CPU_ISA"); env && *env) {
    Isa requested = parse_isa(env);
    if (int(requested) > int(best))
      throw std::invalid_argument(std::string("DIFFRT_CPU_ISA=") + env + " but this CPU supports at most " +
                                  isa_name(best));
    return requested;
  }
  return best;
}
// Resolved on first use (not during static initialisation) so a bad DIFFRT_CPU_ISA raises a
// catchable error at import instead of terminating the process.
std::atomic<int> g_active{-1};
}  // namespace

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
    case Isa::avx2: return avx2::sampler_kernels;
    default: return scalar::sampler_kernels;
  }
}

}  // namespace diffrt::cpu
