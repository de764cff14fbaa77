"""The bundle shipped inside the package: every part loads from half-precision files within the size
budget, `diffrt demo` runs on it with no --model, and its CLIP tells matching captions apart."""

import pytest
import torch

from diffrt.models import bundle as bundles
from diffrt.cli import main
from diffrt.data import FullMasking, ProceduralDataset

from tests._helpers import SHIPPED_CONFIGS

MAX_MIB = 40


@pytest.fixture(scope="module")
def shipped():
    return bundles.load()


def test_every_part_is_shipped_in_half_precision_within_budget(shipped):
    from safetensors.torch import load_file

    assert all(shipped.has(p) for p in bundles.PARTS)
    size = sum(f.stat().st_size for f in bundles.DEFAULT_DIRECTORY.rglob("*") if f.is_file())
    assert size < MAX_MIB * 2**20, f"{size / 2**20:.1f} MiB"
    for part in bundles.PARTS:
        dtypes = {v.dtype for v in load_file(str(bundles.DEFAULT_DIRECTORY / part / "model.safetensors")).values()}
        assert dtypes == {torch.float16}, (part, dtypes)
    assert shipped.unet("base").config.cond_image and shipped.unet("sr").config.low_res_channels == 3
    assert next(shipped.prior.parameters()).dtype == torch.float32


def test_shipped_clip_matches_captions_to_images(shipped):
    """Zero-shot: each image's own Full caption outscores the other images' captions (chance 1/16)."""
    data = ProceduralDataset(32, length=64, seed=987_654, masking=FullMasking())
    samples = [data[i] for i in range(len(data))]
    images = torch.stack([s["image"] for s in samples])
    text = shipped.text_encoder([s["prompt"] for s in samples])
    with torch.no_grad():
        zi = torch.nn.functional.normalize(shipped.clip.encode_image(images), dim=-1)
        zt = torch.nn.functional.normalize(text["pooled"], dim=-1)
    hits = 0
    for group in range(0, 64, 16):  # 16-way retrieval in 4 groups
        logits = zi[group:group + 16] @ zt[group:group + 16].t()
        hits += (logits.argmax(dim=1) == torch.arange(16)).sum().item()
    assert hits / 64 > 0.8, hits / 64




@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS, ids=lambda f: f.stem)
def test_committed_configs_build_the_shipped_architectures(config_file, shipped):
    """Every training config next to the weights parses (unknown keys fail) and builds the architecture
    of the part it trains, so the model card's commands reproduce what is shipped."""
    import tomllib

    from diffrt.train import TrainConfig
    from diffrt.train.kinds import build

    config = tomllib.loads(config_file.read_text())
    kind = config_file.stem.split("_")[0]
    TrainConfig(**config["train"])
    if kind != "clip":  # the CLIP run it names may not exist here: build with the shipped one
        config["text"]["clip"] = str(bundles.DEFAULT_DIRECTORY / "clip")
    model = build(kind, config).model
    part = shipped.clip if kind == "clip" else shipped.prior if kind == "prior" else shipped.unet(kind)
    assert model.config == part.config, config_file.name


def test_demo_runs_on_the_shipped_weights(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--embedding-steps", "2", "--finetune-steps", "2",
                 "--quiet"]) == 0
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height > 8 * 96
    assert str(out / "contact_sheet.png") in capsys.readouterr().out


@pytest.mark.slow
def test_default_demo_on_the_shipped_weights(tmp_path, monkeypatch):
    """`diffrt demo` exactly as a person runs it (default steps), writing ./diffrt-demo/."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quiet"]) == 0
    assert (tmp_path / "diffrt-demo" / "contact_sheet.png").is_file()
