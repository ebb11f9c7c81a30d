"""StableSyncNet: official key layouts, numeric parity with the reference, loss and checkpointing."""

import copy
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import REPO, REFERENCE, need
from latentsync.errors import UserError
from latentsync.models import StableSyncNet
from latentsync.models.stable_syncnet import contrastive_sync_loss, cosine_similarity, sync_accuracy, sync_loss

MANIFESTS = ["syncnet_16_pixel_attn.json", "syncnet_16_pixel.json", "syncnet_16_latent.json", "syncnet_25_pixel.json"]
FIXTURES = ["syncnet_16_pixel_attn_tiny", "syncnet_16_latent_tiny"]
TOL = 1e-4


def load_manifest(name):
    return json.loads(need(REFERENCE / "manifests" / name).read_text())


def tiny_model(fixture="syncnet_16_pixel_attn_tiny"):
    """The fixture's tiny model with the reference weights, plus its io tensors."""
    folder = need(REFERENCE / fixture)
    model = StableSyncNet.from_config(OmegaConf.load(folder / "config.yaml").model)
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    return model, load_file(folder / "io.safetensors")


def layout(model):
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("manifest_name", MANIFESTS)
def test_official_config_builds_exact_checkpoint_layout(manifest_name):
    manifest = load_manifest(manifest_name)
    config_path = REPO / "configs/syncnet" / manifest["config"].split("/")[-1]
    section = OmegaConf.load(config_path).model
    with torch.device("meta"):
        model = StableSyncNet.from_config(section)
    state = layout(model)
    assert set(state) == set(manifest["keys"])
    mismatched = {k: (state[k], v) for k, v in manifest["keys"].items() if state[k] != v}
    assert not mismatched
    assert len(state) == manifest["num_state_dict_tensors"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_missing_attn_blocks_means_no_attention():
    manifest = load_manifest("syncnet_25_pixel.json")
    section = copy.deepcopy(manifest["model_config"])
    for encoder in section.values():
        encoder.pop("attn_blocks", None)  # as in the reference syncnet_25_pixel.yaml
    with torch.device("meta"):
        model = StableSyncNet(**section)
    assert layout(model) == manifest["keys"]


def test_keyword_and_dictconfig_construction_agree_and_config_is_plain():
    section = OmegaConf.load(REPO / "configs/syncnet/syncnet_16_pixel_attn.yaml").model
    with torch.device("meta"):
        by_kwargs = StableSyncNet(**section)
        by_config = StableSyncNet.from_config(OmegaConf.to_container(section))
    assert layout(by_kwargs) == layout(by_config)
    restored = json.loads(by_kwargs.to_json_string())  # OmegaConf nodes would not serialise
    assert restored["visual_encoder"]["attn_blocks"] == [0, 0, 0, 0, 1, 1, 0, 0]


def test_inconsistent_config_is_a_user_error():
    section = load_manifest("syncnet_16_latent.json")["model_config"]
    section["audio_encoder"]["attn_blocks"] = [0, 0]
    with pytest.raises(UserError, match="audio_encoder"):
        StableSyncNet(**section)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_tiny_model_matches_reference_embeddings(fixture):
    model, io = tiny_model(fixture)
    model.eval()
    with torch.no_grad():
        vision, audio = model(io["image_sequences"], io["audio_sequences"])
    errors = {
        "vision_embeds": (vision - io["vision_embeds"]).abs().max().item(),
        "audio_embeds": (audio - io["audio_embeds"]).abs().max().item(),
        "cosine_similarity": (cosine_similarity(vision, audio) - io["cosine_similarity"]).abs().max().item(),
    }
    print(f"{fixture} max abs errors: {errors}")
    assert max(errors.values()) < TOL, errors
    assert torch.allclose(vision.norm(dim=1), torch.ones(len(vision)), atol=1e-5)
    assert (vision >= 0).all() and (audio >= 0).all()  # ReLU before the norm: cosine in [0, 1]


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def test_loss_prefers_matched_pairs_and_accuracy_thresholds_at_half():
    generator = torch.Generator().manual_seed(0)
    vision = unit(torch.rand(4, 16, generator=generator))
    close = unit(vision + 0.05 * torch.rand(4, 16, generator=generator))  # cosine near 1
    far = torch.zeros(4, 16)
    far[:, 0] = 1.0
    far = unit(far + 0.01)  # mostly orthogonal to `vision`
    ones, zeros = torch.ones(4), torch.zeros(4)
    matched = sync_loss(vision, close, ones)
    assert matched < sync_loss(vision, close, zeros)
    assert matched < sync_loss(vision, far, ones)
    s = cosine_similarity(vision, close)
    assert math.isclose(matched.item(), -torch.log(s).mean().item(), rel_tol=1e-5)
    assert sync_accuracy(vision, close, ones).item() == 1.0
    assert sync_accuracy(vision, close, zeros).item() == 0.0
    mixed = torch.cat([vision[:2], vision[2:]]), torch.cat([close[:2], far[2:]])
    assert sync_accuracy(*mixed, torch.tensor([1, 1, 0, 0])).item() == 1.0


def test_contrastive_loss_rewards_picking_the_own_window_among_the_batch():
    """InfoNCE: matched pairs score near 0, a constant embedding ln(batch) (where BCE sits at its
    trivial ln 2 minimum), shuffled pairs worse; off-sync rows are only negatives."""
    vision = unit(torch.eye(6, 8) + 0.01)
    labels = torch.tensor([1, 1, 1, 0, 1, 0])
    matched = contrastive_sync_loss(vision, vision, labels, temperature=0.05)
    constant = unit(torch.ones(6, 8))
    assert matched.item() < 0.05
    assert math.isclose(contrastive_sync_loss(constant, constant, labels).item(), math.log(6), rel_tol=1e-5)
    shuffled = contrastive_sync_loss(vision, vision[[1, 2, 0, 3, 5, 4]], labels, temperature=0.05)
    assert shuffled.item() > 10 * matched.item()
    # an off-sync row's own pair is not a positive: changing its audio changes nothing for it ...
    changed = vision.clone()
    changed[3] = unit(torch.rand(1, 8))[0]
    assert contrastive_sync_loss(vision, changed, labels, 0.05) > matched  # ... but it is a negative for the others
    none = contrastive_sync_loss(vision.requires_grad_(), vision, torch.zeros(6))
    assert none.item() == 0.0 and none.requires_grad


def test_loss_is_computed_in_float32_for_half_embeddings():
    vision = unit(torch.rand(3, 8)).half()
    audio = unit(torch.rand(3, 8)).half()
    loss = sync_loss(vision, audio, torch.tensor([1, 0, 1]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    same = sync_loss(vision, vision, torch.ones(3))  # cosine may round above 1
    assert torch.isfinite(same) and same.item() < 1e-2


def gradients(model, io, targets):
    model.zero_grad()
    vision, audio = model(io["image_sequences"], io["audio_sequences"])
    sync_loss(vision, audio, targets).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_recomputes_blocks_and_keeps_gradients():
    model, io = tiny_model()
    model.train()
    targets = torch.tensor([1.0, 0.0])
    calls = []  # pre-hook: early-stopping recomputation ends before forward hooks would fire
    model.visual_encoder.down_blocks[1].register_forward_pre_hook(lambda *args: calls.append(1))

    reference = gradients(model, io, targets)
    assert len(calls) == 1 and not model.is_gradient_checkpointing

    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing and model.is_gradient_checkpointing
    calls.clear()
    checkpointed = gradients(model, io, targets)
    assert len(calls) == 2  # forward, then recomputed during backward

    worst = max((reference[k] - checkpointed[k]).abs().max().item() for k in reference)
    assert worst < 1e-6, worst
    assert any(g.abs().max() > 0 for g in reference.values())

    calls.clear()
    model.eval()
    with torch.no_grad():
        model(io["image_sequences"], io["audio_sequences"])
    assert len(calls) == 1  # no recomputation outside training
    model.disable_gradient_checkpointing()
    assert not model.gradient_checkpointing
