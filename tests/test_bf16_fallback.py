"""bfloat16 on a CPU without bfloat16 arithmetic: diffrt.precision answers "is bf16 fast here?", and
where bf16 compute is asked for (accelerate(dtype=), bf16 models in the pipelines, Imagic's and the
trainer's bf16 autocast) a "no" CPU computes in float32 with one Bfloat16ComputeWarning, a "yes" CPU is
unchanged. Both branches run here through DIFFRT_CPU_BF16=0|1."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from diffrt import NoiseSchedule, precision
from diffrt.pipelines import DiffEditPipeline, ImagicPipeline
from diffrt.precision import BF16_ENV, Bfloat16ComputeWarning, compute_dtype, cpu_bf16_support, float32_compute
from diffrt.train import TrainConfig, Trainer

FALLBACK = r"computes in float32 instead; set DIFFRT_CPU_BF16=1 to compute in bfloat16 anyway"


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setenv(BF16_ENV, "0")


@pytest.fixture
def fast_bf16(monkeypatch):
    monkeypatch.setenv(BF16_ENV, "1")


# -- the query ---------------------------------------------------------------------------------------------

def test_override_forces_either_answer_and_says_so(monkeypatch):
    monkeypatch.setenv(BF16_ENV, "0")
    assert cpu_bf16_support() == (False, "forced by DIFFRT_CPU_BF16=0") and not precision.cpu_has_fast_bf16()
    monkeypatch.setenv(BF16_ENV, "1")
    assert cpu_bf16_support() == (True, "forced by DIFFRT_CPU_BF16=1") and precision.cpu_has_fast_bf16()
    monkeypatch.setenv(BF16_ENV, "")  # empty is unset: the hardware's answer
    assert "forced" not in cpu_bf16_support()[1]


@pytest.mark.parametrize("value", ["yes", "true", " 1", "2"])
def test_bad_override_is_an_error_naming_the_variable_and_value(monkeypatch, value):
    monkeypatch.setenv(BF16_ENV, value)
    with pytest.raises(ValueError, match=rf"DIFFRT_CPU_BF16 must be 1 .* or 0 .*got {value!r}"):
        cpu_bf16_support()
    with pytest.raises(ValueError, match="DIFFRT_CPU_BF16"):
        compute_dtype(torch.bfloat16, "cpu", what="x")


@pytest.mark.parametrize("caps, fast, reason", [
    ({"architecture": "x86_64", "avx2": True, "avx512_f": True}, False, "no AVX512-BF16 or AMX-BF16 on this x86_64"),
    ({"architecture": "x86_64", "avx512_bf16": True}, True, "AVX512-BF16"),
    ({"architecture": "x86_64", "amx_bf16": True, "amx_tile": True}, True, "AMX-BF16"),
    ({"architecture": "aarch64", "neon": True}, False, "no BF16 extension on this aarch64"),
    ({"architecture": "aarch64", "bf16": True}, True, "Arm BF16 extension"),
    ({"architecture": "riscv64"}, False, "no known bfloat16 arithmetic on a riscv64 CPU"),
])
def test_hardware_answer_from_torch_capabilities(monkeypatch, caps, fast, reason):
    monkeypatch.delenv(BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    precision._hardware_bf16.cache_clear()
    try:
        got_fast, got_reason = cpu_bf16_support()
    finally:
        precision._hardware_bf16.cache_clear()
    assert got_fast is fast and reason in got_reason, got_reason


@pytest.mark.parametrize("flags, fast", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                                          ({"amx_bf16", "amx_tile"}, True)])
def test_hardware_answer_from_proc_cpuinfo_without_torch_capabilities(monkeypatch, flags, fast):
    """A torch without torch.cpu.get_capabilities() (before 2.10): the flags of /proc/cpuinfo."""
    monkeypatch.delenv(BF16_ENV, raising=False)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(precision, "_proc_cpuinfo_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    precision._hardware_bf16.cache_clear()
    try:
        got_fast, reason = cpu_bf16_support()
    finally:
        precision._hardware_bf16.cache_clear()
    assert got_fast is fast and "/proc/cpuinfo" in reason


def test_compute_dtype_on_a_cpu_without_bf16(no_bf16):
    with pytest.warns(Bfloat16ComputeWarning, match=FALLBACK) as record:
        assert compute_dtype(torch.bfloat16, "cpu", what="thing(dtype=bf16)") == torch.float32
    assert len(record) == 1 and "thing(dtype=bf16)" in str(record[0].message)
    assert "forced by DIFFRT_CPU_BF16=0" in str(record[0].message)
    assert issubclass(Bfloat16ComputeWarning, UserWarning)
    # float32, float16 and any CUDA device: as asked, silently (the test runs with warnings as errors)
    assert compute_dtype(torch.float32, "cpu", what="x") == torch.float32
    assert compute_dtype(torch.float16, torch.device("cpu"), what="x") == torch.float16
    assert compute_dtype(torch.bfloat16, torch.device("cuda", 0), what="x") == torch.bfloat16


def test_compute_dtype_on_a_cpu_with_bf16_is_unchanged(fast_bf16):
    assert compute_dtype(torch.bfloat16, "cpu", what="x") == torch.bfloat16


@pytest.mark.parametrize("value, needle", [("0", "no, forced by DIFFRT_CPU_BF16=0: bfloat16 compute runs in float32"),
                                           ("1", "yes, forced by DIFFRT_CPU_BF16=1"),
                                           ("on", "DIFFRT_CPU_BF16 must be 1")])
def test_info_prints_the_answer_and_the_reason(monkeypatch, value, needle):
    monkeypatch.setenv(BF16_ENV, value)
    out = subprocess.run([sys.executable, "-m", "diffrt.info"], check=True, capture_output=True, text=True).stdout
    row = [line for line in out.splitlines() if line.startswith("CPU bf16 matmul/conv")]
    assert row and needle in row[0], out


# -- float32_compute: bf16 storage, float32 compute --------------------------------------------------------

def test_float32_compute_upcasts_inside_and_restores_the_very_tensors(no_bf16):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(torch.bfloat16)
    before = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    buffer = model[1].running_mean
    with pytest.warns(Bfloat16ComputeWarning, match="the model"):
        with float32_compute([model, "not a module", None], what="the model"):
            assert all(p.dtype == torch.float32 for p in model.parameters())
            assert model[1].running_mean.dtype == torch.float32
    assert all(p is before[n][0] and p.dtype == torch.bfloat16 and p.data_ptr() == before[n][1]
               for n, p in model.named_parameters())
    assert model[1].running_mean is buffer


def test_float32_compute_trains_in_float32_and_stores_the_result_in_bf16(no_bf16):
    torch.manual_seed(0)
    model = nn.Linear(8, 2).to(torch.bfloat16)
    weight = model.weight
    reference = copy.deepcopy(model).float()  # the same weights in float32, trained in float32
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    for m, context in ((reference, None), (model, float32_compute([model], what="train"))):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        with pytest.warns(Bfloat16ComputeWarning) if context else _nothing(), context or _nothing():
            for _ in range(3):
                opt.zero_grad()
                (m(x) - y).square().mean().backward()
                opt.step()
    assert model.weight is weight and weight.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(model.weight, reference.weight.to(torch.bfloat16), rtol=0, atol=0)


def test_float32_compute_keeps_accumulating_gradients(no_bf16):
    model = nn.Linear(3, 1).to(torch.bfloat16)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).bfloat16()
    model(x).sum().backward()  # a bfloat16 gradient before
    once = model.weight.grad.clone()
    with pytest.warns(Bfloat16ComputeWarning):
        with float32_compute([model], what="x"):
            assert model.weight.grad.dtype == torch.float32
            model(x.float()).sum().backward()
    assert model.weight.grad.dtype == torch.bfloat16
    # the float32 sum, rounded once to bfloat16 (relative error <= 2^-9)
    torch.testing.assert_close(model.weight.grad.float(), once.float() + x.float().sum(0, keepdim=True),
                               rtol=2**-8, atol=0)


def test_float32_compute_does_nothing_with_fast_bf16_or_float32_weights(fast_bf16, monkeypatch):
    bf16, f32 = nn.Linear(2, 2).to(torch.bfloat16), nn.Linear(2, 2)
    with float32_compute([bf16, f32.forward], what="x"):
        assert bf16.weight.dtype == torch.bfloat16 and f32.weight.dtype == torch.float32
    monkeypatch.setenv(BF16_ENV, "0")
    with float32_compute([f32], what="x"):  # nothing in bf16: no warning
        assert f32.weight.dtype == torch.float32


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the pipelines -----------------------------------------------------------------------------------------

def tiny_unet():
    from diffrt.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(4,), head_dim=16, context_dim=8)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.05)  # the zero-initialised output layers: make the output depend on the weights
    return model


def encode_prompt(prompts):
    table = torch.randn(3, 3, 8, generator=torch.Generator().manual_seed(0))
    return {"context": table[[{"": 0, "a cat": 1, "a dog": 2}[p] for p in prompts]]}


def run_diffedit(model):
    pipe = DiffEditPipeline(model, NoiseSchedule.make(), encode_prompt, num_steps=3)
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return pipe(image, "a cat", "a dog", strength=0.75, guidance=3.0, n=2, output_type="pt", progress=False,
                generator=torch.Generator().manual_seed(2)).images


def test_pipeline_runs_a_bf16_model_in_float32_on_a_cpu_without_bf16(no_bf16):
    model = tiny_unet().to(torch.bfloat16)
    weights = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    want = run_diffedit(copy.deepcopy(model).float())  # the bf16 weights, computed in float32
    with pytest.warns(Bfloat16ComputeWarning, match=r"DiffEditPipeline.__call__ with bfloat16 weights") as record:
        got = run_diffedit(model)
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller's line
    assert torch.equal(got, want)
    assert all(p is weights[n][0] and p.dtype == torch.bfloat16 and p.data_ptr() == weights[n][1]
               for n, p in model.named_parameters())  # bfloat16 storage, the very tensors


def test_pipeline_runs_a_bf16_model_in_bf16_on_a_cpu_with_bf16(fast_bf16):
    model = tiny_unet().to(torch.bfloat16)
    got = run_diffedit(model)  # no warning (warnings are errors here)
    assert not torch.equal(got, run_diffedit(copy.deepcopy(model).float()))  # bf16 arithmetic, as asked


def test_cascade_runs_its_bf16_models_in_float32_on_a_cpu_without_bf16(no_bf16):
    """Both stages of the Imagen Editor cascade: as their float32 copies, one warning, bf16 storage after."""
    from diffrt.pipelines import ImagenEditorPipeline
    from tests.test_imagen_editor import encode_prompt as encode, inputs, unet

    def run(base, sr):
        pipe = ImagenEditorPipeline(base, NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02), encode,
                                    super_resolution=sr, num_steps=3, sr_steps=2)
        image, mask = inputs()
        return pipe(["a red circle", "a blue square"], image, mask, output_type="pt", progress=False,
                    generator=torch.Generator().manual_seed(2)).images

    base, sr = unet(8, 16).to(torch.bfloat16), unet(16, 16, low_res_channels=3).to(torch.bfloat16)
    want = run(copy.deepcopy(base).float(), copy.deepcopy(sr).float())
    with pytest.warns(Bfloat16ComputeWarning, match="ImagenEditorPipeline.__call__") as record:
        got = run(base, sr)
    assert len(record) == 1 and torch.equal(got, want)
    assert all(p.dtype == torch.bfloat16 for m in (base, sr) for p in m.parameters())


def fit_imagic(model, **kw):
    pipe = ImagicPipeline(model, NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02),
                          lambda ps: {**encode_prompt(["a dog" if p else "" for p in ps])}, num_steps=3)
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return pipe.fit(image, "a dog", embedding_steps=2, finetune_steps=2, generator=torch.Generator().manual_seed(4),
                    progress=False, **kw)


def test_imagic_bf16_autocast_is_float32_on_a_cpu_without_bf16(no_bf16):
    with pytest.warns(Bfloat16ComputeWarning, match=r"ImagicPipeline.fit\(autocast_bf16=True\)") as record:
        got = fit_imagic(tiny_unet(), autocast_bf16=True)
    assert len(record) == 1 and record[0].filename == __file__
    want = fit_imagic(tiny_unet())
    assert torch.equal(got.e_opt["context"], want.e_opt["context"])
    assert all(torch.equal(a, b) for a, b in zip(got.model.parameters(), want.model.parameters()))


def test_imagic_fits_a_bf16_model_in_float32_on_a_cpu_without_bf16(no_bf16):
    base = tiny_unet().to(torch.bfloat16)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    want = fit_imagic(copy.deepcopy(base).float())
    with pytest.warns(Bfloat16ComputeWarning, match=r"ImagicPipeline.fit with bfloat16 weights"):
        got = fit_imagic(base)
    assert torch.equal(got.e_opt["context"], want.e_opt["context"])
    assert all(torch.equal(a, b) for a, b in zip(got.model.parameters(), want.model.parameters()))
    state = base.state_dict()  # the frozen base: bfloat16 and unchanged
    assert all(v.dtype == state[k].dtype and torch.equal(v, state[k]) for k, v in before.items())


def test_imagic_bf16_autocast_runs_on_a_cpu_with_bf16(fast_bf16):
    got = fit_imagic(tiny_unet(), autocast_bf16=True)
    assert not torch.equal(got.e_opt["context"], fit_imagic(tiny_unet()).e_opt["context"])


# -- training ----------------------------------------------------------------------------------------------

def _train(tmp_path, autocast):
    from tests.test_train_loop import batch_at, deterministic_loss, make_batches, toy_model

    config = TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=1, checkpoint_every=100, ema_decay=None,
                         autocast=autocast)
    trainer = Trainer(toy_model(), deterministic_loss, make_batches(), config, tmp_path / autocast, progress=False)
    trainer.run()
    return [p.detach().clone() for p in trainer.model.parameters()], batch_at


def test_trainer_bf16_autocast_is_float32_on_a_cpu_without_bf16(no_bf16, tmp_path):
    with pytest.warns(Bfloat16ComputeWarning, match=r'TrainConfig\(autocast="bf16"\)') as record:
        got, _ = _train(tmp_path, "bf16")
    assert len(record) == 1  # once per run, not once per step
    want, _ = _train(tmp_path, "none")
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_trainer_bf16_autocast_runs_on_a_cpu_with_bf16(fast_bf16, tmp_path):
    got, _ = _train(tmp_path, "bf16")
    want, _ = _train(tmp_path, "none")
    assert not all(torch.equal(a, b) for a, b in zip(got, want))


# -- accelerate(pipe, dtype=torch.bfloat16) on a diffusers pipeline -----------------------------------------

@pytest.fixture
def diffusers_pipeline():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tests.test_accelerate import pipeline

    return pipeline()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_accelerate_bf16_casts_to_float32_on_a_cpu_without_bf16(no_bf16, diffusers_pipeline):
    from diffrt.integrations.diffusers import accelerate, undo
    from tests.test_accelerate import run

    pipe = diffusers_pipeline
    want = run(pipe)
    with pytest.warns(Bfloat16ComputeWarning, match=r"accelerate\(pipe, dtype=torch.bfloat16\)") as record:
        accelerate(pipe, dtype=torch.bfloat16)
    assert len(record) == 1 and record[0].filename == __file__
    report = pipe._diffrt_report
    assert report.dtype == torch.float32 and pipe.unet.dtype == pipe.vae.dtype == torch.float32
    assert "torch.bfloat16 asked for, torch.float32 used" in report.dtype_note
    assert "forced by DIFFRT_CPU_BF16=0" in report.dtype_note and report.dtype_note in str(report)
    got = run(pipe)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # accelerate's float32 contract
    undo(pipe)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_accelerate_bf16_casts_to_bf16_on_a_cpu_with_bf16(fast_bf16, diffusers_pipeline):
    from diffrt.integrations.diffusers import accelerate

    pipe = accelerate(diffusers_pipeline, dtype=torch.bfloat16)
    assert pipe._diffrt_report.dtype == torch.bfloat16 and pipe._diffrt_report.dtype_note is None
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
