"""Run diffusers' attention layers on diffrt's fused kernel: ``unet.set_attn_processor(DiffrtAttnProcessor())``.

``DiffrtAttnProcessor`` reproduces diffusers' ``AttnProcessor2_0`` step for step (spatial norm, group
norm, q/k/v projections, q/k norms, output projection, residual connection, rescale factor) and swaps
torch's scaled_dot_product_attention for :func:`diffrt.ops.attention`. On layers with added key/value
projections (``add_k_proj``: UnCLIP / Kandinsky "simple cross-attention" blocks) it reproduces
``AttnAddedKVProcessor2_0`` instead, the text's keys and values preceding the image's own in one fused call.
Joint attention (``add_q_proj``, SD3 / Flux) is refused by name.

Masks: diffusers hands the processor an additive bias (UNets turn ``encoder_attention_mask`` into
0 / −10000) or a boolean mask. When it is a key-padding mask — the same for every head and query, each
key either at the row's maximum bias or at least 10⁴ below it (its weight e^(−10⁴) is exactly 0 in float32),
or constant over the row (softmax is shift-invariant) — it becomes the kernel's boolean key_padding_mask,
with identical results. Any other mask (per-query or per-head masks, soft biases) has no kernel
equivalent and runs through torch's SDPA exactly as ``AttnProcessor2_0`` would. Under torch.compile / export
that choice depends on values the trace does not have: a mask goes to the ``diffrt::diffusers_attention``
custom op, which makes the same choice when the graph runs (no graph break; its backward too). A mask that
itself requires grad keeps the eager path (SDPA's mask gradient; the checks then break the graph).

diffusers itself is never imported here: the processor only calls the ``Attention`` module it is given.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..ops.attention import attention

from .diffusers_models import (  # noqa: E402
    DiffusersLatentCodec,
    DiffusersUNetDenoiser,
    LatentPosterior,
    schedules_from_diffusers,
)
from .schedulers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from .accelerate import AccelerationReport, accelerate, accelerate_denoiser, undo  # noqa: E402

__all__ = ["AccelerationReport", "DDIMScheduler", "DPMSolverMultistepScheduler", "DiffrtAttnProcessor",
           "DiffusersLatentCodec",
           "DiffusersUNetDenoiser", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "LatentPosterior",
           "accelerate", "accelerate_denoiser", "schedules_from_diffusers", "undo"]

# Bias gap beyond which a key's softmax weight underflows to exactly 0 in float32 (e^-10000 ≪ 2^-149).
_MASKED_GAP = 1.0e4


def key_padding_from_attention_mask(mask: torch.Tensor, batch: int, heads: int) -> Optional[torch.Tensor]:
    """A (batch, Lk) bool key-padding mask equivalent to diffusers' prepared mask (batch, heads, Lq or 1, Lk), or
    None when the mask is not a key-padding mask."""
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[2] != 1:
        return None
    if mask.shape[1] != 1 and not torch.equal(mask, mask[:, :1].expand_as(mask)):
        return None
    rows = mask[:, 0, 0, :]  # (batch, Lk)
    if rows.dtype == torch.bool:
        return rows if bool(rows.any(dim=-1).all()) else None  # SDPA returns NaN for a row of all False
    top = rows.max(dim=-1, keepdim=True).values
    keep = rows == top
    far = rows <= top - _MASKED_GAP
    if not bool((keep | far).all()) or not bool(torch.isfinite(top).all()):
        return None
    return keep


def _attend_with_mask(q, k, v, mask, scale: float, backend: Optional[str]) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v: the fused kernel when the mask is a key-padding mask, else SDPA."""
    key_padding_mask = key_padding_from_attention_mask(mask, q.shape[0], q.shape[1])
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)
    return attention(q, k, v, key_padding_mask=key_padding_mask, scale=scale, backend=backend)


def _masked_attention_grads(q, k, v, mask, dout, scale: float):
    """The backward of out = P·v, P = softmax(S), S = q·kᵀ·scale + mask (a bool mask adds −∞ where False),
    written out (no autograd inside an op): ∂v = Pᵀ·∂out, ∂P = ∂out·vᵀ, ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)),
    ∂q = ∂S·k·scale, ∂k = ∂Sᵀ·q·scale; in float32 (float64 for float64 inputs)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_, k_, v_, g = (t.to(dtype) for t in (q, k, v, dout))
    scores = q_ @ k_.transpose(-1, -2) * scale
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)
    else:
        scores = scores + mask.to(dtype)
    p = scores.softmax(dim=-1)
    dv = p.transpose(-1, -2) @ g
    dp = g @ v_.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True)) * scale
    return (ds @ k_).to(q.dtype), (ds.transpose(-1, -2) @ q_).to(k.dtype), dv.to(v.dtype)


# Under torch.compile / export the choice between the fused kernel and SDPA depends on the mask's values,
# which exist only when the graph runs: these two custom ops make it then (the Python checks would break the
# graph at every attention layer). Outputs are contiguous, as their fake implementations say.


@torch.library.custom_op("diffrt::diffusers_attention", mutates_args=())
def _diffusers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                         backend: Optional[str]) -> torch.Tensor:
    return _attend_with_mask(q, k, v, mask, scale, backend).contiguous()


@_diffusers_attention.register_fake
def _(q, k, v, mask, scale, backend):
    return q.new_empty(q.shape)


@torch.library.custom_op("diffrt::diffusers_attention_backward", mutates_args=())
def _diffusers_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                                  dout: torch.Tensor, scale: float,
                                  backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∂/∂q, ∂/∂k, ∂/∂v of the path the forward took: the fused kernel's backward, or SDPA's."""
    key_padding_mask = key_padding_from_attention_mask(mask, q.shape[0], q.shape[1])
    if key_padding_mask is None:
        grads = _masked_attention_grads(q, k, v, mask, dout, scale)
    else:
        out, lse = torch.ops.diffrt.attention_forward.default(q, k, v, key_padding_mask, scale, backend)
        grads = torch.ops.diffrt.attention_backward.default(q, k, v, out, dout, lse, key_padding_mask, scale, backend)
    return tuple(g.contiguous() for g in grads)


@_diffusers_attention_backward.register_fake
def _(q, k, v, mask, dout, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _diffusers_attention_setup(ctx, inputs, output):
    q, k, v, mask, scale, backend = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.params = (scale, backend)


def _diffusers_attention_grad(ctx, dout):
    q, k, v, mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.diffrt.diffusers_attention_backward.default(q, k, v, mask, dout, *ctx.params)
    return dq, dk, dv, None, None, None  # no mask gradient: a mask that requires grad does not come here


_diffusers_attention.register_autograd(_diffusers_attention_grad, setup_context=_diffusers_attention_setup)


class DiffrtAttnProcessor:
    """diffusers attention processor backed by diffrt's fused attention (``backend`` as in diffrt.ops)."""

    def __init__(self, backend: Optional[str] = None):
        self.backend = backend

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        if getattr(attn, "add_q_proj", None) is not None:
            raise NotImplementedError("DiffrtAttnProcessor does not run joint attention (an Attention with add_q_proj, "
                                      "as in SD3/Flux transformers); keep diffusers' processor on those layers")
        if getattr(attn, "add_k_proj", None) is not None:
            return self._added_kv(attn, hidden_states, encoder_hidden_states, attention_mask)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        # (B, L, H·d) viewed as (B, H, L, d): the kernel reads these strides directly, no copy.
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # AttnProcessor2_0 calls SDPA with its default scale 1/√d, which is attn.scale for every Attention
        # built with scale_qk=True (the only case where diffusers picks AttnProcessor2_0 itself).
        hidden_states = self._attend(attn, query, key, value, attention_mask, batch_size)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def _attend(self, attn, query, key, value, attention_mask, batch_size):
        """softmax(q·kᵀ·scale + mask)·v on (B, H, L, d) views: the fused kernel, or SDPA for masks it cannot take."""
        if attention_mask is None:
            return attention(query, key, value, scale=attn.scale, backend=self.backend)
        # traced (torch.compile, export, a FakeTensorMode) with a mask that needs no gradient: the choice is made
        # when the graph runs (see diffusers_attention)
        traced = torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
        if traced and not (torch.is_grad_enabled() and attention_mask.requires_grad):
            return torch.ops.diffrt.diffusers_attention.default(query, key, value, attention_mask, attn.scale,
                                                                self.backend)
        # eager, or a mask that wants a gradient (SDPA's; under torch.compile the mask checks break the graph)
        return _attend_with_mask(query, key, value, attention_mask, attn.scale, self.backend)

    def _added_kv(self, attn, hidden_states, encoder_hidden_states, attention_mask):
        """diffusers' AttnAddedKVProcessor(2_0) (UnCLIP / Kandinsky "simple cross-attention" blocks): the text's
        keys and values come from add_k_proj / add_v_proj and, unless only_cross_attention, precede the image's
        own; the input is (B, C, H, W) or (B, C, L), group-normed, and the residual is always added."""
        residual = hidden_states
        hidden_states = hidden_states.view(hidden_states.shape[0], hidden_states.shape[1], -1).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            # the text mask, padded with `sequence_length` zeros (attend) for the image's own keys
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        def heads(x):  # (B, L, H·d) viewed as (B, H, L, d)
            return x.view(batch_size, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key, value = heads(attn.add_k_proj(encoder_hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))
        if not attn.only_cross_attention:
            key = torch.cat([key, heads(attn.to_k(hidden_states))], dim=2)
            value = torch.cat([value, heads(attn.to_v(hidden_states))], dim=2)
        # scale: attn.scale, which is SDPA's default 1/√d (what AttnAddedKVProcessor2_0 uses) whenever scale_qk=True
        hidden_states = self._attend(attn, query, key, value, attention_mask, batch_size)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, residual.shape[1]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear projection, dropout
        return hidden_states.transpose(-1, -2).reshape(residual.shape) + residual
