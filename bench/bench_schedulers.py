"""diffrt's drop-in schedulers (diffrt.integrations.schedulers) against diffusers' schedulers of the same
name: one ``scheduler.step`` call each, on the same model output and sample, one thread.

    python -m pytest bench/bench_schedulers.py --benchmark-only

Both sides run their whole ``step`` (Python bookkeeping included), mid-way through a 30-step schedule; the
multistep solver is past its first step (DPM-Solver++ runs its second-order update). Bytes diffrt moves per
call, N·M elements of s bytes: DDIM and Euler read x, m and write x_prev, x̂0 (4·N·M·s); Euler ancestral
also reads z (5·N·M·s, plus diffusers' randn draw, which both sides make); DPM-Solver++ 2M also reads the
previous x̂0 (5·N·M·s).
"""

import pytest
import torch

from .conftest import OURS, record

diffusers = pytest.importorskip("diffusers")

# diffusers' own set_timesteps passes torch tensors through numpy (a DeprecationWarning under numpy 2)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SHAPES = [(2, 4, 64, 64), (1, 4, 128, 128)]
DTYPES = [torch.float32, torch.bfloat16]
SCHEDULERS = {  # name: (bytes per element moved by diffrt's step, in units of the element size)
    "DDIMScheduler": 4,
    "DPMSolverMultistepScheduler": 5,
    "EulerDiscreteScheduler": 4,
    "EulerAncestralDiscreteScheduler": 5,
}
NUM_STEPS = 30


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(previous)


def _step_fn(name: str, impl: str, shape, dtype):
    """A call of ``step`` at the same point of the schedule every time (the step index is put back)."""
    from diffrt.integrations import schedulers

    theirs = getattr(diffusers, name)(beta_schedule="scaled_linear")
    scheduler = theirs if impl != OURS else getattr(schedulers, name).from_config(theirs.config)
    scheduler.set_timesteps(NUM_STEPS)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    m = torch.randn(shape, generator=g).to(dtype)
    i = NUM_STEPS // 2
    t = scheduler.timesteps[i]
    inner = scheduler if impl != OURS else scheduler._inner
    if name != "DDIMScheduler":
        inner._step_index = i - 1  # one step before, so that DPM-Solver++ has its history
        scheduler.scale_model_input(x, scheduler.timesteps[i - 1])
        scheduler.step(m, scheduler.timesteps[i - 1], x)
    gen = torch.Generator().manual_seed(1)

    def fn():
        if name != "DDIMScheduler":
            inner._step_index = i
        return scheduler.step(m, t, x, generator=gen).prev_sample

    return fn, x


@pytest.mark.parametrize("impl", [OURS, "diffusers"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(SCHEDULERS))
def bench_scheduler_step(benchmark, one_thread, name, shape, dtype, impl):
    fn, x = _step_fn(name, impl, shape, dtype)
    benchmark(fn)
    case = f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')} 1thr"
    record(benchmark, f"{name}.step", case, impl, bytes_moved=SCHEDULERS[name] * x.numel() * x.element_size(),
           triad_numel=x.numel(), dtype=dtype)
