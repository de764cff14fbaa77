"""The procedural world (diffrt.data): determinism, exact masks and boxes, captions, sharding, masking."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from diffrt import data
from diffrt.data import FullMasking, ProceduralStream, world
from diffrt.data.world import BOUND, GAP, ObjectSpec, SceneSpec, fits, occupied, place

RESOLUTIONS = [32, 64, 97, 256]


def _rendered(seed, index, resolution, **kw):
    return data.render(data.scene_at(seed, index), resolution, **kw)


# --- world ------------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_samples():
    a, b = _rendered(7, 11, 64), _rendered(7, 11, 64)
    assert a.spec == b.spec and a.caption_full == b.caption_full
    np.testing.assert_array_equal(a.image, b.image)
    for oa, ob in zip(a.objects, b.objects):
        np.testing.assert_array_equal(oa.mask, ob.mask)
        assert oa.box == ob.box


def test_scene_is_what_the_sample_renders():
    ds = data.ProceduralDataset(32, length=4, seed=3)
    for i in (0, 3, -1):
        spec, sample = ds.scene(i), ds[i]
        assert world.caption_full(spec) == sample["captions"]["full"]
        assert np.array_equal(world.render(spec, 32).image, sample["image"].numpy())
    with pytest.raises(IndexError, match="out of range"):
        ds.scene(4)
    with pytest.raises(TypeError, match="index must be an int"):
        ds.scene(1.0)


def test_different_index_or_seed_give_different_samples():
    base = _rendered(7, 11, 64).image
    assert not np.array_equal(base, _rendered(7, 12, 64).image)
    assert not np.array_equal(base, _rendered(8, 11, 64).image)


def test_sample_does_not_depend_on_draw_order():
    later = [data.scene_at(3, i) for i in (5, 2, 9)]
    assert later == [data.scene_at(3, 5), data.scene_at(3, 2), data.scene_at(3, 9)]


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_image_shape_range_and_dtype(resolution):
    r = _rendered(0, 1, resolution)
    assert r.image.shape == (3, resolution, resolution) and r.image.dtype == np.float32
    assert r.image.min() >= -1.0 and r.image.max() <= 1.0
    for obj in r.objects:
        assert obj.mask.shape == (resolution, resolution) and obj.mask.any()


@pytest.mark.parametrize("bad", [31, 257, 0, -64])
def test_resolution_outside_range_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match=r"resolution must be in \[32, 256\]"):
        data.render(data.scene_at(0, 0), bad)
    with pytest.raises(ValueError, match="resolution"):
        data.ProceduralDataset(bad)


def test_non_integer_arguments_are_rejected_by_name():
    with pytest.raises(TypeError, match="resolution must be an int"):
        data.render(data.scene_at(0, 0), 64.0)
    with pytest.raises(ValueError, match="seed"):
        data.scene_at(-1, 0)
    with pytest.raises(ValueError, match="index"):
        data.scene_at(0, -1)
    with pytest.raises(ValueError, match="max_objects"):
        data.ProceduralDataset(64, max_objects=0)


@pytest.mark.parametrize("index", range(12))
@pytest.mark.parametrize("resolution", [32, 80])
def test_masks_are_exactly_the_pixels_objects_cover(index, resolution):
    """Without anti-aliasing, the pixels that differ from the bare background are the union of masks."""
    scene = data.scene_at(5, index)
    with_objects = data.render(scene, resolution, antialias=False)
    background = data.render(data.without_objects(scene), resolution, antialias=False)
    changed = (with_objects.image != background.image).any(axis=0)
    union = np.zeros_like(changed)
    for obj in with_objects.objects:
        assert not (union & obj.mask).any(), "objects overlap"
        union |= obj.mask
    np.testing.assert_array_equal(changed, union)


@pytest.mark.parametrize("index", range(6))
def test_antialiased_fringe_stays_within_two_pixels_of_the_mask(index):
    """Partly covered edge pixels change the image too, but only next to the mask (a sharp tip can
    leave a faint pixel two away). At 32 px a small glyph's sub-pixel strokes may lie farther out."""
    scene = data.scene_at(5, index)
    r = data.render(scene, 96)
    changed = (r.image != data.render(data.without_objects(scene), 96).image).any(axis=0)
    union = np.any([o.mask for o in r.objects], axis=0)
    padded, grown = np.pad(union, 2), np.zeros_like(union)
    for dy, dx in itertools.product(range(5), range(5)):
        grown |= padded[dy:dy + 96, dx:dx + 96]
    assert changed[union].all() and not (changed & ~grown).any()


@pytest.mark.parametrize("index", range(10))
def test_boxes_are_tight_around_masks(index):
    for obj in _rendered(2, index, 72).objects:
        x0, y0, x1, y1 = obj.box
        ys, xs = np.nonzero(obj.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for (bx0, by0, bx1, by1), m in zip(obj.instance_boxes, obj.instance_masks):
            assert m[by0:by1, bx0:bx1].sum() == m.sum()  # inside
            assert m[by0, bx0:bx1].any() and m[by1 - 1, bx0:bx1].any()  # tight rows
            assert m[by0:by1, bx0].any() and m[by0:by1, bx1 - 1].any()  # tight columns


def test_count_renders_that_many_separate_instances():
    seen = set()
    for index in range(40):
        for obj in _rendered(1, index, 64).objects:
            seen.add(obj.spec.count)
            assert len(obj.instance_masks) == len(obj.instance_boxes) == obj.spec.count
            assert all(m.any() for m in obj.instance_masks)
            assert obj.instance_masks.sum(axis=0).max() == 1  # disjoint
            np.testing.assert_array_equal(obj.instance_masks.any(axis=0), obj.mask)
            for a, b in itertools.combinations(obj.instance_boxes, 2):  # boxes apart too
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert seen == {1, 2, 3}


def test_place_follows_the_placement_rule_of_sampled_scenes():
    """`place` keeps every new instance inside the frame and GAP clear of the discs already taken,
    like the scenes the world samples; a radius too large for the frame, or a frame left full, gives None."""
    rng = np.random.default_rng(int(np.random.SeedSequence().generate_state(1)[0]))
    radius = float(rng.uniform(*data.world.SIZE_RADIUS["small"]))
    taken = [(0.5, 0.5, 0.1)]
    centres = place(rng, radius, 3, taken)
    assert centres is not None and len(centres) == 3
    discs = taken + [(x, y, radius * BOUND) for x, y in centres]
    for i, (x, y, r) in enumerate(discs[1:], start=1):
        assert r + GAP / 2 <= x <= 1 - r - GAP / 2 and r + GAP / 2 <= y <= 1 - r - GAP / 2
        for tx, ty, tr in discs[:i]:
            assert np.hypot(x - tx, y - ty) >= r + tr + GAP - 1e-12
        assert fits(x, y, radius, discs[:i])
    assert not fits(0.5, 0.5, radius, taken) and not fits(0.0, 0.5, radius, [])
    assert place(rng, 0.5, 1) is None  # 2·BOUND·radius > 1: no room in the frame
    assert place(rng, 0.2, 1, [(0.5, 0.5, 0.45)]) is None  # the one disc leaves no room
    for index in range(20):  # sampled scenes keep the same rule
        objects = data.scene_at(3, index, max_objects=4).objects
        for k, obj in enumerate(objects):
            others = [d for o in objects[:k] for d in occupied(o)]
            discs = occupied(obj)
            for i, (x, y, _) in enumerate(discs):
                assert fits(x, y, obj.radius, others + discs[:i])


def test_every_category_of_the_vocabulary_occurs():
    specs = [o for i in range(300) for o in data.scene_at(0, i).objects]
    backgrounds = {data.scene_at(0, i).background.kind for i in range(300)}
    assert {o.texture for o in specs} == set(data.TEXTURES)
    assert {o.size for o in specs} == set(data.SIZES)
    assert {o.shape for o in specs} >= set(data.SHAPES)
    assert {o.shape for o in specs} & set(data.LETTERS) and {o.shape for o in specs} & set(data.DIGITS)
    assert backgrounds == set(data.BACKGROUNDS)


@pytest.mark.parametrize("index", range(20))
def test_captions_mention_the_attributes(index):
    r = _rendered(4, index, 32)
    bg = r.spec.background
    assert all(c in r.caption_full for c in bg.colours)
    for obj in r.objects:
        s = obj.spec
        assert s.colour in obj.caption_simple and s.colour in obj.caption_rich
        assert s.noun in obj.caption_simple and s.noun in obj.caption_rich
        assert s.size in obj.caption_rich and s.texture in obj.caption_rich
        assert obj.caption_rich in r.caption_full
        if s.count > 1:
            assert obj.caption_simple.startswith({2: "two ", 3: "three "}[s.count])
    # objects are told apart by colour and by shape, and never share the background's colour
    assert len({o.spec.colour for o in r.objects}) == len(r.objects)
    assert len({o.spec.shape for o in r.objects}) == len(r.objects)
    assert not {o.spec.colour for o in r.objects} & set(bg.colours)


def test_caption_wording():
    obj = ObjectSpec("circle", "red", data.COLOUR_RGB["red"], "striped", "large", 0.2, ((0.2, 0.5),))
    triangles = ObjectSpec("triangle", "blue", data.COLOUR_RGB["blue"], "solid", "small", 0.08,
                           ((0.7, 0.2), (0.8, 0.8)))
    cross = dataclasses.replace(obj, shape="cross", colour="orange", positions=((0.5, 0.1),))
    glyph = dataclasses.replace(obj, shape="A", positions=((0.8, 0.8), (0.5, 0.5)))
    assert data.caption_simple(obj) == "a red circle"
    assert data.caption_rich(obj) == "a large red striped circle"
    assert data.caption_simple(triangles) == "two blue triangles"
    assert data.caption_simple(cross) == "an orange cross"
    assert data.caption_simple(dataclasses.replace(cross, positions=cross.positions * 3)) == "three orange crosses"
    assert data.caption_simple(glyph) == "two red letter As"
    scene = SceneSpec(data.BackgroundSpec("gradient", ("green",), 0.0, 0.1, 0), (obj, triangles))
    assert data.caption_full(scene) == ("a large red striped circle on the left and two small blue solid triangles "
                                        "on a green gradient background")


def test_same_scene_at_two_resolutions_agrees():
    scene = data.scene_at(9, 4)
    small, large = data.render(scene, 64), data.render(scene, 256)
    for a, b in zip(small.objects, large.objects):
        np.testing.assert_allclose(np.asarray(a.box) * 4, b.box, atol=6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 2**40), resolution=st.integers(32, 256))
def test_property_any_sample_renders_with_nonempty_in_frame_objects(seed, index, resolution):
    r = _rendered(seed, index, resolution)
    assert 1 <= len(r.objects) <= 2
    for obj in r.objects:
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= resolution and 0 <= y0 < y1 <= resolution


# --- masking ----------------------------------------------------------------------------------


def _rng(i=0):
    return np.random.default_rng(i)


@pytest.mark.parametrize("index", range(8))
def test_object_masking_exact_mask_lies_inside_box_mask(index):
    r = _rendered(3, index, 64)
    box = data.ObjectMasking(use_box=True)(r, _rng(index))
    exact = data.ObjectMasking(use_box=False)(r, _rng(index))
    assert box.target == exact.target and box.kind == exact.kind == "object"
    obj = r.objects[box.target]
    np.testing.assert_array_equal(exact.mask[0], obj.mask)
    assert (box.mask[0][obj.mask] == 1).all() and box.mask.sum() >= exact.mask.sum()
    x0, y0, x1, y1 = obj.box
    assert box.mask[0, y0:y1, x0:x1].sum() == box.mask.sum()
    assert box.prompt in (obj.caption_simple, obj.caption_rich)


def test_object_masking_prompt_level_follows_p_rich():
    r = _rendered(3, 0, 32)
    for i in range(5):
        rich = data.ObjectMasking(p_rich=1.0)(r, _rng(i))
        assert rich.prompt == r.objects[rich.target].caption_rich
    prompts = {data.ObjectMasking(p_rich=0.0)(r, _rng(i)).prompt for i in range(20)}
    assert prompts <= {o.caption_simple for o in r.objects}


def test_object_masking_full_caption_keeps_the_object_mask():
    r = _rendered(3, 0, 32)
    for i in range(5):
        plain = data.ObjectMasking()(r, _rng(i))
        full = data.ObjectMasking(p_full_caption=1.0)(r, _rng(i))
        assert full.prompt == r.caption_full and full.kind == "object" and full.target == plain.target
        np.testing.assert_array_equal(full.mask, plain.mask)  # same object, same mask: only the caption changes
    prompts = [data.ObjectMasking(p_full_caption=0.5)(r, _rng(i)).prompt for i in range(200)]
    assert 0.35 < prompts.count(r.caption_full) / 200 < 0.65
    with pytest.raises(ValueError, match="p_full_caption"):
        data.ObjectMasking(p_full_caption=-0.1)


@pytest.mark.parametrize("resolution", [32, 256])
def test_random_masks_are_nonempty_and_partial(resolution):
    strategy = data.RandomMasking()
    r = _rendered(0, 0, resolution)
    for i in range(30):
        m = strategy(r, _rng(i))
        assert m.mask.shape == (1, resolution, resolution) and m.mask.dtype == np.float32
        assert set(np.unique(m.mask)) <= {0.0, 1.0} and m.mask.sum() > 0
        assert m.prompt == r.caption_full and m.kind == "random"
    assert np.mean([strategy(r, _rng(i)).mask.mean() for i in range(30)]) < 0.9


def test_p_full_one_masks_everything_with_the_full_caption():
    r = _rendered(0, 2, 48)
    m = data.MixedMasking([(data.ObjectMasking(), 1.0)], p_full=1.0)(r, _rng())
    assert (m.mask == 1).all() and m.prompt == r.caption_full and m.kind == "full"
    assert (data.FullMasking()(r, _rng()).mask == 1).all()


def test_mixed_masking_uses_every_choice_by_weight():
    r = _rendered(0, 2, 32)
    mixed = data.MixedMasking([(data.ObjectMasking(), 3), (data.RandomMasking(), 1)], p_full=0.2)
    kinds = [mixed(r, _rng(i)).kind for i in range(400)]
    assert 0.1 < kinds.count("full") / 400 < 0.3
    assert kinds.count("object") > 2 * kinds.count("random") > 0


def test_masking_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="p_full"):
        data.MixedMasking([(data.FullMasking(), 1)], p_full=1.5)
    with pytest.raises(ValueError, match="choices"):
        data.MixedMasking([])
    with pytest.raises(ValueError, match=r"choices\[0\] weight"):
        data.MixedMasking([(data.FullMasking(), -1)])
    with pytest.raises(ValueError, match="p_rich"):
        data.ObjectMasking(p_rich=2)
    with pytest.raises(TypeError, match="masking"):
        data.ProceduralDataset(32, masking="object")


def test_ground_truth_detector_drives_object_masking_like_the_world():
    r = _rendered(6, 1, 64)
    detector = data.GroundTruthDetector(r)
    assert isinstance(detector, data.Detector)
    annotated = data.annotate(r.image, r.caption_full, detector)
    assert [o.caption_simple for o in annotated.objects] == [o.caption_simple for o in r.objects]
    from_detector = data.ObjectMasking(use_box=True)(annotated, _rng(4))
    from_world = data.ObjectMasking(use_box=True)(r, _rng(4))
    np.testing.assert_array_equal(from_detector.mask, from_world.mask)
    with pytest.raises(ValueError, match="exact object masks"):
        data.ObjectMasking(use_box=False)(annotated, _rng(4))


# --- torch data sets --------------------------------------------------------------------------


def test_dataset_sample_keys_and_types():
    ds = data.ProceduralDataset(40, length=5, seed=1)
    s = ds[2]
    assert s["image"].shape == (3, 40, 40) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, 40, 40) and s["mask"].dtype == torch.float32
    n = len(s["labels"])
    assert s["boxes"].shape == (n, 4) and s["object_masks"].shape == (n, 1, 40, 40)
    assert set(s["captions"]) == {"simple", "rich", "full"} and isinstance(s["prompt"], str)
    assert torch.equal(ds[2]["image"], s["image"]) and torch.equal(ds[-3]["mask"], s["mask"])
    with pytest.raises(IndexError):
        ds[5]


def _indices(loader):
    return [i for batch in loader for i in batch["index"].tolist()]


def test_stream_shards_two_workers_by_two_ranks_exactly_once():
    stop, batch = 45, 4
    seen = []
    for rank in range(2):
        stream = data.ProceduralStream(32, start=3, stop=stop, batch_size=batch, rank=rank, world_size=2)
        got = _indices(DataLoader(stream, batch_size=batch, num_workers=2, collate_fn=data.collate))
        assert len(got) == len(stream)
        seen += got
    assert sorted(seen) == list(range(3, stop))


def test_stream_shard_plan_without_processes():
    """The same partition, computed directly, for odd sizes."""
    for world, workers, batch in [(3, 2, 1), (2, 3, 5), (1, 1, 7)]:
        got = []
        for rank in range(world):
            s = data.ProceduralStream(32, stop=101, batch_size=batch, rank=rank, world_size=world)
            got += [i for w in range(workers) for i in s.shard_indices(w, workers)]
        assert sorted(got) == list(range(101))


def test_stream_resume_continues_exactly():
    batch, steps = 3, 4
    stream = data.ProceduralStream(32, seed=2, batch_size=batch, rank=1, world_size=2)
    loader = iter(DataLoader(stream, batch_size=batch, num_workers=0, collate_fn=data.collate))
    first = [next(loader) for _ in range(steps + 2)]
    resumed = data.ProceduralStream(32, seed=2, batch_size=batch, rank=1, world_size=2,
                                    start=stream.resume_start(steps))
    again = iter(DataLoader(resumed, batch_size=batch, collate_fn=data.collate))
    for expected in first[steps:]:
        got = next(again)
        assert torch.equal(got["index"], expected["index"]) and torch.equal(got["image"], expected["image"])
        assert got["prompt"] == expected["prompt"]


def test_stream_and_map_dataset_agree():
    ds = data.ProceduralDataset(32, length=10, seed=4)
    stream = data.ProceduralStream(32, seed=4, stop=10)
    for s in stream:
        assert torch.equal(s["image"], ds[s["index"]]["image"]) and torch.equal(s["mask"], ds[s["index"]]["mask"])


def test_stream_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="rank"):
        data.ProceduralStream(32, rank=2, world_size=2)
    with pytest.raises(ValueError, match="rank and world_size"):
        data.ProceduralStream(32, rank=0)
    with pytest.raises(ValueError, match="stop"):
        data.ProceduralStream(32, start=5, stop=4)
    with pytest.raises(TypeError, match="no length"):
        len(data.ProceduralStream(32))


def test_collate_stacks_tensors_and_lists_the_rest():
    ds = data.ProceduralDataset(32, length=4)
    b = data.collate([ds[i] for i in range(4)])
    assert b["image"].shape == (4, 3, 32, 32) and b["mask"].shape == (4, 1, 32, 32)
    assert len(b["prompt"]) == len(b["boxes"]) == len(b["labels"]) == 4
    assert b["index"].tolist() == [0, 1, 2, 3]


def test_train_config_masking_sections():
    from diffrt.train.kinds import masking_from

    r = _rendered(3, 0, 32)
    objects = masking_from({"masking": "object", "p_full": 0.0, "object_full_caption": 1.0})
    m = objects(r, _rng(1))
    assert m.kind == "object" and m.prompt == r.caption_full
    m = masking_from({"masking": "object", "p_full": 0.0})(r, _rng(1))
    assert m.prompt in (r.objects[m.target].caption_simple, r.objects[m.target].caption_rich)
    assert masking_from({"masking": "random", "p_full": 0.0})(r, _rng(1)).kind == "random"
    with pytest.raises(ValueError, match="masking"):
        masking_from({"masking": "boxes"})


def _words_changed(a: str, b: str) -> set:
    return set(a.split()) ^ set(b.split())


@pytest.mark.parametrize("attribute", world.VARIED_ATTRIBUTES)
def test_vary_changes_one_attribute_of_one_object_and_the_caption_says_so(attribute):
    rng_seed = int(np.random.default_rng().integers(2**31))
    done = 0
    for i in range(200):
        scene = world.scene_at(rng_seed, i)
        try:
            varied, got = world.vary(scene, np.random.default_rng([rng_seed, i]), attributes=(attribute,))
        except ValueError:
            continue  # this scene leaves no room for the attribute
        assert got == attribute and varied.background == scene.background
        changed = [(a, b) for a, b in zip(scene.objects, varied.objects) if a != b]
        assert len(changed) == 1 and len(varied.objects) == len(scene.objects)
        before, after = changed[0]
        fields = {f for f in ("shape", "colour", "size", "positions", "texture") if getattr(before, f) != getattr(after, f)}
        expected = {"colour": {"colour"}, "shape": {"shape"}, "size": {"size"}, "position": {"positions"}}[attribute]
        assert expected <= fields <= expected | {"positions"}, (attribute, fields)
        if attribute == "position" or (attribute == "size" and before.count == 1):
            assert (world.spatial_phrase(before.positions) != world.spatial_phrase(after.positions)) == (attribute == "position")
        assert world.caption_full(scene) != world.caption_full(varied)
        others = [o for o in varied.objects if o is not after]
        assert after.colour not in scene.background.colours and all(o.colour != after.colour for o in others)
        assert all(world.fits(x, y, after.radius, [d for o in others for d in world.occupied(o)]) for x, y in after.positions)
        done += 1
    assert done >= 50, done


def test_vary_is_a_function_of_its_generator_and_checks_its_attributes():
    scene = world.scene_at(3, 7)
    assert world.vary(scene, np.random.default_rng(5)) == world.vary(scene, np.random.default_rng(5))
    with pytest.raises(ValueError, match="attributes"):
        world.vary(scene, np.random.default_rng(0), attributes=("texture",))


def test_minimal_pairs_put_each_scene_beside_its_variant_in_one_batch():
    stream = ProceduralStream(32, seed=4, batch_size=4, rank=0, world_size=1, masking=FullMasking(), minimal_pairs=True)
    samples = [s for _, s in zip(range(8), stream)]
    for even, odd in zip(samples[0::2], samples[1::2]):
        assert odd["index"] == even["index"] + 1
        expected = world.vary(world.scene_at(4, even["index"]), np.random.default_rng([4, odd["index"], 2]))[0]
        assert odd["captions"]["full"] == world.caption_full(expected) != even["captions"]["full"]
    plain = ProceduralStream(32, seed=4, batch_size=4, rank=0, world_size=1, masking=FullMasking())
    assert [s["prompt"] for _, s in zip(range(8), plain)][0::2] == [s["prompt"] for s in samples[0::2]]
    with pytest.raises(ValueError, match="even batch_size"):
        ProceduralStream(32, batch_size=3, rank=0, world_size=1, minimal_pairs=True)
    with pytest.raises(TypeError, match="minimal_pairs"):
        ProceduralStream(32, batch_size=2, rank=0, world_size=1, minimal_pairs=1)


def test_shapes_sizes_and_p_glyph_weight_what_the_world_draws():
    objects = lambda **kw: [o for i in range(600) for o in world.scene_at(3, i, **kw).objects]  # noqa: E731
    drawn = objects(p_glyph=0.0, shapes=("star", "star", "cross"), sizes=("large",))
    stars = sum(o.shape == "star" for o in drawn)
    assert {o.shape for o in drawn} == {"star", "cross"} and {o.size for o in drawn} == {"large"}
    # a scene never repeats a shape, so a second object is the other shape: the share of stars among the
    # first objects is the listed 2/3 (binomial, 5 standard deviations)
    first = [world.scene_at(3, i, p_glyph=0.0, shapes=("star", "star", "cross")).objects[0].shape for i in range(600)]
    share = first.count("star") / len(first)
    assert abs(share - 2 / 3) < 5 * (2 / 9 / len(first)) ** 0.5, share
    assert stars > len(drawn) / 2
    assert all(o.is_glyph for o in objects(p_glyph=1.0))
    # the defaults draw every shape and size alike, and the same scenes as before the options existed
    assert world.scene_at(5, 7) == world.scene_at(5, 7, shapes=world.SHAPES, sizes=world.SIZES)
    for bad in ({"shapes": ("A",)}, {"shapes": ()}, {"sizes": ("huge",)}, {"p_glyph": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            world.scene_at(0, 0, **bad)
    with pytest.raises(ValueError, match="shapes"):
        ProceduralStream(32, batch_size=2, rank=0, world_size=1, shapes=("hexagon",))


def test_pair_attributes_choose_what_a_minimal_pair_changes():
    stream = ProceduralStream(32, seed=6, batch_size=2, rank=0, world_size=1, masking=FullMasking(), minimal_pairs=True,
                              pair_attributes=("shape",))
    samples = [s for _, s in zip(range(40), stream)]
    for even, odd in zip(samples[0::2], samples[1::2]):
        before, after = even["labels"], odd["labels"]
        assert [b["colour"] for b in before] == [a["colour"] for a in after]
        assert sum(b["shape"] != a["shape"] for b, a in zip(before, after)) == 1
    with pytest.raises(ValueError, match="pair_attributes"):
        ProceduralStream(32, batch_size=2, rank=0, world_size=1, minimal_pairs=True, pair_attributes=("texture",))
