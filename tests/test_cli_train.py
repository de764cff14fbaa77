"""`diffrt train KIND --config FILE` end to end on tiny configs: every kind trains, writes metrics,
checkpoints, previews and final weights that load; --resume continues; bad configs fail clearly."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from diffrt.cli import main
from diffrt.models.clip import CLIP
from diffrt.models.unet import UNet

TINY = Path(__file__).parent / "configs" / "tiny.toml"
MODELS = {
    "clip": {"text_width": 32, "text_layers": 1, "text_heads": 4, "patch_size": 8, "image_width": 32,
             "image_layers": 1, "image_heads": 4, "embed_dim": 16},
    "unet": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [16],
             "head_dim": 16},
    "prior": {"width": 32, "layers": 1, "heads": 4},
}


def write_config(tmp_path, kind, clip_dir=None):
    text = TINY.read_text()
    model = MODELS["clip" if kind == "clip" else "prior" if kind == "prior" else "unet"]
    lines = [f"{k} = {json.dumps(v)}" for k, v in model.items()]
    text = text.replace("[model]\n", "[model]\n" + "\n".join(lines) + "\n")
    if clip_dir:
        text += f'\n[text]\nclip = "{clip_dir}"\n'
    path = tmp_path / f"{kind}.toml"
    path.write_text(text)
    assert tomllib.loads(text)
    return path


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clip")
    assert main(["train", "clip", "--config", str(write_config(tmp, "clip")), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_clip_run_writes_everything(clip_run):
    assert (clip_run / "config.toml").is_file() and (clip_run / "final" / "vocab.json").is_file()
    assert [p.name for p in (clip_run / "checkpoints").iterdir()] == ["step_00000006", "step_00000012"]
    assert isinstance(CLIP.from_pretrained(clip_run / "final"), CLIP)
    assert len(losses(clip_run)) == 4


@pytest.mark.parametrize("kind", ["prior", "decoder"])
def test_kinds_on_a_trained_clip(tmp_path, clip_run, kind):
    run = tmp_path / "run"
    assert main(["train", kind, "--config", str(write_config(tmp_path, kind, clip_run / "final")),
                 "--run-dir", str(run)]) == 0
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "diffusion.json").is_file()
    if kind == "decoder":
        assert (run / "samples" / "step_00000012.png").is_file()
        assert UNet.from_pretrained(run / "final").config.image_embed_dim == 16


def test_resume_continues_the_run(tmp_path, clip_run):
    config = write_config(tmp_path, "prior", clip_run / "final")
    run = tmp_path / "run"
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(run), "--stop-at", "6"]) == 0
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(run), "--resume"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()][-1] == "step_00000012"
    assert len(losses(run)) == 4


def test_bad_configs_fail_clearly(tmp_path, clip_run, capsys):
    assert main(["train", "prior", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 'many'\n[train\n")
    assert main(["train", "prior", "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    no_text = write_config(tmp_path, "prior")
    assert main(["train", "prior", "--config", str(no_text), "--run-dir", str(tmp_path / "x")]) == 2
    assert "[text] clip" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["base", "sr"])
def test_inpainting_kinds(tmp_path, clip_run, kind):
    run = tmp_path / "run"
    assert main(["train", kind, "--config", str(write_config(tmp_path, kind, clip_run / "final")),
                 "--run-dir", str(run)]) == 0
    model = UNet.from_pretrained(run / "final")
    assert model.config.cond_image and bool(model.config.low_res_channels) == (kind == "sr")
    assert (run / "samples" / "step_00000012.png").is_file()


def test_object_loss_weight_reaches_the_objective(tmp_path, clip_run):
    """[diffusion] object_loss_weight weights the base run's loss; the plain MSE is logged beside it."""
    from diffrt.train.kinds import build

    config = write_config(tmp_path, "base", clip_run / "final")
    weighted = config.read_text().replace("caption_dropout = 0.1\n",
                                          "caption_dropout = 0.1\nobject_loss_weight = 3.0\n")
    config.write_text(weighted)
    assert build("base", tomllib.loads(config.read_text())).objective.object_loss_weight == 3.0
    run = tmp_path / "run"
    assert main(["train", "base", "--config", str(config), "--run-dir", str(run), "--steps", "6"]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged and all("mse" in m and m["mse"] != m["loss"] for m in logged)


def test_cli_resume_is_bit_exact(tmp_path, clip_run):
    """12 steps in one go equal 6 steps, a stop, and --resume for the other 6 (data position included)."""
    config = write_config(tmp_path, "prior", clip_run / "final")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(straight)]) == 0
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(split), "--stop-at", "6"]) == 0
    assert not (split / "final").exists()
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(split), "--resume"]) == 0
    from safetensors.torch import load_file

    a = load_file(str(straight / "checkpoints" / "step_00000012" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step_00000012" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def held_out_loss(kind_name, config_file, model):
    """The objective on 32 fixed samples with fixed t and noise: a loss without step-to-step noise."""
    from diffrt.train.kinds import batch_factory, build

    config = tomllib.loads(Path(config_file).read_text())
    kind = build(kind_name, config)
    batches = batch_factory({**config["data"], "seed": 12345}, 8, kind.masking)(0)
    with torch.no_grad():
        return sum(kind.objective(model.eval(), next(batches), torch.Generator().manual_seed(i))[0].item()
                   for i in range(4)) / 4


@pytest.mark.parametrize("kind", ["prior", pytest.param("base", marks=pytest.mark.slow)])
def test_loss_falls(tmp_path, clip_run, kind):
    from diffrt.train.kinds import build

    config = write_config(tmp_path, kind, clip_run / "final")
    run = tmp_path / "run"
    torch.manual_seed(0)  # the CLI's initial weights (seed 0)
    initial = build(kind, tomllib.loads(config.read_text())).model
    assert main(["train", kind, "--config", str(config), "--run-dir", str(run), "--steps", "48"]) == 0
    trained = type(initial).from_pretrained(run / "final")
    before, after = held_out_loss(kind, config, initial), held_out_loss(kind, config, trained)
    assert after < 0.9 * before, (before, after)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, clip_run):
    """A model folder assembled from tiny trained runs of every kind."""
    tmp = tmp_path_factory.mktemp("bundle")
    bundle = tmp / "models"
    bundle.mkdir()
    (bundle / "clip").symlink_to(clip_run / "final")
    for kind in ("base", "sr", "prior", "decoder"):
        run = tmp / kind
        assert main(["train", kind, "--config", str(write_config(tmp, kind, clip_run / "final")), "--run-dir", str(run),
                     "--steps", "2"]) == 0
        (bundle / kind).symlink_to(run / "final")
    return bundle


@pytest.fixture
def pictures(tmp_path):
    from PIL import Image

    image, other, mask = tmp_path / "in.png", tmp_path / "other.jpg", tmp_path / "mask.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    Image.new("RGB", (32, 32), (30, 30, 200)).save(other)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    return image, other, mask


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a red circle", "--num-images", "2"],
    ["inpaint", "--image", "{image}", "--mask", "{mask}", "--prompt", "a blue square"],
    ["diffedit", "--image", "{image}", "--source", "a red square", "--target", "a blue square"],
    ["imagic", "--image", "{image}", "--target", "a blue square", "--embedding-steps", "2", "--finetune-steps", "2",
     "--eta", "0.5", "1.0"],
    ["variations", "--image", "{image}", "--num-images", "2"],
    ["interpolate", "--image-a", "{image}", "--image-b", "{other}", "--frames", "3"],
])
def test_image_commands_write_pngs(tmp_path, bundle_dir, pictures, command, capsys):
    from PIL import Image

    image, other, mask = pictures
    args = [a.format(image=image, other=other, mask=mask) for a in command]
    out = tmp_path / "out"
    assert main(args + ["--model", str(bundle_dir), "--out", str(out), "--steps", "3", "--quiet"]) == 0
    written = sorted(out.glob("*.png"))
    assert written
    for path in written:
        with Image.open(path) as im:
            assert im.size[0] >= 32
    assert str(written[0]) in capsys.readouterr().out


def test_image_commands_fail_clearly(tmp_path, bundle_dir, pictures, capsys):
    image, _, mask = pictures
    model = ["--model", str(bundle_dir), "--quiet", "--steps", "2"]
    assert main(["inpaint", "--image", str(tmp_path / "nope.png"), "--mask", str(mask), "--prompt", "x"] + model) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["diffedit", "--image", str(tmp_path / "bad.png"), "--source", "a", "--target", "b"] + model) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["generate", "--prompt", "  "] + model) == 2
    assert "--prompt must not be empty" in capsys.readouterr().err
    assert main(["variations", "--image", str(image), "--model", str(tmp_path)]) == 2
    assert "has no 'prior' model" in capsys.readouterr().err


def test_demo_runs_every_pipeline(tmp_path, bundle_dir, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(bundle_dir), "--out", str(out), "--steps", "2", "--embedding-steps", "1",
                 "--finetune-steps", "1", "--quiet"]) == 0
    names = {p.name.split("_")[0] for p in out.glob("*.png")}
    assert {"generate", "inpaint", "diffedit", "imagic", "unclip", "variations", "interpolate", "text"} <= names
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height > 8 * 96


def test_bundle_packs_half_precision_weights_that_load(tmp_path, bundle_dir, capsys):
    out = tmp_path / "packed"
    parts = [f"--{k}={bundle_dir / k}" for k in ("clip", "base", "sr", "prior", "decoder")]
    assert main(["bundle", "--out", str(out)] + parts) == 0
    assert "packed clip, base, sr, prior, decoder" in capsys.readouterr().out
    from safetensors.torch import load_file

    half = load_file(str(out / "base" / "model.safetensors"))
    assert {v.dtype for v in half.values()} == {torch.float16}
    full = UNet.from_pretrained(bundle_dir / "base")
    again = UNet.from_pretrained(out / "base")
    for (k, a), b in zip(full.state_dict().items(), again.state_dict().values()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
    assert (out / "clip" / "vocab.json").is_file() and (out / "base" / "diffusion.json").is_file()
    # replacing one part, with the others taken from the bundle itself, keeps them
    assert main(["bundle", "--out", str(out), f"--clip={out / 'clip'}", f"--sr={out / 'sr'}",
                 f"--base={bundle_dir / 'base'}"]) == 0
    assert (out / "clip" / "vocab.json").is_file() and (out / "sr" / "diffusion.json").is_file()
    again = UNet.from_pretrained(out / "sr")
    for (k, a), b in zip(UNet.from_pretrained(bundle_dir / "sr").state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
    assert main(["bundle", "--out", str(out), "--base", str(bundle_dir / "base")]) == 2
    assert "must include 'clip'" in capsys.readouterr().err
    assert main(["bundle", "--out", str(out), "--clip", str(tmp_path)]) == 2
    assert "no trained 'clip' model" in capsys.readouterr().err


def test_export_writes_a_checkpoints_ema_weights(tmp_path, clip_run, capsys):
    config = write_config(tmp_path, "base", clip_run / "final")
    run = tmp_path / "run"
    assert main(["train", "base", "--config", str(config), "--run-dir", str(run), "--stop-at", "6"]) == 0
    out = tmp_path / "step6"
    assert main(["export", "base", "--run-dir", str(run), "--step", "6", "--out", str(out)]) == 0
    assert "at step 6 (EMA weights)" in capsys.readouterr().out
    from diffrt.train.checkpoint import Checkpointer

    tensors, _ = Checkpointer(run / "checkpoints").load(run / "checkpoints" / "step_00000006")
    exported = UNet.from_pretrained(out).state_dict()
    for k, v in tensors["ema"].items():
        torch.testing.assert_close(exported[k], v.to(exported[k].dtype), rtol=0, atol=0)
    assert (out / "diffusion.json").is_file()
    assert main(["export", "base", "--run-dir", str(run), "--step", "5", "--out", str(out)]) == 2
    assert "no such checkpoint (have: step_00000006)" in capsys.readouterr().err


def test_init_from_warm_starts_from_a_trained_model(tmp_path, clip_run, capsys):
    config = write_config(tmp_path, "base", clip_run / "final")
    first = tmp_path / "first"
    assert main(["train", "base", "--config", str(config), "--run-dir", str(first), "--steps", "2"]) == 0
    warm = tmp_path / "warm.toml"
    warm.write_text(config.read_text() + f'\n[init]\nfrom = "{first / "final"}"\n')
    second = tmp_path / "second"
    assert main(["train", "base", "--config", str(warm), "--run-dir", str(second), "--steps", "1",
                 "--stop-at", "0"]) == 0
    capsys.readouterr()
    # stopped before any step: the checkpoint holds exactly the warm-start weights
    from diffrt.train.checkpoint import Checkpointer

    tensors, _ = Checkpointer(second / "checkpoints").load(second / "checkpoints" / "step_00000000")
    for k, v in UNet.from_pretrained(first / "final").state_dict().items():
        torch.testing.assert_close(tensors["model"][k], v, rtol=0, atol=0)
    other = tmp_path / "other.toml"
    other.write_text(warm.read_text().replace("base_channels = 16", "base_channels = 32"))
    assert main(["train", "base", "--config", str(other), "--run-dir", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "another architecture" in capsys.readouterr().err
