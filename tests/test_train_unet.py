"""UNet training (docs/training.md): dataset samples, every loss, trainable-module selection, overfitting,
exact resume, checkpoints that inference loads, and configs rejected before training.

Everything runs on the CPU with tiny random models (UNet, VAE, SyncNet, VideoMAE, LPIPS backbone)
and a 6 s face clip cut from assets/demo1_video.mp4 (fixed box around the face, 256x256,
25 fps, 16 kHz audio). Training runs at 64 px.
"""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import MEDIA, REPO, need
from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.schedulers import make_scheduler

CLIP_SECONDS = 6
CROP = "crop=320:320:408:585,scale=256:256,fps=25"  # the face of demo1 (1080x1920)
VAL_AUDIO_SECONDS = 1.2
RES = 64
OVERFIT_STEPS = 240
OVERFIT_FACTOR = 4.0  # measured on CPU (deterministic): first 20 steps 0.891, last 40 steps 0.136 (x6.6)


@pytest.fixture(autouse=True)
def one_thread():
    """Seven agents share two cores: one thread avoids oversubscription stalls (5-30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 256x256 face clip with audio, its file list, and a short validation audio track."""
    import imageio_ffmpeg

    from latentsync.audio import load_audio
    from latentsync.video import write_audio_wav

    source = need(MEDIA / "demo1_video.mp4")
    folder = tmp_path_factory.mktemp("clips")
    clip = folder / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
                    "-t", str(CLIP_SECONDS), "-vf", CROP, "-c:v", "libx264", "-crf", "20", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-ar", "16000", "-ac", "1", str(clip)], check=True)
    fileslist = folder / "train.txt"
    fileslist.write_text("clip.mp4\n")
    val_audio = folder / "val.wav"
    write_audio_wav(val_audio, load_audio(clip)[: int(VAL_AUDIO_SECONDS * 16000)], 16000)
    return {"clip": clip, "fileslist": fileslist, "val_audio": val_audio}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """make_tiny_checkpoints + a 64 px SyncNet and a tiny VideoMAE, all random."""
    from latentsync.losses.videomae import VisionTransformer3D
    from latentsync.models import StableSyncNet
    from scripts.make_tiny_checkpoints import SYNCNET_MODEL, make_tiny_checkpoints, randomize

    out = make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))
    syncnet_model = {"audio_encoder": SYNCNET_MODEL["audio_encoder"],
                     "visual_encoder": dict(in_channels=48, block_out_channels=[16, 32, 32, 32, 64],
                                            downsample_factors=[[1, 2], 2, 2, 2, 2], attn_blocks=[0, 0, 0, 1, 0],
                                            dropout=0.0, norm_num_groups=8)}
    sn_config = OmegaConf.load(out / "syncnet.yaml")
    sn_config.model = syncnet_model
    sn_config.data.resolution = RES
    OmegaConf.save(sn_config, out / "syncnet64.yaml")
    syncnet = randomize(StableSyncNet.from_config(syncnet_model), torch.Generator().manual_seed(1))
    torch.save({"state_dict": syncnet.state_dict()}, out / "syncnet64.pt")
    torch.manual_seed(2)
    videomae = VisionTransformer3D(**VIDEOMAE)
    torch.save({"model": videomae.state_dict()}, out / "videomae.pth")
    return out


VIDEOMAE = dict(img_size=32, patch_size=16, tubelet_size=2, num_frames=16, num_classes=2, embed_dim=32, depth=1,
                num_heads=2)
SMALL_UNET = dict(block_out_channels=[16, 16], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                  up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], norm_num_groups=4, attention_head_dim=2,
                  layers_per_block=1, use_motion_module=False)


def write_config(path, tiny, media, work, **overrides):
    """configs/unet/debug_cpu.yaml pointed at the test's tiny models and clip, at 64 px."""
    config = OmegaConf.load(REPO / "configs/unet/debug_cpu.yaml")
    config.data.update(syncnet_config_path=str(tiny / "syncnet64.yaml"), train_output_dir=str(work / "runs"),
                       train_fileslist=str(media["fileslist"]), audio_embeds_cache_dir=str(work / "embeds"),
                       audio_mel_cache_dir=str(work / "mel"), resolution=RES, num_workers=0)
    config.ckpt.update(resume_ckpt_path=str(tiny / "latentsync_unet.pt"), vae_path=str(tiny / "vae"),
                       whisper_path=str(tiny / "whisper/tiny.pt"), syncnet_ckpt_path=str(tiny / "syncnet64.pt"),
                       videomae_path=str(tiny / "videomae.pth"), videomae_model=VIDEOMAE,
                       vgg_path=str(work / "no-vgg.pth"))
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, force_add=True)
    OmegaConf.save(config, path)
    return path


def stage1_overrides(**more):
    """Recon loss only, a two-level UNet from scratch: fast enough for hundreds of CPU steps."""
    model = OmegaConf.to_container(OmegaConf.load(REPO / "configs/unet/debug_cpu.yaml").model)
    model.update(SMALL_UNET)
    return {"model": model, "ckpt.resume_ckpt_path": "", "run.pixel_space_supervise": False,
            "run.use_syncnet": False, "run.trainable_modules": [], "run.sync_loss_weight": 0,
            "run.perceptual_loss_weight": 0, "run.trepa_loss_weight": 0, "data.num_frames": 4, **more}


def run_training(config_path, *args):
    from scripts.train_unet import main

    return main(["--unet_config_path", str(config_path), "--device", "cpu", "--no_progress", *args])


def state_dict_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def only_run(folder):
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# --------------------------------------------------------------------------------------------
# dataset


def test_dataset_sample_windows_audio_and_mel(tiny, media, tmp_path, caplog):
    from latentsync.audio import AudioEncoder, load_audio, features_to_chunks, mel_window, syncnet_melspectrogram
    from latentsync.data.unet_dataset import UNetDataOptions, UNetDataset, prepare_audio_features
    from latentsync.face.mask import load_mask

    encoder = AudioEncoder(tiny / "whisper/tiny.pt", device="cpu", cache_dir=tmp_path / "embeds")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    clips = [str(media["clip"]), str(broken)]
    with caplog.at_level(logging.WARNING):
        files = prepare_audio_features(clips, encoder, show_progress=False)
    assert list(files) == [str(media["clip"])]  # the broken clip is logged and left out
    options = UNetDataOptions(num_frames=16, resolution=RES, seed=7, use_mel=True)
    dataset = UNetDataset(clips, files, options, length=8)
    features = encoder.features(str(media["clip"]))
    chunks = features_to_chunks(features)
    mel = syncnet_melspectrogram(load_audio(media["clip"]))
    mask = torch.from_numpy(load_mask(REPO / "latentsync/face/mask.png", RES))
    with caplog.at_level(logging.WARNING):
        samples = [dataset[i] for i in range(8)]
    assert any("skipping clip" in r.getMessage() and "broken.mp4" in r.getMessage() for r in caplog.records)
    starts = set()
    for sample in samples:
        s, r = sample["start_idx"], sample["ref_start_idx"]
        starts.add(s)
        assert sample["video_path"] == str(media["clip"])
        assert abs(s - r) >= 16 and 0 <= r <= CLIP_SECONDS * 25 - 16
        assert sample["gt_pixel_values"].shape == (16, 3, RES, RES)
        assert sample["gt_pixel_values"].min() >= -1 and sample["gt_pixel_values"].max() <= 1
        assert torch.equal(sample["masked_pixel_values"], sample["gt_pixel_values"] * mask)
        assert torch.equal(sample["masks"][3, 0], mask)
        assert not torch.equal(sample["ref_pixel_values"], sample["gt_pixel_values"])
        torch.testing.assert_close(sample["audio_embeds"], chunks[s:s + 16])
        assert sample["mel"].shape == (1, 80, 52)
        np.testing.assert_allclose(sample["mel"][0].numpy(), mel_window(mel, s), rtol=0, atol=1e-5)
    assert len(starts) > 1
    again = UNetDataset(clips, files, options, length=8)[5]  # a sample depends only on (seed, epoch, index)
    assert (again["start_idx"], again["ref_start_idx"]) == (samples[5]["start_idx"], samples[5]["ref_start_idx"])
    assert torch.equal(again["gt_pixel_values"], samples[5]["gt_pixel_values"])


# --------------------------------------------------------------------------------------------
# training


def test_every_loss_runs_and_only_trainable_modules_change(tiny, media, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **{
        "run.max_train_steps": 2, "ckpt.save_ckpt_steps": 2, "run.gradient_checkpointing": True,
        "data.val_video_path": str(media["clip"]), "data.val_audio_path": str(media["val_audio"]),
        "run.inference_steps": 1, "data.num_workers": 1})
    assert run_training(config) == 0
    run = only_run(tmp_path / "runs")
    state = state_dict_of(next((run / "checkpoints").glob("training-state-*.pt")))
    history = state["history"]
    assert history["train_step_list"] == [1, 2]
    for term in ("recon", "sync", "lpips", "trepa", "loss"):
        values = history[f"train_{term}_list"]
        assert len(values) == 2 and all(np.isfinite(values)) and all(v > 0 for v in values), (term, values)
    weights = {"recon": 1, "sync": 0.05, "lpips": 0.1, "trepa": 10}
    total = sum(w * history[f"train_{t}_list"][0] for t, w in weights.items())
    assert history["train_loss_list"][0] == pytest.approx(total, rel=1e-5)

    before = state_dict_of(tiny / "latentsync_unet.pt")["state_dict"]
    after = state_dict_of(run / "checkpoints/checkpoint-2.pt")
    assert after["global_step"] == 2
    changed = {k for k, v in after["state_dict"].items() if not torch.equal(v, before[k])}
    trainable = {k for k in before if "motion_modules." in k or "attentions." in k}
    assert changed <= trainable  # frozen tensors are bit-identical
    assert len(changed) > 0.9 * len([k for k in trainable if not k.endswith("pos_encoder.pe")])
    assert any("motion_modules." in k for k in changed) and any("attentions." in k for k in changed)

    assert (run / "val_videos/val_video_2.mp4").stat().st_size > 0
    assert (run / "loss_charts/loss_chart-2.png").stat().st_size > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "syncnet_config.yaml").is_file()


def test_overfitting_one_clip_drives_noise_prediction_loss_down(tiny, media, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **stage1_overrides(**{
        "run.max_train_steps": OVERFIT_STEPS, "ckpt.save_ckpt_steps": OVERFIT_STEPS, "optimizer.lr": 2e-3}))
    assert run_training(config) == 0
    run = only_run(tmp_path / "runs")
    recon = state_dict_of(run / f"checkpoints/training-state-{OVERFIT_STEPS}.pt")["history"]["train_recon_list"]
    first, last = np.mean(recon[:20]), np.mean(recon[-40:])
    print(f"recon loss: first 20 steps {first:.4f}, last 40 steps {last:.4f}, factor {first / last:.2f}")
    assert first / last > OVERFIT_FACTOR


def test_resume_matches_unbroken_run_and_checkpoint_runs_inference(tiny, media, tmp_path):
    overrides = stage1_overrides(**{"ckpt.save_ckpt_steps": 2, "run.max_train_steps": 5, "optimizer.lr": 1e-3})
    config = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **overrides)
    assert run_training(config, "--run_name", "unbroken") == 0
    assert run_training(config, "--run_name", "broken", "--max_train_steps", "2") == 0
    broken = tmp_path / "runs/broken"
    assert run_training(config, "--resume_from", str(broken), "--max_train_steps", "5") == 0
    unbroken = state_dict_of(tmp_path / "runs/unbroken/checkpoints/training-state-5.pt")["history"]
    resumed = state_dict_of(broken / "checkpoints/training-state-5.pt")["history"]
    assert resumed["train_step_list"] == [1, 2, 3, 4, 5]
    assert resumed["train_loss_list"] == unbroken["train_loss_list"]  # steps 3..5 ran after the resume
    final_a = state_dict_of(tmp_path / "runs/unbroken/checkpoints/checkpoint-5.pt")["state_dict"]
    final_b = state_dict_of(broken / "checkpoints/checkpoint-5.pt")["state_dict"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)

    # the official checkpoint layout loads strictly and drives the inference pipeline
    from latentsync.audio import AudioEncoder
    from latentsync.face.detectors import make_face_detector
    from latentsync.models.checkpoint import load_unet
    from latentsync.loading import load_vae
    from latentsync.pipelines.lipsync_pipeline import LipsyncOptions, LipsyncPipeline
    from latentsync.video import probe_video

    unet = load_unet(broken / "config.yaml", broken / "checkpoints/checkpoint-5.pt", strict=True)
    assert unet.global_step == 5
    pipe = LipsyncPipeline(vae=load_vae(tiny / "vae", "cpu", torch.float32), unet=unet.eval(),
                           scheduler=make_scheduler(),
                           audio_encoder=AudioEncoder(tiny / "whisper/tiny.pt", device="cpu"),
                           face_detector=make_face_detector("mediapipe"), resolution=RES)
    out = pipe(media["clip"], media["val_audio"], tmp_path / "dubbed.mp4",
               LipsyncOptions(inference_steps=1, num_frames=4, show_progress=False)).output_path
    info = probe_video(out)
    assert info.num_frames == round(VAL_AUDIO_SECONDS * 25) and info.has_audio and info.width == 256


def test_a_unet_trained_to_predict_the_clean_latent_is_sampled_that_way(tiny, media, tmp_path):
    """run.prediction_type: sample trains on the clean latent, and the pipeline built from the run's
    config.yaml samples with that prediction type whichever sampler a run asks for."""
    from latentsync.pipelines.lipsync_pipeline import LipsyncOptions, LipsyncPipeline
    from latentsync.schedulers import make_sampler
    from latentsync.training.unet_config import UNetRun
    from latentsync.training.unet_step import StepSettings
    from latentsync.video import probe_video

    assert StepSettings.from_config(UNetRun()).prediction_type == "epsilon"  # the reference
    with pytest.raises(UserError, match="prediction_type 'x0'"):
        StepSettings.from_config(UNetRun(prediction_type="x0"))
    overrides = stage1_overrides(**{"run.prediction_type": "sample", "run.max_train_steps": 2,
                                    "ckpt.save_ckpt_steps": 2})
    assert run_training(write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **overrides)) == 0
    run = only_run(tmp_path / "runs")
    pipe = LipsyncPipeline.from_checkpoints(run / "config.yaml", run / "checkpoints/checkpoint-2.pt",
                                            tiny / "whisper/tiny.pt", tiny / "vae", device="cpu")
    assert pipe.scheduler.config.prediction_type == "sample"
    assert all(make_sampler(kind, pipe.scheduler.config).config.prediction_type == "sample"
               for kind in ("dpmpp", "unipc"))
    out = pipe(media["clip"], media["val_audio"], tmp_path / "dubbed.mp4",
               LipsyncOptions(inference_steps=2, num_frames=4, scheduler="dpmpp", show_progress=False)).output_path
    assert probe_video(out).num_frames == round(VAL_AUDIO_SECONDS * 25)
    # a reference config (no run.prediction_type) still samples the noise prediction
    reference = LipsyncPipeline.from_checkpoints(tiny / "unet.yaml", tiny / "latentsync_unet.pt",
                                                 tiny / "whisper/tiny.pt", tiny / "vae", device="cpu")
    assert reference.scheduler.config.prediction_type == "epsilon"


# --------------------------------------------------------------------------------------------
# configs rejected before training


@pytest.mark.parametrize("overrides, message", [
    ({"run.trainable_modules": ["motion_modules.", "not_a_module."]}, "'not_a_module.' matches no UNet parameter"),
    ({"data.train_fileslist": "/nonexistent/train.txt"}, "/nonexistent/train.txt: file list not found"),
    ({"data.syncnet_config_path": "TINY/syncnet.yaml"}, "does not match the SyncNet config"),
    ({"data.batch_sze": 2}, "cfg.yaml: unknown key data.batch_sze; did you mean data.batch_size?"),
    ({"run.trepa_los_weight": 2}, "cfg.yaml: unknown key run.trepa_los_weight; did you mean run.trepa_loss_weight?"),
])
def test_bad_config_fails_before_training(tiny, media, tmp_path, capsys, overrides, message):
    overrides = {k: (v.replace("TINY", str(tiny)) if isinstance(v, str) else v) for k, v in overrides.items()}
    config = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **overrides)
    assert run_training(config) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_training_clips_are_found_in_nested_folders(tiny, media, tmp_path):
    """data.train_data_dir is searched recursively, as by the SyncNet and VAE trainers."""
    import shutil

    from latentsync.training.unet_config import check_config, load_config
    from latentsync.training.options import TrainOptions

    nested = tmp_path / "clips/speaker1/session2"
    nested.mkdir(parents=True)
    shutil.copy(media["clip"], nested / "clip.mp4")
    shutil.copy(media["clip"], tmp_path / "clips/top.mp4")
    path = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path, **stage1_overrides(**{
        "data.train_fileslist": "", "data.train_data_dir": str(tmp_path / "clips")}))
    clips = check_config(load_config(str(path), TrainOptions(str(path))), str(path))
    assert clips == [str(nested / "clip.mp4"), str(tmp_path / "clips/top.mp4")]


def test_shell_script_reports_a_bad_config_in_one_line(tiny, media, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tiny, media, tmp_path,
                          **{"data.syncnet_config_path": str(tiny / "syncnet.yaml")})
    result = subprocess.run(["bash", str(REPO / "train_unet.sh"), "--unet_config_path", str(config), "--device", "cpu"],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                            timeout=300)
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"data.resolution {RES} does not match the SyncNet config" in lines[0], result.stderr


# --------------------------------------------------------------------------------------------
# initial weights


def test_initial_weights_stage2_from_stage1_and_sd15_rules(tmp_path):
    from safetensors.torch import save_file

    from latentsync.errors import UserError
    from latentsync.training.unet_config import build_unet
    from latentsync.training.unet_models import load_initial_weights

    model = OmegaConf.to_container(OmegaConf.load(REPO / "configs/unet/debug_cpu.yaml").model)
    stage1_model = {**model, "use_motion_module": False}
    torch.manual_seed(0)
    stage1 = build_unet(stage1_model, "stage1").state_dict()
    torch.save({"state_dict": stage1, "global_step": 7}, tmp_path / "stage1.pt")

    # stage 2 from a stage-1 file: motion modules keep their initialisation, everything else loads
    stage2 = build_unet(model, "stage2")
    motion = {k: v.clone() for k, v in stage2.state_dict().items() if ".motion_modules." in k}
    step, history = load_initial_weights(stage2, str(tmp_path / "stage1.pt"))
    assert motion and step == 7 and history.to_dict() == {}
    loaded = stage2.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in stage1.items())
    assert all(torch.equal(loaded[k], v) for k, v in motion.items())

    # an SD-1.5-style diffusers folder: 4-channel conv_in and 768-wide audio K/V are dropped
    sd15 = {k: v.clone() for k, v in stage1.items()}
    sd15["conv_in.weight"] = torch.randn(sd15["conv_in.weight"].shape[0], 4, 3, 3)
    to_k = next(k for k in sd15 if k.endswith("attn2.to_k.weight"))
    sd15[to_k] = torch.randn(sd15[to_k].shape[0], 768)
    (tmp_path / "sd15/unet").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd15.items()}, tmp_path / "sd15/unet/diffusion_pytorch_model.safetensors")
    fresh = build_unet(stage1_model, "stage1")
    kept = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("conv_in.") or k == to_k}
    load_initial_weights(fresh, str(tmp_path / "sd15"))
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in kept.items())
    assert all(torch.equal(loaded[k], stage1[k]) for k in stage1 if k not in kept)

    # any other mismatch is refused, naming the keys
    broken = dict(stage1)
    del broken["conv_norm_out.weight"]
    torch.save({"state_dict": broken}, tmp_path / "broken.pt")
    with pytest.raises(UserError, match="conv_norm_out.weight"):
        load_initial_weights(build_unet(stage1_model, "stage1"), str(tmp_path / "broken.pt"))


def test_mask_loss_weight_counts_the_generated_region_more():
    """run.mask_loss_weight: w = 0 is the plain MSE; w > 0 weights errors where the mask is 0
    (the generated mouth region) 1 + w times, normalised so a uniform error keeps its loss."""
    from latentsync.training.unet_config import UNetRun
    from latentsync.training.unet_step import StepSettings, noise_loss

    keep = torch.ones(1, 1, 2, 4, 4)
    keep[..., 2:, :] = 0  # lower half generated
    noise = torch.zeros(1, 4, 2, 4, 4)
    uniform = torch.full_like(noise, 0.5)
    assert noise_loss(uniform, noise, keep, 0.0) == pytest.approx(0.25)
    assert noise_loss(uniform, noise, keep, 9.0) == pytest.approx(0.25)  # same scale
    in_mouth, elsewhere = torch.zeros_like(noise), torch.zeros_like(noise)
    in_mouth[..., 3, 1] = 1.0
    elsewhere[..., 0, 1] = 1.0
    assert noise_loss(in_mouth, noise, keep, 0.0) == noise_loss(elsewhere, noise, keep, 0.0)
    assert noise_loss(in_mouth, noise, keep, 9.0) == pytest.approx(10 * noise_loss(elsewhere, noise, keep, 9.0))
    settings = StepSettings.from_config(UNetRun(mask_loss_weight=4))
    assert settings.mask_loss_weight == 4.0
    assert StepSettings.from_config(UNetRun()).mask_loss_weight == 0.0
    from latentsync.errors import UserError
    with pytest.raises(UserError, match="mask_loss_weight"):
        StepSettings.from_config(UNetRun(mask_loss_weight=-1))


def test_latent_cache_gives_the_uncached_latents_and_encodes_each_frame_once():
    """data.cache_latents: same posterior samples as encoding every step (same generator order);
    frames met before are not encoded again; the reference window reuses the frames' entries."""
    from diffusers import AutoencoderKL

    from latentsync.training.unet_step import LatentCache, Models, encode_batch

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=16).eval()
    frames = torch.rand(2, 6, 3, 16, 16) * 2 - 1  # two clips of 6 frames
    mask = torch.ones(1, 16, 16)
    mask[:, 8:] = 0

    def batch(starts, refs):
        pick = lambda s: torch.stack([frames[b, s[b]:s[b] + 2] for b in range(2)])  # noqa: E731
        return {"gt_pixel_values": pick(starts), "masked_pixel_values": pick(starts) * mask,
                "ref_pixel_values": pick(refs), "masks": mask.expand(2, 2, 1, 16, 16),
                "video_path": ["a.mp4", "b.mp4"], "start_idx": torch.tensor(starts), "ref_start_idx": torch.tensor(refs)}

    plain = Models(unet=None, vae=vae, scheduler=make_scheduler())
    cached = Models(unet=None, vae=vae, scheduler=make_scheduler(), latent_cache=LatentCache(vae))
    encoded = []
    vae.encode = (lambda f: lambda x: (encoded.append(len(x)), f(x))[1])(vae.encode)
    for starts, refs in (([0, 2], [4, 0]), ([2, 0], [0, 4]), ([0, 2], [4, 0])):
        expected = encode_batch(plain, batch(starts, refs), torch.Generator().manual_seed(7), "cpu")
        got = encode_batch(cached, batch(starts, refs), torch.Generator().manual_seed(7), "cpu")
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    plain_calls = 3 * 3  # three encodes per plain step
    cached_frames = sum(encoded) - plain_calls * 4
    # step 1: gt 4 + masked 4 + ref 4 new frames; step 2: gt a2-3 (b0-1 was a ref), masked 4,
    # ref b4-5 (a0-1 was a gt frame): 8; step 3 repeats step 1: nothing new
    assert cached_frames == 12 + 8 + 0, encoded
