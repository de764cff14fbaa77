"""The shared training loop: exact resume, checkpoint safety, signals, accumulation, DDP."""

import errno
import gc
import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from diffrt.train import Checkpointer, CheckpointError, TrainConfig, Trainer, warmup_cosine

GLOBAL_BATCH = 8


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 3))


def batch_at(i, rows=slice(None)):
    """Global batch i, deterministic in i (so a resumed run sees the same data)."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(GLOBAL_BATCH, 6, generator=g)
    return {"x": x[rows], "y": (x[:, :3] * 2 - x[:, 3:])[rows]}


def make_batches(rank=0, world=1, accum=1):
    per = GLOBAL_BATCH // (world * accum)

    def batches(start):
        i = start
        while True:
            step, micro = divmod(i, accum)
            lo = rank * per * accum + micro * per
            yield batch_at(step, slice(lo, lo + per))
            i += 1

    return batches


def loss_fn(model, batch, generator):
    noise = 0.01 * torch.randn(batch["x"].shape, generator=generator)  # exercises the trainer's generator
    loss = (model(batch["x"] + noise) - batch["y"]).square().mean()
    return loss, {}


def deterministic_loss(model, batch, generator):
    """No dropout and no noise: runs that split the batch differently see the same function."""
    model.eval()
    return (model(batch["x"]) - batch["y"]).square().mean(), {}


def config(**kw):
    base = dict(steps=12, batch_size=GLOBAL_BATCH, lr=1e-2, warmup_steps=3, checkpoint_every=3, keep_checkpoints=2,
                log_every=2, ema_decay=0.9)
    return TrainConfig(**{**base, **kw})


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_exact(tmp_path):
    straight = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path / "a", progress=False)
    straight.run(12)

    first = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path / "b", progress=False)
    first.run(6)
    torch.manual_seed(12345)  # a fresh process would not share the RNG state: resume must restore it
    second = Trainer(toy_model(seed=99), loss_fn, make_batches(), config(), tmp_path / "b", progress=False)
    assert second.resume() == 6
    second.run(12)
    assert states_equal(straight.model.state_dict(), second.model.state_dict())
    assert states_equal(straight.ema.shadow, second.ema.shadow)
    assert straight.optimizer.state_dict()["state"][0]["exp_avg"].equal(second.optimizer.state_dict()["state"][0]["exp_avg"])


def test_loss_falls_and_metrics_are_logged(tmp_path):
    t = Trainer(toy_model(), loss_fn, make_batches(), config(steps=60, checkpoint_every=100), tmp_path, progress=False)
    first = loss_fn(t.model, batch_at(0), torch.Generator())[0].item()
    t.run()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and '"it_per_s"' in lines[-1]
    assert loss_fn(t.model, batch_at(0), torch.Generator())[0].item() < 0.5 * first


def test_checkpoints_keep_last_k_and_refuse_corruption(tmp_path):
    t = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path, progress=False)
    t.run(12)
    kept = [p.name for p in t.checkpointer.all()]
    assert kept == ["step_00000009", "step_00000012"]
    weights = tmp_path / "checkpoints" / "step_00000012" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    fresh = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt.*step_00000009"):
        fresh.resume()
    assert fresh.resume(tmp_path / "checkpoints" / "step_00000009") == 9  # the previous good one is intact


def test_sigterm_writes_a_checkpoint(tmp_path):
    def stopping_loss(model, batch, generator):
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_fn(model, batch, generator)

    trainer = Trainer(toy_model(), stopping_loss, make_batches(), config(checkpoint_every=100), tmp_path, progress=False)
    trainer.run()
    assert trainer.step == 5 and trainer.stop_signal == signal.SIGTERM
    assert Checkpointer(tmp_path / "checkpoints").latest().name == "step_00000005"


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a = Trainer(toy_model(), loss_fn, make_batches(), config(ema_decay=None), tmp_path / "a", progress=False)
    b = Trainer(toy_model(), loss_fn, make_batches(accum=2), config(grad_accum=2, ema_decay=None), tmp_path / "b",
                progress=False)
    a.loss_fn = b.loss_fn = deterministic_loss
    a.run(5)
    b.run(5)
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFRT_CPU_BF16", "1")  # bfloat16 autocast on any CPU (else float32 where bf16 is slow)
    t = Trainer(toy_model(), loss_fn, make_batches(), config(steps=40, autocast="bf16", checkpoint_every=100), tmp_path,
                progress=False)
    before = loss_fn(t.model, batch_at(0), torch.Generator())[0].item()
    t.run()
    assert loss_fn(t.model, batch_at(0), torch.Generator())[0].item() < before


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("bad, field", [
    (dict(autocast="fp8"), "autocast"), (dict(batch_size=6, grad_accum=4), "batch_size"), (dict(steps=0), "steps"),
    (dict(steps=-5), "steps"), (dict(warmup_steps=-1), "warmup_steps"), (dict(checkpoint_every=-3), "checkpoint_every"),
    (dict(preview_every=-1), "preview_every"), (dict(keep_checkpoints=0), "keep_checkpoints"),
    (dict(ema_decay=2.0), "ema_decay"), (dict(ema_decay=1.0), "ema_decay"), (dict(ema_decay=-0.1), "ema_decay"),
    (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(beta2=1.0), "beta2"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"), (dict(seed=-1), "seed"),
])
def test_bad_config(bad, field):
    with pytest.raises(ValueError, match=f"^{field} "):
        config(**bad)


@pytest.mark.parametrize("bad, field", [(dict(steps="12"), "steps"), (dict(steps=12.0), "steps"),
                                        (dict(warmup_steps=True), "warmup_steps"), (dict(lr="fast"), "lr")])
def test_config_types_are_checked(bad, field):
    with pytest.raises(TypeError, match=f"^{field} must be"):
        config(**bad)


def _ddp_worker(rank, world, rendezvous, run_dir, result_file):
    # A file rendezvous: no TCP port to race for with other processes on the machine.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        t = Trainer(toy_model(), deterministic_loss, make_batches(rank, world), config(ema_decay=None), run_dir,
                    progress=False)
        t.run(6)
        if rank == 0:
            torch.save(t.model.state_dict(), result_file)
        # The DDP wrapper's reducer holds the process group: release it before the group goes, and
        # leave together (gloo aborts a rank that tears down while its peer still works).
        del t
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path / "ddp"), str(tmp_path / "ddp.pt")),
             nprocs=2, join=True)
    single = Trainer(toy_model(), deterministic_loss, make_batches(), config(ema_decay=None), tmp_path / "one",
                     progress=False)
    single.run(6)
    ddp = torch.load(tmp_path / "ddp.pt")
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)


def test_preview_grids_use_ema_weights_and_restore_live_ones(tmp_path):
    seen = []

    def preview(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return torch.rand(4, 3, 8, 8) * 2 - 1

    t = Trainer(toy_model(), loss_fn, make_batches(), config(preview_every=4, checkpoint_every=100), tmp_path,
                progress=False, preview=preview)
    t.run(8)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_00000004.png", "step_00000008.png"]
    assert states_equal(seen[-1], {k: v.to(seen[-1][k].dtype) for k, v in t.ema.shadow.items()})
    assert not states_equal(seen[-1], t.model.state_dict())  # the live weights are back


def _equal(a, b, where="state"):
    """Exact equality of nested checkpoint state (tensors bit for bit, containers of the same type)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}.{i}")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def test_resume_restores_every_trainer_state_exactly(tmp_path):
    """Optimizer, LR schedule, the trainer's generator and the global torch / numpy / Python RNGs come
    back bit for bit from the checkpoint's JSON + safetensors."""
    t = Trainer(toy_model(), loss_fn, make_batches(), config(checkpoint_every=100), tmp_path, progress=False)
    t.run(5)
    np.random.standard_normal()  # a cached Gaussian in numpy's legacy state
    random.gauss(0, 1)
    t.save_checkpoint()
    saved = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
             "generator": t.generator.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate(), "model": t.model.state_dict(), "ema": t.ema.shadow}
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    again = Trainer(toy_model(seed=3), loss_fn, make_batches(), config(checkpoint_every=100), tmp_path, progress=False)
    assert again.resume() == 5
    restored = {"optimizer": again.optimizer.state_dict(), "scheduler": again.scheduler.state_dict(),
                "generator": again.generator.get_state(), "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(), "python": random.getstate(), "model": again.model.state_dict(),
                "ema": again.ema.shadow}
    _equal(saved, restored)


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant_pickled_trainer_state(checkpoint: Path, marker: Path) -> None:
    """Rewrite a checkpoint into the older format (trainer.pt, a pickle) carrying a payload, with a
    manifest whose digests match: what anyone who can write the folder can do."""
    import hashlib

    torch.save({"step": 3, "payload": _Payload(marker)}, checkpoint / "trainer.pt")
    for name in ("trainer.json", "trainer.safetensors"):
        (checkpoint / name).unlink(missing_ok=True)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(checkpoint.iterdir())
             if p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps({"step": 3, "files": files}))


def test_a_pickled_trainer_state_is_never_unpickled(tmp_path):
    t = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path / "run", progress=False)
    t.run(3)
    checkpoint = t.checkpointer.latest()
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    marker = tmp_path / "payload-ran"
    plant_pickled_trainer_state(checkpoint, marker)
    fresh = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="older checkpoint format.*pickle.*not loaded"):
        fresh.resume()
    assert not marker.exists()
    tensors, step = fresh.checkpointer.load_weights(checkpoint)  # its weights stay usable (diffrt export)
    assert step == 3 and states_equal(tensors["model"], weights)
    assert not marker.exists()
    assert fresh.checkpointer.intact() == []


def test_a_tampered_trainer_state_is_refused_clearly(tmp_path):
    import hashlib

    t = Trainer(toy_model(), loss_fn, make_batches(), config(), tmp_path, progress=False)
    t.run(3)
    checkpoint = t.checkpointer.latest()
    (checkpoint / "trainer.json").write_text(json.dumps({"step": {"$tensor": "nowhere"}}))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["trainer.json"] = hashlib.sha256((checkpoint / "trainer.json").read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="trainer.json: refers to a tensor 'nowhere'"):
        t.checkpointer.load(checkpoint)


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, no handler catches it."""


def _kill_while_deleting_a_checkpoint(monkeypatch):
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        files = sorted(Path(path).iterdir()) if Path(path).is_dir() else []
        if files:
            files[0].unlink()  # half-deleted
            raise _Killed
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def _kill_before_the_new_checkpoint_is_renamed_in(monkeypatch):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp") and Path(dst).name.startswith("step_") and "." not in Path(dst).name:
            raise _Killed
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("kill", [_kill_while_deleting_a_checkpoint, _kill_before_the_new_checkpoint_is_renamed_in])
def test_replacing_a_checkpoint_never_loses_it(tmp_path, monkeypatch, kill):
    """A second run in the same folder saves step 5 again (keep = 1): a kill at any point of the
    replacement leaves a complete checkpoint of step 5."""
    first = Trainer(toy_model(), loss_fn, make_batches(), config(keep_checkpoints=1, checkpoint_every=100), tmp_path,
                    progress=False)
    first.run(5)
    first.save_checkpoint()
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = Trainer(toy_model(), loss_fn, make_batches(), config(keep_checkpoints=1, checkpoint_every=100), tmp_path,
                     progress=False)
    second.run(5)
    kill(monkeypatch)
    with pytest.raises(_Killed):
        second.save_checkpoint()
    monkeypatch.undo()
    fresh = Trainer(toy_model(seed=4), loss_fn, make_batches(), config(keep_checkpoints=1), tmp_path, progress=False)
    tensors, _ = fresh.checkpointer.load(fresh.checkpointer.latest())
    assert states_equal(tensors["model"], weights)
    assert fresh.resume() == 5
    fresh.run(6)  # the next save cleans up what the kill left
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000006"]


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """A new run in an old run's folder (keep = 1): its step-3 checkpoint is not pruned in favour of
    the old run's step 9."""
    Trainer(toy_model(), loss_fn, make_batches(), config(keep_checkpoints=1), tmp_path, progress=False).run(9)
    again = Trainer(toy_model(), loss_fn, make_batches(), config(keep_checkpoints=1), tmp_path, progress=False)
    again.run(3)
    assert [p.name for p in again.checkpointer.all()] == ["step_00000003", "step_00000009"]
    again.checkpointer.set_aside_after(3)
    assert [p.name for p in again.checkpointer.all()] == ["step_00000003"]
    assert (tmp_path / "checkpoints" / "abandoned" / "step_00000009" / "manifest.json").is_file()


def test_the_last_step_is_saved_once(tmp_path, monkeypatch):
    t = Trainer(toy_model(), loss_fn, make_batches(), config(checkpoint_every=3), tmp_path, progress=False)
    saved = []
    real = t.checkpointer.save
    monkeypatch.setattr(t.checkpointer, "save", lambda step, *a: saved.append(step) or real(step, *a))
    t.run(6)
    assert t.save_checkpoint() == tmp_path / "checkpoints" / "step_00000006"
    assert saved == [3, 6]


def test_a_full_disk_removes_the_partial_checkpoint_and_keeps_the_others(tmp_path, monkeypatch):
    t = Trainer(toy_model(), loss_fn, make_batches(), config(checkpoint_every=3), tmp_path, progress=False)
    t.run(6)
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 2:  # the first file made it, the second does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointError, match=f"no space left in {tmp_path / 'checkpoints'}.*step 9.*kept: steps 3, 6"):
        t.run(9)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert t.checkpointer.intact() == [3, 6]


def test_resume_cuts_the_metrics_back_to_the_checkpoint(tmp_path):
    """A run killed after logging steps 4 and 5 past its step-3 checkpoint logs them once on resume."""
    straight = Trainer(toy_model(), loss_fn, make_batches(), config(log_every=1), tmp_path / "a", progress=False)
    straight.run(8)
    killed = Trainer(toy_model(), loss_fn, make_batches(), config(log_every=1), tmp_path / "b", progress=False)
    killed.run(5)  # checkpoint at 3; steps 4 and 5 logged, then "killed"
    with open(tmp_path / "b" / "metrics.jsonl", "a") as log:
        log.write('{"step": 6, "loss": 0.')  # a line cut short by the kill
    resumed = Trainer(toy_model(), loss_fn, make_batches(), config(log_every=1), tmp_path / "b", progress=False)
    assert resumed.resume() == 3
    resumed.run(8)

    def logged(run):
        return [(m["step"], m["loss"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert logged(tmp_path / "b") == logged(tmp_path / "a")
    assert [s for s, _ in logged(tmp_path / "b")] == list(range(1, 9))


def test_the_data_loader_leaves_the_global_rng_alone(tmp_path):
    """Creating the batch iterator (as every run and resume does) must not draw from the global RNG,
    or a resumed run's dropout would differ from the uninterrupted run's."""
    from diffrt.data import FullMasking
    from diffrt.train.kinds import batch_factory

    make = batch_factory({"resolution": 32, "seed": 0}, 2, FullMasking())
    before = torch.get_rng_state()
    next(make(0))
    assert torch.equal(torch.get_rng_state(), before)
