"""`diffrt train KIND --config FILE` end to end on tiny configs: every kind trains, writes metrics,
checkpoints, previews and final weights that load; --resume continues; bad configs fail clearly."""

import json
import tomllib
from pathlib import Path

import pytest

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
    assert main(["train", "prior", "--config", str(config), "--run-dir", str(run), "--steps", "6"]) == 0
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
