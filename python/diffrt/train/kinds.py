"""The model kinds ``diffrt train`` knows, each built from a run's TOML config:

    clip     CLIP on procedural (image, Full caption) pairs; trains its tokenizer first
    base     base text-to-image / inpainting UNet (Imagen Editor: image + mask through the
             downsampling conv; object, random or mixed masking with some fully-masked samples)
    sr       super-resolution UNet (low-resolution input with noise augmentation, image + mask)
    prior    DALL-E 2 prior on CLIP embeddings
    decoder  unCLIP decoder (CLIP-image-embedding conditioned UNet)

Config sections: [train] (TrainConfig), [model] (the model's config), [data] (resolution, seed,
masking, p_full, object_full_caption, workers), [diffusion] (beta_schedule, zero_terminal_snr, prediction_type,
caption_dropout, object_loss_weight, sr_factor, max_noise_level), [text] (clip: folder of a trained CLIP run), [init]
(from: a trained model folder of the same architecture to start from, e.g. a shipped part).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..data import FullMasking, MixedMasking, ObjectMasking, ProceduralStream, RandomMasking, collate
from ..data.dataset import ignore_stop_signals
from ..models.clip import CLIP, CLIPConfig
from ..models.prior import DiffusionPrior, PriorConfig
from ..models.text_encoder import TextEncoder
from ..models.tokenizer import Tokenizer
from ..models.unet import UNet, UNetConfig
from ..bundle import DIFFUSION_FILE, noise_schedule_from
from ..schedules import NoiseSchedule, SamplingSchedule
from .objectives import CLIPObjective, PriorObjective, UNetObjective

KINDS = ("clip", "base", "sr", "prior", "decoder")


def _config(cls, values: Dict[str, Any], section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"[{section}] has unknown keys {unknown} (known: {sorted(known)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def masking_from(data: Dict[str, Any]):
    kind, p_full = data.get("masking", "mixed"), float(data.get("p_full", 0.1))
    objects = ObjectMasking(p_full_caption=float(data.get("object_full_caption", 0.0)))
    if kind == "object":
        return MixedMasking([(objects, 1.0)], p_full=p_full)
    if kind == "random":
        return MixedMasking([(RandomMasking(), 1.0)], p_full=p_full)
    if kind == "mixed":
        return MixedMasking([(objects, 0.5), (RandomMasking(), 0.5)], p_full=p_full)
    if kind == "full":
        return FullMasking()
    raise ValueError(f"[data] masking must be 'object', 'random', 'mixed' or 'full', got {kind!r}")


def batch_factory(data: Dict[str, Any], micro_batch: int, masking, rank: int = 0, world: int = 1):
    """make_batches(start) for the loop: micro-batch ``start`` onwards of this rank's shard."""
    resolution, seed, workers = int(data.get("resolution", 32)), int(data.get("seed", 0)), int(data.get("workers", 0))
    if workers < 0:
        raise ValueError(f"[data] workers must be >= 0, got {workers}")

    def make_batches(start: int):
        stream = ProceduralStream(resolution, seed=seed, batch_size=micro_batch, rank=rank, world_size=world,
                                  masking=masking)
        stream.start = stream.resume_start(start)
        # The samples are a pure function of their index; a generator of the loader's own keeps it
        # from drawing its workers' base seed from the global RNG, which a resume restores exactly.
        loader = torch.utils.data.DataLoader(stream, batch_size=micro_batch, collate_fn=collate, num_workers=workers,
                                             worker_init_fn=ignore_stop_signals,
                                             generator=torch.Generator())
        return iter(loader)

    return make_batches


@dataclass
class Kind:
    model: nn.Module
    objective: Callable
    masking: Any
    save: Callable[[nn.Module, Path], None]
    preview: Optional[Callable[[nn.Module], torch.Tensor]] = None


def _noise_schedule(diffusion: Dict[str, Any]) -> NoiseSchedule:
    return noise_schedule_from(diffusion)


def load_text_encoder(folder) -> TextEncoder:
    folder = Path(folder)
    clip = CLIP.from_pretrained(folder)
    for p in clip.parameters():
        p.requires_grad_(False)
    return TextEncoder(Tokenizer.from_pretrained(folder), clip)


def _save_diffusion(model: nn.Module, folder: Path, diffusion: Dict[str, Any]) -> None:
    model.save_pretrained(folder)
    (folder / DIFFUSION_FILE).write_text(json.dumps(diffusion, indent=2))


def _unet_preview(text: TextEncoder, noise: NoiseSchedule, size: int, cond_image: bool, low_res: int = 0,
                  image_embed: bool = False):
    prompts = ["a large red circle", "a small blue square on the left", "two green triangles", "a yellow letter A"]

    def preview(model):
        from ..sampling import ddim_sample

        g = torch.Generator().manual_seed(0)
        b = len(prompts)
        cond, uncond = text(prompts), text([""] * b)
        extra: Dict[str, Any] = {}
        if cond_image:
            side = model.config.cond_image_size or size
            extra.update(image=torch.zeros(b, 3, side, side), mask=torch.ones(b, 1, side, side))
        if low_res:
            extra.update(low_res=torch.zeros(b, 3, size // 2, size // 2), noise_level=torch.zeros(b, dtype=torch.long))
        if image_embed:
            extra.update(image_embed=torch.nn.functional.normalize(cond["pooled"], dim=-1))
        schedule = SamplingSchedule.ddim(noise, 20, spacing="trailing")
        return ddim_sample(model, torch.randn(b, 3, size, size, generator=g), schedule, cond={**cond, **extra},
                           uncond={**uncond, **extra}, guidance=4.0, progress=False).clamp(-1, 1)

    return preview


def build(kind: str, config: Dict[str, Any]) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    data, diffusion, model_cfg = config.get("data", {}), config.get("diffusion", {}), dict(config.get("model", {}))
    resolution = int(data.get("resolution", 32))
    if kind == "clip":
        stream = ProceduralStream(resolution, seed=int(data.get("seed", 0)) + 10_000_000, masking=FullMasking())
        captions = [s["prompt"] for _, s in zip(range(int(config.get("tokenizer", {}).get("samples", 2000))), stream)]
        tok = Tokenizer.train(captions, vocab_size=int(config.get("tokenizer", {}).get("vocab_size", 512)),
                              max_length=int(config.get("tokenizer", {}).get("max_length", 48)))
        model_cfg.update(vocab_size=tok.vocab_size, max_length=tok.max_length, image_size=resolution)
        model = CLIP(_config(CLIPConfig, model_cfg, "model"))

        def save(m, folder):
            m.save_pretrained(folder)
            tok.save_pretrained(folder)

        return Kind(model, CLIPObjective(tok), FullMasking(), save)

    if "clip" not in config.get("text", {}):
        raise ValueError(f"a {kind} run needs [text] clip = '<folder of a trained CLIP>'")
    text = load_text_encoder(config["text"]["clip"])
    noise = _noise_schedule(diffusion)
    prediction = diffusion.get("prediction_type", "epsilon")
    dropout = float(diffusion.get("caption_dropout", 0.1))
    object_weight = float(diffusion.get("object_loss_weight", 1.0))
    save = lambda m, folder: _save_diffusion(m, folder, diffusion)  # noqa: E731
    if kind == "prior":
        model = DiffusionPrior(_config(PriorConfig, {**model_cfg, "embed_dim": text.embed_dim, "text_width": text.width,
                                                     "max_length": text.tokenizer.max_length}, "model"))
        return Kind(model, PriorObjective(noise, text, text.clip.encode_image, dropout), FullMasking(), save)
    common = {"context_dim": text.width, "pooled_text_dim": text.embed_dim, "prediction_type": prediction}
    if kind == "base":
        model_cfg = {**common, "image_size": resolution, "cond_image": True, **model_cfg}
        model = UNet(_config(UNetConfig, model_cfg, "model"))
        objective = UNetObjective(noise, text, prediction_type=prediction, caption_dropout=dropout,
                                  object_loss_weight=object_weight)
        preview = _unet_preview(text, noise, model.config.image_size, True)
        return Kind(model, objective, masking_from(data), save, preview)
    if kind == "sr":
        factor = int(diffusion.get("sr_factor", 2))
        model_cfg = {**common, "image_size": resolution, "cond_image": True, "low_res_channels": 3, **model_cfg}
        model = UNet(_config(UNetConfig, model_cfg, "model"))
        objective = UNetObjective(noise, text, prediction_type=prediction, caption_dropout=dropout, sr_factor=factor,
                                  max_noise_level=int(diffusion.get("max_noise_level", 250)),
                                  object_loss_weight=object_weight)
        return Kind(model, objective, masking_from(data), save, _unet_preview(text, noise, resolution, True, low_res=3))
    model_cfg = {**common, "image_size": resolution, "image_embed_dim": text.embed_dim, **model_cfg}
    model = UNet(_config(UNetConfig, model_cfg, "model"))
    objective = UNetObjective(noise, text, prediction_type=prediction, caption_dropout=dropout,
                              image_conditioning=False, image_encoder=text.clip.encode_image, embed_dropout=dropout,
                              object_loss_weight=object_weight)
    return Kind(model, objective, FullMasking(), save, _unet_preview(text, noise, resolution, False, image_embed=True))
