"""`diffrt train KIND --config FILE` end to end on tiny configs: every kind trains, writes metrics,
checkpoints, previews and final weights that load; --resume continues; bad configs fail clearly."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


def edited_config(tmp_path, kind, clip_dir=None, **replacements):
    """write_config with lines of tiny.toml replaced: key = "old line" → "new line(s)"."""
    path = write_config(tmp_path, kind, clip_dir)
    text = path.read_text()
    for old, new in replacements.values():
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, options, message", [
    (("ema_decay = 0.9", "ema_decay = 2.0"), [], "[train] ema_decay must be in [0, 1)"),
    (("warmup_steps = 2", "warmup_steps = -1"), [], "[train] warmup_steps must be >= 0, got -1"),
    (("checkpoint_every = 6", "checkpoint_every = -6"), [], "[train] checkpoint_every must be >= 1, got -6"),
    (("steps = 12", 'steps = "12"'), [], "[train] steps must be an integer"),
    (None, ["--steps", "-5"], "--steps must be >= 1, got -5"),
    (None, ["--stop-at", "-5"], "--stop-at must be >= 0, got -5"),
    (None, ["--stop-at", "13"], "--stop-at 13 is past the run's end ([train] steps = 12)"),
    (None, ["--resume-from", "-1"], "--resume-from must be >= 0, got -1"),
])
def test_bad_train_values_name_their_key(tmp_path, capsys, edit, options, message):
    config = edited_config(tmp_path, "clip", **({"edit": edit} if edit else {}))
    run = tmp_path / "run"
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run)] + options) == 2
    assert message in capsys.readouterr().err
    assert not (run / "checkpoints").exists()


def test_unknown_train_keys_are_reported_like_every_bad_input(tmp_path, capsys):
    """One line in main()'s form `diffrt train: error: …`, exit 2, and the traceback under DIFFRT_DEBUG=1."""
    config = edited_config(tmp_path, "clip", edit=("ema_decay = 0.9", "ema_decay = 0.9\nema_decya = 0.5"))
    run = tmp_path / "run"
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run)]) == 2
    assert capsys.readouterr().err == f"diffrt train: error: {config}: [train] has unknown keys ['ema_decya']\n"
    assert not run.exists()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DIFFRT_DEBUG", "1")
        with pytest.raises(ValueError, match="has unknown keys"):
            main(["train", "clip", "--config", str(config), "--run-dir", str(run)])


def test_run_dir_that_is_a_file_fails_clearly(tmp_path, capsys):
    config = write_config(tmp_path, "clip")
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("x")
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(not_a_folder)]) == 2
    assert f"--run-dir {not_a_folder}: exists and is not a folder" in capsys.readouterr().err
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(not_a_folder / "run")]) == 2
    assert f"--run-dir {not_a_folder / 'run'}: cannot create the folder" in capsys.readouterr().err


def copy_run(clip_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clip_run, run, ignore=shutil.ignore_patterns("final"))
    return run


def test_resume_without_a_checkpoint_fails_clearly(tmp_path, capsys):
    config = write_config(tmp_path, "clip")
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from; no intact checkpoint" in err and "start again without --resume" in err


def test_a_corrupt_newest_checkpoint_names_the_intact_ones_and_resume_from_uses_one(tmp_path, clip_run, capsys,
                                                                                      monkeypatch):
    from diffrt.train.checkpoint import Checkpointer

    config = write_config(tmp_path, "clip")
    run = copy_run(clip_run, tmp_path)
    weights = run / "checkpoints" / "step_00000012" / "model.safetensors"
    corrupt = weights.read_bytes()[:-10]
    weights.write_bytes(corrupt)
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "step_00000012/model.safetensors: corrupt" in err
    assert "intact checkpoints at steps 6: continue from one with --resume-from STEP (e.g. 6)" in err
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--resume-from", "9"]) == 2
    assert "no checkpoint of step 9 to resume from; intact checkpoints at steps 6" in capsys.readouterr().err

    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--resume-from", "6",
                 "--stop-at", "3"]) == 2
    assert "--stop-at 3 is before the checkpoint's step 6" in capsys.readouterr().err

    saved = []
    real = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", lambda self, step, *a: saved.append(step) or real(self, step, *a))
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--resume-from", "6"]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 6" in err and "set aside" in err
    assert saved == [12]  # the loop's step-12 checkpoint, not written a second time at the end
    abandoned = run / "checkpoints" / "abandoned" / "step_00000012" / "model.safetensors"
    assert abandoned.read_bytes() == corrupt  # set aside, not deleted
    straight = Checkpointer(clip_run / "checkpoints").load(clip_run / "checkpoints" / "step_00000012")[0]["model"]
    resumed = Checkpointer(run / "checkpoints").load(run / "checkpoints" / "step_00000012")[0]["model"]
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [3, 6, 9, 12]


def test_a_pickled_checkpoint_runs_no_code_on_export_or_resume(tmp_path, clip_run, capsys):
    from tests.test_train_loop import plant_pickled_trainer_state

    from diffrt.train.checkpoint import Checkpointer

    config = write_config(tmp_path, "clip")
    run = copy_run(clip_run, tmp_path)
    checkpoint, marker = run / "checkpoints" / "step_00000012", tmp_path / "payload-ran"
    ema = Checkpointer(run / "checkpoints").load(checkpoint)[0]["ema"]
    plant_pickled_trainer_state(checkpoint, marker)
    out = tmp_path / "exported"
    assert main(["export", "clip", "--run-dir", str(run), "--out", str(out)]) == 0  # the weights are safetensors
    assert not marker.exists()
    exported = CLIP.from_pretrained(out).state_dict()
    assert all(torch.equal(exported[k], v.to(exported[k].dtype)) for k, v in ema.items())
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--resume"]) == 2
    assert "is a pickle, which can run arbitrary code when loaded, so it is not loaded" in capsys.readouterr().err
    assert not marker.exists()


def test_a_full_disk_is_a_clear_error_that_keeps_the_checkpoints(tmp_path, clip_run, capsys, monkeypatch):
    from diffrt.train.checkpoint import Checkpointer

    config = write_config(tmp_path, "clip")
    run = copy_run(clip_run, tmp_path)  # complete checkpoints of steps 6 and 12

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    # a new run in the same folder: its step-6 checkpoint would replace the one there
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--stop-at", "6"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"no space left in {run / 'checkpoints'}" in err and "complete checkpoints kept: steps 6, 12" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]
    assert Checkpointer(run / "checkpoints").intact() == [6, 12]


def test_sigterm_to_the_process_group_checkpoints_and_exits_143(tmp_path):
    """How a scheduler cancels a job: SIGTERM to every process of the group, data-loader workers
    included. The workers must outlive the trainer's last step; the trainer checkpoints, exits 143."""
    from diffrt.train.checkpoint import Checkpointer

    config = edited_config(tmp_path, "clip", steps=("steps = 12", "steps = 100000"),
                           log=("log_every = 3", "log_every = 1"),
                           every=("checkpoint_every = 6", "checkpoint_every = 50000"),
                           workers=("[data]\n", "[data]\nworkers = 2\n"))
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "diffrt.cli", "train", "clip", "--config", str(config),
                                 "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run logged no steps in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "killed by signal" not in err and "Traceback" not in err
    assert "SIGTERM received: checkpoint at step" in err
    checkpoints = Checkpointer(run / "checkpoints")
    _, state = checkpoints.load(checkpoints.latest())
    assert state["step"] >= 2 and checkpoints.intact() == [state["step"]]
    deadline = time.monotonic() + 30
    while True:  # the workers leave with the trainer
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "data-loader workers outlived the trainer"
        time.sleep(0.2)


def test_bundle_is_all_or_nothing(tmp_path, clip_run, capsys):
    out = tmp_path / "models"
    clip = clip_run / "final"
    # a CLIP folder is no base UNet: that part fails after the clip part was packed
    assert main(["bundle", "--out", str(out), "--clip", str(clip), "--base", str(clip)]) == 2
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert (f"{clip}: the trained 'base' model does not load ({clip}/config.json: holds a 'CLIP' config, not a UNet)"
            in capsys.readouterr().err)
    assert main(["bundle", "--out", str(out), "--clip", str(clip)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "NOTES.txt").write_text("kept")
    assert main(["bundle", "--out", str(out), "--clip", str(clip), "--base", str(clip), "--dtype", "float32"]) == 2
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == {**before, Path("NOTES.txt"): b"kept"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert main(["bundle", "--out", str(out), "--clip", str(clip), "--dtype", "float32"]) == 0
    assert (out / "NOTES.txt").read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["models"]
