"""diffrt.ops: the fused kernels behind diffrt's samplers and pipelines.

Every op validates its inputs (errors name the argument), then runs on the fastest backend that
can (C++ CPU kernels, CUDA kernels, or the torch reference for anything else); ``backend=`` insists
on one. Each op has its readable torch reference ``<op>_ref`` beside it, exact in float64.
Each is also a torch custom op ``torch.ops.diffrt.<op>`` (fake and autograd implementations
included): torch.compile and torch.export keep it as one node of the graph. Python numbers an op
takes (ᾱ, guidance weights, η, …) are constants of a compiled graph, so a compiled sampler step
recompiles for each new value; pass ddim_step's ᾱ_t, ᾱ_prev and guidance_scale (and the σ of
euler_step and dpm_solver_2m_step) as tensors instead: they are graph inputs (one graph for every
step) whose values the op checks when it runs.
"""

from ._backend import AUTO_ORDER, BACKENDS, UnsupportedBackendError, backend_table
from ._codes import PREDICTION_TYPES
from .attention import attention, attention_ref
from .downsample import downsample_cond, downsample_cond_ref
from .masks import diffedit_mask, diffedit_mask_ref, mask_blend, mask_blend_ref
from .norm import (
    geglu,
    geglu_ref,
    group_norm,
    group_norm_ref,
    layer_norm,
    layer_norm_ref,
    timestep_embedding,
    timestep_embedding_ref,
    timestep_mlp,
    timestep_mlp_ref,
)
from .sampling import (
    cfg_combine,
    cfg_combine_ref,
    ddim_invert_step,
    ddim_invert_step_ref,
    ddim_step,
    ddim_step_ref,
    dpm_solver_2m_step,
    dpm_solver_2m_step_ref,
    euler_step,
    euler_step_ref,
)
from . import _library  # noqa: E402,F401  registers torch.ops.diffrt.* (after the op modules it wraps)

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "PREDICTION_TYPES",
    "UnsupportedBackendError",
    "attention",
    "attention_ref",
    "backend_table",
    "cfg_combine",
    "cfg_combine_ref",
    "ddim_invert_step",
    "ddim_invert_step_ref",
    "ddim_step",
    "ddim_step_ref",
    "dpm_solver_2m_step",
    "dpm_solver_2m_step_ref",
    "downsample_cond",
    "downsample_cond_ref",
    "diffedit_mask",
    "diffedit_mask_ref",
    "euler_step",
    "euler_step_ref",
    "mask_blend",
    "mask_blend_ref",
    "geglu",
    "geglu_ref",
    "group_norm",
    "group_norm_ref",
    "layer_norm",
    "layer_norm_ref",
    "timestep_embedding",
    "timestep_embedding_ref",
    "timestep_mlp",
    "timestep_mlp_ref",
]
