"""Type stub for diffrt._C, the compiled kernels. Call them through diffrt.ops, which validates inputs.

Each kernel takes its argument struct (csrc/ops.h, csrc/attention.h, csrc/cpu/downsample_kernels.h, csrc/norm.h) as an
object whose fields are set by name — ``args = DdimStepArgs(); args.eta = 0.0`` (or ``DdimStepArgs(eta=0.0,
...)``). Tensors are raw addresses (``tensor.data_ptr()``, 0 for none) of dense row-major storage unless a
stride field says otherwise; enums are the enum types below (an int is refused); per-sample fields are lists
of one float per sample. Setting a field of the wrong type raises TypeError naming it; a kernel called with a
required field never set raises TypeError naming it. ``num_threads`` (CPU) or ``device, stream`` (CUDA) are
the kernel call's own arguments.
"""

from typing import Any, ClassVar, Dict, List, Optional, Tuple

__version__: str

class DType:
    """Storage dtype of a kernel's tensors, named after torch's (float16: CUDA kernels only)."""
    float32: ClassVar["DType"]
    bfloat16: ClassVar["DType"]
    float16: ClassVar["DType"]
    __members__: ClassVar[Dict[str, "DType"]]
    name: str
    value: int

class Prediction:
    """What the model predicts (diffusers' prediction_type)."""
    epsilon: ClassVar["Prediction"]
    v_prediction: ClassVar["Prediction"]
    sample: ClassVar["Prediction"]
    __members__: ClassVar[Dict[str, "Prediction"]]
    name: str
    value: int

class ClipMode:
    """How DDIM clips x̂0: not at all, to [−clip_range, clip_range], or by dynamic thresholding."""
    none: ClassVar["ClipMode"]
    fixed: ClassVar["ClipMode"]
    dynamic: ClassVar["ClipMode"]
    __members__: ClassVar[Dict[str, "ClipMode"]]
    name: str
    value: int

# The largest head dim the CUDA attention kernel takes (csrc/cuda/attention_kernels.h).
CUDA_ATTENTION_MAX_HEAD_DIM: int

Strides = Tuple[int, int, int]  # (batch, head, row) element strides of a (B, H, L, d) tensor, d dense

class DdimStepArgs:
    fields: ClassVar[Tuple[str, ...]]  # the names below, in the struct's order
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    numel: int  # elements per sample
    sample: int
    model: int  # model output; with guidance its unconditional half
    model_cond: int  # optional: the conditional half of a batched [uncond; cond] output
    noise: int  # optional
    out: int
    out_x0: int  # optional
    alpha_t: List[float]  # per sample
    alpha_prev: List[float]  # per sample
    guidance_scale: List[float]  # per sample; needed when model_cond is set
    eta: float
    guidance_rescale: float
    prediction: Prediction
    clip: ClipMode
    clip_range: float
    dynamic_quantile: float
    dynamic_max: float
    use_clipped_model_output: bool

class CfgCombineArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    numel: int
    uncond: int
    cond: int
    out: int
    guidance_scale: List[float]  # per sample
    guidance_rescale: float

class MaskBlendArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    channels: int
    spatial: int
    mask: int  # (batch or 1, spatial), dtype of a
    mask_batch_stride: int  # spatial, or 0 for one mask over the batch
    a: int
    b: int
    out: int

class DiffEditMaskArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    draws: int
    channels: int
    spatial: int
    eps_query: int
    eps_ref: int
    out: int  # (batch, spatial) float32
    clamp_ratio: float
    threshold: float  # negative: the soft map

class EulerStepArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    numel: int
    sample: int  # x at σ (variance exploding)
    model: int
    noise: int  # optional: z of the ancestral step
    out: int
    out_x0: int  # optional
    sigma: List[float]  # per sample
    sigma_next: List[float]  # per sample
    prediction: Prediction

class DpmSolver2mStepArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    numel: int
    sample: int  # x at σ (variance preserving)
    model: int
    x0_last: int  # optional: the previous step's x̂0 (second order)
    out: int
    out_x0: int  # optional
    sigma: List[float]  # per sample
    sigma_next: List[float]  # per sample
    sigma_last: List[float]  # per sample; needed when x0_last is set
    prediction: Prediction
    heun: bool  # solver_type heun (else midpoint)

class AttentionForwardArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    q: int
    k: int
    v: int
    q_strides: Strides
    k_strides: Strides
    v_strides: Strides
    key_padding_mask: int  # optional: (B, Lk) bool, nonzero = attend
    out: int
    out_strides: Strides
    lse: int  # optional: (B, H, Lq) float32
    scale: float

class AttentionBackwardArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    q: int
    k: int
    v: int
    out: int
    dout: int
    q_strides: Strides
    k_strides: Strides
    v_strides: Strides
    out_strides: Strides
    dout_strides: Strides
    key_padding_mask: int  # optional
    lse: int  # the forward's, required
    dq: int
    dk: int
    dv: int
    scale: float

class DownsampleCondArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    image_channels: int
    mask_channels: int
    height: int
    width: int
    image: int
    mask: int
    mask_batch_stride: int  # mask_channels·H·W, or 0 for one mask over the batch
    weight: int
    bias: int  # optional
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    out: int
    out_batch_stride: int
    out_channel_stride: int
    channel_offset: int
    # out_height and out_width are derived from the others (see echo()).

# ---- normalisation and activation kernels (csrc/norm.h) ----

class GroupNormArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    batch: int
    channels: int
    spatial: int  # H·W
    groups: int  # divides channels
    channels_last: bool  # x and out are (N, HW, C) instead of (N, C, HW)
    x: int
    weight: int  # optional: float32 (C,)
    bias: int  # optional: float32 (C,)
    out: int
    eps: float
    silu: bool  # SiLU after the affine

class LayerNormArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    rows: int
    dim: int  # normalised over
    x: int
    weight: int  # optional: float32 (dim,)
    bias: int  # optional: float32 (dim,)
    out: int
    eps: float

class GegluArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType
    rows: int
    dim: int  # x rows hold 2·dim values [hidden | gate]; out rows dim
    x: int
    out: int

class TimestepEmbeddingArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType  # of out
    batch: int
    dim: int
    timesteps: int  # float64 (batch,)
    out: int
    flip_sin_to_cos: bool
    downscale_freq_shift: float
    scale: float
    max_period: float

class TimestepMlpArgs:
    fields: ClassVar[Tuple[str, ...]]
    def __init__(self, **fields: Any) -> None: ...
    dtype: DType  # of weight_1, bias_1, weight_2, bias_2 and out (float16 on the CPU too)
    batch: int
    in_dim: int
    hidden_dim: int
    out_dim: int
    timesteps: int  # float64 (batch,)
    weight_1: int  # (hidden_dim, in_dim)
    bias_1: int  # (hidden_dim,) or 0
    weight_2: int  # (out_dim, hidden_dim)
    bias_2: int  # (out_dim,) or 0
    out: int  # (batch, out_dim)
    flip_sin_to_cos: bool
    downscale_freq_shift: float
    scale: float
    max_period: float

# CPU kernels (OpenMP threads); they release the GIL.
def ddim_step(args: DdimStepArgs, num_threads: int) -> None: ...
def ddim_step_uniform(sample: int, model: int, out: int, dtype: DType, batch: int, numel: int, alpha_t: float,
                      alpha_prev: float, guidance: Optional[float], prediction: Prediction, num_threads: int) -> None:
    """A sampling loop's DDIM step: one alpha_t, alpha_prev and guidance (None: unguided) for the batch, eta = 0,
    no clipping; with guidance ``model`` is the batched [uncond; cond] output."""
def cfg_combine(args: CfgCombineArgs, num_threads: int) -> None: ...
def mask_blend(args: MaskBlendArgs, num_threads: int) -> None: ...
def diffedit_mask(args: DiffEditMaskArgs, num_threads: int) -> None: ...
def euler_step(args: EulerStepArgs, num_threads: int) -> None: ...
def dpm_solver_2m_step(args: DpmSolver2mStepArgs, num_threads: int) -> None: ...
def attention_forward(args: AttentionForwardArgs, num_threads: int) -> None: ...
def attention_backward(args: AttentionBackwardArgs, num_threads: int) -> None: ...
def downsample_cond(args: DownsampleCondArgs, num_threads: int) -> None: ...
def group_norm(args: GroupNormArgs, num_threads: int) -> None: ...
def layer_norm(args: LayerNormArgs, num_threads: int) -> None: ...
def geglu(args: GegluArgs, num_threads: int) -> None: ...
def timestep_embedding(args: TimestepEmbeddingArgs, num_threads: int) -> None: ...
def timestep_mlp(args: TimestepMlpArgs, num_threads: int) -> None: ...

# Only in builds with CUDA kernels: the tensors' device index and a cudaStream_t
# (torch.cuda.current_stream(device).cuda_stream). They enqueue the work and return.
def cuda_ddim_step(args: DdimStepArgs, device: int, stream: int) -> None: ...
def cuda_cfg_combine(args: CfgCombineArgs, device: int, stream: int) -> None: ...
def cuda_mask_blend(args: MaskBlendArgs, device: int, stream: int) -> None: ...
def cuda_diffedit_mask(args: DiffEditMaskArgs, device: int, stream: int) -> None: ...
def cuda_euler_step(args: EulerStepArgs, device: int, stream: int) -> None: ...
def cuda_dpm_solver_2m_step(args: DpmSolver2mStepArgs, device: int, stream: int) -> None: ...
def cuda_attention_forward(args: AttentionForwardArgs, device: int, stream: int) -> None: ...
def cuda_attention_backward(args: AttentionBackwardArgs, device: int, stream: int) -> None: ...
def cuda_group_norm(args: GroupNormArgs, device: int, stream: int) -> None: ...
def cuda_layer_norm(args: LayerNormArgs, device: int, stream: int) -> None: ...
def cuda_geglu(args: GegluArgs, device: int, stream: int) -> None: ...
def cuda_timestep_embedding(args: TimestepEmbeddingArgs, device: int, stream: int) -> None: ...
def cuda_timestep_mlp(args: TimestepMlpArgs, device: int, stream: int) -> None: ...
def cuda_device_count() -> int: ...

def echo(args: Any, num_threads: int) -> Dict[str, Any]:
    """Every field of the struct the CPU kernel would receive for ``args`` (derived fields and num_threads
    included; per-sample arrays as lists, None when absent), without running it."""

def cpu_isa() -> str: ...
def set_cpu_isa(name: str) -> None: ...
def supported_cpu_isas() -> List[str]: ...
def cpu_isa_env_warning() -> str: ...
def attention_uses_bf16_dot_product() -> bool: ...
def pool_thread_count() -> int: ...
def build_info() -> Dict[str, Any]: ...
