"""Each model kind's training objective runs, reaches every trainable parameter and lowers its loss."""

import pytest
import torch

from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.prior import DiffusionPrior, PriorConfig
from diffrt.models.text_encoder import TextEncoder
from diffrt.models.tokenizer import Tokenizer
from diffrt.models.unet import UNet, UNetConfig
from diffrt.schedules import NoiseSchedule
from diffrt.train import TrainConfig, Trainer
from diffrt.train.objectives import CLIPObjective, PriorObjective, UNetObjective, drop_prompts, objects_union

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow star"]


@pytest.fixture(scope="module")
def parts():
    tok = Tokenizer.train(PROMPTS, vocab_size=340, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=32, text_layers=1, text_heads=4,
                           image_size=16, patch_size=4, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    return tok, clip, TextEncoder(tok, clip)


def batch(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 4:12, 4:12] = 1
    objects = [torch.rand(i % 3, 1, size, size, generator=g) < 0.1 for i in range(n)]  # 0, 1 or 2 objects
    return {"image": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "mask": mask, "prompt": PROMPTS[:n],
            "object_masks": objects}


def unet(**kw):
    return UNet(UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), head_dim=16, context_dim=32, pooled_text_dim=16, **kw))


def train_steps(model, objective, steps=15, lr=3e-3):
    data = batch()
    cfg = TrainConfig(steps=steps, batch_size=4, lr=lr, warmup_steps=1, ema_decay=None, checkpoint_every=1000)
    t = Trainer(model, objective, lambda start: iter(lambda: data, None), cfg, "/tmp/diffrt-objective-test",
                progress=False)
    first = objective(model, data, torch.Generator().manual_seed(0))[0].item()
    t.run()
    return first, objective(model, data, torch.Generator().manual_seed(0))[0].item()


def test_caption_dropout():
    g = torch.Generator().manual_seed(0)
    assert drop_prompts(PROMPTS, 0.0, g) == PROMPTS and drop_prompts(PROMPTS, 1.0, g) == [""] * 4


@pytest.mark.parametrize("kind", ["inpainting", "super_resolution", "unclip_decoder"])
def test_unet_objectives_train(parts, kind):
    tok, clip, text = parts
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    if kind == "inpainting":
        model = unet(cond_image=True, prediction_type="v_prediction")
        objective = UNetObjective(noise, text, prediction_type="v_prediction", object_loss_weight=4.0)
    elif kind == "super_resolution":
        model = unet(low_res_channels=3, cond_image=True)
        objective = UNetObjective(noise, text, prediction_type="epsilon", sr_factor=2)
    else:
        model = unet(image_embed_dim=16, cond_image=False)
        objective = UNetObjective(noise, text, prediction_type="epsilon", image_conditioning=False,
                                  image_encoder=clip.encode_image)
    first, last = train_steps(model, objective)
    assert last < first


def test_clip_objective_trains(parts):
    tok, clip, _ = parts
    model = CLIP(clip.config)
    first, last = train_steps(model, CLIPObjective(tok), steps=20)
    assert last < first


def test_prior_objective_trains(parts):
    tok, clip, text = parts
    prior = DiffusionPrior(PriorConfig(embed_dim=16, text_width=32, max_length=8, width=32, layers=2, heads=4))
    objective = PriorObjective(NoiseSchedule.make("squaredcos_cap_v2"), text, clip.encode_image)
    first, last = train_steps(prior, objective, steps=25)
    assert last < first


class FixedPrediction(torch.nn.Module):
    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, t, cond):
        return self.prediction


@pytest.mark.parametrize("weight", [0.5, 1.0, 4.0])
def test_object_loss_weight_matches_float64_reference(weight):
    data = batch(seed=3)
    prediction = torch.randn(data["image"].shape, generator=torch.Generator().manual_seed(5))
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    objective = UNetObjective(noise, None, prediction_type="sample", image_conditioning=False,
                              object_loss_weight=weight)  # target = x0, the batch's images
    loss, metrics = objective(FixedPrediction(prediction), data, torch.Generator().manual_seed(0))
    error = (prediction.double() - data["image"].double()) ** 2
    inside = torch.stack([m.any(0) for m in data["object_masks"]]).double()  # an empty stack: all False
    w = (1 + (weight - 1) * inside).expand_as(error)
    expected = (w * error).sum() / w.sum()
    tol = 8 * torch.finfo(torch.float32).eps * expected.item()
    assert abs(loss.item() - expected.item()) <= tol
    if weight != 1.0:
        assert abs(metrics["mse"] - error.mean().item()) <= 8 * torch.finfo(torch.float32).eps * error.mean().item()
        assert abs(loss.item() - error.mean().item()) > 100 * tol  # the weighting changes the loss


def test_objects_union_and_validation():
    masks = [torch.zeros(0, 1, 4, 4, dtype=torch.bool), torch.zeros(2, 1, 4, 4, dtype=torch.bool)]
    masks[1][0, 0, 0, 0] = masks[1][1, 0, 3, 3] = True
    union = objects_union(masks, torch.zeros(2, 3, 4, 4))
    assert union.shape == (2, 1, 4, 4) and union[0].sum() == 0 and union[1].sum() == 2
    assert union[1, 0, 0, 0] == 1 and union[1, 0, 3, 3] == 1
    with pytest.raises(ValueError, match="object-mask sets"):
        objects_union(masks[:1], torch.zeros(2, 3, 4, 4))
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="object_loss_weight"):
            UNetObjective(noise, None, prediction_type="sample", object_loss_weight=bad)


def editor_unet(cond_image_size=0):
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(4,), head_dim=16, context_dim=32, cond_image=True,
                           cond_image_size=cond_image_size, cond_channels=8)).eval()


@pytest.mark.parametrize("cond_image_size", [8, 16])
def test_training_and_the_pipeline_build_the_same_image_condition(cond_image_size):
    """UNetObjective and ImagenEditorPipeline condition a UNet on the same image + mask through the
    model's own inpainting_condition (a 16×16 input area-resized to an 8×8 conditioning side), and
    a fully-masked training sample is the pipeline's text-to-image condition."""
    from diffrt.pipelines import ImagenEditorPipeline

    model = editor_unet(cond_image_size)
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    objective = UNetObjective(noise, None, prediction_type="epsilon")
    pipe = ImagenEditorPipeline(model, noise, lambda prompts: {}, num_steps=2)
    data = batch(size=16, seed=4)
    trained = objective.conditions(model, data, torch.Generator().manual_seed(0))
    sampled = pipe._stage_inputs(model, data["image"], data["mask"])  # as a cascade's base stage sees them
    assert trained.keys() == sampled.keys() == {"image", "mask"}
    assert trained["image"].shape[-1] == cond_image_size
    assert torch.equal(trained["image"], sampled["image"]) and torch.equal(trained["mask"], sampled["mask"])

    full = {**data, "mask": torch.ones_like(data["mask"])}
    trained = objective.conditions(model, full, torch.Generator().manual_seed(0))
    sampled = pipe._stage_inputs(model, *pipe._inputs(None, None, 4))
    expected = model.full_mask_condition(4)
    for k in ("image", "mask"):
        assert torch.equal(trained[k], expected[k]) and torch.equal(sampled[k], expected[k]), k


class RecordingPrior(DiffusionPrior):
    """Records what ``condition`` turns text into and what ``forward`` receives."""

    def __init__(self, config):
        super().__init__(config)
        self.conditions, self.inputs = [], []

    def condition(self, text):
        out = super().condition(text)
        self.conditions.append(out)
        return out

    def forward(self, z_t, t, cond):
        self.inputs.append(cond)
        return super().forward(z_t, t, cond)


def test_training_and_the_pipeline_condition_the_prior_alike(parts):
    """PriorObjective and UnCLIPPipeline both turn the text encoder's output into the prior's input
    through DiffusionPrior.condition."""
    from diffrt.pipelines import UnCLIPPipeline

    tok, clip, text = parts
    prior = RecordingPrior(PriorConfig(embed_dim=16, text_width=32, max_length=8, width=32, layers=1, heads=4))
    noise = NoiseSchedule.make("squaredcos_cap_v2")
    PriorObjective(noise, text, clip.encode_image, caption_dropout=0.0)(prior, batch(), torch.Generator())
    expected = DiffusionPrior.condition(text(PROMPTS))
    assert expected.keys() == {"text_tokens", "text_mask", "text_embed"}
    assert torch.equal(expected["text_tokens"], text(PROMPTS)["context"])
    assert prior.inputs[-1].keys() == expected.keys()
    assert all(torch.equal(prior.inputs[-1][k], expected[k]) for k in expected)

    decoder = UNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(8,), head_dim=16, context_dim=32, image_embed_dim=16))
    pipe = UnCLIPPipeline(prior, decoder, text, clip.encode_image, noise_schedule=noise, num_steps=2, prior_steps=2)
    prior.conditions.clear()
    pipe.sample_image_embeds(PROMPTS[:2], candidates=1, generator=torch.Generator().manual_seed(0), progress=False)
    assert len(prior.conditions) == 2  # the caption's and the empty caption's
    expected = DiffusionPrior.condition(text(PROMPTS[:2]))
    assert all(torch.equal(prior.conditions[0][k], expected[k]) for k in expected)
