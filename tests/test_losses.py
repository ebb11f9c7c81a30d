"""Pixel-space training losses: VideoMAE-v2 extractor, TREPA, lower-half LPIPS, mixed noise."""

import math

import pytest
import torch
import torch.nn.functional as F

from latentsync.errors import UserError
from latentsync.losses.lpips_loss import lower_half_lpips, make_lpips
from latentsync.losses.noise import mixed_noise, one_step_x0, prediction_target
from latentsync.losses.trepa import TREPALoss
from latentsync.losses.videomae import (VisionTransformer3D, count_parameters, load_videomae,
                                        sinusoid_table, vit_giant_patch14_224)

TINY = dict(img_size=28, patch_size=14, tubelet_size=2, num_frames=4, num_classes=5,
            embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)


def tiny_vit(seed: int = 0, **overrides) -> VisionTransformer3D:
    torch.manual_seed(seed)
    model = VisionTransformer3D(**{**TINY, **overrides})
    with torch.no_grad():  # non-trivial biases and norms so every parameter matters
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ---------------------------------------------------------------- VideoMAE-v2 ViT


def test_tiny_vit_forward_features_shape_and_finite():
    model = tiny_vit()
    out = model.forward_features(torch.rand(2, 3, 4, 28, 28))
    assert out.shape == (2, 64)
    assert torch.isfinite(out).all()


def test_block_matches_written_out_attention():
    """One block equals pre-LN attention with q/v biases (k bias zero) and a GELU MLP."""
    model = tiny_vit()
    block = model.blocks[0]
    x = torch.randn(2, 8, 64)
    heads, dim = 4, 64
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, 1e-6)
    wq, wk, wv = block.attn.qkv.weight.chunk(3, dim=0)
    q = h @ wq.T + block.attn.q_bias
    k = h @ wk.T
    v = h @ wv.T + block.attn.v_bias
    split = lambda t: t.view(2, 8, heads, dim // heads).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads), -1)
    attended = (weights @ split(v)).transpose(1, 2).reshape(2, 8, dim)
    y = x + attended @ block.attn.proj.weight.T + block.attn.proj.bias
    h2 = F.layer_norm(y, (dim,), block.norm2.weight, block.norm2.bias, 1e-6)
    mlp = F.gelu(h2 @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    expected = y + mlp @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_position_table_values_and_not_saved():
    table = sinusoid_table(10, 6)
    pos, j = 7, 3  # odd j -> cos, pair index 1
    assert table[0, pos, j].item() == pytest.approx(math.cos(pos / 10000 ** (2 * 1 / 6)), abs=1e-6)
    assert table[0, pos, 4].item() == pytest.approx(math.sin(pos / 10000 ** (2 * 2 / 6)), abs=1e-6)
    model = tiny_vit()
    assert model.pos_embed.shape == (1, 8, 64)
    assert "pos_embed" not in model.state_dict()


def test_gradient_checkpointing_same_output_and_grads():
    model = tiny_vit()
    x = torch.rand(1, 3, 4, 28, 28)
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        out = model.forward_features(x)
        out.square().sum().backward()
        grads.append((out.detach(), model.blocks[1].mlp.fc1.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def expected_vit_g_parameters() -> int:
    dim, hidden, depth, classes, patch, tubelet = 1408, 6144, 40, 174, 14, 2
    patch_embed = 3 * tubelet * patch * patch * dim + dim
    block = (2 * dim                 # norm1
             + 3 * dim * dim         # qkv weight (no bias)
             + 2 * dim               # q_bias, v_bias
             + dim * dim + dim       # proj
             + 2 * dim               # norm2
             + dim * hidden + hidden  # fc1
             + hidden * dim + dim)   # fc2
    return patch_embed + depth * block + 2 * dim + dim * classes + classes


def test_vit_giant_names_and_parameter_count_on_meta():
    with torch.device("meta"):
        model = vit_giant_patch14_224()
    names = set(model.state_dict())
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight",
                "fc_norm.bias", "head.weight", "head.bias"}
    for i in range(40):
        expected |= {f"blocks.{i}.{n}" for n in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
            "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
            "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    assert names == expected
    assert "blocks.0.attn.qkv.bias" not in names and "blocks.40.norm1.weight" not in names
    sd = model.state_dict()
    assert tuple(sd["patch_embed.proj.weight"].shape) == (1408, 3, 2, 14, 14)
    assert tuple(sd["blocks.39.mlp.fc1.weight"].shape) == (6144, 1408)
    assert tuple(sd["head.weight"].shape) == (174, 1408)
    assert model.pos_embed.shape == (1, 2048, 1408)
    assert model.fc_norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6
    assert count_parameters(model) == expected_vit_g_parameters() == 1_011_855_918


# ---------------------------------------------------------------- checkpoint loading


@pytest.mark.parametrize("key", ["model", "module"])
def test_load_videomae_round_trip(tmp_path, key):
    source = tiny_vit(seed=1)
    path = tmp_path / "tiny.pth"
    torch.save({key: source.state_dict(), "epoch": 3}, path)
    loaded = load_videomae(path, "cpu", torch.float32, model=tiny_vit(seed=2))
    x = torch.rand(1, 3, 4, 28, 28)
    torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x))
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_videomae_into_meta_model_restores_position_table(tmp_path):
    source = tiny_vit(seed=1)
    path = tmp_path / "tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    with torch.device("meta"):
        skeleton = VisionTransformer3D(**TINY)
    loaded = load_videomae(path, "cpu", torch.float32, model=skeleton)
    assert not loaded.pos_embed.is_meta
    torch.testing.assert_close(loaded.pos_embed, source.pos_embed)
    x = torch.rand(1, 3, 4, 28, 28)
    torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x))


def test_load_videomae_refuses_missing_key(tmp_path):
    sd = tiny_vit().state_dict()
    del sd["blocks.1.attn.v_bias"]
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(UserError, match=r"missing.*blocks\.1\.attn\.v_bias"):
        load_videomae(path, "cpu", torch.float32, model=tiny_vit())


def test_load_videomae_refuses_dict_without_model_key(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": tiny_vit().state_dict()}, path)
    with pytest.raises(UserError, match="'model' or 'module'"):
        load_videomae(path, "cpu", torch.float32, model=tiny_vit())


def test_load_videomae_missing_file_names_source(tmp_path):
    with pytest.raises(UserError) as info:
        load_videomae(tmp_path / "absent.pth")
    message = str(info.value)
    assert "vit_g_hybrid_pt_1200e_ssv2_ft.pth" in message and "LatentSync-1.5" in message
    assert "\n" not in message


# ---------------------------------------------------------------- TREPA


def test_trepa_zero_for_identical_positive_for_different():
    loss = TREPALoss(tiny_vit())
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 4, 32, 32) * 2 - 1  # 32 px frames are resized to 28
    assert loss(gt.clone(), gt).item() < 1e-10
    other = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    assert loss(other, gt).item() > 1e-6


def test_trepa_gradient_reaches_pred_not_extractor():
    extractor = tiny_vit()
    extractor.requires_grad_(True)  # TREPALoss must freeze it itself
    loss_fn = TREPALoss(extractor)
    pred = (torch.rand(1, 3, 4, 32, 32) * 2 - 1).requires_grad_(True)
    gt = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    loss = loss_fn(pred, gt)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())
    assert loss.dim() == 0


def test_trepa_clamps_out_of_range_values():
    """At the extractor's size (no resize) values beyond [-1, 1] count as -1 / 1."""
    loss = TREPALoss(tiny_vit())
    torch.manual_seed(0)
    wide = torch.randn(1, 3, 4, 28, 28) * 3
    assert loss(wide, wide.clamp(-1, 1)).item() < 1e-10
    assert loss(wide * 0.5, wide.clamp(-1, 1)).item() > 1e-8  # in-range changes still count


def test_trepa_matches_manual_pipeline():
    extractor = tiny_vit()
    loss = TREPALoss(extractor)
    pred = torch.rand(2, 3, 4, 40, 40) * 2 - 1
    gt = torch.rand(2, 3, 4, 40, 40) * 2 - 1

    def features(video):
        frames = video.permute(0, 2, 1, 3, 4).reshape(8, 3, 40, 40)
        frames = F.interpolate(frames, size=(28, 28), mode="bicubic", align_corners=False)
        frames = ((frames + 1) / 2).clamp(0, 1).reshape(2, 4, 3, 28, 28).permute(0, 2, 1, 3, 4)
        f = extractor.forward_features(frames)
        return f / f.norm(dim=-1, keepdim=True)

    expected = (features(pred) - features(gt)).square().mean()
    torch.testing.assert_close(loss(pred, gt), expected, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def random_lpips(tmp_path_factory):
    return make_lpips(tmp_path_factory.mktemp("vgg") / "absent.pth", allow_random_backbone=True)


def test_lpips_missing_backbone_is_user_error(tmp_path):
    with pytest.raises(UserError) as info:
        make_lpips(tmp_path / "vgg16-397923af.pth")
    assert "vgg16-397923af.pth" in str(info.value)
    assert "download.pytorch.org" in str(info.value)


def test_lpips_identical_zero_different_positive(random_lpips):
    torch.manual_seed(0)
    gt = torch.rand(3, 3, 64, 64) * 2 - 1
    assert lower_half_lpips(random_lpips, gt.clone(), gt).item() < 1e-6
    assert lower_half_lpips(random_lpips, torch.rand(3, 3, 64, 64) * 2 - 1, gt).item() > 1e-4


def test_lpips_looks_at_lower_half_only(random_lpips):
    torch.manual_seed(1)
    gt = torch.rand(2, 3, 64, 64) * 2 - 1
    pred = gt + 0.3 * torch.randn_like(gt)
    base = lower_half_lpips(random_lpips, pred, gt)
    top_changed = pred.clone()
    top_changed[:, :, :32] = torch.rand(2, 3, 32, 64) * 2 - 1
    assert lower_half_lpips(random_lpips, top_changed, gt).item() == pytest.approx(base.item(), abs=1e-7)
    bottom_changed = pred.clone()
    bottom_changed[:, :, 32:] = torch.rand(2, 3, 32, 64) * 2 - 1
    assert abs(lower_half_lpips(random_lpips, bottom_changed, gt).item() - base.item()) > 1e-4
    per_frame = random_lpips(pred[:, :, 32:], gt[:, :, 32:]).flatten()
    assert base.item() == pytest.approx(per_frame.mean().item(), rel=1e-6)


def test_lpips_accepts_video_layout_and_fp16(random_lpips):
    torch.manual_seed(2)
    gt = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    pred = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    frames = lambda v: v.permute(0, 2, 1, 3, 4).reshape(2, 3, 32, 32)  # noqa: E731
    video = lower_half_lpips(random_lpips, pred, gt)
    torch.testing.assert_close(video, lower_half_lpips(random_lpips, frames(pred), frames(gt)))
    half = lower_half_lpips(random_lpips, pred.half(), gt.half())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(video.item(), abs=2e-3)


def test_lpips_loads_local_backbone_and_packaged_heads(tmp_path, random_lpips):
    import lpips

    torch.manual_seed(3)
    fake_vgg = {}
    for name, value in random_lpips.net.state_dict().items():
        fake_vgg["features." + name.split(".", 1)[1]] = torch.randn_like(value)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(fake_vgg, path)
    model = make_lpips(path)
    torch.testing.assert_close(model.net.slice3.get_submodule("10").weight, fake_vgg["features.10.weight"])
    torch.testing.assert_close(model.net.slice5.get_submodule("28").bias, fake_vgg["features.28.bias"])
    heads = torch.load(f"{lpips.__path__[0]}/weights/v0.1/vgg.pth", map_location="cpu",
                       weights_only=True)
    torch.testing.assert_close(model.lin2.model[1].weight, heads["lin2.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in fake_vgg.items() if k != "features.28.bias"}, broken)
    with pytest.raises(UserError, match="features.28.bias"):
        make_lpips(broken)


# ---------------------------------------------------------------- noise


def test_mixed_noise_statistics():
    gen = torch.Generator().manual_seed(0)
    noise = mixed_noise((2, 4, 16, 32, 32), alpha=1.0, generator=gen)
    assert noise.shape == (2, 4, 16, 32, 32)
    assert noise.std().item() == pytest.approx(1.0, abs=0.01)
    assert noise.mean().item() == pytest.approx(0.0, abs=0.02)
    a, b = noise[:, :, 0].flatten(), noise[:, :, 9].flatten()
    correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert correlation == pytest.approx(0.5, abs=0.02)
    strong = mixed_noise((2, 4, 16, 32, 32), alpha=2.0, generator=gen)
    correlation = torch.corrcoef(torch.stack([strong[:, :, 3].flatten(),
                                              strong[:, :, 12].flatten()]))[0, 1].item()
    assert correlation == pytest.approx(0.8, abs=0.02)  # alpha^2 / (1 + alpha^2)


def test_mixed_noise_draw_order_and_reproducibility():
    shape = (1, 4, 5, 6, 6)
    first = mixed_noise(shape, generator=torch.Generator().manual_seed(7))
    second = mixed_noise(shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    gen = torch.Generator().manual_seed(7)
    eps1, eps2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    expected = eps1[:, :, :1].repeat(1, 1, 5, 1, 1) * math.sqrt(0.5) + eps2 * math.sqrt(0.5)
    torch.testing.assert_close(first, expected)
    other = mixed_noise(shape, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(first, other)


def test_one_step_x0_inverts_add_noise():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 2, 8, 8)
    noise = torch.randn_like(x0)
    timesteps = torch.tensor([0, 437, 999])
    x_t = scheduler.add_noise(x0, noise, timesteps)
    recovered = one_step_x0(x_t, noise, scheduler.alphas_cumprod, timesteps)
    torch.testing.assert_close(recovered, x0, atol=2e-4, rtol=1e-4)
    wrong = one_step_x0(x_t, torch.zeros_like(noise), scheduler.alphas_cumprod, timesteps)
    assert (wrong[2] - x0[2]).abs().max() > 1.0  # at t=999 the noise term dominates


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_each_prediction_target_gives_back_the_clean_latent(prediction_type):
    """run.prediction_type: the training target of each kind, read back by the one-step estimate
    (the pixel-space losses' x0), is the clean latent; the targets of the kinds differ."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction_type)
    torch.manual_seed(1)
    x0, noise = torch.randn(3, 4, 2, 8, 8), torch.randn(3, 4, 2, 8, 8)
    timesteps = torch.tensor([5, 437, 990])
    abar = scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1, 1)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    target = prediction_target(noise, x0, abar, prediction_type)
    torch.testing.assert_close(one_step_x0(x_t, target, scheduler.alphas_cumprod, timesteps, prediction_type), x0,
                               atol=2e-3, rtol=1e-3)
    if prediction_type == "v_prediction":  # diffusers' own definition of v
        torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, timesteps))
    kinds = ("epsilon", "sample", "v_prediction")
    others = [prediction_target(noise, x0, abar, k) for k in kinds if k != prediction_type]
    assert all((target - other).abs().max() > 0.1 for other in others)
