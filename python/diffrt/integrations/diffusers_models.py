"""diffusers components as diffrt building blocks: a UNet2DConditionModel (optionally with a
ControlNet) as a Denoiser, a DDIMScheduler / DDIMInverseScheduler config as a diffrt schedule, and an
AutoencoderKL as a latent codec. diffusers is an optional dependency, imported only by the caller that
passes its objects in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from ..ops import PREDICTION_TYPES
from ..schedules import NoiseSchedule, SamplingSchedule

# What a dict cond may hold: UNet2DConditionModel.forward's conditioning arguments, passed through by name.
# Tensors among them (at any depth of dicts, lists and tuples) are batched [uncond; cond] under guidance.
UNET_COND_KEYS = (
    "encoder_hidden_states", "encoder_attention_mask", "attention_mask", "class_labels", "timestep_cond",
    "added_cond_kwargs", "cross_attention_kwargs", "down_block_additional_residuals", "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)
# With ``controlnet=``: its input image and weight (ControlNetModel.forward's controlnet_cond, conditioning_scale).
CONTROLNET_COND_KEYS = ("controlnet_cond", "controlnet_conditioning_scale")


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors (at any depth of dicts/lists/tuples) cast to the UNet's dtype; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_dtype(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_dtype(v, dtype) for v in value)
    return value


class DiffusersUNetDenoiser(torch.nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind the :class:`diffrt.Denoiser` protocol (an
    ``nn.Module`` holding the UNet, so pipelines that fine-tune, such as Imagic, can train it).

    What the UNet predicts is not in its config: give ``scheduler=`` (its config's prediction_type) or
    ``prediction_type=``.

    ``cond`` is the text-encoder output (B, L, D), or a dict with ``encoder_hidden_states`` and any of
    UNet2DConditionModel.forward's conditioning arguments by name (``encoder_attention_mask``,
    ``added_cond_kwargs``, ``timestep_cond``, ``class_labels``, ``cross_attention_kwargs``, ControlNet /
    adapter residuals ``down_block_additional_residuals``, ``mid_block_additional_residual``,
    ``down_intrablock_additional_residuals``). Under guidance the samplers batch every tensor in it
    as [uncond; cond], so give uncond the same structure; non-tensor entries (e.g. a LoRA ``scale``)
    must be equal in both. ``cross_attention_kwargs=`` here applies to every call.

    ``controlnet=`` (a ``ControlNetModel`` or ``MultiControlNetModel``) runs at every step on the same
    x_t, t and text, on the image ``cond["controlnet_cond"]`` weighted by
    ``cond["controlnet_conditioning_scale"]`` (default 1); its residuals add to any given in cond.
    """

    def __init__(self, unet: Any, *, prediction_type: Optional[str] = None, scheduler: Any = None,
                 cross_attention_kwargs: Optional[dict] = None, controlnet: Any = None):
        super().__init__()
        from_scheduler = scheduler.config.get("prediction_type") if scheduler is not None else None
        if prediction_type is None and from_scheduler is None:
            where = "neither was given"
            if scheduler is not None:
                where = f"scheduler= ({type(scheduler).__name__}) has no prediction_type in its config"
            raise ValueError(f"DiffusersUNetDenoiser needs prediction_type= ('epsilon', 'v_prediction' or 'sample') or "
                             f"scheduler= (whose config says what the UNet predicts), and {where}: a UNet's config does "
                             f"not say, and a model sampled with the wrong one gives wrong images without an error")
        if prediction_type is not None and from_scheduler is not None and prediction_type != from_scheduler:
            raise ValueError(f"prediction_type={prediction_type!r} contradicts the scheduler's config "
                             f"(prediction_type={from_scheduler!r}); pass one of them")
        prediction_type = prediction_type or from_scheduler
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
            raise TypeError(f"cross_attention_kwargs must be a dict, got {type(cross_attention_kwargs).__name__}")
        self.unet = unet
        self.controlnet = controlnet
        self.cross_attention_kwargs = dict(cross_attention_kwargs or {})
        self.prediction_type = prediction_type
        self.in_channels = unet.config.in_channels
        self.out_channels = unet.config.out_channels

    def _unet_kwargs(self, cond: Any) -> dict:
        if cond is None:
            raise ValueError("cond must be the text-encoder output (B, L, D) or a dict with encoder_hidden_states; got None")
        if not isinstance(cond, dict):
            return {"encoder_hidden_states": cond}
        allowed = UNET_COND_KEYS + (CONTROLNET_COND_KEYS if self.controlnet is not None else ())
        unknown = sorted(set(cond) - set(allowed))
        if unknown:
            hint = ""
            if set(unknown) & set(CONTROLNET_COND_KEYS):
                hint = " (controlnet_cond needs DiffusersUNetDenoiser(..., controlnet=))"
            raise ValueError(f"cond has keys {unknown} that DiffusersUNetDenoiser does not take{hint}; "
                             f"it takes {list(allowed)}")
        if cond.get("encoder_hidden_states") is None:
            raise ValueError("cond must hold 'encoder_hidden_states' (the text-encoder output, B × L × D)")
        if self.controlnet is not None and cond.get("controlnet_cond") is None:
            raise ValueError("cond must hold 'controlnet_cond' (the ControlNet's input image) when a controlnet is given")
        return {k: v for k, v in cond.items() if v is not None}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        kwargs = _to_dtype(self._unet_kwargs(cond), dtype)
        cross = kwargs.pop("cross_attention_kwargs", None) or {}
        clash = sorted(set(cross) & set(self.cross_attention_kwargs))
        if clash:
            raise ValueError(f"cross_attention_kwargs {clash} are given both in cond and to DiffusersUNetDenoiser; "
                             f"give each once")
        cross = {**self.cross_attention_kwargs, **cross} or None
        x_t = x_t.to(dtype)
        if self.controlnet is not None:
            down, mid = self.controlnet(
                x_t, t, encoder_hidden_states=kwargs["encoder_hidden_states"], controlnet_cond=kwargs.pop("controlnet_cond"),
                conditioning_scale=kwargs.pop("controlnet_conditioning_scale", 1.0), class_labels=kwargs.get("class_labels"),
                timestep_cond=kwargs.get("timestep_cond"), attention_mask=kwargs.get("attention_mask"),
                added_cond_kwargs=kwargs.get("added_cond_kwargs"), cross_attention_kwargs=cross, return_dict=False,
            )
            given_down = kwargs.get("down_block_additional_residuals")
            given_mid = kwargs.get("mid_block_additional_residual")
            if given_down is not None:
                if len(given_down) != len(down):
                    raise ValueError(f"cond['down_block_additional_residuals'] has {len(given_down)} tensors, the "
                                     f"controlnet gives {len(down)}")
                down = tuple(a + b for a, b in zip(down, given_down))
            kwargs["down_block_additional_residuals"] = down
            kwargs["mid_block_additional_residual"] = mid if given_mid is None else mid + given_mid
        return self.unet(x_t, t, cross_attention_kwargs=cross, **kwargs).sample


# diffusers schedulers whose update rule is DDIM's (Song et al. 2021, eq. 12), the one diffrt's samplers run.
DDIM_SCHEDULERS = ("DDIMScheduler", "DDIMInverseScheduler")
STEP_TO = ("next_in_sequence", "diffusers")


def schedules_from_diffusers(scheduler: Any, num_steps: int, *, step_to: str = "next_in_sequence") -> SamplingSchedule:
    """diffrt's sampling schedule for a diffusers ``DDIMScheduler`` (for :func:`diffrt.ddim_sample`) or
    ``DDIMInverseScheduler`` (for :func:`diffrt.ddim_invert`), with everything in its config that the
    DDIM update reads: the ᾱ table (taken from the scheduler, so both run on identical numbers),
    timestep_spacing, steps_offset, set_alpha_to_one, prediction_type, clip_sample / clip_sample_range,
    and thresholding (dynamic_thresholding_ratio, sample_max_value). ``ddim_sample(model, x, schedule,
    ...)`` then runs what ``scheduler.step`` does, with η, guidance and noise given to the sampler.

    ``step_to``: "next_in_sequence" (diffrt's rule) steps to the next timestep of the schedule's own
    sequence; "diffusers" steps to t − T//N as DDIMScheduler.step does. They differ only where T//N
    is not the gap between timesteps: ``linspace`` spacing, and ``trailing`` when N does not divide T.

    Any other scheduler (Euler, DPM-Solver, PNDM, …) is refused: it updates the sample differently, so
    a DDIM schedule built from its config would silently sample something else.
    """
    name = type(scheduler).__name__
    if name not in DDIM_SCHEDULERS:
        raise ValueError(
            f"schedules_from_diffusers takes a {' or '.join(DDIM_SCHEDULERS)}: diffrt's samplers run the DDIM update, "
            f"and {name} updates the sample differently, so a schedule from its config would sample something else. "
            f"To sample with DDIM on its noise schedule, pass diffusers.DDIMScheduler.from_config(scheduler.config)."
        )
    if step_to not in STEP_TO:
        raise ValueError(f"step_to must be one of {STEP_TO}, got {step_to!r}")
    cfg = scheduler.config
    noise = NoiseSchedule(scheduler.alphas_cumprod.double().cpu())
    set_alpha_to_one = cfg.get("set_alpha_to_one", True)
    schedule = SamplingSchedule.ddim(
        noise, num_steps, spacing=cfg.get("timestep_spacing", "leading"), steps_offset=cfg.get("steps_offset", 0),
        set_alpha_to_one=set_alpha_to_one,
    )
    if step_to == "diffusers":
        # DDIMScheduler.step: prev_t = t − T//N, and final_alpha_cumprod once prev_t < 0
        # (DDIMInverseScheduler.step reads the same pair, ᾱ at t − T//N or initial_alpha_cumprod, towards t).
        ab, gap = noise.alphas_cumprod, noise.num_train_timesteps // num_steps
        final = 1.0 if set_alpha_to_one else float(ab[0])
        alphas_prev = tuple(float(ab[t - gap]) if t >= gap else final for t in schedule.timesteps)
        schedule = replace(schedule, alphas_prev=alphas_prev)
    # DDIMScheduler.step: thresholding wins over clip_sample; DDIMInverseScheduler has no thresholding.
    clip = dyn = dyn_max = None
    if cfg.get("thresholding", False):
        dyn, dyn_max = float(cfg.get("dynamic_thresholding_ratio", 0.995)), float(cfg.get("sample_max_value", 1.0))
    elif cfg.get("clip_sample", True):
        clip = float(cfg.get("clip_sample_range", 1.0))
    return replace(schedule, prediction_type=cfg.get("prediction_type", "epsilon"), clip_sample_range=clip,
                   dynamic_threshold=dyn, dynamic_threshold_max=dyn_max)


@dataclass(frozen=True)
class LatentPosterior:
    """A VAE's diagonal Gaussian posterior q(z | x) = N(μ, diag σ²), one row per image, seen through the
    codec's latent normalisation: ``mean`` is the normalised μ, ``sample`` gives normalised draws
    z = μ + σ·ε. The image is encoded once; draw from it as often as needed."""

    mu: torch.Tensor
    sigma: torch.Tensor
    normalise: Callable[[torch.Tensor], torch.Tensor]

    @property
    def mean(self) -> torch.Tensor:
        return self.normalise(self.mu)

    def sample(self, generator: Optional[torch.Generator] = None, copies: int = 1) -> torch.Tensor:
        """``copies`` draws per image, image-major (rows i·copies … i·copies + copies − 1 are image i's).
        ε is drawn as diffusers' ``latent_dist.sample(generator)`` draws it — in the VAE's dtype, on the
        generator's device (else μ's) — so this is exactly ``latent_dist.sample`` of the image batch
        repeated ``copies`` times, without encoding it ``copies`` times."""
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
        mu, sigma = self.mu.repeat_interleave(copies, 0), self.sigma.repeat_interleave(copies, 0)
        device = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype).to(mu.device)
        return self.normalise(mu + sigma * eps)


class DiffusersLatentCodec:
    """An ``AutoencoderKL`` as a latent codec: images in [−1, 1] ⇄ latents, normalised as diffusers'
    pipelines do from the VAE config: z = (x − shift_factor)·scaling_factor (SD3, Flux), or
    z = (x − latents_mean)·scaling_factor/latents_std per channel (SDXL-style configs), else
    z = x·scaling_factor (x the posterior mean or a sample); ``decode`` inverts it."""

    def __init__(self, vae: Any):
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        shift = cfg.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if (mean is None) != (std is None):
            raise ValueError("the VAE config sets one of latents_mean and latents_std; diffusers' pipelines use both "
                             "or neither")
        if mean is not None and shift is not None:
            raise ValueError("the VAE config sets both shift_factor and latents_mean/latents_std; no diffusers pipeline "
                             "defines that normalisation")
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None:
            mean, std = self.latents_mean.to(z), self.latents_std.to(z)
            return (z - mean) * self.scaling_factor / std
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> LatentPosterior:
        """The VAE's posterior of each image (one encoder pass), to take the mean of or draw from."""
        dist = self.vae.encode(images.to(next(self.vae.parameters()).dtype)).latent_dist
        return LatentPosterior(dist.mean, dist.std, self._normalise)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, generator: Optional[torch.Generator] = None,
               sample: bool = False) -> torch.Tensor:
        """Normalised latents of the posterior mean, or of a posterior sample with ``sample=True``
        (drawn from ``generator`` as diffusers' ``latent_dist.sample(generator)``)."""
        posterior = self.posterior(images)
        return posterior.sample(generator) if sample else posterior.mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None:
            mean, std = self.latents_mean.to(latents), self.latents_std.to(latents)
            return self.vae.decode(latents * std / self.scaling_factor + mean).sample
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample
