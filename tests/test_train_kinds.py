"""The registry of model kinds: typed config sections with their defaults, unknown keys named by
section, every shipped training config parsing, and a model trained with a non-default noise
schedule sampling with it once loaded from its folder."""

import dataclasses
import shutil
import tomllib

import pytest
import torch

from diffrt.models.bundle import DEFAULT_DIRECTORY, Bundle
from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.tokenizer import Tokenizer
from diffrt.schedules import NOISE_SCHEDULE_DEFAULTS, TRAINING_KEYS, NoiseSchedule, SamplingSchedule
from diffrt.train.kinds import KINDS, REGISTRY, DiffusionOptions, RunConfig, build
from diffrt.train.objectives import UNetObjective
from tests._helpers import SHIPPED_CONFIGS

CONFIGS = SHIPPED_CONFIGS
UNET = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8], "head_dim": 16}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"], vocab_size=340, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=32, text_layers=1, text_heads=4,
                           image_size=16, patch_size=4, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    folder = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_kinds_are_the_registry():
    assert KINDS == ("clip", "base", "sr", "prior", "decoder") and set(REGISTRY) == set(KINDS)


def test_the_diffusion_section_is_the_schedule_and_the_training_keys():
    """DiffusionOptions' options are exactly the keys NoiseSchedule.from_config allows besides its own,
    so every [diffusion] a run accepts is a diffusion.json its model folder loads."""
    names = {f.name for f in dataclasses.fields(DiffusionOptions)} - {"noise_schedule", "table"}
    assert names == set(TRAINING_KEYS) and not names & set(NOISE_SCHEDULE_DEFAULTS)
    defaults = RunConfig.parse("base", {}).diffusion
    assert (defaults.prediction_type, defaults.caption_dropout, defaults.object_loss_weight, defaults.sr_factor,
            defaults.max_noise_level) == ("epsilon", 0.1, 1.0, 2, 250)


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda f: f.stem)
def test_every_shipped_training_config_parses_through_the_registry(config_file):
    """Each config beside the shipped weights parses with its kind; its [diffusion] gives the noise
    schedule the shipped part loads from its diffusion.json."""
    config = tomllib.loads(config_file.read_text())
    kind = config_file.stem.split("_")[0]
    run = RunConfig.parse(kind, config)
    assert run.kind == kind and dict(run.model) == config["model"]
    assert run.data.resolution == config["data"]["resolution"]
    if kind != "clip":
        assert run.text.clip == config["text"]["clip"]
        shipped = Bundle(DEFAULT_DIRECTORY).noise_schedule(kind)
        torch.testing.assert_close(run.diffusion.noise_schedule.alphas_cumprod, shipped.alphas_cumprod,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("section, key", [
    ("data", "resolutoin"), ("diffusion", "beta_scheduel"), ("model", "base_chanels"), ("tokenizer", "vocab"),
    ("text", "clip_dir"),
])
def test_an_unknown_key_names_its_section_and_key(section, key):
    with pytest.raises(ValueError, match=rf"\[{section}\] has unknown key\(s\) \['{key}'\]"):
        RunConfig.parse("base", {section: {key: 1}})


def test_an_unknown_section_is_named():
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['diffuson'\]"):
        RunConfig.parse("prior", {"diffuson": {"beta_schedule": "linear"}})
    assert RunConfig.parse("prior", {"train": {"steps": 1}, "init": {"from": "x"}, "run_dir": "runs/x"})


@pytest.mark.parametrize("section, values, words", [
    ("data", {"resolution": "32"}, "[data] resolution must be an int, got '32'"),
    ("data", {"workers": -1}, "[data] workers must be >= 0, got -1"),
    ("data", {"masking": "boxes"}, "[data] masking must be one of"),
    ("data", {"p_full": 1.5}, "[data] p_full must be in [0, 1], got 1.5"),
    ("diffusion", {"prediction_type": "score"}, "[diffusion] prediction_type must be one of"),
    ("diffusion", {"caption_dropout": "0.1"}, "[diffusion] caption_dropout must be a number"),
    ("diffusion", {"num_train_timesteps": 0}, "[diffusion] num_train_timesteps must be >= 1"),
    ("diffusion", {"zero_terminal_snr": "yes"}, "[diffusion] zero_terminal_snr must be true or false"),
    ("tokenizer", {"max_length": 1}, "[tokenizer] max_length must be >= 2"),
    ("text", {"clip": 3}, "[text] clip must be a str"),
])
def test_bad_values_name_their_section(section, values, words):
    with pytest.raises(ValueError) as e:
        RunConfig.parse("sr", {section: values})
    assert words in str(e.value)


def test_an_int_where_a_number_belongs_is_a_float():
    run = RunConfig.parse("base", {"data": {"p_full": 1}, "diffusion": {"caption_dropout": 0}})
    assert run.data.p_full == 1.0 and isinstance(run.data.p_full, float)
    assert isinstance(run.diffusion.caption_dropout, float)


@pytest.mark.parametrize("kind, key", [("clip", "vocab_size"), ("clip", "image_size"), ("prior", "embed_dim"),
                                       ("prior", "max_length")])
def test_model_fields_the_kind_sets_are_not_silently_replaced(kind, key):
    """The kind sets these from the tokenizer, the data or the CLIP; a [model] value used to be dropped."""
    with pytest.raises(ValueError, match=rf"\[model\] {key} is set by the {kind} kind"):
        RunConfig.parse(kind, {"model": {key: 64}})


def test_a_model_prediction_type_other_than_the_objectives_is_refused():
    """[model] prediction_type used to override the UNet's while the objective trained [diffusion]'s:
    a model folder whose config says one parameterisation and whose weights predict another."""
    with pytest.raises(ValueError, match=r"\[model\] prediction_type 'epsilon' differs from \[diffusion\]"):
        RunConfig.parse("base", {"model": {"prediction_type": "epsilon"},
                                 "diffusion": {"prediction_type": "v_prediction"}})
    run = RunConfig.parse("base", {"model": {"prediction_type": "sample"}, "diffusion": {"prediction_type": "sample"}})
    assert run.model["prediction_type"] == "sample"


def test_max_noise_level_beyond_the_schedule_is_refused():
    noise = NoiseSchedule.from_config({"num_train_timesteps": 100})
    with pytest.raises(ValueError, match=r"max_noise_level must be in \[1, 100\]"):
        UNetObjective(noise, None, prediction_type="epsilon", sr_factor=2, max_noise_level=250)
    UNetObjective(noise, None, prediction_type="epsilon", max_noise_level=250)  # no low-res input: not used


def test_a_kind_without_its_clip_says_so():
    with pytest.raises(ValueError, match=r"a decoder run needs \[text\] clip"):
        build("decoder", {"model": UNET})
    with pytest.raises(ValueError, match="kind must be one of"):
        build("vae", {})


def test_a_non_default_schedule_trains_and_samples_from_the_model_folder(tmp_path, clip_folder):
    """A base model trained on 500 linear timesteps to β = 0.03: its objective noises on those, its
    folder's diffusion.json keeps them and the bundle's pipeline samples on them (t from 499)."""
    from diffrt.pipelines import ImagenEditorPipeline

    config = {"model": UNET, "data": {"resolution": 16}, "text": {"clip": str(clip_folder)},
              "diffusion": {"beta_schedule": "linear", "num_train_timesteps": 500, "beta_end": 0.03,
                            "prediction_type": "v_prediction"}}
    kind = build("base", config)
    trained = NoiseSchedule.make("linear", 500, beta_start=1e-4, beta_end=0.03)
    assert kind.objective.noise_schedule.num_train_timesteps == 500
    torch.testing.assert_close(kind.objective.noise_schedule.alphas_cumprod, trained.alphas_cumprod, rtol=0, atol=0)
    models = tmp_path / "models"
    kind.save(kind.model, models / "base")
    shutil.copytree(clip_folder, models / "clip")

    bundle = Bundle(models)
    loaded = bundle.noise_schedule("base")
    torch.testing.assert_close(loaded.alphas_cumprod, trained.alphas_cumprod, rtol=0, atol=0)
    pipe = ImagenEditorPipeline(bundle.unet("base"), loaded, bundle.text_encoder, num_steps=3)
    seen = []
    pipe(["a red circle"], output_type="pt", progress=False, generator=torch.Generator().manual_seed(0),
         callback=lambda step: seen.append(int(step["t"])))
    assert seen == list(SamplingSchedule.ddim(trained, 3, spacing="trailing").timesteps) and seen[0] == 499


def test_minimal_pairs_reach_the_training_batches():
    from diffrt.data import FullMasking
    from diffrt.train.kinds import DataOptions, batch_factory

    with pytest.raises(ValueError, match=r"\[data\] minimal_pairs must be a bool"):
        DataOptions.from_table({"minimal_pairs": "yes"})
    batch = next(batch_factory({"minimal_pairs": True, "resolution": 32, "seed": 2}, 4, FullMasking())(0))
    prompts = batch["prompt"]
    for a, b in (prompts[0:2], prompts[2:4]):  # each pair's captions differ in one attribute's words only
        changed = set(a.split()) ^ set(b.split())
        assert a != b and 1 <= len(changed) <= 8, (a, b)
    with pytest.raises(ValueError, match="even batch_size"):
        batch_factory({"minimal_pairs": True, "resolution": 32}, 3, FullMasking())(0)


def test_the_data_mix_is_checked_and_reaches_the_training_batches():
    from diffrt.data import FullMasking
    from diffrt.train.kinds import DataOptions, batch_factory

    mix = {"resolution": 32, "seed": 4, "p_glyph": 0, "shapes": ["cross", "cross", "star"], "sizes": ["large"]}
    options = DataOptions.from_table(mix)
    assert options.shapes == ("cross", "cross", "star") and options.p_glyph == 0.0
    batch = next(batch_factory(mix, 8, FullMasking())(0))
    drawn = [o for labels in batch["labels"] for o in labels]
    assert {o["shape"] for o in drawn} <= {"cross", "star"} and {o["size"] for o in drawn} == {"large"}
    for bad, message in (({"p_glyph": 2}, "p_glyph must be in"), ({"shapes": ["K"]}, "shapes must name"),
                         ({"sizes": []}, "sizes must name"), ({"sizes": "large"}, r"\[data\] sizes must be")):
        with pytest.raises(ValueError, match=message):
            DataOptions.from_table(bad)


def test_pair_attributes_are_checked_in_the_data_section():
    from diffrt.train.kinds import DataOptions

    assert DataOptions.from_table({"pair_attributes": ["shape", "shape", "position"]}).pair_attributes == (
        "shape", "shape", "position")
    with pytest.raises(ValueError, match=r"\[data\] pair_attributes must name"):
        DataOptions.from_table({"pair_attributes": ["texture"]})
    with pytest.raises(ValueError, match=r"\[data\]"):
        DataOptions.from_table({"pair_attributes": "shape"})
