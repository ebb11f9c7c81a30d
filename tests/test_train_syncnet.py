"""SyncNet training: dataset sampling, learning, exact resume, checkpoints, bad configs (docs/training.md).

Training clips are cut from demo1_video.mp4 with its own audio: a fixed 300 px box around the
face, scaled to 256x256 at 25 fps (aligned-face-like), 0-7 s for training and 7-10 s for
validation. The models are tiny and trained on the CPU with one thread. Time bounds: the whole
file took 62 s on the shared 2-core test machine (learning test 30 s, resume test 6 s) and up
to ~4 minutes when the machine was heavily loaded.
"""

import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import MEDIA, REPO, need
from latentsync.audio import mel_window
from latentsync.data.syncnet_dataset import MelCache, SyncNetDataset, frames_to_tensor
from latentsync.errors import UserError
from latentsync.models.checkpoint import load_syncnet, read_state_dict
from latentsync.training.syncnet_trainer import TrainOptions, train
from latentsync.video import read_frames

FACE_BOX = "crop=300:300:420:590"  # x 420-720, y 590-890 of the 1080x1920 frame: the face
NUM_FRAMES = 5  # frames per sample in the small test models (mel window 16 columns)
SMALL_MODEL = {  # inputs: frames [15, 16, 32] (32 px, lower half), mel [1, 80, 16]
    "audio_encoder": dict(in_channels=1, block_out_channels=[16, 16, 16, 16, 32],
                          downsample_factors=[[2, 1], 2, 2, 2, [5, 2]], attn_blocks=[0] * 5, norm_num_groups=8),
    "visual_encoder": dict(in_channels=3 * NUM_FRAMES, block_out_channels=[16, 16, 16, 16, 32],
                           downsample_factors=[[1, 2], 2, 2, 2, 2], attn_blocks=[0] * 5, norm_num_groups=8),
}


def cut_clip(out: Path, start: float, duration: float) -> Path:
    """A 256x256 25 fps face clip of demo1 with its own audio (key frame every 10 frames)."""
    source = need(MEDIA / "demo1_video.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", str(start),
                    "-t", str(duration), "-i", str(source), "-map", "0:v:0", "-map", "0:a:0",
                    "-vf", f"{FACE_BOX},scale=256:256:flags=lanczos,fps=25", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "18", "-g", "10", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-ar", "16000", "-ac", "1", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syncnet_clips")
    (folder / "train").mkdir()
    (folder / "val").mkdir()
    train_clip = cut_clip(folder / "train" / "demo1_0-7s.mp4", 0, 7)
    val_clip = cut_clip(folder / "val" / "demo1_7-10s.mp4", 7, 3)
    (folder / "train.txt").write_text(f"{train_clip}\n")
    (folder / "val.txt").write_text(f"# held-out time range\n{val_clip}\n")
    return {"train": train_clip, "val": val_clip, "train_list": folder / "train.txt",
            "val_list": folder / "val.txt", "folder": folder}


@pytest.fixture
def one_thread():
    """Train with one CPU thread (much faster than two on a shared machine); restore afterwards."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def write_config(path: Path, clips, model=SMALL_MODEL, **data) -> Path:
    """A syncnet config for the test clips; `data` entries override the data section."""
    config = OmegaConf.load(REPO / "configs/syncnet/syncnet_16_pixel_attn.yaml")
    config.model = model
    config.data.update(dict(train_fileslist=str(clips["train_list"]), val_fileslist=str(clips["val_list"]),
                            train_output_dir=str(path.parent / "runs"), audio_mel_cache_dir=str(path.parent / "mel"),
                            num_frames=NUM_FRAMES, resolution=32, batch_size=4, num_val_samples=8, num_workers=0))
    config.data.update(data)
    config.ckpt.save_ckpt_steps = 4
    config.run.update(dict(max_train_steps=8, validation_steps=4))
    config.optimizer.lr = 3e-4
    OmegaConf.save(config, path)
    return path


# --------------------------------------------------------------------------------------------
# dataset


def test_samples_pair_the_right_frames_with_the_audio(clips, tmp_path):
    """Label 1: frames start where the mel window starts; label 0: frames from another start."""
    ds = SyncNetDataset(clips["train_list"], num_frames=NUM_FRAMES, resolution=64, lower_half=True,
                        mel_cache_dir=tmp_path / "mel", seed=3)
    all_frames = read_frames(clips["train"], 0, 175)
    mel = MelCache(None).get(str(clips["train"]))
    windows = [mel_window(mel, k, NUM_FRAMES) for k in range(175 - NUM_FRAMES + 1)]
    labels = []
    for index in range(12):
        sample = ds[index]
        assert sample["frames"].shape == (3 * NUM_FRAMES, 32, 64) and sample["mel"].shape == (1, 80, 16)
        assert -1.0 <= sample["frames"].min() and sample["frames"].max() <= 1.0
        starts = [k for k, w in enumerate(windows) if w is not None and np.array_equal(w, sample["mel"][0].numpy())]
        assert starts, "the mel is not a window of the clip's mel"
        same = [torch.allclose(frames_to_tensor(all_frames[k:k + NUM_FRAMES], 64, True), sample["frames"])
                for k in starts]
        assert any(same) == bool(sample["label"] == 1), f"sample {index}: label {sample['label']} vs frames"
        labels.append(float(sample["label"]))
        again = ds[index]
        assert torch.equal(again["frames"], sample["frames"]) and torch.equal(again["mel"], sample["mel"])
    assert 0 < sum(labels) < len(labels)
    # the mel cache holds one file per clip, written completely (no temporary leftovers)
    assert [p.suffix for p in (tmp_path / "mel").iterdir()] == [".npy"]


def test_full_size_sample_without_resize(clips):
    """Official layout: 16 frames of 256 px, lower half -> [48, 128, 256], mel [1, 80, 52]."""
    ds = SyncNetDataset([str(clips["val"])], num_frames=16, resolution=256, lower_half=True, seed=0)
    sample = ds[0]
    assert sample["frames"].shape == (48, 128, 256) and sample["mel"].shape == (1, 80, 52)
    frames = sample["frames"].reshape(16, 3, 128, 256)
    assert frames.dtype == torch.float32 and frames.abs().max() <= 1.0


def test_windows_per_clip_draws_consecutive_samples_from_one_clip(clips, monkeypatch):
    """Groups of n consecutive indices share a clip (hard negatives in a batch), each sample with
    its own windows; n = 1 keeps the reference's one clip per sample."""
    paths = [str(clips["train"]), str(clips["val"])]
    grouped = SyncNetDataset(paths, num_frames=NUM_FRAMES, resolution=32, seed=5, cache_frames=True,
                             windows_per_clip=4)
    drawn = []
    original = grouped.sample_clip
    monkeypatch.setattr(grouped, "sample_clip", lambda path, rng: drawn.append(path) or original(path, rng))
    samples = [grouped[i] for i in range(32)]
    groups = [set(drawn[k:k + 4]) for k in range(0, 32, 4)]
    assert all(len(g) == 1 for g in groups) and len(set().union(*groups)) == 2  # one clip per group, both used
    assert len({tuple(s["mel"].flatten()[:64].tolist()) for s in samples[:4]}) > 1  # different windows
    single = SyncNetDataset(paths, num_frames=NUM_FRAMES, resolution=32, seed=5, cache_frames=True)
    reference = SyncNetDataset(paths, num_frames=NUM_FRAMES, resolution=32, seed=5, cache_frames=True,
                               windows_per_clip=1)
    assert all(torch.equal(single[i]["frames"], reference[i]["frames"]) for i in range(4))
    with pytest.raises(UserError, match="data.windows_per_clip must be at least 1"):
        SyncNetDataset(paths, windows_per_clip=0)


def test_epoch_and_seed_change_the_draws(clips):
    ds = SyncNetDataset(clips["train_list"], num_frames=NUM_FRAMES, resolution=32, seed=1, cache_frames=True)
    first = [ds[i]["mel"] for i in range(4)]
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i]["mel"]) for i, a in enumerate(first))


def test_broken_clips_are_skipped_and_retries_are_bounded(clips, tmp_path, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    ds = SyncNetDataset([str(broken), str(clips["val"])], num_frames=NUM_FRAMES, resolution=32, seed=0)
    for index in range(6):
        assert ds[index]["frames"].shape == (3 * NUM_FRAMES, 16, 32)
    assert "broken.mp4" in caplog.text
    only_broken = SyncNetDataset([str(broken)], num_frames=NUM_FRAMES, resolution=32, max_consecutive_failures=5)
    with pytest.raises(UserError, match="5 clips in a row"):
        only_broken[0]


def test_missing_list_or_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="file list not found"):
        SyncNetDataset(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .mp4 files"):
        SyncNetDataset(str(tmp_path / "empty"))


def test_data_folder_is_searched_recursively(clips):
    ds = SyncNetDataset(str(clips["folder"]))
    assert sorted(Path(p).name for p in ds.paths) == ["demo1_0-7s.mp4", "demo1_7-10s.mp4"]


# --------------------------------------------------------------------------------------------
# training


def test_training_learns_to_tell_sync_from_off_sync(clips, tmp_path, one_thread):
    """Accuracy on fresh (s, w) draws of the training clip rises well above chance (0.5).

    Measured (CPU, 250 steps of 32, lr 3e-4, deterministic): validation accuracy 0.80 at step
    125 and 0.89 at step 250 (loss 0.51 -> 0.36), on 128 new (s, w) draws of the training clip.
    Honest scope: with 7 s of one speaker the network fits these clips; on the held-out 7-10 s
    range it stays near chance after this little training (measured 0.44-0.57 over 450 steps),
    which is why validation here uses the training clip (with its own seed, so the pairs are
    new). Labels that do not follow the frames (e.g. frames always taken at s) keep the accuracy
    at chance; note that a consistently shifted mel window would still be learnable here.
    """
    val_list = tmp_path / "fit_val.txt"
    val_list.write_text(f"{clips['train']}\n")
    config = write_config(tmp_path / "fit.yaml", clips, batch_size=32, cache_frames=True, num_val_samples=128,
                          val_fileslist=str(val_list))
    run_dir = train(TrainOptions(str(config), max_train_steps=250, device="cpu", run_name="fit",
                                 num_threads=one_thread, overrides=["run.validation_steps=125", "ckpt.save_ckpt_steps=250"]))
    ckpt = torch.load(run_dir / "checkpoints/checkpoint-250.pt", weights_only=True)
    print("val accuracy by step:", dict(zip(ckpt["val_step_list"], ckpt["val_acc_list"])),
          "val loss:", ckpt["val_loss_list"])
    assert ckpt["val_step_list"] == [125, 250]
    assert ckpt["val_acc_list"][-1] >= 0.7, ckpt["val_acc_list"]  # 128 samples: chance gives >= 0.7 with p < 1e-5
    assert ckpt["val_loss_list"][-1] < 0.6


def test_resume_reproduces_the_uninterrupted_run(clips, tmp_path, one_thread):
    """Run A: 8 steps. Run B: 4 steps, then --resume_from its folder to step 8. Same losses, same weights."""
    config = write_config(tmp_path / "resume.yaml", clips, gradient_accumulation_steps=2, cache_frames=True)
    common = dict(device="cpu", num_threads=one_thread)
    run_a = train(TrainOptions(str(config), max_train_steps=8, run_name="a", **common))
    run_b = train(TrainOptions(str(config), max_train_steps=4, run_name="b", **common))
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["checkpoint-4.pt", "training-state-4.pt"]
    train(TrainOptions(str(config), max_train_steps=8, resume_from=str(run_b), **common))

    a = torch.load(run_a / "checkpoints/checkpoint-8.pt", weights_only=True)
    b = torch.load(run_b / "checkpoints/checkpoint-8.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert b["train_step_list"] == list(range(1, 9))
    np.testing.assert_allclose(b["train_loss_list"][4:], a["train_loss_list"][4:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["val_loss_list"], a["val_loss_list"], rtol=0, atol=1e-6)
    assert a["train_loss_list"][4:] != a["train_loss_list"][:4]  # the comparison is not vacuous
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    # only the newest training state is kept; every official checkpoint stays
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == [
        "checkpoint-4.pt", "checkpoint-8.pt", "training-state-8.pt"]


def test_tiny_official_layout_checkpoint_loads_strictly(clips, tmp_path, one_thread):
    """16 frames of 256 px (the tiny model of make_tiny_checkpoints): checkpoint, chart, TensorBoard."""
    from scripts.make_tiny_checkpoints import SYNCNET_MODEL

    config = write_config(tmp_path / "tiny.yaml", clips, model=SYNCNET_MODEL, num_frames=16, resolution=256,
                          batch_size=2, num_val_samples=2)
    run_dir = train(TrainOptions(str(config), max_train_steps=2, device="cpu", run_name="tiny",
                                 num_threads=one_thread, overrides=["ckpt.save_ckpt_steps=2", "run.validation_steps=2"]))
    ckpt_path = run_dir / "checkpoints/checkpoint-2.pt"
    model = load_syncnet(run_dir / "config.yaml", ckpt_path)  # strict
    assert read_state_dict(ckpt_path).global_step == 2 and model.global_step == 2
    state = torch.load(run_dir / "checkpoints/training-state-2.pt", weights_only=True)
    assert state["checkpoint"] == ckpt_path.name  # the state continues the weights of that checkpoint
    assert set(state) >= {"optimizer", "lr_scheduler", "scaler", "rng", "history", "global_step"}
    chart = run_dir / "loss_charts/loss_chart-2.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("*.partial*"))


def test_contrastive_term_is_added_to_the_bce_and_checked(clips, tmp_path, one_thread):
    """run.contrastive_loss_weight adds the batch InfoNCE to the BCE: same seed, same first batch,
    so the first recorded loss grows by about ln(batch) (random embeddings); bad values are refused."""
    config = write_config(tmp_path / "nce.yaml", clips, batch_size=8, cache_frames=True)
    losses = {}
    for weight in (0.0, 1.0):
        run_dir = train(TrainOptions(str(config), max_train_steps=1, device="cpu", run_name=f"w{weight}",
                                     num_threads=one_thread, overrides=[f"run.contrastive_loss_weight={weight}",
                                                                        "ckpt.save_ckpt_steps=1"]))
        losses[weight] = torch.load(run_dir / "checkpoints/checkpoint-1.pt", weights_only=True)["train_loss_list"][0]
    assert 0.5 * np.log(8) < losses[1.0] - losses[0.0] < 2 * np.log(8), losses
    with pytest.raises(UserError, match="contrastive_temperature"):
        train(TrainOptions(str(config), max_train_steps=1, device="cpu", run_name="bad",
                           overrides=["run.contrastive_loss_weight=1", "run.contrastive_temperature=0"]))


def test_bad_config_exits_2_with_one_line(clips, tmp_path):
    config = write_config(tmp_path / "bad.yaml", clips, train_fileslist=str(tmp_path / "missing_list.txt"))
    result = subprocess.run([sys.executable, "-m", "scripts.train_syncnet", "--config_path", str(config),
                             "--device", "cpu", "--train_output_dir", str(tmp_path / "runs")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing_list.txt" in lines[0] and "not found" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


def test_unreadable_yaml_exits_2(tmp_path, capsys):
    from scripts.train_syncnet import main

    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    assert main(["--config_path", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.yaml" in err and len(err.splitlines()) == 1


def test_accuracy_command_counts_predictions_against_labels(clips, tmp_path, capsys):
    """An 'always in sync' SyncNet (constant embeddings, cosine 1) scores exactly the share of positives."""
    from latentsync.data.syncnet_dataset import SyncNetDataset
    from latentsync.models import StableSyncNet
    from scripts.eval_syncnet_acc import main as eval_acc
    from scripts.make_tiny_checkpoints import SYNCNET_MODEL

    config = OmegaConf.load(REPO / "configs/syncnet/syncnet_16_pixel_attn.yaml")
    config.model = SYNCNET_MODEL
    OmegaConf.save(config, tmp_path / "syncnet.yaml")
    model = StableSyncNet.from_config(SYNCNET_MODEL)
    with torch.no_grad():
        for encoder in (model.audio_encoder, model.visual_encoder):
            encoder.norm_out.weight.zero_()
            encoder.norm_out.bias.fill_(1.0)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "always_sync.pt")
    args = ["--config_path", str(tmp_path / "syncnet.yaml"), "--ckpt_path", str(tmp_path / "always_sync.pt"),
            "--fileslist", str(clips["val_list"]), "--num_samples", "25", "--batch_size", "8", "--device", "cpu"]
    assert eval_acc(args) == 0
    printed = float(capsys.readouterr().out.split("SyncNet accuracy:")[1].split()[0])
    dataset = SyncNetDataset(clips["val_list"], num_frames=16, resolution=256, seed=42, length=25)
    positives = sum(dataset[i]["label"].item() for i in range(25)) / 25
    assert 0 < positives < 1 and positives != 0.5  # an inverted label would give 1 - positives
    assert printed == pytest.approx(positives, abs=1e-4)
    assert eval_acc(args[:4] + ["--fileslist", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
