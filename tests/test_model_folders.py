"""Loading a model folder (config.json + model.safetensors) checks everything it reads: every
architectural field present and of the right type and range, weights floating-point and finite,
readable text; each error names the file and the field or tensor."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffrt.models import CLIP, CLIPConfig, DiffusionPrior, PriorConfig, Tokenizer, UNet, UNetConfig

TINY_UNET = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(8,), head_dim=8, context_dim=16)
TINY_CLIP = CLIPConfig(vocab_size=300, max_length=8, text_width=16, text_layers=1, text_heads=2, image_size=16,
                       patch_size=8, image_width=16, image_layers=1, image_heads=2, embed_dim=8)
TINY_PRIOR = PriorConfig(embed_dim=8, text_width=16, max_length=8, width=16, layers=1, heads=2)
MODELS = {"unet": (UNet, TINY_UNET), "clip": (CLIP, TINY_CLIP), "prior": (DiffusionPrior, TINY_PRIOR)}


@pytest.fixture(params=sorted(MODELS))
def saved(request, tmp_path):
    cls, config = MODELS[request.param]
    torch.manual_seed(0)
    model = cls(config)
    folder = tmp_path / request.param
    model.save_pretrained(folder)
    return cls, model, folder


@pytest.fixture
def unet_folder(tmp_path):
    torch.manual_seed(0)
    model = UNet(TINY_UNET)
    model.save_pretrained(tmp_path / "unet")
    return tmp_path / "unet"


def edit_config(folder, change):
    file = folder / "config.json"
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))
    return file


def test_a_saved_folder_loads_back_identically(saved):
    cls, model, folder = saved
    loaded = cls.from_pretrained(folder)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_constructing_in_code_keeps_the_defaults():
    assert UNetConfig().head_dim == 32 and CLIPConfig().text_heads == 4 and PriorConfig().heads == 8
    config = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,))
    assert UNet(config).config.head_dim == 32


@pytest.mark.parametrize("field", ["head_dim", "channel_mult", "prediction_type", "image_embed_dim"])
def test_a_missing_field_is_an_error_not_a_default(unet_folder, field):
    """Without head_dim the default 32 still fits the weights (one head where the model was trained
    with four): the folder would load and produce wrong images."""
    file = edit_config(unet_folder, lambda d: d.pop(field))
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*missing.*{field}"):
        UNet.from_pretrained(unet_folder)


def test_every_model_type_requires_all_its_fields(saved):
    cls, _, folder = saved
    fields = [k for k in json.loads((folder / "config.json").read_text()) if k != "model_type"]
    complete = (folder / "config.json").read_text()
    for field in fields:
        file = edit_config(folder, lambda d: d.pop(field))
        with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*missing.*{field}"):
            cls.from_pretrained(folder)
        file.write_text(complete)


@pytest.mark.parametrize("field, value, words", [
    ("head_dim", 0, "head_dim must be >= 1"),
    ("head_dim", -8, "head_dim must be >= 1"),
    ("base_channels", -16, "base_channels must be >= 1"),
    ("in_channels", 0, "in_channels must be >= 1"),
    ("out_channels", -3, "out_channels must be >= 1"),
    ("cond_channels", -16, "cond_channels must be >= 1"),
    ("low_res_channels", -3, "low_res_channels must be >= 0"),
    ("groups", 0, "groups must be >= 1"),
    ("image_size", None, "image_size must be an int"),
    ("image_size", 16.0, "image_size must be an int"),
    ("image_size", "16", "image_size must be an int"),
    ("head_dim", True, "head_dim must be an int"),
    ("cond_image", 1, "cond_image must be a bool"),
    ("channel_mult", [1, "2"], "channel_mult must be a list of ints"),
    ("channel_mult", [], "channel_mult must not be empty"),
    ("channel_mult", [1, 0], "channel_mult must be >= 1"),
    ("channel_mult", 2, "channel_mult must be a list of ints"),
    ("attention_resolutions", [0], "attention_resolutions must be >= 1"),
    ("context_dim", 0, "context_dim must be >= 1"),
    ("prediction_type", 3, "prediction_type must be a str"),
    ("image_embed_dim", "x", "image_embed_dim must be an int or null"),
    ("num_res_blocks", -1, "num_res_blocks must be >= 0"),
])
def test_bad_values_name_the_file_and_field(unet_folder, field, value, words):
    file = edit_config(unet_folder, lambda d: d.update({field: value}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{words}"):
        UNet.from_pretrained(unet_folder)


@pytest.mark.parametrize("cls, field, value, words", [
    (CLIP, "text_heads", 0, "text_heads must be >= 1"),
    (CLIP, "patch_size", 0, "patch_size must be >= 1"),
    (CLIP, "vocab_size", -1, "vocab_size must be >= 1"),
    (CLIP, "image_size", None, "image_size must be an int"),
    (DiffusionPrior, "heads", 0, "heads must be >= 1"),
    (DiffusionPrior, "width", -16, "width must be >= 1"),
    (DiffusionPrior, "layers", 1.5, "layers must be an int"),
])
def test_bad_values_of_clip_and_prior(tmp_path, cls, field, value, words):
    config = TINY_CLIP if cls is CLIP else TINY_PRIOR
    cls(config).save_pretrained(tmp_path)
    file = edit_config(tmp_path, lambda d: d.update({field: value}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{words}"):
        cls.from_pretrained(tmp_path)


def test_bad_values_fail_in_code_too():
    with pytest.raises(ValueError, match="head_dim must be >= 1"):
        UNetConfig(head_dim=0)
    with pytest.raises(ValueError, match="image_size must be an int"):
        CLIPConfig(image_size=None)
    with pytest.raises(ValueError, match="heads must be >= 1"):
        PriorConfig(heads=0)


@pytest.mark.parametrize("content, words", [
    (b"[1, 2, 3]", "must hold a JSON object"),
    (b'"UNet"', "must hold a JSON object"),
    (b'{"model_type": "UNet", "head_dim": \xff}', "not UTF-8"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"model_type": "UNet",', "not valid JSON"),
    (b'{"model_type": "CLIP"}', "holds a 'CLIP' config"),
])
def test_unreadable_configs_name_the_file(unet_folder, content, words):
    file = unet_folder / "config.json"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{words}"):
        UNet.from_pretrained(unet_folder)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_floating_weights_are_refused(unet_folder, dtype):
    file = unet_folder / "model.safetensors"
    tensors = load_file(str(file))
    name = "conv_in.weight"
    tensors[name] = tensors[name].round().to(dtype)
    save_file(tensors, str(file))
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{name}.*not floating-point"):
        UNet.from_pretrained(unet_folder)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_finite_weights_are_refused(unet_folder, bad, dtype):
    file = unet_folder / "model.safetensors"
    tensors = {k: v.to(dtype) for k, v in load_file(str(file)).items()}
    name = "time_embed.0.weight"
    tensors[name].view(-1)[3] = bad
    save_file(tensors, str(file))
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{name}.*1 non-finite"):
        UNet.from_pretrained(unet_folder)


def test_half_precision_files_still_load(unet_folder):
    file = unet_folder / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(file)).items()}, str(file))
    assert next(UNet.from_pretrained(unet_folder).parameters()).dtype == torch.float32


@pytest.mark.parametrize("content, words", [
    (b'{"pieces": ["a\xff"], "max_length": 8}', "not UTF-8"),
    (b'[1]', "not a diffrt tokenizer vocabulary"),
    (b'{"pieces": "abc", "max_length": 8}', "pieces must be a list of strings"),
    (b'{"pieces": ["a", 3], "max_length": 8}', "pieces must be a list of strings"),
    (b'{"pieces": ["a"], "max_length": "8"}', "max_length must be an int"),
    (b'{"pieces": ["a"], "max_length": 1}', "max_length must be >= 2"),
    (b'{"pieces": ["a", "a"], "max_length": 8}', "unique"),
])
def test_bad_tokenizer_vocabularies_name_the_file(tmp_path, content, words):
    Tokenizer.train(["a red circle"], vocab_size=400, max_length=8).save_pretrained(tmp_path)
    file = tmp_path / "vocab.json"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(file))}.*{words}"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe{", "not valid UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"beta_schedule": "linear", "beta_start": -0.1}', "beta_start must lie in (0, 1)"),
    (b'{"beta_schedule": "linear", "beta_end": "x"}', "invalid noise schedule"),
    (b'{"beta_schedule": "cubic"}', "beta schedule must be one of"),
    (b'{"zero_terminal_snr": "false"}', "zero_terminal_snr must be true or false"),
])
def test_bad_noise_schedules_name_the_file(tmp_path, content, words):
    from diffrt.models.bundle import DIFFUSION_FILE, Bundle

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / DIFFUSION_FILE).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(words)) as e:
        Bundle(tmp_path).noise_schedule("base")
    assert str(tmp_path / "base" / DIFFUSION_FILE) in str(e.value)
