"""Data-generation throughput of the procedural world (diffrt.data), single process.

Each call renders the next sample (scene, exact masks, captions and a default-mixture mask) and
builds its tensors, as a data-loader worker does; the teardown prints median samples/s.

What a training step consumes, for comparison (measured once on the 2-core development machine,
shared with other jobs, so only the order of magnitude counts): the project's UNet with
base_channels=32 takes about 3 s for a forward+backward+AdamW step on a batch of 16 at 32 px
and about 9 s at 64 px, i.e. it consumes 2–5 samples/s, while one process renders several hundred
samples/s at 32–64 px (tens at 256 px). Data never holds training up; num_workers=0 is enough on
a CPU, and a GPU step consuming thousands of samples/s at 64 px would need a few workers.
"""

import itertools

import pytest

from diffrt import data

THROUGHPUT = {}


@pytest.mark.parametrize("resolution", [32, 64, 256])
def bench_procedural_samples(benchmark, resolution):
    dataset = data.ProceduralDataset(resolution, length=10**9, seed=0)
    indices = itertools.count()
    sample = benchmark(lambda: dataset[next(indices)])
    assert sample["image"].shape == (3, resolution, resolution)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        THROUGHPUT[resolution] = 1.0 / stats.stats.median  # the median: other jobs share the cores


@pytest.mark.parametrize("resolution", [64])
def bench_procedural_batches_through_a_loader(benchmark, resolution):
    """A batch of 32 through DataLoader(num_workers=0) + collate: the loader's own overhead included."""
    from torch.utils.data import DataLoader

    stream = data.ProceduralStream(resolution, seed=1, batch_size=32)
    batches = iter(DataLoader(stream, batch_size=32, collate_fn=data.collate))
    batch = benchmark(lambda: next(batches))
    assert batch["image"].shape == (32, 3, resolution, resolution)


def teardown_module(module):
    for resolution, per_second in sorted(THROUGHPUT.items()):
        print(f"\nprocedural data at {resolution} px: {per_second:.0f} samples/s (one process)")
