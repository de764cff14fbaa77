// diffrt._C: the only code that knows about Python (with fields.h). Each kernel takes its argument struct
// (csrc/ops.h, csrc/attention.h, csrc/cpu/downsample_kernels.h) as a Python object whose fields are set
// by name (`args = _C.DdimStepArgs(); args.eta = 0.0; ...`); python/diffrt/ops validates the tensors
// first. The CPU entries `_C.<op>(args, num_threads)` and, in builds with CUDA, `_C.cuda_<op>(args,
// device, stream)` release the GIL while the kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>


#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bindings/fields.h"
#include "cpu/attention_kernels.h"
#include "cpu/downsample_kernels.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "cuda/attention_kernels.h"  // kAttentionMaxHeadDim; declarations only, no CUDA header
#include "norm.h"
#include "ops.h"
#if defined(DIFFRT_WITH_CUDA)
#include "cuda/kernels.h"
#endif

namespace py = pybind11;

#if defined(DIFFRT_WITH_CUDA)
namespace diffrt::cuda {
int device_count();  // cuda/runtime.cu
std::string runtime_version();
}  // namespace diffrt::cuda
#endif

namespace diffrt::binding {

// ---- one table per argument struct: every member once, in the struct's order ------------------------

template <>
struct Spec<DdimStepArgs> {
  using S = DdimStepArgs;
  static constexpr const char* name = "DdimStepArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, numel, required),
            DIFFRT_FIELD(S, sample, required),
            DIFFRT_FIELD(S, model, required),
            DIFFRT_FIELD(S, model_cond, optional),
            DIFFRT_FIELD(S, noise, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, out_x0, optional),
            DIFFRT_PER_SAMPLE(S, alpha_t, required, 0),
            DIFFRT_PER_SAMPLE(S, alpha_prev, required, 1),
            DIFFRT_PER_SAMPLE(S, guidance_scale, optional, 2),
            DIFFRT_FIELD(S, eta, required),
            DIFFRT_FIELD(S, guidance_rescale, required),
            DIFFRT_FIELD(S, prediction, required),
            DIFFRT_FIELD(S, clip, required),
            DIFFRT_FIELD(S, clip_range, required),
            DIFFRT_FIELD(S, dynamic_quantile, required),
            DIFFRT_FIELD(S, dynamic_max, required),
            DIFFRT_FIELD(S, use_clipped_model_output, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) {
    check_dtype("ddim_step", a.dtype, device);
    if (a.model_cond && !a.guidance_scale)
      throw std::invalid_argument("DdimStepArgs.guidance_scale must hold one value per sample when model_cond is set");
  }
};

template <>
struct Spec<CfgCombineArgs> {
  using S = CfgCombineArgs;
  static constexpr const char* name = "CfgCombineArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, numel, required),
            DIFFRT_FIELD(S, uncond, required),
            DIFFRT_FIELD(S, cond, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_PER_SAMPLE(S, guidance_scale, required, 0),
            DIFFRT_FIELD(S, guidance_rescale, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("cfg_combine", a.dtype, device); }
};

template <>
struct Spec<MaskBlendArgs> {
  using S = MaskBlendArgs;
  static constexpr const char* name = "MaskBlendArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, channels, required),
            DIFFRT_FIELD(S, spatial, required),
            DIFFRT_FIELD(S, mask, required),
            DIFFRT_FIELD(S, mask_batch_stride, required),
            DIFFRT_FIELD(S, a, required),
            DIFFRT_FIELD(S, b, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("mask_blend", a.dtype, device); }
};

template <>
struct Spec<DiffEditMaskArgs> {
  using S = DiffEditMaskArgs;
  static constexpr const char* name = "DiffEditMaskArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, draws, required),
            DIFFRT_FIELD(S, channels, required),
            DIFFRT_FIELD(S, spatial, required),
            DIFFRT_FIELD(S, eps_query, required),
            DIFFRT_FIELD(S, eps_ref, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, clamp_ratio, required),
            DIFFRT_FIELD(S, threshold, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("diffedit_mask", a.dtype, device); }
};

template <>
struct Spec<EulerStepArgs> {
  using S = EulerStepArgs;
  static constexpr const char* name = "EulerStepArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, numel, required),
            DIFFRT_FIELD(S, sample, required),
            DIFFRT_FIELD(S, model, required),
            DIFFRT_FIELD(S, noise, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, out_x0, optional),
            DIFFRT_PER_SAMPLE(S, sigma, required, 0),
            DIFFRT_PER_SAMPLE(S, sigma_next, required, 1),
            DIFFRT_FIELD(S, prediction, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("euler_step", a.dtype, device); }
};

template <>
struct Spec<DpmSolver2mStepArgs> {
  using S = DpmSolver2mStepArgs;
  static constexpr const char* name = "DpmSolver2mStepArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, numel, required),
            DIFFRT_FIELD(S, sample, required),
            DIFFRT_FIELD(S, model, required),
            DIFFRT_FIELD(S, x0_last, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, out_x0, optional),
            DIFFRT_PER_SAMPLE(S, sigma, required, 0),
            DIFFRT_PER_SAMPLE(S, sigma_next, required, 1),
            DIFFRT_PER_SAMPLE(S, sigma_last, optional, 2),
            DIFFRT_FIELD(S, prediction, required),
            DIFFRT_FIELD(S, heun, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) {
    check_dtype("dpm_solver_2m_step", a.dtype, device);
    if (a.x0_last && !a.sigma_last)
      throw std::invalid_argument("DpmSolver2mStepArgs.sigma_last must hold one value per sample when x0_last is set");
  }
};

template <>
struct Spec<AttentionForwardArgs> {
  using S = AttentionForwardArgs;
  static constexpr const char* name = "AttentionForwardArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, heads, required),
            DIFFRT_FIELD(S, q_len, required),
            DIFFRT_FIELD(S, kv_len, required),
            DIFFRT_FIELD(S, head_dim, required),
            DIFFRT_FIELD(S, q, required),
            DIFFRT_FIELD(S, k, required),
            DIFFRT_FIELD(S, v, required),
            DIFFRT_FIELD(S, q_strides, required),
            DIFFRT_FIELD(S, k_strides, required),
            DIFFRT_FIELD(S, v_strides, required),
            DIFFRT_FIELD(S, key_padding_mask, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, out_strides, required),
            DIFFRT_FIELD(S, lse, optional),
            DIFFRT_FIELD(S, scale, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("attention_forward", a.dtype, device); }
};

template <>
struct Spec<AttentionBackwardArgs> {
  using S = AttentionBackwardArgs;
  static constexpr const char* name = "AttentionBackwardArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, heads, required),
            DIFFRT_FIELD(S, q_len, required),
            DIFFRT_FIELD(S, kv_len, required),
            DIFFRT_FIELD(S, head_dim, required),
            DIFFRT_FIELD(S, q, required),
            DIFFRT_FIELD(S, k, required),
            DIFFRT_FIELD(S, v, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, dout, required),
            DIFFRT_FIELD(S, q_strides, required),
            DIFFRT_FIELD(S, k_strides, required),
            DIFFRT_FIELD(S, v_strides, required),
            DIFFRT_FIELD(S, out_strides, required),
            DIFFRT_FIELD(S, dout_strides, required),
            DIFFRT_FIELD(S, key_padding_mask, optional),
            DIFFRT_FIELD(S, lse, required),
            DIFFRT_FIELD(S, dq, required),
            DIFFRT_FIELD(S, dk, required),
            DIFFRT_FIELD(S, dv, required),
            DIFFRT_FIELD(S, scale, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) {
    check_dtype("attention_backward", a.dtype, device);
    if (!a.lse) throw std::invalid_argument("AttentionBackwardArgs.lse: attention_backward needs the forward's lse");
  }
};

template <>
struct Spec<DownsampleCondArgs> {
  using S = DownsampleCondArgs;
  static constexpr const char* name = "DownsampleCondArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, image_channels, required),
            DIFFRT_FIELD(S, mask_channels, required),
            DIFFRT_FIELD(S, height, required),
            DIFFRT_FIELD(S, width, required),
            DIFFRT_FIELD(S, image, required),
            DIFFRT_FIELD(S, mask, required),
            DIFFRT_FIELD(S, mask_batch_stride, required),
            DIFFRT_FIELD(S, weight, required),
            DIFFRT_FIELD(S, bias, optional),
            DIFFRT_FIELD(S, out_channels, required),
            DIFFRT_FIELD(S, kernel_size, required),
            DIFFRT_FIELD(S, stride, required),
            DIFFRT_FIELD(S, padding, required),
            DIFFRT_FIELD(S, out_height, derived),
            DIFFRT_FIELD(S, out_width, derived),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, out_batch_stride, required),
            DIFFRT_FIELD(S, out_channel_stride, required),
            DIFFRT_FIELD(S, channel_offset, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) {
    check_dtype("downsample_cond", a.dtype, device);
    if (a.kernel_size < 1 || a.stride < 1 || a.padding < 0 || a.height + 2 * a.padding < a.kernel_size ||
        a.width + 2 * a.padding < a.kernel_size)
      throw std::invalid_argument("DownsampleCondArgs: kernel_size, stride and padding do not fit the image");
    a.out_height = (a.height + 2 * a.padding - a.kernel_size) / a.stride + 1;  // H' = ⌊(H + 2p − k)/s⌋ + 1
    a.out_width = (a.width + 2 * a.padding - a.kernel_size) / a.stride + 1;
  }
};

// ---- normalisation and activation kernels (csrc/norm.h) ------------------------------------------------

template <>
struct Spec<GroupNormArgs> {
  using S = GroupNormArgs;
  static constexpr const char* name = "GroupNormArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, channels, required),
            DIFFRT_FIELD(S, spatial, required),
            DIFFRT_FIELD(S, groups, required),
            DIFFRT_FIELD(S, channels_last, required),
            DIFFRT_FIELD(S, x, required),
            DIFFRT_FIELD(S, weight, optional),
            DIFFRT_FIELD(S, bias, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, eps, required),
            DIFFRT_FIELD(S, silu, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) {
    check_dtype("group_norm", a.dtype, device);
    if (a.groups < 1 || a.channels % a.groups != 0)
      throw std::invalid_argument("GroupNormArgs.groups must be >= 1 and divide channels (" +
                                  std::to_string(a.channels) + "), got " + std::to_string(a.groups));
  }
};

template <>
struct Spec<LayerNormArgs> {
  using S = LayerNormArgs;
  static constexpr const char* name = "LayerNormArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, rows, required),
            DIFFRT_FIELD(S, dim, required),
            DIFFRT_FIELD(S, x, required),
            DIFFRT_FIELD(S, weight, optional),
            DIFFRT_FIELD(S, bias, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, eps, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("layer_norm", a.dtype, device); }
};

template <>
struct Spec<GegluArgs> {
  using S = GegluArgs;
  static constexpr const char* name = "GegluArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, rows, required),
            DIFFRT_FIELD(S, dim, required),
            DIFFRT_FIELD(S, x, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("geglu", a.dtype, device); }
};

template <>
struct Spec<TimestepEmbeddingArgs> {
  using S = TimestepEmbeddingArgs;
  static constexpr const char* name = "TimestepEmbeddingArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, dim, required),
            DIFFRT_FIELD(S, timesteps, required),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, flip_sin_to_cos, required),
            DIFFRT_FIELD(S, downscale_freq_shift, required),
            DIFFRT_FIELD(S, scale, required),
            DIFFRT_FIELD(S, max_period, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  static void complete(S& a, Device device) { check_dtype("timestep_embedding", a.dtype, device); }
};

template <>
struct Spec<TimestepMlpArgs> {
  using S = TimestepMlpArgs;
  static constexpr const char* name = "TimestepMlpArgs";
  static std::vector<Field<S>> fields() {
    return {DIFFRT_FIELD(S, dtype, required),
            DIFFRT_FIELD(S, batch, required),
            DIFFRT_FIELD(S, in_dim, required),
            DIFFRT_FIELD(S, hidden_dim, required),
            DIFFRT_FIELD(S, out_dim, required),
            DIFFRT_FIELD(S, timesteps, required),
            DIFFRT_FIELD(S, weight_1, required),
            DIFFRT_FIELD(S, bias_1, optional),
            DIFFRT_FIELD(S, weight_2, required),
            DIFFRT_FIELD(S, bias_2, optional),
            DIFFRT_FIELD(S, out, required),
            DIFFRT_FIELD(S, flip_sin_to_cos, required),
            DIFFRT_FIELD(S, downscale_freq_shift, required),
            DIFFRT_FIELD(S, scale, required),
            DIFFRT_FIELD(S, max_period, required),
            DIFFRT_FIELD(S, num_threads, launch)};
  }
  // The weights are only read (converted on load): float16 is accepted on the CPU too.
  static void complete(S& a, Device) {
    if (a.dtype != DType::f32 && a.dtype != DType::bf16 && a.dtype != DType::f16)
      throw std::invalid_argument("timestep_mlp: the kernels do not take dtype code " + std::to_string(int(a.dtype)));
    if (a.in_dim < 1 || a.hidden_dim < 1 || a.out_dim < 1)
      throw std::invalid_argument("TimestepMlpArgs.in_dim, hidden_dim and out_dim must be >= 1, got " +
                                  std::to_string(a.in_dim) + ", " + std::to_string(a.hidden_dim) + ", " +
                                  std::to_string(a.out_dim));
  }
};

void cpu_group_norm(const GroupNormArgs& a) { cpu::norm_kernels().group_norm(a); }
void cpu_layer_norm(const LayerNormArgs& a) { cpu::norm_kernels().layer_norm(a); }
void cpu_geglu(const GegluArgs& a) { cpu::norm_kernels().geglu(a); }
void cpu_timestep_embedding(const TimestepEmbeddingArgs& a) { cpu::norm_kernels().timestep_embedding(a); }
void cpu_timestep_mlp(const TimestepMlpArgs& a) { cpu::norm_kernels().timestep_mlp(a); }

// ---- end of the normalisation block ---------------------------------------------------------------------

#if defined(DIFFRT_WITH_CUDA)
// `_C.cuda_<name>(args, device, stream)`: the CUDA kernel on the tensors' device and torch's current stream
// there (torch.cuda.current_stream(device).cuda_stream); it only enqueues the work, without the GIL.
template <typename S, void (*Run)(const S&, int, cudaStream_t)>
PyObject* cuda_entry(PyObject* name, PyObject* const* argv, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    expect_args(name, nargs, 3, "(args, device, stream)");
    KernelCall<S> call;
    prepare(bound_of<S>(argv[0]), 0, Device::cuda, call);
    const int device = int_arg(argv[1], "device");
    cudaStream_t stream = Convert<CUstream_st*>::from(argv[2]);
    {
      py::gil_scoped_release nogil;
      Run(call.args, device, stream);
    }
    Py_RETURN_NONE;
  });
}

template <typename S, void (*Run)(const S&, int, cudaStream_t)>
void def_cuda_kernel(py::module_& m, const char* name, const char* doc) {
  static PyMethodDef def{name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cuda_entry<S, Run>)),
                         METH_FASTCALL, doc};
  add_function(m, &def);
}
#endif

// `_C.echo(args, num_threads)`: the fields of whichever struct `args` is.
template <typename... S>
PyObject* echo_any(PyObject* name, PyObject* const* argv, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    expect_args(name, nargs, 2, "(args, num_threads)");
    const int num_threads = int_arg(argv[1], "num_threads");
    py::object out;
    ((Py_TYPE(argv[0]) == type_of<S>() ? void(out = echo<S>(bound_of<S>(argv[0]), num_threads)) : void()), ...);
    if (!out)
      throw py::type_error(std::string("echo: expected an argument struct of diffrt._C, got ") + Py_TYPE(argv[0])->tp_name);
    return out.release().ptr();
  });
}

// The CPU kernel tables of the active ISA (chosen at run time).
void cpu_ddim_step(const DdimStepArgs& a) { cpu::sampler_kernels().ddim_step(a); }
void cpu_cfg_combine(const CfgCombineArgs& a) { cpu::sampler_kernels().cfg_combine(a); }
void cpu_mask_blend(const MaskBlendArgs& a) { cpu::sampler_kernels().mask_blend(a); }
void cpu_diffedit_mask(const DiffEditMaskArgs& a) { cpu::sampler_kernels().diffedit_mask(a); }
void cpu_euler_step(const EulerStepArgs& a) { cpu::sampler_kernels().euler_step(a); }
void cpu_dpm_solver_2m_step(const DpmSolver2mStepArgs& a) { cpu::sampler_kernels().dpm_solver_2m_step(a); }
void cpu_attention_forward(const AttentionForwardArgs& a) { cpu::attention_kernels().forward(a); }
void cpu_attention_backward(const AttentionBackwardArgs& a) { cpu::attention_kernels().backward(a); }
void cpu_downsample_cond(const DownsampleCondArgs& a) { cpu::downsample_kernels().downsample_cond(a); }

// Argument i of ddim_step_uniform as its field's type; a wrong type is named as a field's would be.
template <typename T>
T uniform_arg(PyObject* const* argv, int i) {
  static const char* const names[] = {"sample", "model", "out", "dtype", "batch", "numel",
                                      "alpha_t", "alpha_prev", "guidance", "prediction"};
  try {
    return Convert<T>::from(argv[i]);
  } catch (const FieldError& e) {
    throw py::type_error(std::string("ddim_step_uniform: ") + names[i] + ": " + e.what());
  }
}

// `_C.ddim_step_uniform(sample, model, out, dtype, batch, numel, alpha_t, alpha_prev, guidance, prediction,
// num_threads)`: a sampling loop's DDIM step (one ᾱ_t, ᾱ_prev and w for the batch, η = 0, no clipping) in one
// call. At (2,4,64,64) the kernel takes about 8 µs; setting DdimStepArgs' fields one by one took 1.5 more.
// `guidance` None: model is (N, ...); a float w: model is the batched [uncond; cond] output (2N, ...).
// diffrt.ops checked the tensors; this checks the types.
PyObject* ddim_step_uniform(PyObject* name, PyObject* const* argv, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    expect_args(name, nargs, 11,
                "(sample, model, out, dtype, batch, numel, alpha_t, alpha_prev, guidance, prediction, num_threads)");
    DdimStepArgs a{};
    a.sample = uniform_arg<const void*>(argv, 0);
    a.model = uniform_arg<const void*>(argv, 1);
    a.out = uniform_arg<void*>(argv, 2);
    a.dtype = uniform_arg<DType>(argv, 3);
    a.batch = uniform_arg<int64_t>(argv, 4);
    a.numel = uniform_arg<int64_t>(argv, 5);
    if (a.batch < 0 || a.numel < 0) throw py::value_error("batch and numel must be >= 0");
    if (a.batch && a.numel && (!a.sample || !a.model || !a.out))
      throw py::value_error("sample, model and out need addresses");
    const size_t n = size_t(a.batch);
    const std::vector<double> alpha_t(n, uniform_arg<double>(argv, 6));
    const std::vector<double> alpha_prev(n, uniform_arg<double>(argv, 7));
    std::vector<double> guidance;
    if (argv[8] != Py_None) {
      guidance.assign(n, uniform_arg<double>(argv, 8));
      const size_t bytes = a.dtype == DType::f32 ? 4 : 2;
      a.model_cond = static_cast<const char*>(a.model) + n * size_t(a.numel) * bytes;
      a.guidance_scale = guidance.data();
    }
    a.alpha_t = alpha_t.data();
    a.alpha_prev = alpha_prev.data();
    a.prediction = uniform_arg<Prediction>(argv, 9);
    a.clip = ClipMode::none;
    a.num_threads = int_arg(argv[10], "num_threads");
    check_dtype("ddim_step", a.dtype, Device::cpu);
    {
      py::gil_scoped_release nogil;
      cpu_ddim_step(a);
    }
    Py_RETURN_NONE;
  });
}

void bind_enums(py::module_& m) {
  // Python names of DType are torch's, so diffrt.ops maps torch dtypes by name.
  py::enum_<DType>(m, "DType", "Storage dtype of a kernel's tensors (float16: CUDA kernels only).")
      .value("float32", DType::f32)
      .value("bfloat16", DType::bf16)
      .value("float16", DType::f16);
  py::enum_<Prediction>(m, "Prediction", "What the model predicts (diffusers' prediction_type).")
      .value("epsilon", Prediction::epsilon)
      .value("v_prediction", Prediction::v_prediction)
      .value("sample", Prediction::sample);
  py::enum_<ClipMode>(m, "ClipMode", "How DDIM clips x̂0: not, to a fixed range, or by dynamic thresholding.")
      .value("none", ClipMode::none)
      .value("fixed", ClipMode::fixed)
      .value("dynamic", ClipMode::dynamic);
  m.attr("CUDA_ATTENTION_MAX_HEAD_DIM") = cuda::kAttentionMaxHeadDim;
}

void bind_kernels(py::module_& m) {
  bind_args<DdimStepArgs>(m, "Arguments of ddim_step (csrc/ops.h DdimStepArgs).");
  bind_args<CfgCombineArgs>(m, "Arguments of cfg_combine (csrc/ops.h CfgCombineArgs).");
  bind_args<MaskBlendArgs>(m, "Arguments of mask_blend (csrc/ops.h MaskBlendArgs).");
  bind_args<DiffEditMaskArgs>(m, "Arguments of diffedit_mask (csrc/ops.h DiffEditMaskArgs).");
  bind_args<EulerStepArgs>(m, "Arguments of euler_step (csrc/ops.h EulerStepArgs).");
  bind_args<DpmSolver2mStepArgs>(m, "Arguments of dpm_solver_2m_step (csrc/ops.h DpmSolver2mStepArgs).");
  bind_args<AttentionForwardArgs>(m, "Arguments of attention_forward (csrc/attention.h AttentionForwardArgs).");
  bind_args<AttentionBackwardArgs>(m, "Arguments of attention_backward (csrc/attention.h AttentionBackwardArgs).");
  bind_args<DownsampleCondArgs>(m, "Arguments of downsample_cond (csrc/cpu/downsample_kernels.h DownsampleCondArgs).");

  def_cpu_kernel<DdimStepArgs, cpu_ddim_step>(m, "ddim_step", "One DDIM step (with fused guidance) on the CPU.");
  static PyMethodDef ddim_uniform_def{
      "ddim_step_uniform", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ddim_step_uniform)),
      METH_FASTCALL,
      "ddim_step_uniform(sample, model, out, dtype, batch, numel, alpha_t, alpha_prev, guidance, prediction, "
      "num_threads): one DDIM step on the CPU with one alpha_t, alpha_prev and guidance (None: unguided) for the "
      "batch, eta = 0 and no clipping (the sampling loop's call)."};
  add_function(m, &ddim_uniform_def);
  def_cpu_kernel<CfgCombineArgs, cpu_cfg_combine>(m, "cfg_combine", "Classifier-free guidance combination on the CPU.");
  def_cpu_kernel<MaskBlendArgs, cpu_mask_blend>(m, "mask_blend", "Mask blend on the CPU.");
  def_cpu_kernel<DiffEditMaskArgs, cpu_diffedit_mask>(m, "diffedit_mask", "DiffEdit mask estimate on the CPU.");
  def_cpu_kernel<EulerStepArgs, cpu_euler_step>(m, "euler_step", "One Euler / Euler-ancestral step (σ space) on the CPU.");
  def_cpu_kernel<DpmSolver2mStepArgs, cpu_dpm_solver_2m_step>(m, "dpm_solver_2m_step",
                                                              "One DPM-Solver++(2M) step (σ space) on the CPU.");
  def_cpu_kernel<AttentionForwardArgs, cpu_attention_forward>(
      m, "attention_forward", "Fused attention forward: out (and lse if its address is nonzero) from q, k, v.");
  def_cpu_kernel<AttentionBackwardArgs, cpu_attention_backward>(
      m, "attention_backward", "Fused attention backward: dq, dk, dv from q, k, v, out, dout and the forward's lse.");
  def_cpu_kernel<DownsampleCondArgs, cpu_downsample_cond>(
      m, "downsample_cond", "Strided conv of [image | mask] into out[:, channel_offset : channel_offset + C].");
#if defined(DIFFRT_WITH_CUDA)
  def_cuda_kernel<DdimStepArgs, cuda::ddim_step>(m, "cuda_ddim_step", "ddim_step on CUDA tensors.");
  def_cuda_kernel<CfgCombineArgs, cuda::cfg_combine>(m, "cuda_cfg_combine", "cfg_combine on CUDA tensors.");
  def_cuda_kernel<MaskBlendArgs, cuda::mask_blend>(m, "cuda_mask_blend", "mask_blend on CUDA tensors.");
  def_cuda_kernel<DiffEditMaskArgs, cuda::diffedit_mask>(m, "cuda_diffedit_mask", "diffedit_mask on CUDA tensors.");
  def_cuda_kernel<EulerStepArgs, cuda::euler_step>(m, "cuda_euler_step", "euler_step on CUDA tensors.");
  def_cuda_kernel<DpmSolver2mStepArgs, cuda::dpm_solver_2m_step>(m, "cuda_dpm_solver_2m_step",
                                                                 "dpm_solver_2m_step on CUDA tensors.");
  def_cuda_kernel<AttentionForwardArgs, cuda::attention_forward>(m, "cuda_attention_forward",
                                                                 "attention_forward on CUDA tensors.");
  def_cuda_kernel<AttentionBackwardArgs, cuda::attention_backward>(m, "cuda_attention_backward",
                                                                   "attention_backward on CUDA tensors.");
#endif
  static PyMethodDef echo_def{
      "echo",
      reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
          &echo_any<DdimStepArgs, CfgCombineArgs, MaskBlendArgs, DiffEditMaskArgs, EulerStepArgs,
                    DpmSolver2mStepArgs, AttentionForwardArgs, AttentionBackwardArgs, DownsampleCondArgs,
                    GroupNormArgs, LayerNormArgs, GegluArgs, TimestepEmbeddingArgs, TimestepMlpArgs>)),
      METH_FASTCALL,
      "echo(args, num_threads) -> dict: every field of the struct the CPU kernel would receive for args "
      "(per-sample arrays as lists), without running it. Tests use it to check each field reaches its slot."};
  add_function(m, &echo_def);
}

// The normalisation kernels (csrc/norm.h).
void bind_norm_kernels(py::module_& m) {
  bind_args<GroupNormArgs>(m, "Arguments of group_norm (csrc/norm.h GroupNormArgs).");
  bind_args<LayerNormArgs>(m, "Arguments of layer_norm (csrc/norm.h LayerNormArgs).");
  bind_args<GegluArgs>(m, "Arguments of geglu (csrc/norm.h GegluArgs).");
  bind_args<TimestepEmbeddingArgs>(m, "Arguments of timestep_embedding (csrc/norm.h TimestepEmbeddingArgs).");
  def_cpu_kernel<GroupNormArgs, cpu_group_norm>(m, "group_norm", "GroupNorm (+ SiLU) on the CPU.");
  def_cpu_kernel<LayerNormArgs, cpu_layer_norm>(m, "layer_norm", "LayerNorm over the last dim on the CPU.");
  def_cpu_kernel<GegluArgs, cpu_geglu>(m, "geglu", "GEGLU (a·gelu(g) of [a | g]) on the CPU.");
  def_cpu_kernel<TimestepEmbeddingArgs, cpu_timestep_embedding>(m, "timestep_embedding",
                                                                "Sinusoidal timestep features on the CPU.");
  bind_args<TimestepMlpArgs>(m, "Arguments of timestep_mlp (csrc/norm.h TimestepMlpArgs).");
  def_cpu_kernel<TimestepMlpArgs, cpu_timestep_mlp>(
      m, "timestep_mlp", "Sinusoid → Linear → SiLU → Linear (diffusers' Timesteps + TimestepEmbedding) on the CPU.");
#if defined(DIFFRT_WITH_CUDA)
  def_cuda_kernel<GroupNormArgs, cuda::group_norm>(m, "cuda_group_norm", "group_norm on CUDA tensors.");
  def_cuda_kernel<LayerNormArgs, cuda::layer_norm>(m, "cuda_layer_norm", "layer_norm on CUDA tensors.");
  def_cuda_kernel<GegluArgs, cuda::geglu>(m, "cuda_geglu", "geglu on CUDA tensors.");
  def_cuda_kernel<TimestepEmbeddingArgs, cuda::timestep_embedding>(m, "cuda_timestep_embedding",
                                                                   "timestep_embedding on CUDA tensors.");
  def_cuda_kernel<TimestepMlpArgs, cuda::timestep_mlp>(m, "cuda_timestep_mlp", "timestep_mlp on CUDA tensors.");
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = DIFFRT_VERSION;
  d["compiler"] = __VERSION__;
  d["cxx_flags"] = DIFFRT_CXX_FLAGS;
  d["threads"] = "diffrt thread pool (no OpenMP runtime)";
  d["isas_compiled"] = cpu::compiled_isas();
#if defined(DIFFRT_WITH_CUDA)
  d["cuda"] = true;
  d["cuda_runtime"] = cuda::runtime_version();
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace diffrt::binding

PYBIND11_MODULE(_C, m) {
  using namespace diffrt;
  m.doc() = "diffrt compiled kernels (framework-free; called through diffrt.ops)";
  m.attr("__version__") = DIFFRT_VERSION;
  // Resolve the ISA now: a bad DIFFRT_CPU_ISA falls back to the best supported ISA with a RuntimeWarning
  // (an error only where warnings are errors), so that diffrt — and diffrt.info — still import.
  if (const std::string& warning = cpu::isa_env_warning(); !warning.empty())
    if (PyErr_WarnEx(PyExc_RuntimeWarning, warning.c_str(), 1) != 0) throw py::error_already_set();

  binding::bind_enums(m);
  binding::bind_kernels(m);
  binding::bind_norm_kernels(m);

  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The instruction set whose CPU kernels run now.");
  m.def("set_cpu_isa", [](const std::string& name) { cpu::set_active_isa(cpu::parse_isa(name)); },
        py::arg("name"), "Select the CPU kernels (one of build_info()['isas_compiled']); raises if this CPU cannot run them.");
  m.def("supported_cpu_isas", &cpu::supported_isas, "Instruction sets this CPU can run, narrowest first.");
  m.def("cpu_isa_env_warning", [] { return cpu::isa_env_warning(); },
        "Why DIFFRT_CPU_ISA was ignored at import (empty when it was not set, or honoured).");
  m.def("attention_uses_bf16_dot_product", [] { return cpu::attention_kernels().bf16_dot_product; },
        "Whether the active ISA's bfloat16 attention runs on AVX512-BF16 dot products.");
  m.def("pool_thread_count", &cpu::pool_thread_count, "Threads diffrt's CPU thread pool has started (it grows on demand).");
  m.def("build_info", &binding::build_info);
#if defined(DIFFRT_WITH_CUDA)
  m.def("cuda_device_count", [] { return cuda::device_count(); }, py::call_guard<py::gil_scoped_release>());
#endif
}
