// diffrt._C: the only file that knows about Python. Tensors arrive as raw data pointers (ints)
// plus sizes; python/diffrt/ops validates them first. Every kernel call releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "binding_args.h"
#include "cpu/kernels.h"
#include "ops.h"

namespace py = pybind11;
using namespace diffrt;

#if defined(DIFFRT_WITH_CUDA)
namespace diffrt::cuda {
int device_count();
std::string runtime_version();
}  // namespace diffrt::cuda
namespace diffrt {
void bind_cuda_sampler(py::module_& m);  // csrc/cuda/bindings_cuda.cpp
}  // namespace diffrt
#endif

void bind_attention(py::module_& m);

namespace {

using binding::cptr;
using binding::mptr;
using binding::require_per_sample;

DType to_dtype(int code) {
  if (code != int(DType::f32) && code != int(DType::bf16)) throw std::invalid_argument("unsupported dtype code");
  return DType(code);
}

void ddim_step(int dtype, int64_t batch, int64_t numel, uintptr_t sample, uintptr_t model, uintptr_t model_cond,
               uintptr_t noise, uintptr_t out, uintptr_t out_x0, const std::vector<double>& alpha_t,
               const std::vector<double>& alpha_prev, const std::vector<double>& guidance_scale, double eta,
               double guidance_rescale, int prediction, int clip, double clip_range, double dynamic_quantile,
               double dynamic_max, bool use_clipped_model_output, int num_threads) {
  DdimStepArgs a = binding::ddim_step_args(to_dtype(dtype), batch, numel, sample, model, model_cond, noise, out, out_x0,
                                           alpha_t, alpha_prev, guidance_scale, eta, guidance_rescale, prediction,
                                           clip, clip_range, dynamic_quantile, dynamic_max, use_clipped_model_output);
  a.num_threads = num_threads;
  cpu::sampler_kernels().ddim_step(a);
}

void cfg_combine(int dtype, int64_t batch, int64_t numel, uintptr_t uncond, uintptr_t cond, uintptr_t out,
                 const std::vector<double>& guidance_scale, double guidance_rescale, int num_threads) {
  require_per_sample(guidance_scale, batch, "guidance_scale");
  CfgCombineArgs a{to_dtype(dtype), batch, numel, cptr(uncond), cptr(cond), mptr(out),
                   guidance_scale.data(), guidance_rescale, num_threads};
  cpu::sampler_kernels().cfg_combine(a);
}

void mask_blend(int dtype, int64_t batch, int64_t channels, int64_t spatial, uintptr_t mask,
                int64_t mask_batch_stride, uintptr_t a_ptr, uintptr_t b_ptr, uintptr_t out, int num_threads) {
  MaskBlendArgs a{to_dtype(dtype), batch, channels, spatial, cptr(mask), mask_batch_stride,
                  cptr(a_ptr), cptr(b_ptr), mptr(out), num_threads};
  cpu::sampler_kernels().mask_blend(a);
}

void diffedit_mask(int dtype, int64_t batch, int64_t draws, int64_t channels, int64_t spatial, uintptr_t query,
                   uintptr_t ref, uintptr_t out, double clamp_ratio, double threshold, int num_threads) {
  DiffEditMaskArgs a{to_dtype(dtype), batch, draws, channels, spatial, cptr(query), cptr(ref),
                     static_cast<float*>(mptr(out)), clamp_ratio, threshold, num_threads};
  cpu::sampler_kernels().diffedit_mask(a);
}

py::dict build_info() {
  py::dict d;
  d["version"] = DIFFRT_VERSION;
  d["compiler"] = __VERSION__;
  d["cxx_flags"] = DIFFRT_CXX_FLAGS;
  d["openmp"] = _OPENMP;
  d["isas_compiled"] = std::vector<std::string>{"scalar", "avx2", "avx512"};
#if defined(DIFFRT_WITH_CUDA)
  d["cuda"] = true;
  d["cuda_runtime"] = diffrt::cuda::runtime_version();
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace

void bind_downsample(py::module_& m);  // bindings_downsample.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "diffrt compiled kernels (framework-free; called through diffrt.ops)";
  m.attr("__version__") = DIFFRT_VERSION;
  // Resolve the ISA now: a bad DIFFRT_CPU_ISA falls back to the best supported ISA with a RuntimeWarning
  // (an error only where warnings are errors), so that diffrt — and diffrt.info — still import.
  if (const std::string& warning = cpu::isa_env_warning(); !warning.empty())
    if (PyErr_WarnEx(PyExc_RuntimeWarning, warning.c_str(), 1) != 0) throw py::error_already_set();

  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("ddim_step", &ddim_step, nogil);
  m.def("cfg_combine", &cfg_combine, nogil);
  m.def("mask_blend", &mask_blend, nogil);
  m.def("diffedit_mask", &diffedit_mask, nogil);

  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The instruction set whose CPU kernels run now.");
  m.def("set_cpu_isa", [](const std::string& name) { cpu::set_active_isa(cpu::parse_isa(name)); },
        py::arg("name"), "Select the CPU kernels (scalar, avx2, avx512); raises if this CPU cannot run them.");
  m.def("supported_cpu_isas", &cpu::supported_isas, "Instruction sets this CPU can run, narrowest first.");
  m.def("cpu_isa_env_warning", [] { return cpu::isa_env_warning(); },
        "Why DIFFRT_CPU_ISA was ignored at import (empty when it was not set, or honoured).");
  m.def("omp_max_threads", [] { return omp_get_max_threads(); });
  m.def("build_info", &build_info);
#if defined(DIFFRT_WITH_CUDA)
  m.def("cuda_device_count", [] { return diffrt::cuda::device_count(); }, nogil);
  bind_cuda_sampler(m);
#endif
  bind_attention(m);
  bind_downsample(m);
}
