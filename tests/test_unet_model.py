"""UNet3DConditionModel: official key layouts, numeric parity with the reference, safe strict loading."""

import inspect
import json
import pickle

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from conftest import REPO, REFERENCE, need
from latentsync.errors import UserError
from latentsync.models import UNet3DConditionModel, load_unet
from latentsync.models.unet import Conditioning, DeepCache, unet_input

MANIFEST_CONFIGS = {
    "unet_stage1.json": "stage1.yaml",
    "unet_stage1_512.json": "stage1_512.yaml",
    "unet_stage2.json": "stage2.yaml",
    "unet_stage2_512.json": "stage2_512.yaml",
    "unet_stage2_efficient.json": "stage2_efficient.yaml",
    "unet_v1.0_second_stage.json": "v1.0.yaml",
}
TOL = 1e-4


def model_config(path):
    return OmegaConf.to_container(OmegaConf.load(path).model)


@pytest.mark.parametrize("manifest_name", sorted(MANIFEST_CONFIGS))
def test_official_config_builds_exact_checkpoint_layout(manifest_name):
    manifest = json.loads(need(REFERENCE / "manifests" / manifest_name).read_text())
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(model_config(REPO / "configs/unet" / MANIFEST_CONFIGS[manifest_name]))
    state = {k: list(v.shape) for k, v in unet.state_dict().items()}
    expected = manifest["keys"]
    if manifest_name == "unet_v1.0_second_stage.json":  # 1.0 names map onto ours (docs/checkpoints.md)
        expected = {k.replace("audio_cross_attn.attn.", "attn2.").replace("audio_cross_attn.norm.", "norm2."): v
                    for k, v in expected.items()}
    assert sorted(set(state) - set(expected)) == [] and sorted(set(expected) - set(state)) == []
    assert {k: s for k, s in state.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in unet.parameters()) == manifest["num_parameters"]


def fixture(name):
    base = need(REFERENCE / name)
    return base, load_file(str(base / "weights.safetensors")), load_file(str(base / "io.safetensors"))


def test_stage2_tiny_matches_reference_outputs():
    base, weights, io = fixture("unet_tiny_stage2")
    unet = UNet3DConditionModel.from_config(model_config(base / "config.yaml"))
    unet.load_state_dict(weights, strict=True)
    unet.eval()
    with torch.no_grad():
        out = unet(io["sample"], io["timestep"], io["encoder_hidden_states"]).sample
        per_sample = unet(io["sample"], io["timesteps_per_sample"], io["encoder_hidden_states"]).sample
        zero_audio = unet(io["sample"], io["timestep"], torch.zeros_like(io["encoder_hidden_states"])).sample
        four_d = unet(io["sample"], io["timestep"], io["encoder_hidden_states"].reshape(2, 8, 50, -1)).sample
    assert (out - io["output"]).abs().max() < TOL
    assert (per_sample - io["output_per_sample_timesteps"]).abs().max() < TOL
    assert (zero_audio - io["output_zero_audio"]).abs().max() < TOL
    assert torch.equal(four_d, out)


def test_v1_checkpoint_in_official_pt_format_loads_and_matches(tmp_path):
    base, weights, io = fixture("unet_tiny_v1.0")
    assert any("audio_cross_attn" in k for k in weights)
    ckpt = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": weights, "global_step": 1234}, ckpt)
    unet = load_unet(base / "config.yaml", ckpt)
    assert unet.global_step == 1234
    unet.eval()
    with torch.no_grad():
        out = unet(io["sample"], io["timestep"], io["encoder_hidden_states"]).sample
        per_sample = unet(io["sample"], io["timesteps_per_sample"], io["encoder_hidden_states"]).sample
    assert (out - io["output"]).abs().max() < TOL
    assert (per_sample - io["output_per_sample_timesteps"]).abs().max() < TOL


def test_safetensors_and_plain_state_dict_load_the_same(tmp_path):
    base, weights, io = fixture("unet_tiny_stage2")
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "plain.pt")
    a = load_unet(base / "config.yaml", tmp_path / "w.safetensors").eval()
    b = load_unet(base / "config.yaml", tmp_path / "plain.pt").eval()
    with torch.no_grad():
        out_a = a(io["sample"], io["timestep"], io["encoder_hidden_states"]).sample
        out_b = b(io["sample"], io["timestep"], io["encoder_hidden_states"]).sample
    assert torch.equal(out_a, out_b) and (out_a - io["output"]).abs().max() < TOL


def test_position_tables_are_optional_in_files(tmp_path):
    base, weights, io = fixture("unet_tiny_stage2")
    torch.save({"state_dict": {k: v for k, v in weights.items() if not k.endswith("pos_encoder.pe")}}, tmp_path / "c.pt")
    unet = load_unet(base / "config.yaml", tmp_path / "c.pt").eval()
    with torch.no_grad():
        out = unet(io["sample"], io["timestep"], io["encoder_hidden_states"]).sample
    assert (out - io["output"]).abs().max() < TOL


def test_renamed_key_is_refused_with_its_name(tmp_path):
    base, weights, _ = fixture("unet_tiny_stage2")
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    weights["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_key.weight"] = weights.pop(key)
    torch.save({"state_dict": weights}, tmp_path / "bad.pt")
    with pytest.raises(UserError) as err:
        load_unet(base / "config.yaml", tmp_path / "bad.pt")
    assert key in str(err.value) and "to_key" in str(err.value) and "bad.pt" in str(err.value)


def test_changed_shape_is_refused_with_both_shapes(tmp_path):
    base, weights, _ = fixture("unet_tiny_stage2")
    weights["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    torch.save({"state_dict": weights}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"conv_in.weight: file \(32, 9, 3, 3\) vs model \(32, 13, 3, 3\)"):
        load_unet(base / "config.yaml", tmp_path / "bad.pt")


def test_wrong_config_is_refused_not_silently_loaded(tmp_path):
    base, weights, _ = fixture("unet_tiny_stage2")
    torch.save({"state_dict": weights}, tmp_path / "stage2.pt")
    config = OmegaConf.load(base / "config.yaml")
    config.model.use_motion_module = False
    OmegaConf.save(config, tmp_path / "stage1.yaml")
    with pytest.raises(UserError, match="motion modules"):
        load_unet(tmp_path / "stage1.yaml", tmp_path / "stage2.pt")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle executes code on load",))


def test_pickle_that_would_execute_code_is_refused(tmp_path, capsys):
    base, weights, _ = fixture("unet_tiny_stage2")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": weights, "payload": _RunsCode()}, f)
    torch.save({"state_dict": weights, "payload": _RunsCode()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(UserError, match="refused to load"):
            load_unet(base / "config.yaml", tmp_path / name)
    assert "executes code" not in capsys.readouterr().out


def test_gradient_checkpointing_gives_the_same_gradients():
    base, weights, io = fixture("unet_tiny_stage2")
    grads = []
    for checkpointing in (False, True):
        unet = UNet3DConditionModel.from_config(model_config(base / "config.yaml"))
        unet.load_state_dict(weights)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        unet(io["sample"][:1], 500, io["encoder_hidden_states"][:8]).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_deepcache_reuses_deep_features_between_refresh_steps():
    base, weights, io = fixture("unet_tiny_stage2")
    unet = UNet3DConditionModel.from_config(model_config(base / "config.yaml"))
    unet.load_state_dict(weights)
    unet.eval()
    sample, audio = io["sample"], io["encoder_hidden_states"]
    cache = DeepCache(interval=3)
    with torch.no_grad():
        full = unet(sample, 481, audio).sample
        refreshed = unet(sample, 481, audio, deep_cache=cache, step_index=0).sample
        reused_same = unet(sample, 481, audio, deep_cache=cache, step_index=1).sample
        other = sample.clone()
        other[:, :4] += 1.0
        reused_other = unet(other, 441, audio, deep_cache=cache, step_index=2).sample
        full_other = unet(other, 441, audio).sample
    assert torch.allclose(refreshed, full, atol=1e-6)
    assert torch.allclose(reused_same, full, atol=1e-5)
    assert not torch.allclose(reused_other, full_other, atol=1e-3)  # it is an approximation
    assert not torch.allclose(reused_other, full, atol=1e-3)  # but it sees the new input
    assert cache.reuse(1) and cache.reuse(2) and not cache.reuse(3)


def test_unet_input_puts_the_channels_in_the_documented_order():
    """Channels 0-3 noisy latents, 4 mask, 5-8 masked-face latents, 9-12 reference latents (the layout
    inference and training share); guidance repeats the conditioning, not the order."""
    shape = (2, 1, 3, 4, 4)
    noisy, mask = torch.full((2, 4, 3, 4, 4), 1.0), torch.full(shape, 2.0)
    conditioning = Conditioning(mask, torch.full((2, 4, 3, 4, 4), 3.0), torch.full((2, 4, 3, 4, 4), 4.0))
    x = unet_input(noisy, conditioning)
    in_channels = inspect.signature(UNet3DConditionModel.__init__).parameters["in_channels"].default
    assert x.shape == (2, 13, 3, 4, 4) and in_channels == 13
    assert x[:, :, 0, 0, 0].tolist() == [[1.0] * 4 + [2.0] + [3.0] * 4 + [4.0] * 4] * 2
    doubled = conditioning.repeated(2)
    assert all(torch.equal(d, torch.cat([c, c])) for d, c in zip(doubled, conditioning))
