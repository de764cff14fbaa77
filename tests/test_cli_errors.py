"""The image commands on bad input: options are checked when parsed (naming the option), --out before
any model loads, image files of any PIL mode read as they look (or are refused), damaged model
folders and file-system failures end in one line `diffrt CMD: error: …` and exit 2; bugs keep their
traceback. Tiny untrained models built here stand in for a trained bundle."""

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffrt import NoiseSchedule
from diffrt.cli import files, main
from diffrt.cli import generate as image_commands
from diffrt.cli.errors import CommandError
from diffrt import images as image_io
from diffrt.models import CLIP, CLIPConfig, DiffusionPrior, PriorConfig, TextEncoder, Tokenizer, UNet, UNetConfig
from diffrt.pipelines import ImagicPipeline, UnCLIPPipeline

TINY_UNET = dict(image_size=32, patch_size=2, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), head_dim=8, context_dim=16, pooled_text_dim=8,
                 prediction_type="v_prediction")


def build_bundle(root):
    """clip/ (+ tokenizer), base/ (image-conditioned), prior/ and decoder/ with diffusion.json."""
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"], vocab_size=400, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=16, text_layers=1, text_heads=2,
                           image_size=32, patch_size=8, image_width=16, image_layers=1, image_heads=2, embed_dim=8))
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    UNet(UNetConfig(**TINY_UNET, cond_image=True)).save_pretrained(root / "base")
    UNet(UNetConfig(**TINY_UNET, image_embed_dim=8)).save_pretrained(root / "decoder")
    DiffusionPrior(PriorConfig(embed_dim=8, text_width=16, max_length=8, width=16, layers=1, heads=2)).save_pretrained(
        root / "prior")
    for part in ("base", "prior", "decoder"):
        (root / part / "diffusion.json").write_text(json.dumps({"beta_schedule": "linear"}))
    return root


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("models"))


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- options are validated when parsed -------------------------------------------------------------

COMMANDS = {
    "generate": ["generate", "--prompt", "a red circle"],
    "inpaint": ["inpaint", "--image", "x.png", "--mask", "m.png", "--prompt", "a red circle"],
    "diffedit": ["diffedit", "--image", "x.png", "--source", "a", "--target", "b"],
    "imagic": ["imagic", "--image", "x.png", "--target", "b"],
    "variations": ["variations", "--image", "x.png"],
    "interpolate": ["interpolate", "--image-a", "x.png", "--image-b", "y.png"],
    "demo": ["demo"],
}
BAD_OPTIONS = [
    (command, option, value) for command in COMMANDS for option, value in [
        ("--steps", "0"), ("--steps", "-5"), ("--steps", "2.5"), ("--guidance", "nan"), ("--guidance", "inf"),
        ("--guidance", "-1"), ("--seed", str(10**23)), ("--seed", "-1"), ("--seed", "2e3"),
    ]
] + [
    (command, "--num-images", value) for command in ("generate", "inpaint", "variations") for value in ("0", "-2")
] + [
    ("imagic", "--eta", "nan"), ("imagic", "--eta", "inf"), ("imagic", "--embedding-steps", "-1"),
    ("imagic", "--finetune-steps", "-1"), ("demo", "--embedding-steps", "-1"), ("demo", "--finetune-steps", "-3"),
    ("diffedit", "--strength", "0"), ("diffedit", "--strength", "1.5"), ("diffedit", "--strength", "nan"),
    ("diffedit", "--strength", "-0.2"), ("interpolate", "--frames", "0"), ("interpolate", "--frames", "1"),
    ("diffedit", "--mask-strength", "0"), ("diffedit", "--mask-threshold", "1"),
    ("diffedit", "--mask-threshold", "-0.1"), ("diffedit", "--mask-smooth", "-1"),
]


@pytest.mark.parametrize("command, option, value", BAD_OPTIONS)
def test_bad_option_values_fail_at_parsing_naming_the_option(tmp_path, capsys, command, option, value):
    argv = COMMANDS[command] + [option, value, "--model", str(tmp_path / "no-models"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected" in err, err
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted(tmp_path, bundle_dir, capsys):
    code, out, err = run(capsys, "generate", "--prompt", "a red circle", "--num-images", "1", "--seed", 2**64 - 1,
                         "--steps", 1, "--model", bundle_dir, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "o").glob("*.png"))) == 1


def test_steps_beyond_the_training_timesteps_name_the_option(tmp_path, bundle_dir, capsys):
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--steps", 1001, "--model", bundle_dir,
                       "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "diffrt generate: error: --steps must be <= 1000" in err, err


# -- --out is checked before any model loads -------------------------------------------------------

@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model folder was opened before --out was checked")

    monkeypatch.setattr("diffrt.models.bundle.load", refuse)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_bad_out_fails_before_models_load(tmp_path, capsys, no_model_loading, command, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "a file" else blocker / "sub"
    code, _, err = run(capsys, *COMMANDS[command], "--out", out, "--quiet")
    assert code == 2
    assert err.startswith(f"diffrt {command}: error: --out {out}:"), err
    assert len(err.strip().splitlines()) == 1


def test_a_bad_out_leaves_no_files(tmp_path, bundle_dir, capsys):
    out = tmp_path / "taken"
    out.write_text("a file")
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--model", bundle_dir, "--out", out,
                       "--steps", 1, "--num-images", 1, "--quiet")
    assert code == 2 and "exists and is not a folder" in err
    assert out.read_text() == "a file"


# -- damaged model folders, through the command ----------------------------------------------------

@pytest.fixture
def damaged_bundle(tmp_path):
    return build_bundle(tmp_path / "models")


def edit_json(file, change):
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize("damage, words", [
    (lambda d: d.pop("head_dim"), "missing UNet config fields ['head_dim']"),
    (lambda d: d.update(head_dim=0), "head_dim must be >= 1"),
    (lambda d: d.update(image_size=None), "image_size must be an int"),
    (lambda d: d.update(base_channels=-16), "base_channels must be >= 1"),
])
def test_damaged_configs_end_in_one_line_naming_the_file(tmp_path, damaged_bundle, capsys, picture, damage, words):
    config = damaged_bundle / "base" / "config.json"
    edit_json(config, damage)
    code, _, err = run(capsys, "diffedit", "--image", picture, "--source", "a red circle", "--target", "a blue square",
                       "--model", damaged_bundle, "--out", tmp_path / "o", "--steps", 1, "--quiet")
    assert code == 2 and err.startswith(f"diffrt diffedit: error: {config}: ") and len(err.splitlines()) == 1, err
    assert words in err, err


@pytest.mark.parametrize("content, words", [(b"[1, 2]", "must hold a JSON object"), (b"{\xff\xfe}", "not UTF-8")])
def test_unreadable_configs_end_in_one_line(tmp_path, damaged_bundle, capsys, content, words):
    config = damaged_bundle / "base" / "config.json"
    config.write_bytes(content)
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--model", damaged_bundle,
                       "--out", tmp_path / "o", "--steps", 1, "--quiet")
    assert code == 2 and f"diffrt generate: error: {config}: {words}" in err, err


@pytest.mark.parametrize("damage, words", [
    (lambda t: t.__setitem__("conv_in.weight", t["conv_in.weight"].to(torch.int64)), "not floating-point"),
    (lambda t: t["conv_in.weight"].view(-1).__setitem__(0, math.nan), "1 non-finite value"),
])
def test_damaged_weights_are_refused_not_sampled(tmp_path, damaged_bundle, capsys, damage, words):
    """NaN weights used to sample an all-black PNG and exit 0."""
    file = damaged_bundle / "base" / "model.safetensors"
    tensors = load_file(str(file))
    damage(tensors)
    save_file(tensors, str(file))
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--num-images", 1, "--model", damaged_bundle,
                       "--out", tmp_path / "o", "--steps", 1, "--quiet")
    assert code == 2 and f"{file}: tensor 'conv_in.weight'" in err and words in err, err
    assert not list((tmp_path / "o").glob("*.png"))


def test_non_finite_images_are_not_written(tmp_path):
    images = torch.zeros(2, 3, 4, 4)
    images[1, 0, 0, 0] = math.nan
    with pytest.raises(CommandError, match="non-finite pixel values"):
        files.write_images(images, tmp_path, "x")
    assert not list(tmp_path.glob("*.png"))


# -- which errors become one line ------------------------------------------------------------------

@pytest.mark.parametrize("error, line", [
    (PermissionError(13, "Permission denied", "/data/in.png"), "/data/in.png: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data"), "/data: Is a directory"),
    (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    (ValueError("a.json: bad\nvalue"), "a.json: bad value"),
    (Image.DecompressionBombError("Image size (4 pixels) exceeds limit"), "Image size (4 pixels) exceeds limit"),
])
def test_bad_input_and_environment_errors_are_one_line(monkeypatch, capsys, error, line):
    def fail(args):
        raise error

    monkeypatch.setattr(image_commands, "generate", fail)
    code, _, err = run(capsys, "generate", "--prompt", "x")
    assert code == 2 and err == f"diffrt generate: error: {line}\n"


@pytest.mark.parametrize("bug", [KeyError("context"), TypeError("unsupported operand"), RuntimeError("shape")])
def test_bugs_keep_their_traceback(monkeypatch, bug):
    def fail(args):
        raise bug

    monkeypatch.setattr(image_commands, "generate", fail)
    with pytest.raises(type(bug)):
        main(["generate", "--prompt", "x"])


def test_diffrt_debug_shows_the_traceback_of_bad_input(monkeypatch):
    def fail(args):
        raise PermissionError(13, "Permission denied", "/data/in.png")

    monkeypatch.setattr(image_commands, "generate", fail)
    monkeypatch.setenv("DIFFRT_DEBUG", "1")
    with pytest.raises(PermissionError):
        main(["generate", "--prompt", "x"])


# -- reading images ----------------------------------------------------------------------------------

def png_header_only(path, width, height):
    """A PNG whose header claims width×height (PIL checks the size when opening, before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20_000, 12_000])  # over 2× and over 1× PIL's MAX_IMAGE_PIXELS
def test_huge_images_are_refused_with_the_limit(tmp_path, capsys, side):
    path = png_header_only(tmp_path / "huge.png", side, side)
    with pytest.raises(CommandError, match=rf"too large to read.*at most {Image.MAX_IMAGE_PIXELS} pixels"):
        files.read_image(str(path))
    code, _, err = run(capsys, "variations", "--image", path, "--model", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and err.startswith(f"diffrt variations: error: {path}: too large to read"), err


def gradient16():
    return (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64).astype(np.uint16)  # 0 … 65472


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, suffix):
    """PIL's convert clips 16-bit samples at 255: nearly every pixel became white."""
    samples = gradient16()
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(samples).save(path)
    expected = np.round(samples / 257).astype(np.uint8)
    for mode in ("RGB", "L"):
        image = np.asarray(files.read_image(str(path), mode=mode))
        got = image[..., 0] if mode == "RGB" else image
        assert np.array_equal(got, expected)
    with Image.open(path) as im:
        tensor = image_io.from_pil(im)
    assert torch.allclose(tensor[0, 1], torch.from_numpy(expected.astype(np.float32) / 127.5 - 1))


def test_mode_i_from_a_png_is_16_bit():
    """Older PIL versions open 16-bit greyscale PNGs as mode I; a PNG sample has at most 16 bits."""
    samples = gradient16()
    image = Image.fromarray(samples.astype(np.int32))
    image.format = "PNG"
    assert np.array_equal(np.asarray(image_io.to_8bit(image, "L")), np.round(samples / 257).astype(np.uint8))


@pytest.mark.parametrize("dtype, words", [(np.int32, "32-bit integer pixels"), (np.float32, "floating-point pixels")])
def test_32_bit_images_are_refused(tmp_path, dtype, words):
    path = tmp_path / "deep.tif"
    Image.fromarray(gradient16().astype(dtype)).save(path)
    with pytest.raises(ValueError, match=rf"{path}: {words}.*no defined white level"):
        files.read_image(str(path))


def rgba_picture():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 40, 0
    rgba[..., 3] = np.array([0, 64, 191, 255], dtype=np.uint8)[None, :]  # alpha by column
    return rgba


def over_white(rgb, alpha):
    return np.round(rgb * (alpha / 255) + 255 * (1 - alpha / 255))


def test_rgba_is_composited_over_white(tmp_path):
    rgba = rgba_picture()
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    got = np.asarray(files.read_image(str(path))).astype(np.float64)
    want = over_white(rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64))
    assert np.abs(got - want).max() <= 1


def test_la_is_composited_over_white(tmp_path):
    la = np.stack([np.full((4, 4), 100, np.uint8), rgba_picture()[..., 3]], -1)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    got = np.asarray(files.read_image(str(path))).astype(np.float64)
    want = over_white(np.full((4, 4, 1), 100.0), la[..., 1:].astype(np.float64))
    assert got.shape == (4, 4, 3) and np.abs(got - want).max() <= 1


def test_palette_images_keep_their_colours_and_transparency(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 120, 250, 250, 250, 0] + [0] * (256 * 3 - 9))
    palette.putpixel((0, 0), 2)
    plain = tmp_path / "p.png"
    palette.save(plain)
    got = np.asarray(files.read_image(str(plain)))
    assert tuple(got[1, 1]) == (10, 120, 250) and tuple(got[0, 0]) == (250, 250, 0)
    palette.info["transparency"] = 2  # index 2 transparent
    keyed = tmp_path / "p_transparent.png"
    palette.save(keyed, transparency=2)
    got = np.asarray(files.read_image(str(keyed)))
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[1, 1]) == (10, 120, 250)


@pytest.mark.parametrize("mode", ["1", "L", "CMYK", "YCbCr", "LAB", "HSV"])
def test_other_modes_convert(mode):
    image = Image.new(mode, (4, 4))
    assert image_io.to_8bit(image, "RGB").mode == "RGB" and image_io.to_8bit(image, "L").mode == "L"


def test_masks_must_be_opaque(tmp_path):
    """'transparent = repaint' and 'transparent = keep' are both in use: a transparent mask is refused,
    an opaque RGBA mask reads as its grey level."""
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[1:3, 1:3, :3] = 255
    rgba[..., 3] = 255
    opaque = tmp_path / "opaque.png"
    Image.fromarray(rgba, "RGBA").save(opaque)
    assert np.array_equal(np.asarray(files.read_image(str(opaque), mode="L")), rgba[..., 0])
    rgba[0, 0, 3] = 0
    transparent = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(transparent)
    with pytest.raises(ValueError, match=rf"{transparent}: the mask has transparent pixels"):
        files.read_image(str(transparent), mode="L")


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° clockwise to view
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path, exif=exif)
    got = np.asarray(files.read_image(str(path)))
    assert got.shape == (16, 8, 3)
    assert got[:8].min() == 255 and got[8:].max() == 0  # the white half is now on top


# -- the pipelines check their own arguments ---------------------------------------------------------

@pytest.fixture(scope="module")
def imagic(bundle_dir):
    from diffrt.models import bundle as bundles

    b = bundles.load(bundle_dir)
    pipe = ImagicPipeline(b.unet("base"), NoiseSchedule.make("linear"), lambda p: b.text_to_image_condition("base", p),
                          num_steps=2)
    pipe.fit(torch.zeros(1, 3, 32, 32), "a blue square", embedding_steps=1, finetune_steps=1, progress=False)
    return pipe


@pytest.mark.parametrize("etas, words", [
    ([math.nan], "etas must be finite"), ([0.5, math.inf], "etas must be finite"), ([], "etas must not be empty"),
    (["x"], "etas must be a number or a sequence of numbers"),
])
def test_imagic_refuses_bad_etas(imagic, etas, words):
    """η = NaN used to make an all-black image."""
    with pytest.raises(ValueError, match=words):
        imagic(etas, progress=False)


def test_imagic_takes_one_eta_as_a_number(imagic):
    assert imagic(0.5, guidance=None, output_type="pt", progress=False).etas == [0.5]


@pytest.mark.parametrize("kwargs, words", [
    ({"embedding_steps": -1}, "embedding_steps must be an integer >= 0"),
    ({"finetune_steps": 1.5}, "finetune_steps must be an integer >= 0"),
    ({"embedding_lr": math.nan}, "embedding_lr must be a finite number > 0"),
    ({"finetune_lr": 0}, "finetune_lr must be a finite number > 0"),
])
def test_imagic_fit_refuses_bad_arguments(imagic, kwargs, words):
    with pytest.raises(ValueError, match=words):
        imagic.fit(torch.zeros(1, 3, 32, 32), "a blue square", progress=False, **kwargs)


@pytest.fixture(scope="module")
def unclip(bundle_dir):
    from diffrt.models import bundle as bundles

    b = bundles.load(bundle_dir)
    return UnCLIPPipeline(b.prior, b.unet("decoder"), TextEncoder(b.text_encoder.tokenizer, b.clip),
                          b.clip.encode_image, noise_schedule=b.noise_schedule("decoder"), num_steps=2,
                          prior_steps=2)


def test_unclip_refuses_bad_counts_and_weights(unclip):
    image, z = torch.zeros(1, 3, 32, 32), torch.nn.functional.normalize(torch.ones(1, 8), dim=-1)
    cases = [
        (lambda: unclip("a red circle", num_images_per_prompt=0, progress=False), "num_images_per_prompt must be"),
        (lambda: unclip.variations(image, num_variations=0, progress=False), "num_variations must be"),
        (lambda: unclip.variations(image, eta=math.nan, progress=False), "eta must be a finite number >= 0"),
        (lambda: unclip.interpolate(z, z, [], progress=False), "ts must be a non-empty sequence"),
        (lambda: unclip.interpolate(z, z, [0.0, math.nan], progress=False), "ts must be a non-empty sequence"),
        (lambda: unclip.text_diff(image, "a", "b", [math.inf], progress=False), "amounts must be a non-empty"),
        (lambda: unclip.sample_image_embeds(["a"], candidates=0, progress=False), "candidates must be"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words):
            call()


def test_a_16_bit_mask_given_to_a_pipeline_is_scaled_not_clipped():
    from diffrt.pipelines._common import as_mask

    samples = np.zeros((8, 8), dtype=np.uint16)
    samples[2:6, 2:6] = 65535
    samples[0, 0] = 32896  # 128·257: half-grey
    image = Image.fromarray(samples)
    assert image.mode.startswith("I;16")
    mask = as_mask(image, 8, 1)
    assert mask[0, 0, 2:6, 2:6].eq(1).all() and mask[0, 0, 7, 7] == 0
    assert mask[0, 0, 0, 0] == pytest.approx(128 / 255)
