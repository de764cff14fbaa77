"""The model kinds ``diffrt train`` knows, each built from a run's TOML config:

    clip     CLIP on procedural (image, Full caption) pairs; trains its tokenizer first
    base     base text-to-image / inpainting UNet (Imagen Editor: image + mask through the
             downsampling conv; object, random or mixed masking with some fully-masked samples)
    sr       super-resolution UNet (low-resolution input with noise augmentation, image + mask)
    prior    DALL-E 2 prior on CLIP embeddings
    decoder  unCLIP decoder (CLIP-image-embedding conditioned UNet)

A config's sections, each a typed dataclass here with its defaults (a key a section does not know
is an error naming the section and the key):

    [model]      the model's config (UNetConfig, CLIPConfig, PriorConfig) beyond what the kind sets
    [data]       DataOptions: resolution, seed, masking, p_full, object_full_caption, workers
    [diffusion]  DiffusionOptions: the noise schedule (NoiseSchedule.from_config's keys) and how the
                 objective uses it (prediction_type, caption_dropout, object_loss_weight, sr_factor,
                 max_noise_level); written to the model folder as diffusion.json
    [text]       TextOptions: clip, the folder of a trained CLIP run (every kind but clip)
    [tokenizer]  TokenizerOptions: samples, vocab_size, max_length (the clip kind)
    [clip]       ContrastiveOptions: freeze_text (keep [text] clip's text tower and tokenizer),
                 attribute_loss_weight (an attribute head on the image embedding) (the clip kind)

``diffrt train`` itself reads [train] (TrainConfig), [init] (from: a trained model folder of the same
architecture to start from, e.g. a shipped part) and ``run_dir``. One config file may serve several
kinds: a kind ignores the sections and keys that only other kinds read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..data import FullMasking, MixedMasking, ObjectMasking, ProceduralStream, RandomMasking, collate
from ..data.dataset import ignore_stop_signals
from ..data.world import SHAPES, SIZES, VARIED_ATTRIBUTES, check_drawn, check_varied_attributes
from ..models.bundle import DIFFUSION_FILE
from ..models.clip import CLIP, CLIPConfig
from ..models.prior import DiffusionPrior, PriorConfig
from ..models.serialization import check_config
from ..models.text_encoder import TextEncoder
from ..models.tokenizer import Tokenizer
from ..models.unet import UNet, UNetConfig
from ..ops import PREDICTION_TYPES
from ..sampling import ddim_sample
from ..schedules import NOISE_SCHEDULE_DEFAULTS, TRAINING_KEYS, NoiseSchedule, SamplingSchedule
from .objectives import CLIPObjective, CLIPWithAttributeHead, PriorObjective, UNetObjective

MASKINGS = ("object", "random", "mixed", "full")
CLI_SECTIONS = ("train", "init", "run_dir")  # read by `diffrt train`, not by a kind


def _known_keys(section: str, table: Any, known) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise ValueError(f"[{section}] must be a table of keys, got {table!r}")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"[{section}] has unknown key(s) {unknown} (known: {sorted(known)})")
    return table


def _probability(name: str, value: float) -> Optional[str]:
    return None if 0.0 <= value <= 1.0 else f"{name} must be in [0, 1], got {value}"


class _Section:
    """A config section as a frozen dataclass: its fields are the section's keys and defaults."""

    SECTION: ClassVar[str]

    @classmethod
    def from_table(cls, table: Any):
        table = _known_keys(cls.SECTION, table, [f.name for f in fields(cls)])
        return cls(**table)

    def _check(self, minimums: Mapping[str, int]) -> list:
        """Type-check the fields (an int where a float belongs becomes a float); the range problems."""
        problems = check_config(self, minimums, label=f"[{self.SECTION}]")
        for f in fields(self):
            if f.type in (float, "float") and isinstance(getattr(self, f.name), int):
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        return problems

    def _raise_problems(self, problems) -> None:
        problems = [p for p in problems if p]
        if problems:
            raise ValueError(f"[{self.SECTION}] " + "; ".join(problems))


@dataclass(frozen=True)
class DataOptions(_Section):
    SECTION: ClassVar[str] = "data"
    resolution: int = 32
    seed: int = 0
    masking: str = "mixed"  # one of MASKINGS
    p_full: float = 0.1  # share of samples with the whole image masked (text-to-image)
    object_full_caption: float = 0.0  # share of object-masked samples under the scene's Full caption
    workers: int = 0  # data-loader processes
    minimal_pairs: bool = False  # odd samples repeat the previous scene with one object attribute changed
    pair_attributes: Tuple[str, ...] = VARIED_ATTRIBUTES  # what a pair may change; listed twice = drawn more
    p_glyph: float = 0.3  # share of objects that are glyphs (letters and digits)
    shapes: Tuple[str, ...] = SHAPES  # the other objects' shapes; listed twice = drawn twice as often
    sizes: Tuple[str, ...] = SIZES  # size classes; listed twice = drawn twice as often

    def __post_init__(self):
        problems = self._check({"resolution": 1, "workers": 0})
        if self.masking not in MASKINGS:
            problems.append(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        problems += [_probability("p_full", self.p_full),
                     _probability("object_full_caption", self.object_full_caption)]
        problems.append(_probability("p_glyph", self.p_glyph))
        for check in (lambda: check_varied_attributes("pair_attributes", self.pair_attributes),
                      lambda: check_drawn("shapes", self.shapes, SHAPES),
                      lambda: check_drawn("sizes", self.sizes, SIZES)):
            try:
                check()
            except ValueError as e:
                problems.append(str(e))
        self._raise_problems(problems)


@dataclass(frozen=True)
class TokenizerOptions(_Section):
    SECTION: ClassVar[str] = "tokenizer"
    samples: int = 2000  # captions the tokenizer learns its words from
    vocab_size: int = 512
    max_length: int = 48

    def __post_init__(self):
        self._raise_problems(self._check({"samples": 1, "vocab_size": 1, "max_length": 2}))


@dataclass(frozen=True)
class TextOptions(_Section):
    SECTION: ClassVar[str] = "text"
    clip: Optional[str] = None  # folder of a trained CLIP run (its final/ or a bundle's clip/)

    def __post_init__(self):
        self._raise_problems(self._check({}))


@dataclass(frozen=True)
class ContrastiveOptions(_Section):
    """[clip]: how the clip kind trains beyond the contrastive loss."""

    SECTION: ClassVar[str] = "clip"
    # Start from [text] clip and keep its text tower and tokenizer: every UNet that reads that text
    # encoder stays valid while the image tower (and so the image embedding) trains on.
    freeze_text: bool = False
    attribute_loss_weight: float = 0.0  # > 0: a multi-label attribute head on the image embedding

    def __post_init__(self):
        problems = self._check({})
        if not self.attribute_loss_weight >= 0:
            problems.append(f"attribute_loss_weight must be >= 0, got {self.attribute_loss_weight}")
        self._raise_problems(problems)


@dataclass(frozen=True)
class DiffusionOptions(_Section):
    """[diffusion]: the noise schedule, read by :meth:`NoiseSchedule.from_config` with its defaults,
    and the objective's options below (their names are :data:`diffrt.schedules.TRAINING_KEYS`)."""

    SECTION: ClassVar[str] = "diffusion"
    prediction_type: str = "epsilon"
    caption_dropout: float = 0.1  # prompts dropped to "" (classifier-free guidance)
    object_loss_weight: float = 1.0  # squared error inside objects weighs this many times the background's
    sr_factor: int = 2  # sr: the low-resolution input is the image downsampled by this factor
    max_noise_level: int = 250  # sr: noise augmentation of the low-resolution input, below this timestep
    noise_schedule: NoiseSchedule = field(default_factory=lambda: NoiseSchedule.from_config({}), compare=False)
    table: Mapping[str, Any] = field(default_factory=dict)  # as written: the model folder's diffusion.json

    @classmethod
    def from_table(cls, table: Any) -> "DiffusionOptions":
        table = _known_keys(cls.SECTION, table, [*NOISE_SCHEDULE_DEFAULTS, *TRAINING_KEYS])
        try:
            noise = NoiseSchedule.from_config(table)
        except ValueError as e:
            raise ValueError(f"[{cls.SECTION}] {e}") from e
        return cls(**{k: table[k] for k in TRAINING_KEYS if k in table}, noise_schedule=noise, table=dict(table))

    def __post_init__(self):
        problems = self._check({"sr_factor": 1, "max_noise_level": 1})
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        problems.append(_probability("caption_dropout", self.caption_dropout))
        if not self.object_loss_weight > 0:
            problems.append(f"object_loss_weight must be > 0, got {self.object_loss_weight}")
        self._raise_problems(problems)


@dataclass(frozen=True)
class RunConfig:
    """A run's config with every section typed, its defaults filled and its keys checked; ``model`` is
    the [model] table, checked against the kind's model config (built once the text encoder is known)."""

    kind: str
    model: Mapping[str, Any]
    data: DataOptions
    diffusion: DiffusionOptions
    text: TextOptions
    tokenizer: TokenizerOptions
    clip: ContrastiveOptions

    @classmethod
    def parse(cls, kind: str, config: Mapping[str, Any]) -> "RunConfig":
        spec = _spec(kind)
        sections = {"data": DataOptions, "diffusion": DiffusionOptions, "text": TextOptions,
                    "tokenizer": TokenizerOptions, "clip": ContrastiveOptions}
        unknown = sorted(set(config) - set(sections) - {"model"} - set(CLI_SECTIONS))
        if unknown:
            raise ValueError(f"unknown section(s) {unknown} (known: {sorted([*sections, 'model', *CLI_SECTIONS])})")
        model = _known_keys("model", config.get("model", {}), [f.name for f in fields(spec.model_config)])
        kind_set = sorted(set(model) & set(spec.derived))
        if kind_set:
            raise ValueError(f"[model] {kind_set[0]} is set by the {kind} kind ({spec.derived[kind_set[0]]}), "
                             "not by the config")
        parsed = {name: section.from_table(config.get(name, {})) for name, section in sections.items()}
        if "prediction_type" in model and model["prediction_type"] != parsed["diffusion"].prediction_type:
            raise ValueError(f"[model] prediction_type {model['prediction_type']!r} differs from [diffusion] "
                             f"prediction_type {parsed['diffusion'].prediction_type!r}, what the objective trains: "
                             "set it in [diffusion] only")
        return cls(kind, dict(model), **parsed)


def masking_from(data: Union[DataOptions, Mapping[str, Any]]):
    """The masking strategy of a [data] section."""
    if not isinstance(data, DataOptions):
        data = DataOptions.from_table(data)
    objects = ObjectMasking(p_full_caption=data.object_full_caption)
    if data.masking == "object":
        return MixedMasking([(objects, 1.0)], p_full=data.p_full)
    if data.masking == "random":
        return MixedMasking([(RandomMasking(), 1.0)], p_full=data.p_full)
    if data.masking == "mixed":
        return MixedMasking([(objects, 0.5), (RandomMasking(), 0.5)], p_full=data.p_full)
    return FullMasking()


def batch_factory(data: Union[DataOptions, Mapping[str, Any]], micro_batch: int, masking, rank: int = 0,
                  world: int = 1):
    """make_batches(start) for the loop: micro-batch ``start`` onwards of this rank's shard."""
    if not isinstance(data, DataOptions):
        data = DataOptions.from_table(data)

    def make_batches(start: int):
        stream = ProceduralStream(data.resolution, seed=data.seed, batch_size=micro_batch, rank=rank, world_size=world,
                                  masking=masking, minimal_pairs=data.minimal_pairs,
                                  pair_attributes=data.pair_attributes, p_glyph=data.p_glyph, shapes=data.shapes,
                                  sizes=data.sizes)
        stream.start = stream.resume_start(start)
        # The samples are a pure function of their index; a generator of the loader's own keeps it
        # from drawing its workers' base seed from the global RNG, which a resume restores exactly.
        loader = torch.utils.data.DataLoader(stream, batch_size=micro_batch, collate_fn=collate,
                                             num_workers=data.workers, worker_init_fn=ignore_stop_signals,
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


def load_text_encoder(folder) -> TextEncoder:
    folder = Path(folder)
    clip = CLIP.from_pretrained(folder)
    for p in clip.parameters():
        p.requires_grad_(False)
    return TextEncoder(Tokenizer.from_pretrained(folder), clip)


def _model_config(cls, values: Mapping[str, Any]):
    try:
        return cls(**values)  # the config's check_config stores lists as tuples
    except (TypeError, ValueError) as e:
        raise ValueError(f"[model] {e}") from e


def _save_with_diffusion(run: RunConfig) -> Callable[[nn.Module, Path], None]:
    def save(model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder)
        (Path(folder) / DIFFUSION_FILE).write_text(json.dumps(dict(run.diffusion.table), indent=2))

    return save


PREVIEW_PROMPTS = ["a large red circle", "a small blue square on the left", "two green triangles", "a yellow letter A"]


def _unet_preview(text: TextEncoder, run: RunConfig, *, low_res: bool = False, image_embed: bool = False):
    """Samples of PREVIEW_PROMPTS (text-to-image: the whole image masked for an image-conditioned UNet)."""
    noise = run.diffusion.noise_schedule

    def preview(model):
        g = torch.Generator().manual_seed(0)
        b, size = len(PREVIEW_PROMPTS), model.config.image_size
        cond, uncond = text(PREVIEW_PROMPTS), text([""] * b)
        extra: Dict[str, Any] = dict(model.full_mask_condition(b))
        if low_res:
            low = size // run.diffusion.sr_factor
            extra.update(low_res=torch.zeros(b, 3, low, low), noise_level=torch.zeros(b, dtype=torch.long))
        if image_embed:
            extra.update(image_embed=torch.nn.functional.normalize(cond["pooled"], dim=-1))
        schedule = SamplingSchedule.ddim(noise, 20, spacing="trailing")
        return ddim_sample(model, torch.randn(b, 3, size, size, generator=g), schedule, cond={**cond, **extra},
                           uncond={**uncond, **extra}, guidance=4.0, progress=False).clamp(-1, 1)

    return preview


TEXT_TOWER = ("token_embedding", "text_position", "text_blocks", "text_norm", "text_projection")


def _frozen_text_clip(run: RunConfig) -> Tuple[CLIP, Tokenizer]:
    """[clip] freeze_text: the CLIP and tokenizer of [text] clip, its text tower frozen."""
    if run.text.clip is None:
        raise ValueError("[clip] freeze_text needs [text] clip = '<folder of the CLIP whose text tower to keep>'")
    if run.model:
        raise ValueError(f"[clip] freeze_text takes the architecture from [text] clip; [model] must be empty, got "
                         f"{sorted(run.model)}")
    folder = Path(run.text.clip)
    model, tok = CLIP.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    if model.config.image_size != run.data.resolution:
        raise ValueError(f"[data] resolution {run.data.resolution} differs from the image size of [text] clip's "
                         f"CLIP ({model.config.image_size})")
    for name, p in model.named_parameters():
        if name.split(".")[0] in TEXT_TOWER:
            p.requires_grad_(False)
    return model, tok


def _build_clip(run: RunConfig, text: None) -> Kind:
    if run.clip.freeze_text:
        model, tok = _frozen_text_clip(run)
    else:
        tok_options = run.tokenizer
        stream = ProceduralStream(run.data.resolution, seed=run.data.seed + 10_000_000, masking=FullMasking())
        captions = [s["prompt"] for _, s in zip(range(tok_options.samples), stream)]
        tok = Tokenizer.train(captions, vocab_size=tok_options.vocab_size, max_length=tok_options.max_length)
        model = CLIP(_model_config(CLIPConfig, {**run.model, "vocab_size": tok.vocab_size,
                                                "max_length": tok.max_length, "image_size": run.data.resolution}))
    weight = run.clip.attribute_loss_weight
    trained = CLIPWithAttributeHead(model) if weight > 0 else model

    def save(m, folder):
        getattr(m, "clip", m).save_pretrained(folder)  # the attribute head is training-only
        tok.save_pretrained(folder)

    return Kind(trained, CLIPObjective(tok, weight), FullMasking(), save)


def _build_prior(run: RunConfig, text: TextEncoder) -> Kind:
    model = DiffusionPrior(_model_config(PriorConfig, {**run.model, "embed_dim": text.embed_dim,
                                                       "text_width": text.width,
                                                       "max_length": text.tokenizer.max_length}))
    d = run.diffusion
    objective = PriorObjective(d.noise_schedule, text, text.clip.encode_image, d.caption_dropout)
    return Kind(model, objective, FullMasking(), _save_with_diffusion(run))


def _unet(run: RunConfig, text: TextEncoder, **kind_values) -> UNet:
    """The kind's values, then the text encoder's widths and the [diffusion] prediction type, under [model]."""
    values = {"context_dim": text.width, "pooled_text_dim": text.embed_dim,
              "prediction_type": run.diffusion.prediction_type, "image_size": run.data.resolution, **kind_values}
    return UNet(_model_config(UNetConfig, {**values, **run.model}))


def _unet_objective(run: RunConfig, text: TextEncoder, **options) -> UNetObjective:
    d = run.diffusion
    return UNetObjective(d.noise_schedule, text, prediction_type=d.prediction_type, caption_dropout=d.caption_dropout,
                         object_loss_weight=d.object_loss_weight, **options)


def _build_base(run: RunConfig, text: TextEncoder) -> Kind:
    model = _unet(run, text, cond_image=True)
    return Kind(model, _unet_objective(run, text), masking_from(run.data), _save_with_diffusion(run),
                _unet_preview(text, run))


def _build_sr(run: RunConfig, text: TextEncoder) -> Kind:
    model = _unet(run, text, cond_image=True, low_res_channels=3)
    objective = _unet_objective(run, text, sr_factor=run.diffusion.sr_factor,
                                max_noise_level=run.diffusion.max_noise_level)
    return Kind(model, objective, masking_from(run.data), _save_with_diffusion(run),
                _unet_preview(text, run, low_res=True))


def _build_decoder(run: RunConfig, text: TextEncoder) -> Kind:
    model = _unet(run, text, image_embed_dim=text.embed_dim)
    objective = _unet_objective(run, text, image_conditioning=False, image_encoder=text.clip.encode_image,
                                embed_dropout=run.diffusion.caption_dropout)
    return Kind(model, objective, FullMasking(), _save_with_diffusion(run), _unet_preview(text, run, image_embed=True))


@dataclass(frozen=True)
class KindSpec:
    """A model kind: its model's config class, the [model] fields it sets itself (with where from),
    whether it needs a trained CLIP ([text] clip), and how it builds the model, objective and saver."""

    model_config: type
    derived: Mapping[str, str]
    needs_text: bool
    build: Callable[[RunConfig, Optional[TextEncoder]], Kind]


REGISTRY: Dict[str, KindSpec] = {
    "clip": KindSpec(CLIPConfig, {"vocab_size": "the trained tokenizer's", "max_length": "[tokenizer] max_length",
                                  "image_size": "[data] resolution"}, False, _build_clip),
    "base": KindSpec(UNetConfig, {}, True, _build_base),
    "sr": KindSpec(UNetConfig, {}, True, _build_sr),
    "prior": KindSpec(PriorConfig, {"embed_dim": "the CLIP's", "text_width": "the CLIP's",
                                    "max_length": "the CLIP tokenizer's"}, True, _build_prior),
    "decoder": KindSpec(UNetConfig, {}, True, _build_decoder),
}
KINDS: Tuple[str, ...] = tuple(REGISTRY)


def _spec(kind: str) -> KindSpec:
    if kind not in REGISTRY:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return REGISTRY[kind]


def build(kind: str, config: Union[RunConfig, Mapping[str, Any]]) -> Kind:
    """The model, objective, masking, saver and preview of a ``kind`` run from its config (the TOML
    file's tables, or a parsed :class:`RunConfig`)."""
    spec = _spec(kind)
    run = config if isinstance(config, RunConfig) else RunConfig.parse(kind, config)
    if run.kind != kind:
        raise ValueError(f"the config was parsed for a {run.kind} run, not a {kind} run")
    text = None
    if spec.needs_text:
        if run.text.clip is None:
            raise ValueError(f"a {kind} run needs [text] clip = '<folder of a trained CLIP>'")
        text = load_text_encoder(run.text.clip)
    return spec.build(run, text)
