"""Type stub for diffrt._C, the compiled kernels. Call them through diffrt.ops, which validates
inputs; here tensors are raw data pointers (``tensor.data_ptr()``) of dense row-major storage."""

from typing import Any, Dict, List, Sequence

__version__: str

def ddim_step(
    dtype: int, batch: int, numel: int, sample: int, model: int, model_cond: int, noise: int, out: int,
    out_x0: int, alpha_t: Sequence[float], alpha_prev: Sequence[float], guidance_scale: Sequence[float],
    eta: float, guidance_rescale: float, prediction: int, clip: int, clip_range: float,
    dynamic_quantile: float, dynamic_max: float, use_clipped_model_output: bool, num_threads: int,
) -> None: ...
def cfg_combine(
    dtype: int, batch: int, numel: int, uncond: int, cond: int, out: int, guidance_scale: Sequence[float],
    guidance_rescale: float, num_threads: int,
) -> None: ...
def mask_blend(
    dtype: int, batch: int, channels: int, spatial: int, mask: int, mask_batch_stride: int, a: int, b: int,
    out: int, num_threads: int,
) -> None: ...
def diffedit_mask(
    dtype: int, batch: int, draws: int, channels: int, spatial: int, query: int, ref: int, out: int,
    clamp_ratio: float, threshold: float, num_threads: int,
) -> None: ...
def downsample_cond(
    dtype: int, batch: int, image_channels: int, mask_channels: int, height: int, width: int, image: int, mask: int,
    mask_batch_stride: int, weight: int, bias: int, out_channels: int, kernel_size: int, stride: int, padding: int,
    out: int, out_batch_stride: int, out_channel_stride: int, channel_offset: int, num_threads: int,
) -> None: ...
def cpu_isa() -> str: ...
def set_cpu_isa(name: str) -> None: ...
def supported_cpu_isas() -> List[str]: ...
def omp_max_threads() -> int: ...
def build_info() -> Dict[str, Any]: ...
def cuda_device_count() -> int: ...  # only in builds with CUDA kernels

# Only in builds with CUDA kernels: the CPU functions' arguments with (device, stream) in place of
# num_threads — the tensors' device index and a cudaStream_t (torch.cuda.current_stream().cuda_stream).
# dtype 2 (float16) is accepted here only. They enqueue the work and return.
def cuda_ddim_step(
    dtype: int, batch: int, numel: int, sample: int, model: int, model_cond: int, noise: int, out: int,
    out_x0: int, alpha_t: Sequence[float], alpha_prev: Sequence[float], guidance_scale: Sequence[float],
    eta: float, guidance_rescale: float, prediction: int, clip: int, clip_range: float,
    dynamic_quantile: float, dynamic_max: float, use_clipped_model_output: bool, device: int, stream: int,
) -> None: ...
def cuda_cfg_combine(
    dtype: int, batch: int, numel: int, uncond: int, cond: int, out: int, guidance_scale: Sequence[float],
    guidance_rescale: float, device: int, stream: int,
) -> None: ...
def cuda_mask_blend(
    dtype: int, batch: int, channels: int, spatial: int, mask: int, mask_batch_stride: int, a: int, b: int,
    out: int, device: int, stream: int,
) -> None: ...
def cuda_diffedit_mask(
    dtype: int, batch: int, draws: int, channels: int, spatial: int, query: int, ref: int, out: int,
    clamp_ratio: float, threshold: float, device: int, stream: int,
) -> None: ...
def cuda_attention_forward(
    dtype: int, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, q: int, q_strides: Sequence[int],
    k: int, k_strides: Sequence[int], v: int, v_strides: Sequence[int], key_padding_mask: int, out: int,
    out_strides: Sequence[int], lse: int, scale: float, device: int, stream: int,
) -> None: ...
def cuda_attention_backward(
    dtype: int, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, q: int, q_strides: Sequence[int],
    k: int, k_strides: Sequence[int], v: int, v_strides: Sequence[int], out: int, out_strides: Sequence[int],
    dout: int, dout_strides: Sequence[int], key_padding_mask: int, lse: int, dq: int, dk: int, dv: int,
    scale: float, device: int, stream: int,
) -> None: ...
