"""The shared training loop: exact resume, checkpoint safety, signals, accumulation, DDP."""

import os
import signal

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
    assert trainer.step == 5
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


def test_bf16_autocast_trains(tmp_path):
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


@pytest.mark.parametrize("bad", [dict(autocast="fp8"), dict(batch_size=6, grad_accum=4), dict(steps=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
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
