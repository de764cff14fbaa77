// Python bindings of the CUDA sampler kernels, registered by bindings.cpp in builds with CUDA.
// Same arguments as the CPU functions, with (device, stream) in place of num_threads: the tensors'
// device index and torch's current stream on it (torch.cuda.current_stream(device).cuda_stream).
// The calls only enqueue work, and release the GIL while they do.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "binding_args.h"
#include "cuda/kernels.h"

namespace py = pybind11;

namespace diffrt {
namespace {

using binding::cptr;
using binding::mptr;
using binding::require_per_sample;
cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

DType to_dtype(int code) {
  if (code != int(DType::f32) && code != int(DType::bf16) && code != int(DType::f16))
    throw std::invalid_argument("unsupported dtype code for the CUDA kernels");
  return DType(code);
}

void ddim_step(int dtype, int64_t batch, int64_t numel, uintptr_t sample, uintptr_t model, uintptr_t model_cond,
               uintptr_t noise, uintptr_t out, uintptr_t out_x0, const std::vector<double>& alpha_t,
               const std::vector<double>& alpha_prev, const std::vector<double>& guidance_scale, double eta,
               double guidance_rescale, int prediction, int clip, double clip_range, double dynamic_quantile,
               double dynamic_max, bool use_clipped_model_output, int device, uintptr_t stream) {
  const DdimStepArgs a = binding::ddim_step_args(to_dtype(dtype), batch, numel, sample, model, model_cond, noise, out,
                                                 out_x0, alpha_t, alpha_prev, guidance_scale, eta, guidance_rescale,
                                                 prediction, clip, clip_range, dynamic_quantile, dynamic_max,
                                                 use_clipped_model_output);
  cuda::ddim_step(a, device, as_stream(stream));
}

void cfg_combine(int dtype, int64_t batch, int64_t numel, uintptr_t uncond, uintptr_t cond, uintptr_t out,
                 const std::vector<double>& guidance_scale, double guidance_rescale, int device, uintptr_t stream) {
  require_per_sample(guidance_scale, batch, "guidance_scale");
  CfgCombineArgs a{to_dtype(dtype), batch, numel, cptr(uncond), cptr(cond), mptr(out),
                   guidance_scale.data(), guidance_rescale, 0};
  cuda::cfg_combine(a, device, as_stream(stream));
}

void mask_blend(int dtype, int64_t batch, int64_t channels, int64_t spatial, uintptr_t mask,
                int64_t mask_batch_stride, uintptr_t a_ptr, uintptr_t b_ptr, uintptr_t out, int device,
                uintptr_t stream) {
  MaskBlendArgs a{to_dtype(dtype), batch, channels, spatial, cptr(mask), mask_batch_stride,
                  cptr(a_ptr), cptr(b_ptr), mptr(out), 0};
  cuda::mask_blend(a, device, as_stream(stream));
}

void diffedit_mask(int dtype, int64_t batch, int64_t draws, int64_t channels, int64_t spatial, uintptr_t query,
                   uintptr_t ref, uintptr_t out, double clamp_ratio, double threshold, int device, uintptr_t stream) {
  DiffEditMaskArgs a{to_dtype(dtype), batch, draws, channels, spatial, cptr(query), cptr(ref),
                     static_cast<float*>(mptr(out)), clamp_ratio, threshold, 0};
  cuda::diffedit_mask(a, device, as_stream(stream));
}

}  // namespace

void bind_cuda_sampler(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("cuda_ddim_step", &ddim_step, nogil);
  m.def("cuda_cfg_combine", &cfg_combine, nogil);
  m.def("cuda_mask_blend", &mask_blend, nogil);
  m.def("cuda_diffedit_mask", &diffedit_mask, nogil);
}

}  // namespace diffrt
