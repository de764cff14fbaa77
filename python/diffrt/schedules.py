"""Noise schedules over the training timesteps and the timestep sequences samplers walk.

A :class:`NoiseSchedule` holds ᾱ_t = Π_{s≤t}(1 − β_s) for the training timesteps; a
:class:`SamplingSchedule` is the sequence of (t, ᾱ_t, ᾱ_prev) a sampler steps through, where
"prev" is the **next timestep of the same sequence** for every spacing (diffusers'
DDIMScheduler subtracts T//N instead, which lands off the sequence for ``linspace`` and for
``trailing`` when N does not divide T).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .ops import PREDICTION_TYPES

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
TAIL_ROUNDINGS = ("ceil", "floor")

# A diffusion table (a model folder's diffusion.json, a training config's [diffusion]) names the noise
# schedule with these keys; one it leaves out takes its default here: DDPM's linear β from 1e-4 to 0.02
# over 1000 steps (Ho et al. 2020), what the shipped models, whose tables name only beta_schedule and
# zero_terminal_snr, were trained with.
NOISE_SCHEDULE_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "beta_schedule": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
    "zero_terminal_snr": False,
})
# The table's other keys: how the model was trained (diffrt.train.kinds reads them), kept in a model
# folder's diffusion.json as its record. NoiseSchedule.from_config allows them and reads none.
TRAINING_KEYS = ("prediction_type", "caption_dropout", "object_loss_weight", "sr_factor", "max_noise_level")


def make_betas(kind: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
               beta_end: float = 0.012) -> torch.Tensor:
    """β_t for t = 0 … T−1 in float64.

    linear:            β linearly from beta_start to beta_end (Ho et al. 2020)
    scaled_linear:     √β linearly from √beta_start to √beta_end (Stable Diffusion)
    squaredcos_cap_v2: ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999)
                       (Nichol & Dhariwal 2021, eq. 17)
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    T = num_train_timesteps
    for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < beta < 1:  # also refuses NaN
            raise ValueError(f"{name} must lie in (0, 1), got {beta}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float64)
    raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {kind!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_{T−1} = 0 (SNR 0 at the last step) while ᾱ_0 is kept
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t over the training timesteps (float64)."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def make(cls, kind: str = "scaled_linear", num_train_timesteps: int = 1000, *, beta_start: float = 0.00085,
             beta_end: float = 0.012, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """A schedule built in code; the defaults are Stable Diffusion's. A model's own schedule is
        read from its diffusion table by :meth:`from_config`, whose defaults are DDPM's."""
        betas = make_betas(kind, num_train_timesteps, beta_start, beta_end)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def from_config(cls, diffusion: Mapping[str, Any]) -> "NoiseSchedule":
        """The noise schedule of a diffusion table (a model folder's diffusion.json, a training
        config's [diffusion]): the keys of :data:`NOISE_SCHEDULE_DEFAULTS`, each defaulting there.
        The training keys (:data:`TRAINING_KEYS`) are allowed and not read; any other key raises."""
        if not isinstance(diffusion, Mapping):
            raise ValueError(f"a diffusion table must be a mapping of keys to values, got {type(diffusion).__name__}")
        unknown = sorted(set(diffusion) - set(NOISE_SCHEDULE_DEFAULTS) - set(TRAINING_KEYS))
        if unknown:
            raise ValueError(f"unknown diffusion key(s) {unknown}: the noise schedule reads "
                             f"{list(NOISE_SCHEDULE_DEFAULTS)}, training {list(TRAINING_KEYS)}")
        v = {**NOISE_SCHEDULE_DEFAULTS, **{k: diffusion[k] for k in NOISE_SCHEDULE_DEFAULTS if k in diffusion}}
        if not isinstance(v["zero_terminal_snr"], bool):
            raise ValueError(f"zero_terminal_snr must be true or false, got {v['zero_terminal_snr']!r}")
        steps = v["num_train_timesteps"]
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"num_train_timesteps must be an integer, got {steps!r}")
        for name in ("beta_start", "beta_end"):
            if isinstance(v[name], bool) or not isinstance(v[name], numbers.Real):
                raise ValueError(f"{name} must be a number, got {v[name]!r}")
        return cls.make(v["beta_schedule"], steps, beta_start=float(v["beta_start"]), beta_end=float(v["beta_end"]),
                        zero_terminal_snr=v["zero_terminal_snr"])

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, t per sample (Ho et al. 2020, eq. 4)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 (Salimans & Ho 2022)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def target(self, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What a model predicting ``prediction_type`` regresses on at x_t = add_noise(x0, noise, t):
        ε (epsilon), x_0 (sample) or v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 (v_prediction)."""
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        if prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

    def timesteps(self, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> List[int]:
        """The descending timestep sequence of a sampler with ``num_steps`` steps.

        leading:  t_i = i·⌊T/N⌋ + steps_offset             (DDIM's original spacing)
        trailing: t_i = round(T − i·T/N) − 1, from T−1 down (Lin et al. 2023, Table 2)
        linspace: t_i = round(linspace(0, T−1, N))          (PNDM / Imagen)
        """
        T = self.num_train_timesteps
        if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an integer in [1, {T}], got {num_steps!r}")
        if spacing == "leading":
            ts = [i * (T // num_steps) + steps_offset for i in range(num_steps)][::-1]
        elif spacing == "trailing":
            ratio = T / num_steps
            ts = [int(round(T - i * ratio)) - 1 for i in range(num_steps)]
        elif spacing == "linspace":
            ts = [int(v) for v in np.linspace(0, T - 1, num_steps).round()][::-1]
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if ts[0] >= T or ts[-1] < 0:
            raise ValueError(f"steps_offset={steps_offset} moves timesteps outside [0, {T - 1}]: {ts[-1]}…{ts[0]}")
        return ts


@dataclass(frozen=True)
class SamplingSchedule:
    """The steps of a DDIM-style sampler: timesteps t_1 > … > t_N with ᾱ at each, and the ᾱ it
    steps to — the next timestep of the same sequence, and ``final_alpha`` after the last.

    A schedule may also carry how the sampler treats x̂0 and what the model must predict, as a
    diffusers scheduler's config does (:func:`diffrt.integrations.diffusers.schedules_from_diffusers`
    fills them): ``prediction_type`` (the samplers refuse a model that predicts something else),
    ``clip_sample_range`` or Imagen's ``dynamic_threshold`` quantile with its bound
    ``dynamic_threshold_max``. The samplers' keyword arguments of the same names default to these;
    passing a different value raises. ``dataclasses.replace(schedule, clip_sample_range=None)``
    drops one.
    """

    timesteps: Tuple[int, ...]
    alphas: Tuple[float, ...]
    alphas_prev: Tuple[float, ...]
    prediction_type: Optional[str] = None
    clip_sample_range: Optional[float] = None
    dynamic_threshold: Optional[float] = None
    dynamic_threshold_max: Optional[float] = None

    def __post_init__(self):
        if not len(self.timesteps) == len(self.alphas) == len(self.alphas_prev) or not self.timesteps:
            raise ValueError(f"timesteps, alphas and alphas_prev must have one equal, nonzero length; got "
                             f"{len(self.timesteps)}, {len(self.alphas)}, {len(self.alphas_prev)}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} or None, got {self.prediction_type!r}")
        if self.clip_sample_range is not None and not self.clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold must lie in (0, 1], got {self.dynamic_threshold}")
        if self.clip_sample_range is not None and self.dynamic_threshold is not None:
            raise ValueError("a schedule takes clip_sample_range or dynamic_threshold, not both")
        if self.dynamic_threshold_max is not None and self.dynamic_threshold is None:
            raise ValueError("dynamic_threshold_max needs dynamic_threshold")

    @classmethod
    def ddim(cls, noise: NoiseSchedule, num_steps: int, *, spacing: str = "leading", steps_offset: int = 0,
             set_alpha_to_one: bool = True) -> "SamplingSchedule":
        """``set_alpha_to_one``: the last step lands on ᾱ = 1 (a clean sample) rather than on ᾱ_0."""
        ts = noise.timesteps(num_steps, spacing, steps_offset)
        ab = noise.alphas_cumprod
        final = 1.0 if set_alpha_to_one else float(ab[0])
        alphas = tuple(float(ab[t]) for t in ts)
        return cls(tuple(ts), alphas, alphas[1:] + (final,))

    def __len__(self) -> int:
        return len(self.timesteps)

    def __iter__(self) -> Iterator[Tuple[int, float, float]]:
        """(t, ᾱ_t, ᾱ_prev) for each sampling step, noisiest first."""
        return iter(zip(self.timesteps, self.alphas, self.alphas_prev))

    def tail(self, strength: float, rounding: str = "ceil") -> "SamplingSchedule":
        """The last k of the N steps: encoding to ratio ``strength`` and decoding back from it
        (img2img, DiffEdit's encoding ratio r). strength = 1 is the whole schedule.

        rounding="ceil" (default): k = ⌈strength·N⌉, at least 1 — a strength above 0 always moves.
        rounding="floor": k = int(strength·N) exactly as diffusers' img2img / DiffEdit pipelines
        compute it (so 0.55 of 10 steps is 5, not 6); a strength that keeps no step raises.
        """
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must lie in (0, 1], got {strength!r}")
        n = len(self)
        if rounding == "ceil":
            k = max(1, math.ceil(strength * n - 1e-9))
        elif rounding == "floor":
            k = int(strength * n)  # diffusers' int(num_inference_steps * strength), float rounding included
            if k == 0:
                raise ValueError(f"strength={strength} keeps no step of {n} with rounding='floor' (int(strength·N) = 0); "
                                 f"raise strength or the number of steps, or use rounding='ceil'")
        else:
            raise ValueError(f"rounding must be one of {TAIL_ROUNDINGS}, got {rounding!r}")
        return replace(self, timesteps=self.timesteps[-k:], alphas=self.alphas[-k:], alphas_prev=self.alphas_prev[-k:])
