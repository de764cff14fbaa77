"""diffrt.ops: the fused kernels behind diffrt's samplers and pipelines.

Every op validates its inputs (errors name the argument), then runs on the fastest backend that
can (C++ CPU kernels, CUDA kernels, or the torch reference for anything else); ``backend=`` insists
on one. Each op has its readable torch reference ``<op>_ref`` beside it, exact in float64.
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
]
