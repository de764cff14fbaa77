"""`diffrt generate --prompts FILE`: each image written once under its own name, with noise from its
own seed, so one process and two torchrun processes (gloo, CPU) write the same bytes whatever the
batch size; a stopped run resumes by running it again; bad prompt files fail clearly. The pipeline
side: a list of generators, one per image, makes an image independent of its batch."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffrt.cli import main
from diffrt.cli import prompt_file
from diffrt.models import CLIP, CLIPConfig, Tokenizer, UNet, UNetConfig
from diffrt.models import bundle as bundles
from diffrt.pipelines import ImagenEditorPipeline
from diffrt.pipelines._common import randn

TINY_UNET = dict(patch_size=2, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                 head_dim=8, context_dim=16, pooled_text_dim=8, prediction_type="v_prediction", cond_image=True,
                 cond_image_size=32)
PROMPTS = """# shapes to draw
a red circle

  a blue square  \r
# a green triangle
a red square # on blue
a blue circle
a red circle
"""
EXPECTED = ["a red circle", "a blue square", "a red square # on blue", "a blue circle", "a red circle"]
STEPS = ["--steps", "2", "--guidance", "3", "--seed", "7", "--quiet"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A tiny untrained cascade: clip/ (+ tokenizer), a 16-pixel base/ and a 32-pixel sr/ stage."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tok = Tokenizer.train(EXPECTED + ["a green circle"], vocab_size=400, max_length=16)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=16, text_width=16, text_layers=1, text_heads=2,
                           image_size=32, patch_size=8, image_width=16, image_layers=1, image_heads=2, embed_dim=8))
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    UNet(UNetConfig(image_size=16, **TINY_UNET)).save_pretrained(root / "base")
    UNet(UNetConfig(image_size=32, low_res_channels=3, **TINY_UNET)).save_pretrained(root / "sr")
    for part in ("base", "sr"):
        (root / part / "diffusion.json").write_text(json.dumps({"beta_schedule": "linear"}))
    return root


@pytest.fixture
def one_thread():
    """Tests that compare images sampled in batches of different sizes run on one thread: CPU kernels
    then compute each row the same way whatever the batch (as the torchrun processes do)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def names(num_prompts, num_images):
    return {f"{p:05d}_{k:03d}.png" for p in range(num_prompts) for k in range(num_images)}


def cli(*argv, env_extra=None, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, *launcher, "-m", "diffrt.cli", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


# -- the prompt file -----------------------------------------------------------------------------------

def test_prompt_files_skip_blank_lines_and_comments(prompts):
    read = prompt_file.read_prompts(str(prompts))
    assert [p.text for p in read] == EXPECTED
    assert [p.index for p in read] == [0, 1, 2, 3, 4]
    assert [p.line for p in read] == [2, 4, 6, 7, 8]


def test_a_bom_and_non_ascii_prompts_are_read(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffun cercle rouge — été\n".encode("utf-8"))
    assert [p.text for p in prompt_file.read_prompts(str(path))] == ["un cercle rouge — été"]


@pytest.mark.parametrize("content, words", [
    (b"", "no prompts (every line is blank or a # comment)"),
    (b"\n  \n# only a comment\n", "no prompts (every line is blank or a # comment)"),
    (b"a red circle\nun cercle \xe9t\xe9\n", "line 2 is not UTF-8 (byte 0xe9)"),
])
def test_bad_prompt_files_fail_before_anything_is_written(tmp_path, capsys, content, words):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    out = tmp_path / "o"
    code, _, err = run(capsys, "generate", "--prompts", path, "--model", tmp_path / "no-models", "--out", out)
    assert code == 2 and err == f"diffrt generate: error: --prompts {path}: {words}\n", err
    assert not out.exists()


def test_missing_and_unreadable_prompt_files_fail_clearly(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(capsys, "generate", "--prompts", tmp_path / "nope.txt", "--out", out)
    assert code == 2 and err == f"diffrt generate: error: --prompts {tmp_path / 'nope.txt'}: no such file\n"
    code, _, err = run(capsys, "generate", "--prompts", tmp_path, "--out", out)
    assert code == 2 and err == f"diffrt generate: error: --prompts {tmp_path}: cannot read it (Is a directory)\n"
    assert not out.exists()


def test_prompt_and_prompts_exclude_each_other(tmp_path, prompts, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "a red circle", "--prompts", str(prompts)])
    assert exit_info.value.code == 2
    assert "argument --prompts: not allowed with argument --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(tmp_path / "o")])
    assert "one of the arguments --prompt --prompts is required" in capsys.readouterr().err


def test_batch_size_and_torchrun_need_a_prompt_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--batch-size", 2, "--out", out)
    assert code == 2 and "--batch-size needs --prompts FILE" in err, err
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run(capsys, "generate", "--prompt", "a red circle", "--out", out)
    assert code == 2 and "--prompt under torchrun (WORLD_SIZE=2)" in err and "--prompts FILE" in err, err
    assert not out.exists()


def test_image_seeds_depend_on_all_three_numbers():
    seeds = {prompt_file.image_seed(s, p, k) for s in (0, 1) for p in range(3) for k in range(3)}
    assert len(seeds) == 18 and all(0 <= s < 2**64 for s in seeds)
    assert prompt_file.image_seed(5, 1, 2) == prompt_file.image_seed(5, 1, 2)


# -- one image, one file, one seed ----------------------------------------------------------------------

def test_each_image_is_written_once_with_a_manifest(tmp_path, bundle_dir, prompts, capsys, one_thread):
    out = tmp_path / "o"
    code, stdout, err = run(capsys, "generate", "--prompts", prompts, "--num-images", 2, "--batch-size", 3,
                            "--model", bundle_dir, "--out", out, *STEPS)
    assert code == 0, err
    assert {p.name for p in out.glob("*.png")} == names(5, 2)
    assert sorted(stdout.split()) == sorted(str(out / n) for n in names(5, 2))
    assert "wrote 10 images; 0 were already in" in err
    records = [json.loads(line) for line in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["file"] for r in records] == sorted(names(5, 2))
    assert [(r["prompt"], r["prompt_index"], r["image_index"], r["line"]) for r in records[4:6]] == [
        ("a red square # on blue", 2, 0, 6), ("a red square # on blue", 2, 1, 6)]
    assert all(r["image_seed"] == prompt_file.image_seed(7, r["prompt_index"], r["image_index"]) for r in records)
    assert all((r["seed"], r["steps"], r["guidance"], r["model"]) == (7, 2, 3.0, str(bundle_dir.resolve()))
               for r in records)
    # the same prompt on two lines: same text, other seeds, other images
    assert contents(out)["00000_000.png"] != contents(out)["00004_000.png"]
    # a record reproduces its image alone: --prompt with one image and the image's seed
    record = records[7]
    single = tmp_path / "single"
    code, _, err = run(capsys, "generate", "--prompt", record["prompt"], "--num-images", 1, "--seed",
                       record["image_seed"], "--model", bundle_dir, "--out", single, *STEPS[:4], "--quiet")
    assert code == 0, err
    assert (single / "generate_000.png").read_bytes() == (out / record["file"]).read_bytes()


def test_one_process_and_two_torchrun_processes_write_the_same_bytes(tmp_path, bundle_dir, prompts):
    """Both runs in fresh processes with one thread each (torchrun sets OMP_NUM_THREADS=1 itself);
    other batch sizes, so the images depend on neither."""
    one, two = tmp_path / "one", tmp_path / "two"
    proc = cli("generate", "--prompts", prompts, "--num-images", 2, "--batch-size", 4, "--model", bundle_dir,
               "--out", one, *STEPS)
    assert proc.returncode == 0, proc.stderr
    proc = cli("generate", "--prompts", prompts, "--num-images", 2, "--batch-size", 2, "--model", bundle_dir,
               "--out", two, *STEPS,
               launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
               env_extra={"PYTHONUNBUFFERED": "1"})  # unbuffered ranks share one stdout: lines must stay whole
    assert proc.returncode == 0, proc.stderr
    # rank 0 samples images 0, 2, 4, … (file order), rank 1 the others: 5 each
    assert "(rank 0/2): wrote 5 images" in proc.stderr and "(rank 1/2): wrote 5 images" in proc.stderr, proc.stderr
    written = [line for line in proc.stdout.splitlines() if line.endswith(".png")]  # not the build's messages
    assert sorted(written) == sorted(str(two / n) for n in names(5, 2))
    assert "Traceback" not in proc.stderr
    assert contents(one) == contents(two)
    assert {p.name for p in one.iterdir()} == names(5, 2) | {"prompts.jsonl"}


def test_a_list_of_generators_makes_each_image_independent_of_its_batch(bundle_dir, one_thread):
    b = bundles.load(bundle_dir)
    pipe = ImagenEditorPipeline(b.unet("base"), b.noise_schedule("base"), b.text_encoder, super_resolution=b.unet("sr"),
                                sr_noise_schedule=b.noise_schedule("sr"), num_steps=2, sr_steps=2)
    texts, seeds = ["a red circle", "a blue square", "a red square"], [3, 1, 4]

    def sample(ps, ss, eta=0.0):
        gens = [torch.Generator().manual_seed(s) for s in ss]
        return pipe(ps, guidance=3.0, dynamic_threshold=None, composite=False, eta=eta, generator=gens,
                    output_type="pt", progress=False).images

    for eta in (0.0, 1.0):  # η > 0 draws noise at every step too
        together = sample(texts, seeds, eta)
        alone = torch.cat([sample([t], [s], eta) for t, s in zip(texts, seeds)])
        assert torch.equal(together, alone)
        # a single generator over a batch of one draws the same as the one-generator list
        one = pipe(texts[1], guidance=3.0, dynamic_threshold=None, composite=False, eta=eta,
                   generator=torch.Generator().manual_seed(1), output_type="pt", progress=False).images
        assert torch.equal(one, alone[1:2])
    with pytest.raises(ValueError, match="a list of 2 generators for 3 images"):
        pipe(texts, generator=[torch.Generator(), torch.Generator()], progress=False)
    with pytest.raises(ValueError, match="a list of 3 generators for 6 images"):
        pipe(texts, num_images_per_prompt=2, generator=[torch.Generator()] * 3, progress=False)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or a list of them"):
        pipe(texts, generator=[1, 2, 3], progress=False)


def test_randn_draws_row_i_from_generator_i():
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    got = randn((2, 3, 4), gens, "cpu")
    want = torch.cat([torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn((3, 4), gens, "cpu")


# -- resuming -------------------------------------------------------------------------------------------

def test_a_rerun_writes_only_the_missing_images(tmp_path, bundle_dir, prompts, capsys, one_thread):
    out = tmp_path / "o"
    argv = ["generate", "--prompts", prompts, "--num-images", 1, "--batch-size", 2, "--model", bundle_dir,
            "--out", out, *STEPS]
    assert run(capsys, *argv)[0] == 0
    first = contents(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    for name in ("00001_000.png", "00003_000.png"):
        (out / name).unlink()
    # a stopped run's partial file under the temporary name is replaced, not taken for the image
    (out / "00003_000.png.partial").write_bytes(first["00003_000.png"][:40])
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert stdout.split() == [str(out / "00001_000.png"), str(out / "00003_000.png")]
    assert "wrote 2 images; 3 were already in" in err
    assert contents(out) == first  # the same bytes again, no .partial left
    for name in ("00000_000.png", "00002_000.png", "00004_000.png"):
        assert (out / name).stat().st_mtime_ns == stamps[name]
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and stdout == "" and "wrote 0 images; 5 were already in" in err


def test_a_run_stopped_while_writing_leaves_no_image_under_its_name(tmp_path, bundle_dir, prompts, capsys,
                                                                     monkeypatch, one_thread):
    out = tmp_path / "o"
    argv = ["generate", "--prompts", prompts, "--num-images", 1, "--batch-size", 2, "--model", bundle_dir,
            "--out", out, *STEPS]
    real_fsync, calls = os.fsync, []

    def disk_full_at_the_third_image(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_the_third_image)
    code, _, err = run(capsys, *argv)
    monkeypatch.undo()
    assert code == 2 and f"no space left in {out}" in err, err
    assert {p.name for p in out.iterdir()} == {"prompts.jsonl", "00000_000.png", "00001_000.png",
                                               "00002_000.png.partial"}
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == names(5, 1) | {"prompts.jsonl"}
    assert len(stdout.split()) == 3


def test_more_images_per_prompt_extend_a_run(tmp_path, bundle_dir, prompts, capsys, one_thread):
    """Names and seeds do not depend on --num-images: raising it samples only the new images."""
    out = tmp_path / "o"
    argv = ["generate", "--prompts", prompts, "--model", bundle_dir, "--out", out, *STEPS]
    assert run(capsys, *argv, "--num-images", 1)[0] == 0
    first = contents(out)
    code, stdout, err = run(capsys, *argv, "--num-images", 2)
    assert code == 0, err
    assert sorted(stdout.split()) == sorted(str(out / f"{p:05d}_001.png") for p in range(5))
    after = contents(out)
    assert all(after[name] == first[name] for name in names(5, 1))


@pytest.mark.parametrize("change, words", [
    (["--steps", "3"], "00000_000.png was made by another run (steps 2 → 3)"),
    (["--seed", "8"], "seed 7 → 8"),
    (["--prompts", "OTHER"], "prompt 'a red circle' → 'a green circle'"),
])
def test_a_rerun_with_other_settings_is_refused(tmp_path, bundle_dir, prompts, capsys, change, words):
    out = tmp_path / "o"
    argv = ["generate", "--prompts", prompts, "--num-images", 1, "--model", bundle_dir, "--out", out, *STEPS]
    assert run(capsys, *argv)[0] == 0
    before = contents(out)
    other = tmp_path / "other.txt"
    other.write_text(PROMPTS.replace("a red circle\n\n", "a green circle\n\n", 1))
    changed = argv + [str(other) if c == "OTHER" else c for c in change]
    code, _, err = run(capsys, *changed)
    assert code == 2 and f"diffrt generate: error: --out {out}: " in err and words in err, err
    assert "use another --out or delete the images" in err
    assert contents(out) == before
    # with those images gone, the folder takes the new run
    for name in names(5, 1):
        (out / name).unlink()
    assert run(capsys, *changed)[0] == 0


def test_comment_lines_added_to_the_prompt_file_keep_the_run(tmp_path, bundle_dir, prompts, capsys):
    """A prompt's line is recorded but is not part of what makes its image."""
    out = tmp_path / "o"
    argv = ["generate", "--prompts", prompts, "--num-images", 1, "--model", bundle_dir, "--out", out, *STEPS]
    assert run(capsys, *argv)[0] == 0
    images = {name: (out / name).read_bytes() for name in names(5, 1)}
    prompts.write_text("# more comments\n\n" + PROMPTS, encoding="utf-8")
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and stdout == "" and "5 were already in" in err, err
    assert {name: (out / name).read_bytes() for name in names(5, 1)} == images
    records = [json.loads(line) for line in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [4, 6, 8, 9, 10]
