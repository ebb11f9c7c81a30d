"""Speed options: samplers, presets, precision by hardware, CPU kernels, compile."""

import copy
import dataclasses
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import REFERENCE, need
from latentsync import device as devices
from latentsync.models.unet import Conditioning
from latentsync.pipelines.acceleration import Int8Linear
from latentsync.pipelines.lipsync_pipeline import LipsyncOptions, LipsyncPipeline
from latentsync.pipelines.options import PRESETS, preset_options
from latentsync.schedulers import SAMPLERS, make_sampler, make_scheduler
from test_pipeline import FAST, pipe, read_video, small_clip, speech_wav, tiny  # noqa: F401  (fixtures)

CPU = torch.device("cpu")


# -- samplers: exact on a known-answer model ----------------------------------------------------

class PointMassUNet(torch.nn.Module):
    """The exact noise prediction for data that is one fixed latent `target`: eps = (x - sqrt(a) c) / sqrt(1 - a).

    With guidance the null-audio half predicts eps + d and the audio half eps + d (1 - 1/g), so only
    the guided combination uncond + g (audio - uncond) is exact: a sampler that mixes the halves up
    or mis-steps lands away from `target`.
    """

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor, guidance: float):
        super().__init__()
        self.target, self.alphas, self.guidance = target, alphas_cumprod, guidance
        self.config = SimpleNamespace(out_channels=target.shape[1], cross_attention_dim=8)
        self.dtype, self.device = torch.float32, CPU
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states, deep_cache=None, step_index=0):
        self.calls += 1
        a = self.alphas[int(t)]
        noisy = x[:, : self.target.shape[1]]
        eps = (noisy - a.sqrt() * self.target) / (1 - a).sqrt()
        null = encoder_hidden_states.reshape(x.shape[0], -1).abs().sum(1) == 0  # [B]: the unconditional half
        shift = torch.where(null, 1.0, 1.0 - 1.0 / self.guidance).view(-1, 1, 1, 1, 1) * 0.5
        return SimpleNamespace(sample=eps + shift)


def point_mass_run(kind: str, steps: int, guidance: float = 2.0):
    """(final latents, target, UNet calls) of `kind` with `guidance` on a model built for guidance 2."""
    target = torch.linspace(-1, 1, 4 * 3 * 4 * 4).reshape(1, 4, 3, 4, 4)
    scheduler = make_scheduler()
    unet = PointMassUNet(target, scheduler.alphas_cumprod, 2.0)
    pipe = LipsyncPipeline(vae=None, unet=unet, scheduler=scheduler, resolution=32)
    noise = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = [torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 4, 3, 4, 4), torch.zeros(1, 4, 3, 4, 4)]
    audio = torch.ones(3, 5, 8)
    sampler = pipe.sampler(kind)
    out = pipe.denoise(noise, Conditioning(*cond), audio, steps, guidance, scheduler=sampler)
    return out, exact_endpoint(sampler, noise, target), unet.calls


def exact_endpoint(sampler, noise, target):
    """Where the deterministic sampling ODE of a point mass ends: the start's noise direction is
    kept, scaled to the last noise level (DDIM stops at alphas_cumprod[0], the multistep samplers at 0)."""
    alphas = sampler.alphas_cumprod
    start = alphas[int(sampler.timesteps[0])]
    eps = (noise - start.sqrt() * target) / (1 - start).sqrt()
    last = alphas[0] if type(sampler).__name__ == "DDIMScheduler" else torch.tensor(1.0)
    return last.sqrt() * target + (1 - last).sqrt() * eps


@pytest.mark.parametrize("kind", SAMPLERS)
def test_every_sampler_reaches_the_known_answer_with_guidance(kind):
    out, exact, calls = point_mass_run(kind, 6)
    assert calls == 6  # one (batched, guided) UNet call per step
    assert (out - exact).abs().max() < 1e-4, (kind, (out - exact).abs().max())
    wrong, exact, _ = point_mass_run(kind, 6, guidance=1.0)  # no guidance: the biased audio half alone
    assert (wrong - exact).abs().max() > 0.05


@pytest.mark.parametrize("kind", ["dpmpp", "unipc"])
def test_multistep_samplers_are_fresh_per_segment(kind):
    pipe = LipsyncPipeline(vae=None, unet=PointMassUNet(torch.zeros(1, 4, 1, 4, 4), make_scheduler().alphas_cumprod,
                                                         2.0), scheduler=make_scheduler(), resolution=32)
    first, second = pipe.sampler(kind), pipe.sampler(kind)
    assert first is not second and type(first).__name__ != "DDIMScheduler"
    assert first.config.beta_start == pipe.scheduler.config.beta_start  # the same noise schedule
    assert pipe.sampler("ddim") is pipe.scheduler  # DDIM is stateless: the parity path reuses it
    a, _, _ = point_mass_run(kind, 5)
    b, _, _ = point_mass_run(kind, 5)
    assert torch.equal(a, b)


def test_a_reused_multistep_sampler_is_reset_by_set_timesteps():
    scheduler = make_sampler("dpmpp")
    runs = []
    for _ in range(2):
        scheduler.set_timesteps(4)
        x = torch.ones(1, 4)
        for t in scheduler.timesteps:
            x = scheduler.step(0.1 * x, t, x).prev_sample
        runs.append(x)
    assert torch.equal(runs[0], runs[1])


# -- the parity path -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_unet():
    unet_dir = need(REFERENCE / "unet_tiny_stage2")
    from latentsync.models import UNet3DConditionModel

    unet = UNet3DConditionModel.from_config(OmegaConf.to_container(OmegaConf.load(unet_dir / "config.yaml").model))
    unet.load_state_dict(load_file(str(unet_dir / "weights.safetensors")))
    return unet.eval()


def fixture_denoise(pipe, opts: LipsyncOptions):
    base = need(REFERENCE / "ddim_tiny_stage2")
    io = load_file(str(base / "io.safetensors"))
    meta = json.loads((base / "meta.json").read_text())
    conditioning = Conditioning(io["mask"], io["masked_image_latents"], io["ref_latents"])
    with torch.no_grad(), pipe.speed.apply(opts) as runtime:
        final = pipe.denoise(io["initial_latents"], conditioning, io["audio_embeds"], meta["num_inference_steps"],
                             meta["guidance_scale"], enable_deepcache=opts.enable_deepcache,
                             scheduler=pipe.sampler(opts.scheduler), runtime=runtime)
    return (final - io["final_latents"]).abs().max().item()


def relative_error(max_error: float) -> float:
    return max_error / load_file(str(REFERENCE / "ddim_tiny_stage2/io.safetensors"))["final_latents"].abs().max().item()


def test_default_options_reproduce_the_ddim_fixture_and_kernels_are_undone(reference_unet):
    pipe = LipsyncPipeline(vae=None, unet=reference_unet, scheduler=make_scheduler(), resolution=128)
    steps = json.loads((REFERENCE / "ddim_tiny_stage2/meta.json").read_text())["num_inference_steps"]
    assert fixture_denoise(pipe, LipsyncOptions(inference_steps=steps)) < 1e-4
    assert fixture_denoise(pipe, LipsyncOptions(inference_steps=steps, cpu_kernels="channels_last")) < 1e-3
    int8_error = fixture_denoise(pipe, LipsyncOptions(inference_steps=steps, cpu_kernels="int8"))
    assert 0 < relative_error(int8_error) < 0.1  # quantised Linear layers: close, not equal
    # nothing of a run's kernels stays behind
    assert not any(isinstance(m, Int8Linear) for m in reference_unet.modules())
    assert all(p.is_contiguous() for p in reference_unet.parameters())
    assert fixture_denoise(pipe, LipsyncOptions(inference_steps=steps)) < 1e-4


def test_int8_copies_follow_weight_updates(reference_unet):
    from latentsync.pipelines.acceleration import SpeedSetup

    unet = copy.deepcopy(reference_unet)
    speed = SpeedSetup(unet)
    first = speed.int8_layers()
    assert speed.int8_layers() is first  # cached while the weights stay
    name, linear = next((n, m) for n, m in unet.named_modules() if type(m) is torch.nn.Linear)
    with torch.no_grad():
        linear.weight.mul_(2.0)  # what an optimizer step does: an in-place update
    second = speed.int8_layers()
    assert second is not first
    x = torch.randn(3, linear.in_features)
    assert torch.allclose(second[name](x), linear(x), atol=0.05 * linear(x).abs().max().item())


def test_compile_option_compiles_the_unet_once(reference_unet, monkeypatch):
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    pipe = LipsyncPipeline(vae=None, unet=reference_unet, scheduler=make_scheduler(), resolution=128)
    for _ in range(2):
        assert fixture_denoise(pipe, LipsyncOptions(inference_steps=3, compile=True)) < 1e-4
    assert compiled == [reference_unet]


# -- precision follows the hardware ---------------------------------------------------------------

@pytest.fixture(params=["native", "emulated"])
def cpu_kind(request, monkeypatch):
    flags = {"avx2": True, "avx512_bf16": request.param == "native"}
    monkeypatch.setattr(devices, "cpu_features", lambda: flags)
    return request.param


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_a_warning(cpu_kind, caplog):
    with caplog.at_level(logging.WARNING, logger="latentsync.device"):
        dtype = devices.pick_dtype("bf16", CPU)
        cast = devices.autocast_dtype("bf16", CPU)
        auto = devices.autocast_dtype("auto", CPU)
    if cpu_kind == "native":
        assert dtype == cast == auto == torch.bfloat16 and not caplog.records
    else:
        assert dtype == torch.float32 and cast is None and auto is None
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2  # the explicit requests warn; "auto" quietly stays in fp32
        assert all("does not compute it natively" in m and "avx512_bf16" in m for m in messages)


def test_fp16_on_a_cpu_without_native_fp16_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_features", lambda: {"avx512_bf16": True})
    with caplog.at_level(logging.WARNING, logger="latentsync.device"):
        assert devices.pick_dtype("fp16", CPU) == torch.float32
    assert "fp16" in caplog.text
    monkeypatch.setattr(devices, "cpu_features", lambda: {"amx_fp16": True})
    assert devices.pick_dtype("fp16", CPU) == torch.float16
    assert devices.pick_dtype(None, CPU) == devices.pick_dtype("fp32", CPU) == torch.float32


def test_cpu_features_come_from_torch_or_proc_cpuinfo(monkeypatch, tmp_path):
    assert isinstance(devices.cpu_capability(), str) and devices.cpu_capability()
    assert devices.native_cpu_dtype(torch.float32)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    monkeypatch.setattr(devices.torch._C, "_cpu", None, raising=False)  # no torch probe: read the file
    monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
    assert devices.cpu_features()["avx512_bf16"] and devices.native_cpu_dtype(torch.bfloat16)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert not devices.native_cpu_dtype(torch.bfloat16)


# -- end to end: every sampler and preset gives the right frames ------------------------------------

@pytest.mark.parametrize("values", [dict(scheduler="dpmpp"), dict(scheduler="unipc"),
                                    dict(scheduler="unipc", enable_deepcache=True, inference_steps=4),
                                    dict(scheduler="ddim", cpu_kernels="int8+channels_last")],
                         ids=["dpmpp", "unipc", "unipc-deepcache", "ddim-int8-channels_last"])
def test_every_sampler_runs_end_to_end(pipe, small_clip, tmp_path, values):
    audio = speech_wav(tmp_path, 0.8)  # 20 frames: a full segment and an overlapping tail
    result = pipe(small_clip, audio, tmp_path / "o.mp4", LipsyncOptions(**{**FAST, **values}))
    frames, fps, _ = read_video(result.output_path)
    assert len(frames) == 20 and fps == 25 and result.segments == 2


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_end_to_end(pipe, small_clip, tmp_path, preset, monkeypatch):
    monkeypatch.setattr(devices, "cpu_features", lambda: {"avx512_bf16": True})  # autocast "auto" -> bf16
    audio = speech_wav(tmp_path, 0.8)
    opts = preset_options(preset, show_progress=False)
    opts = dataclasses.replace(opts, inference_steps=min(opts.inference_steps, 3))  # tiny models: steps only cost time
    result = pipe(small_clip, audio, tmp_path / "o.mp4", opts)
    frames, _, _ = read_video(result.output_path)
    assert len(frames) == 20 and result.segments == 2
