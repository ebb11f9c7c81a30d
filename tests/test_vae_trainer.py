"""VAE training (scripts/train_vae.py, latentsync/training/vae_trainer.py) and the latent scale
helper (latentsync/models/vae.py).

The data is one synthetic corpus clip (scripts.make_synthetic_corpus, 128 px frames), every
4th frame at 64 px; the VAE is a tiny AutoencoderKL (still 4 latent channels, 1/8 of the size)
trained on the CPU with one thread: a 24-step run, and the same run stopped at step 12 and
resumed.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf

from conftest import REPO
from latentsync.constants import MODEL_FPS
from latentsync.data.common import resized_uint8
from latentsync.models.vae import SD_SCALING_FACTOR, latent_scale_shift, measure_latent_stats
from latentsync.training.options import TrainOptions
from latentsync.training.state import read_torch_dict
from latentsync.training.config import load_training_config
from latentsync.training.vae_trainer import FaceFrames, VAEConfig, build_vae, evaluate, train
from latentsync.video import iter_frames
from scripts import make_synthetic_corpus, train_vae

RES, STRIDE, STEPS = 64, 4, 24
TINY_MODEL = dict(block_out_channels=[8, 16, 16, 16], norm_num_groups=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_corpus")
    assert make_synthetic_corpus.main(["--output_dir", str(out), "--num_clips", "1", "--size", "128",
                                       "--heldout_fraction", "0", "--no_progress"]) == 0
    return out / "train"


def clip_frames(corpus) -> np.ndarray:
    """The frames the trainer uses, read independently: every STRIDE-th frame at RES px."""
    clip = next(corpus.glob("*.mp4"))
    frames = np.concatenate([chunk for chunk in iter_frames(clip, fps=MODEL_FPS)])
    return resized_uint8(frames[::STRIDE], RES)


def pixels(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def write_config(path, corpus, **overrides):
    config = OmegaConf.load(REPO / "configs/vae/learnability.yaml")
    config.model.update(TINY_MODEL)
    config.data.update(dict(train_data_dir=str(corpus), train_output_dir=str(path.parent / "runs"), resolution=RES,
                            frame_stride=STRIDE, batch_size=4, num_val_frames=8))
    config.ckpt.save_ckpt_steps = STEPS // 2
    config.run.update(dict(max_train_steps=STEPS, validation_steps=STEPS // 2))
    # a schedule that does not depend on max_train_steps, so a run stopped early is the first half of the full one
    config.optimizer.update(dict(lr=2e-3, lr_scheduler="constant_with_warmup", lr_warmup_steps=2))
    config.latents.scale_samples = 1000  # every frame of the bank
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    OmegaConf.save(config, path)
    return path


def run_training(config, name, steps=None, resume=None):
    threads = torch.get_num_threads()
    try:
        options = TrainOptions(config_path=None if resume else str(config), run_name=name, max_train_steps=steps,
                               resume_from=resume, device="cpu", num_threads=1, show_progress=False)
        return train(options)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """A 24-step run, and the same run stopped at step 12 and resumed to 24."""
    folder = tmp_path_factory.mktemp("vae_runs")
    config = write_config(folder / "vae.yaml", corpus)
    full = run_training(config, "full")
    half = run_training(config, "resumed", steps=STEPS // 2)
    resumed = run_training(config, "resumed", steps=STEPS, resume=str(half))
    return {"config": config, "full": full, "resumed": resumed}


def test_training_lowers_the_reconstruction_error(runs, corpus):
    config = load_training_config(VAEConfig, runs["config"])  # the initial weights, as the trainer builds them
    torch.manual_seed(config.run.seed)
    before = evaluate(build_vae(config, runs["config"]), pixels(clip_frames(corpus)))
    after = evaluate(AutoencoderKL.from_pretrained(runs["full"] / "vae"), pixels(clip_frames(corpus)))
    assert after["l1"] < 0.7 * before["l1"]
    assert after["psnr"] > before["psnr"] + 3
    history = read_torch_dict(runs["full"] / "checkpoints" / f"training-state-{STEPS}.pt", "state")["history"]
    losses = history["train_loss_list"]
    assert len(losses) == STEPS and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert history["val_step_list"] == [STEPS // 2, STEPS]


def test_resume_is_exact(runs):
    full = read_torch_dict(runs["full"] / "checkpoints" / f"training-state-{STEPS}.pt", "state")["history"]
    resumed = read_torch_dict(runs["resumed"] / "checkpoints" / f"training-state-{STEPS}.pt", "state")["history"]
    assert resumed["train_loss_list"] == full["train_loss_list"]
    a = read_torch_dict(runs["full"] / "checkpoints" / f"checkpoint-{STEPS}.pt")["state_dict"]
    b = read_torch_dict(runs["resumed"] / "checkpoints" / f"checkpoint-{STEPS}.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_folder_loads_and_carries_the_measured_scale(runs, corpus):
    run = runs["full"]
    for step in (STEPS // 2, STEPS):
        assert (run / "checkpoints" / f"vae-{step}" / "diffusion_pytorch_model.safetensors").is_file()
    assert (run / "loss_charts" / f"loss_chart-{STEPS}.png").is_file()
    vae = AutoencoderKL.from_pretrained(run / "vae")
    assert json.loads((run / "vae" / "config.json").read_text())["shift_factor"] is None
    scale, shift = latent_scale_shift(vae)
    assert shift == 0.0 and abs(scale - SD_SCALING_FACTOR) > 0.05
    with torch.no_grad():
        latents = vae.encode(pixels(clip_frames(corpus))).latent_dist.sample(torch.Generator().manual_seed(5))
    assert scale == pytest.approx(1.0 / latents.std().item(), rel=0.03)
    # the last checkpoint's weights are the exported ones
    weights = read_torch_dict(run / "checkpoints" / f"checkpoint-{STEPS}.pt")["state_dict"]
    assert all(torch.equal(weights[k], v) for k, v in vae.state_dict().items())


def test_frame_bank_holds_every_nth_frame(runs, corpus):
    banks = list((runs["full"] / "frames").glob("*.npy"))
    assert len(banks) == 1 and not list((runs["full"] / "frames").glob(".*"))  # no temporary leftovers
    assert np.array_equal(np.load(banks[0]), clip_frames(corpus))


def test_samples_are_keyed_by_index_and_cropped():
    bank = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    dataset = FaceFrames(bank, seed=3, flip=True, crop=16)
    windows = [np.lib.stride_tricks.sliding_window_view(frame, (16, 16), axis=(0, 1))
               for image in bank for frame in (image, image[:, ::-1])]
    flipped = 0
    for index in range(12):
        sample = dataset[index]
        assert sample.shape == (3, 16, 16) and torch.equal(sample, dataset[index])
        crop = ((sample + 1) * 127.5).round().to(torch.uint8).numpy()  # [3, 16, 16]
        found = [k for k, view in enumerate(windows) if (view == crop[None, None]).all(axis=(2, 3, 4)).any()]
        assert found, f"sample {index} is not a crop of a bank frame"
        flipped += found[0] % 2
    assert 0 < flipped < 12


def test_shift_option_stores_the_latent_mean(corpus, tmp_path):
    config = write_config(tmp_path / "vae.yaml", corpus, **{"latents.shift": True, "run.max_train_steps": 2,
                                                             "ckpt.save_ckpt_steps": 2})
    vae = AutoencoderKL.from_pretrained(run_training(config, "shift") / "vae")
    scale, shift = latent_scale_shift(vae)
    frames = pixels(clip_frames(corpus))
    mean, std = measure_latent_stats(vae, frames.split(5), torch.Generator().manual_seed(1))
    assert shift == pytest.approx(mean, abs=0.03 * std) and shift != 0.0
    assert scale == pytest.approx(1.0 / std, rel=0.03)


def test_scale_shift_of_configs():
    assert latent_scale_shift({"scaling_factor": SD_SCALING_FACTOR, "shift_factor": None}) == (SD_SCALING_FACTOR, 0.0)
    assert latent_scale_shift({"scaling_factor": 0.5, "shift_factor": 0.25}) == (0.5, 0.25)
    vae = AutoencoderKL(block_out_channels=[8], norm_num_groups=8, scaling_factor=0.7)
    assert latent_scale_shift(vae) == (0.7, 0.0)


@pytest.mark.parametrize("override, message", [
    ("model.latent_channels=8", "latents [8, 8, 8]"),
    ("model.block_out_channels=[8,16,16]", "latents [4, 16, 16]"),
    ("data.resolution=60", "data.resolution 60 must be a positive multiple of 8"),
    ("loss.l1_weight=0", "loss weights must be >= 0"),
    ("data.crop_size=20", "data.crop_size 20 must be 0 (whole faces) or a multiple of 8"),
    ("model.norm_num_groups=5", "cannot build the VAE"),
    ("data.train_data_dir=/nonexistent/clips", "data.train_data_dir: /nonexistent/clips: data folder not found"),
])
def test_bad_config_is_one_line_error(corpus, tmp_path, capsys, override, message):
    config = write_config(tmp_path / "vae.yaml", corpus, **{"model.down_block_types": ["DownEncoderBlock2D"] * 4,
                                                             "model.up_block_types": ["UpDecoderBlock2D"] * 4})
    if "block_out_channels" in override:  # three blocks: also three block types
        override += " model.down_block_types=[DownEncoderBlock2D,DownEncoderBlock2D,DownEncoderBlock2D]" \
                    " model.up_block_types=[UpDecoderBlock2D,UpDecoderBlock2D,UpDecoderBlock2D]"
    argv = ["--config_path", str(config), "--device", "cpu", "--no_progress", *override.split()]
    assert train_vae.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "runs").exists()
