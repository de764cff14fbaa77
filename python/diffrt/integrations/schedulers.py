"""diffusers schedulers whose ``step`` runs diffrt's fused kernels: drop them into a pipeline with
``pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``.

Each class has the name, the constructor arguments, the config and the public face of the diffusers
scheduler of that name (``from_config`` accepts any diffusers scheduler's config and ignores the keys
it does not know, as diffusers does; ``set_timesteps``, ``timesteps``, ``sigmas``, ``init_noise_sigma``,
``order``, ``scale_model_input``, ``add_noise``, ``set_begin_index``, ``begin_index``, ``step_index``,
``compatibles``, ``save_pretrained``, ...). Behind it sits an instance of that diffusers scheduler, which
owns the timestep and σ tables (so both walk identical numbers for every spacing, σ table and final-σ
option); ``step`` is diffrt's: the prediction-type conversion to x̂0 and the update in one pass over
memory, reading the model output and the sample once and writing prev_sample and x̂0 once:

    DDIMScheduler                    diffrt.ops.ddim_step (Song et al. 2021, eq. 12; η, clipping, thresholding)
    DPMSolverMultistepScheduler      diffrt.ops.dpm_solver_2m_step (DPM-Solver++ 1st/2nd order, midpoint or heun)
    EulerDiscreteScheduler           diffrt.ops.euler_step
    EulerAncestralDiscreteScheduler  diffrt.ops.euler_step with noise (σ_down step + σ_up·z)

An option whose step diffrt has no kernel for (DPM-Solver's "dpmsolver"/SDE algorithms and third order,
learned variance, flow prediction; Euler's s_churn > 0) is refused when the scheduler is built or the
step is called — never run differently. diffusers is imported when a scheduler is built, not with this
module.

Guidance in the step: diffusers' pipelines combine classifier-free guidance (ε_u + w·(ε_c − ε_u), and
guidance_rescale) themselves and then call ``step`` with the combined output, so through a standard
pipeline loop the guidance costs its own pass. A custom loop can fuse it into the DDIM step:
``DDIMScheduler.step(model_output, t, sample, guidance_scale=w, guidance_rescale=φ)`` with the batched
``[uncond; cond]`` model output (2N, ...) runs diffrt's guided DDIM kernel, which reads both halves once
and writes x_prev once. The σ-space kernels take an already combined output.

torch.compile: ``step`` with a tensor timestep traces without a graph break. DDIM reads ᾱ_t and ᾱ_prev by
indexing with the timestep tensor inside the graph (diffusers' own DDIM step breaks the graph at every step on
``prev_timestep >= 0``), so one graph serves the whole loop. The σ-space schedulers read σ at diffusers'
step_index, a Python int: torch.compile specialises on it and, for a scheduler reached through a local or a
closure, makes it symbolic after one recompile (a global scheduler's int stays a constant: one graph per
step, as with diffusers' schedulers). Their first step finds its index with diffusers' ``index_for_timestep``
(``nonzero().item()``), a graph break once per run unless ``set_begin_index(0)`` was called. The values
(ᾱ, σ) stay tensors under compile and the ops check them when the graph runs.
"""

from __future__ import annotations

import importlib
from typing import Any, List, Optional, Union

import torch

from ..ops import ddim_step, dpm_solver_2m_step, euler_step

__all__ = ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"]


def _diffusers(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:  # pragma: no cover - diffusers is installed with diffrt[diffusers]
        raise ImportError(f"diffrt's diffusers schedulers need diffusers (pip install 'diffrt[diffusers]'): {e}") from e


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """diffusers' own draw (randn_tensor), so that a generator gives both schedulers the same noise."""
    return _diffusers("diffusers.utils.torch_utils", "randn_tensor")(shape, generator=generator, device=device,
                                                                       dtype=dtype)


class _FusedScheduler:
    """The diffusers scheduler of the same name, with ``step`` replaced by diffrt's fused kernel."""

    _diffusers_output = ("diffusers.schedulers.scheduling_utils", "SchedulerOutput")

    def __init__(self, **config: Any):
        self._bind(_diffusers("diffusers", type(self).__name__)(**config))

    def _bind(self, inner) -> None:
        self._check_config(inner.config)
        self._inner = inner
        # looked up once: torch.compile does not trace importlib, so a per-step import would break the graph
        self._diffrt_output_type = _diffusers(*self._diffusers_output)
        self._reset()

    @classmethod
    def _wrap(cls, inner):
        self = cls.__new__(cls)
        self._bind(inner)
        return self

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **kwargs):
        """Built from any diffusers scheduler's config (keys this scheduler does not have are ignored, as
        diffusers' from_config ignores them); keyword arguments override config values."""
        made = _diffusers("diffusers", cls.__name__).from_config(config, return_unused_kwargs=return_unused_kwargs,
                                                                 **kwargs)
        if return_unused_kwargs:
            inner, unused = made
            return cls._wrap(inner), unused
        return cls._wrap(made)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls._wrap(_diffusers("diffusers", cls.__name__).from_pretrained(*args, **kwargs))

    # -- what pipelines read and call: diffusers' own ------------------------------------------------

    @property
    def config(self):
        return self._inner.config

    @property
    def compatibles(self) -> List[Any]:
        return self._inner.compatibles

    @property
    def order(self) -> int:
        return self._inner.order

    @property
    def timesteps(self) -> torch.Tensor:
        return self._inner.timesteps

    @timesteps.setter
    def timesteps(self, value) -> None:
        self._inner.timesteps = value

    @property
    def num_inference_steps(self) -> Optional[int]:
        return self._inner.num_inference_steps

    @property
    def init_noise_sigma(self):
        return self._inner.init_noise_sigma

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._inner.alphas_cumprod

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      **kwargs) -> None:
        self._inner.set_timesteps(num_inference_steps, device=device, **kwargs)
        self._reset()

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._inner.scale_model_input(sample, *args, **kwargs)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self._inner.add_noise(original_samples, noise, timesteps)

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str):
        # Anything else diffusers' scheduler has (sigmas, step_index, begin_index, set_begin_index,
        # get_velocity, save_pretrained, ...) is its own. Only reached for names not found on self.
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value) -> None:
        # diffrt's own state is _inner and _diffrt_*; anything a pipeline sets (e.g. _internal_dict when it
        # updates an old config) belongs to diffusers' scheduler.
        if name == "_inner" or name.startswith("_diffrt_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return f"diffrt {self._inner!r}"

    # -- diffrt's part ------------------------------------------------------------------------------

    def _reset(self) -> None:
        """Clears per-run state (a multistep solver's history) when the timesteps are set."""

    def _check_config(self, config) -> None:
        """Refuses options whose step has no fused kernel."""

    def _output(self, **fields):
        return self._diffrt_output_type(**fields)

    def _current_step_index(self, timestep) -> int:
        inner = self._inner
        if inner.step_index is None:
            inner._init_step_index(timestep)
        return inner.step_index

    def _advance(self) -> None:
        self._inner._step_index += 1

    def _sigmas(self, *indices: int):
        """σ at the given step indices: Python floats, or — under torch.compile — float64 0-d tensors that stay in
        the graph (float() would read the value back to the host and break it); the op checks them when it runs."""
        sigmas = self._inner.sigmas
        if torch.compiler.is_compiling():
            return tuple(sigmas[i].to(torch.float64) for i in indices)
        return tuple(float(sigmas[i]) for i in indices)


def _common_dtype(model_output: torch.Tensor, sample: torch.Tensor):
    """The kernels take one dtype; diffusers computes in float32 and returns model_output's dtype."""
    if model_output.dtype == sample.dtype:
        return model_output, sample
    return model_output.float(), sample.float()


class DDIMScheduler(_FusedScheduler):
    """diffusers' DDIMScheduler; ``step`` is :func:`diffrt.ops.ddim_step` (η, clip_sample, thresholding,
    use_clipped_model_output, all three prediction types), stepping to t − T//N as diffusers does.

    Fused guidance: with ``guidance_scale`` (and optionally ``guidance_rescale``), ``model_output`` is the
    batched ``[uncond; cond]`` output (2N, ...) and the guidance combination runs inside the step's one
    pass (diffrt's guided DDIM kernel). diffusers' pipelines cannot use it — they combine guidance before
    calling ``step`` — but a custom denoising loop can.
    """

    _diffusers_output = ("diffusers.schedulers.scheduling_ddim", "DDIMSchedulerOutput")

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: Optional[torch.Tensor] = None,
             return_dict: bool = True, *, guidance_scale=None, guidance_rescale: float = 0.0):
        inner, cfg = self._inner, self._inner.config
        if inner.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        stride = cfg.num_train_timesteps // inner.num_inference_steps
        if isinstance(timestep, torch.Tensor) and torch.compiler.is_compiling():
            alpha_t, alpha_prev = self._traced_alphas(timestep, stride)
        else:
            t = int(timestep)
            alpha_t = float(inner.alphas_cumprod[t])
            alpha_prev = float(inner.alphas_cumprod[t - stride]) if t >= stride else float(inner.final_alpha_cumprod)
        out_dtype = model_output.dtype
        model_output, sample = _common_dtype(model_output, sample)
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            noise = variance_noise if variance_noise is not None else _randn(
                sample.shape, generator, model_output.device, out_dtype)
            noise = noise.to(sample.dtype)
        clip = {}
        if cfg.thresholding:  # diffusers: thresholding wins over clip_sample
            clip = dict(dynamic_threshold=cfg.dynamic_thresholding_ratio, dynamic_threshold_max=cfg.sample_max_value)
        elif cfg.clip_sample:
            clip = dict(clip_sample_range=cfg.clip_sample_range)
        prev, x0 = ddim_step(sample, model_output, alpha_t, alpha_prev, eta=eta, noise=noise,
                             prediction_type=cfg.prediction_type, use_clipped_model_output=use_clipped_model_output,
                             guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, return_x0=True, **clip)
        prev, x0 = prev.to(out_dtype), x0.to(out_dtype)
        if not return_dict:
            return prev, x0
        return self._output(prev_sample=prev, pred_original_sample=x0)

    def _traced_alphas(self, timestep: torch.Tensor, stride: int):
        """ᾱ_t and ᾱ_prev as one-element float64 tensors, read without leaving the graph (int(timestep) would read the
        value back to the host and break it): the op checks their values when it runs."""
        inner = self._inner
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single timestep, got a tensor of shape {tuple(timestep.shape)}")
        table = inner.alphas_cumprod
        t = timestep.reshape(1).to(device=table.device, dtype=torch.long)  # 1-D: a 0-d index would be read back
        prev_t = t - stride
        final = torch.as_tensor(inner.final_alpha_cumprod, dtype=table.dtype, device=table.device)
        alpha_prev = torch.where(prev_t >= 0, table.index_select(0, prev_t.clamp(min=0)), final)
        return table.index_select(0, t).to(torch.float64), alpha_prev.to(torch.float64)


class DPMSolverMultistepScheduler(_FusedScheduler):
    """diffusers' DPMSolverMultistepScheduler for DPM-Solver++ (algorithm_type "dpmsolver++", solver_order
    1 or 2, solver_type midpoint or heun); ``step`` is :func:`diffrt.ops.dpm_solver_2m_step`: first order
    at the first step and wherever diffusers' lower_order_final / euler_at_final / final_sigmas_type "zero"
    ask for it, second order otherwise. Every σ table (use_karras_sigmas, exponential, beta, Lu lambdas) and
    timestep spacing is diffusers'. ``thresholding`` (dynamic percentile) runs diffrt's dynamic-threshold
    kernel on x̂0 first (:func:`diffrt.ops.ddim_step` with return_x0), then the update on the thresholded x̂0.
    """

    def _check_config(self, config) -> None:
        if config.algorithm_type != "dpmsolver++":
            raise NotImplementedError(f"DPMSolverMultistepScheduler: algorithm_type={config.algorithm_type!r} has no "
                                      "diffrt kernel (only 'dpmsolver++'); use diffusers' scheduler for it")
        if config.solver_order not in (1, 2):
            raise NotImplementedError(f"DPMSolverMultistepScheduler: solver_order={config.solver_order} has no diffrt "
                                      "kernel (1 or 2)")
        if config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise NotImplementedError(f"DPMSolverMultistepScheduler: prediction_type={config.prediction_type!r} has "
                                      "no diffrt kernel (epsilon, v_prediction or sample)")
        if config.get("variance_type") is not None:
            raise NotImplementedError("DPMSolverMultistepScheduler: variance_type (a learned variance) is not "
                                      "supported by diffrt's step")

    def _reset(self) -> None:
        self._diffrt_x0_last = None
        self._diffrt_lower_order_nums = 0

    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor,
             generator=None, variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        inner, cfg = self._inner, self._inner.config
        if inner.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        i = self._current_step_index(timestep)
        n = len(inner.timesteps)
        lower_order_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                            or cfg.final_sigmas_type == "zero")
        second_order = cfg.solver_order == 2 and self._diffrt_lower_order_nums >= 1 and not lower_order_final
        sigma, sigma_next = self._sigmas(i, i + 1)
        out_dtype = model_output.dtype
        model_output, sample = _common_dtype(model_output, sample)
        prediction = cfg.prediction_type
        if cfg.thresholding:  # x̂0 thresholded by diffrt's dynamic-threshold kernel, then the update on it
            alpha_bar = 1.0 / (sigma * sigma + 1.0)  # α² of the variance-preserving sample
            _, model_output = ddim_step(sample, model_output, alpha_bar, alpha_bar, prediction_type=prediction,
                                        dynamic_threshold=cfg.dynamic_thresholding_ratio,
                                        dynamic_threshold_max=cfg.sample_max_value, return_x0=True)
            prediction = "sample"
        last = {}
        if second_order:
            last = dict(x0_last=self._diffrt_x0_last.to(sample.dtype), sigma_last=self._sigmas(i - 1)[0])
        prev, x0 = dpm_solver_2m_step(sample, model_output, sigma, sigma_next, prediction_type=prediction,
                                      solver_type=cfg.solver_type, return_x0=True, **last)
        self._diffrt_x0_last = x0
        self._diffrt_lower_order_nums = min(self._diffrt_lower_order_nums + 1, cfg.solver_order)
        self._advance()
        prev = prev.to(out_dtype)
        if not return_dict:
            return (prev,)
        return self._output(prev_sample=prev)


class EulerDiscreteScheduler(_FusedScheduler):
    """diffusers' EulerDiscreteScheduler; ``step`` is :func:`diffrt.ops.euler_step` (epsilon, v_prediction,
    sample). Every σ table and spacing (use_karras_sigmas, final_sigmas_type, timestep_type, ...) is
    diffusers'. The stochastic variant (s_churn > 0) has no kernel and is refused."""

    _diffusers_output = ("diffusers.schedulers.scheduling_euler_discrete", "EulerDiscreteSchedulerOutput")

    def _check_config(self, config) -> None:
        if config.prediction_type not in ("epsilon", "v_prediction", "sample", "original_sample"):
            raise ValueError(f"EulerDiscreteScheduler: prediction_type must be epsilon, v_prediction or sample, "
                             f"got {config.prediction_type!r}")

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator=None, return_dict: bool = True):
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps as timestep, not an integer index")
        inner = self._inner
        i = self._current_step_index(timestep)
        sigma, sigma_next = self._sigmas(i, i + 1)
        if s_churn > 0 and s_tmin <= float(sigma) <= s_tmax:
            raise NotImplementedError("EulerDiscreteScheduler.step: s_churn > 0 (the stochastic Euler step) has no "
                                      "diffrt kernel; use diffusers' scheduler for it")
        prediction = inner.config.prediction_type
        out_dtype = model_output.dtype
        model_output, sample = _common_dtype(model_output, sample)
        prev, x0 = euler_step(sample, model_output, sigma, sigma_next,
                              prediction_type="sample" if prediction == "original_sample" else prediction,
                              return_x0=True)
        self._advance()
        prev = prev.to(out_dtype)
        if not return_dict:
            return prev, x0
        return self._output(prev_sample=prev, pred_original_sample=x0)


class EulerAncestralDiscreteScheduler(_FusedScheduler):
    """diffusers' EulerAncestralDiscreteScheduler; ``step`` is :func:`diffrt.ops.euler_step` with noise:
    x + d·(σ_down − σ) + σ_up·z in one pass. z is drawn as diffusers draws it (randn_tensor of the model
    output's shape and dtype with the given generator), so the same generator gives the same samples.
    ``noise`` may be passed instead of a generator."""

    _diffusers_output = ("diffusers.schedulers.scheduling_euler_ancestral_discrete",
                         "EulerAncestralDiscreteSchedulerOutput")

    def _check_config(self, config) -> None:
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise NotImplementedError(f"EulerAncestralDiscreteScheduler: prediction_type {config.prediction_type!r} "
                                      "is not implemented (as in diffusers: epsilon or v_prediction)")

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             generator=None, return_dict: bool = True, *, noise: Optional[torch.Tensor] = None):
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps as timestep, not an integer index")
        if noise is not None and generator is not None:
            raise ValueError("pass either generator or noise, not both")
        inner = self._inner
        i = self._current_step_index(timestep)
        sigma, sigma_next = self._sigmas(i, i + 1)
        out_dtype = model_output.dtype
        if noise is None:
            noise = _randn(model_output.shape, generator, model_output.device, out_dtype)
        model_output, sample = _common_dtype(model_output, sample)
        prev, x0 = euler_step(sample, model_output, sigma, sigma_next, noise=noise.to(sample.dtype),
                              prediction_type=inner.config.prediction_type, return_x0=True)
        self._advance()
        prev = prev.to(out_dtype)
        if not return_dict:
            return prev, x0
        return self._output(prev_sample=prev, pred_original_sample=x0)
