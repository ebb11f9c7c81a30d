"""Evaluation metrics: SyncNet v2 layout and offset search, face tracks, FVD, SSIM/FID, CLIs."""

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from latentsync.errors import UserError
from latentsync.eval import fvd, image_metrics, syncnet_v2 as sv
from latentsync.eval.frechet import frechet_distance
from latentsync.eval.media import read_audio_int16
from latentsync.video import read_frames

from conftest import MEDIA, need

DEMO1_MP4 = MEDIA / "demo1_video.mp4"


# ----------------------------------------------------------------------------------------
# helpers


def write_video(path: Path, frames_rgb: np.ndarray, fps: int = 25, audio: np.ndarray | None = None) -> Path:
    """Encode uint8 RGB frames (and optional mono 16 kHz int16 audio) with the ffmpeg binary."""
    n, h, w, _ = frames_rgb.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio is not None:
        wav_path = path.with_suffix(".wav")
        wavfile.write(wav_path, 16000, audio)
        cmd += ["-i", str(wav_path), "-c:a", "aac"]
    cmd += ["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames_rgb).tobytes(), check=True)
    return path


class FixedBoxDetector:
    """Stands in for latentsync.face.detectors: one face with a fixed box in every frame,
    except the calls listed in `missing` (counted from the last reset)."""

    def __init__(self, box, missing=()):
        self.box, self.missing, self.calls = np.asarray(box, float), set(missing), 0

    def detect(self, frame_rgb):
        assert frame_rgb.ndim == 3 and frame_rgb.dtype == np.uint8
        self.calls += 1
        if self.calls - 1 in self.missing:
            return []
        return [type("Face", (), {"box": self.box.copy(), "score": 1.0})()]

    def reset(self):
        self.calls = 0


def moving_square_clip(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] frames: a coloured square moving over a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    color = rng.integers(120, 255, 3)
    frames = np.repeat(background[None], n, axis=0)
    for t in range(n):
        x = int((t * (seed + 2)) % (size - 16))
        frames[t, 20:36, x:x + 16] = color
    return frames


@pytest.fixture(scope="module")
def random_syncnet():
    torch.manual_seed(0)
    model = sv.SyncNetV2().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that they matter when reloaded
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model


# ----------------------------------------------------------------------------------------
# SyncNet v2 layout and loading


def _conv(name, shape):
    return [(f"{name}.weight", shape), (f"{name}.bias", [shape[0]])]


def _bn(name, channels):
    return [(f"{name}.weight", [channels]), (f"{name}.bias", [channels]),
            (f"{name}.running_mean", [channels]), (f"{name}.running_var", [channels]),
            (f"{name}.num_batches_tracked", [])]


# SyncNet v2 layout (docs/evaluation.md), in state-dict order: Sequential indices of convs, BatchNorms and linears.
EXPECTED_KEYS = [
    *_conv("netcnnaud.0", [64, 1, 3, 3]), *_bn("netcnnaud.1", 64),
    *_conv("netcnnaud.4", [192, 64, 3, 3]), *_bn("netcnnaud.5", 192),
    *_conv("netcnnaud.8", [384, 192, 3, 3]), *_bn("netcnnaud.9", 384),
    *_conv("netcnnaud.11", [256, 384, 3, 3]), *_bn("netcnnaud.12", 256),
    *_conv("netcnnaud.14", [256, 256, 3, 3]), *_bn("netcnnaud.15", 256),
    *_conv("netcnnaud.18", [512, 256, 5, 4]), *_bn("netcnnaud.19", 512),
    *_conv("netfcaud.0", [512, 512]), *_bn("netfcaud.1", 512), *_conv("netfcaud.3", [1024, 512]),
    *_conv("netcnnlip.0", [96, 3, 5, 7, 7]), *_bn("netcnnlip.1", 96),
    *_conv("netcnnlip.4", [256, 96, 1, 5, 5]), *_bn("netcnnlip.5", 256),
    *_conv("netcnnlip.8", [256, 256, 1, 3, 3]), *_bn("netcnnlip.9", 256),
    *_conv("netcnnlip.11", [256, 256, 1, 3, 3]), *_bn("netcnnlip.12", 256),
    *_conv("netcnnlip.14", [256, 256, 1, 3, 3]), *_bn("netcnnlip.15", 256),
    *_conv("netcnnlip.18", [512, 256, 1, 6, 6]), *_bn("netcnnlip.19", 512),
    *_conv("netfclip.0", [512, 512]), *_bn("netfclip.1", 512), *_conv("netfclip.3", [1024, 512]),
]


def test_syncnet_v2_state_dict_layout_matches_public_file():
    got = [(k, list(v.shape)) for k, v in sv.SyncNetV2().state_dict().items()]
    assert got == EXPECTED_KEYS
    assert len(got) == 102


def test_syncnet_v2_embedding_shapes(random_syncnet):
    with torch.no_grad():
        aud, lip = random_syncnet(torch.randn(2, 1, 13, 20), torch.rand(2, 3, 5, 224, 224) * 255)
    assert aud.shape == (2, 1024) and lip.shape == (2, 1024)


def test_load_syncnet_v2_roundtrip_and_strictness(tmp_path, random_syncnet):
    path = tmp_path / "syncnet_v2.model"
    state = random_syncnet.state_dict()
    torch.save(state, path)
    loaded = sv.load_syncnet_v2(path)
    assert not loaded.training
    x = torch.randn(3, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(x), random_syncnet.forward_aud(x))

    # files from old PyTorch versions have no num_batches_tracked: still accepted
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, path)
    sv.load_syncnet_v2(path)

    renamed = dict(state)
    renamed["netcnnaud.1.running_avg"] = renamed.pop("netcnnaud.1.running_mean")
    torch.save(renamed, path)
    with pytest.raises(UserError, match=r"netcnnaud\.1\.running_avg"):
        sv.load_syncnet_v2(path)

    wrong = dict(state)
    wrong["netfclip.3.weight"] = torch.zeros(512, 512)
    torch.save(wrong, path)
    with pytest.raises(UserError, match=r"netfclip\.3\.weight.*\[512, 512\]"):
        sv.load_syncnet_v2(path)


def test_missing_syncnet_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError) as info:
        sv.load_syncnet_v2(tmp_path / "checkpoints" / "auxiliary" / "syncnet_v2.model")
    message = str(info.value)
    assert "syncnet_v2.model" in message and "LatentSync-1.5" in message and "syncnet_python" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------------------
# MFCC and offset search


def test_mfcc_is_100_per_second_and_takes_int16_or_float():
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(16000) * 3000).astype(np.int16)
    cc = sv.mfcc_features(wav)
    assert cc.shape == (13, 99)  # 1 + ceil((16000 - 400) / 160) columns of 13 coefficients
    np.testing.assert_allclose(sv.mfcc_features(wav.astype(np.float32) / 32768), cc, rtol=1e-6, atol=1e-6)


def test_window_v_is_frames_v_to_v_plus_4_and_mfcc_columns_4v_to_4v_plus_19(random_syncnet):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    cc = rng.standard_normal((13, 40)).astype(np.float32)
    lip = sv.lip_features(random_syncnet, frames, 4, batch_size=3)  # crosses a batch border
    aud = sv.audio_features(random_syncnet, cc, 4, batch_size=3)
    with torch.no_grad():
        for v in (0, 3):
            clip = torch.from_numpy(frames[v:v + 5]).float().permute(3, 0, 1, 2)[None]  # raw 0-255
            torch.testing.assert_close(lip[v], random_syncnet.forward_lip(clip)[0], rtol=1e-4, atol=1e-4)
            window = torch.from_numpy(cc[:, 4 * v:4 * v + 20])[None, None]
            torch.testing.assert_close(aud[v], random_syncnet.forward_aud(window)[0], rtol=1e-4, atol=1e-4)


def _tie_final_layers(model, frames, wav, count, seed=0):
    """Give the random network a known alignment: solve both final Linear layers so that lip
    window v and audio window v map to the same random target (exact least squares).

    A purely random network has no lip-audio relation, so its distance curve is shaped by the
    zero padding at the ends and the argmin does not follow the audio. With tied heads the
    aligned pairs have distance ~0 and every other pair the distance of two random targets.
    """
    captured = {}

    def hook(name):
        return lambda module, inputs, output: captured.__setitem__(name, output.detach().clone())

    handles = [model.netfclip[2].register_forward_hook(hook("lip")),
               model.netfcaud[2].register_forward_hook(hook("aud"))]
    sv.lip_features(model, frames, count, batch_size=count)
    sv.audio_features(model, sv.mfcc_features(wav), count, batch_size=count)
    for h in handles:
        h.remove()
    targets = torch.randn(count, 1024, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for head, name in ((model.netfclip, "lip"), (model.netfcaud, "aud")):
        inputs = torch.cat([captured[name].double(), torch.ones(count, 1, dtype=torch.float64)], 1)
        solution = torch.linalg.lstsq(inputs, targets, driver="gelsd").solution  # [513, 1024]
        with torch.no_grad():
            head[3].weight.copy_(solution[:-1].T)
            head[3].bias.copy_(solution[-1])


def test_offset_follows_audio_shift(random_syncnet):
    """Audio that starts k frames later in the recording (= k*640 samples, so it is early by k
    frames) is reported with offset +k; the windows it is matched by are the same ones."""
    need(DEMO1_MP4)
    start, num_frames = 10, 20
    video = read_frames(DEMO1_MP4, start, num_frames, fps=None)[..., ::-1]  # BGR, as SyncNet v2 takes
    frames = np.stack([cv2.resize(f[560:800, 480:720], (224, 224), interpolation=cv2.INTER_AREA)
                       for f in video])  # the face region of demo1 (BGR)
    wav = read_audio_int16(DEMO1_MP4)
    model = sv.SyncNetV2().eval()
    model.load_state_dict(random_syncnet.state_dict())
    aligned = wav[start * 640:]
    count = sv.num_windows(num_frames, len(aligned))
    assert count == num_frames - 5
    _tie_final_layers(model, frames, aligned, count)

    base = sv.evaluate_offset(model, frames, aligned)
    assert base.offset == 0
    assert base.dists.shape == (31,) and base.frame_dists.shape == (count, 31)
    assert base.min_dist == pytest.approx(float(base.dists.min()))
    assert base.confidence == pytest.approx(float(np.median(base.dists) - base.dists.min()))
    assert base.confidence > 0.5 * float(np.median(base.dists))
    for k in (-3, 2):
        shifted = sv.evaluate_offset(model, frames, wav[(start + k) * 640:])
        assert shifted.offset - base.offset == k, (k, shifted.offset)


def test_score_offsets_uses_the_shorter_of_video_and_audio(random_syncnet):
    frames = np.zeros((12, 224, 224, 3), np.uint8)
    assert sv.num_windows(12, 640 * 30) == 7
    assert sv.num_windows(30, 640 * 12 + 639) == 7
    with pytest.raises(UserError, match="too short"):
        sv.evaluate_offset(random_syncnet, frames[:5], np.zeros(640 * 30, np.int16))


# ----------------------------------------------------------------------------------------
# face tracks and crops


def _boxes(n, box, skip=()):
    return [[] if i in skip else [np.asarray(box, float)] for i in range(n)]


def test_tracks_interpolate_gaps_and_split_after_25_missing_frames():
    options = sv.TrackOptions(min_track=10)
    box = [100, 100, 220, 240]
    tracks = sv.track_shot(_boxes(60, box, skip=range(20, 30)), 5, options)
    assert len(tracks) == 1
    assert tracks[0].frames.tolist() == list(range(5, 65))
    np.testing.assert_allclose(tracks[0].boxes, np.tile(box, (60, 1)))

    tracks = sv.track_shot(_boxes(60, box, skip=range(20, 46)), 0, options)  # gap of 26 frames
    assert [(t.frames[0], t.frames[-1]) for t in tracks] == [(0, 19), (46, 59)]


def test_tracks_follow_two_faces_and_drop_short_or_small_ones():
    options = sv.TrackOptions(min_track=50)
    frames = []
    for i in range(60):
        left = np.array([10 + i, 10, 130 + i, 130], float)  # moves 1 px per frame
        right = np.array([400, 10, 520, 130], float)
        tiny = np.array([300, 300, 350, 350], float)  # 50 px: too small
        frames.append([right, tiny, left] if i % 2 else [left, tiny, right])
    tracks = sv.track_shot(frames, 0, options)
    assert len(tracks) == 2
    starts = sorted(t.boxes[0, 0] for t in tracks)
    assert starts == [10, 400]
    assert all(len(t.frames) == 60 for t in tracks)
    # exactly min_track detections is not enough ("more than")
    assert sv.track_shot(_boxes(50, [0, 0, 120, 120]), 0, options) == []
    assert len(sv.track_shot(_boxes(51, [0, 0, 120, 120]), 0, options)) == 1


def test_find_tracks_skips_short_shots():
    options = sv.TrackOptions(min_track=10)
    boxes = _boxes(40, [0, 0, 150, 150])
    tracks = sv.find_tracks(boxes, [(0, 9), (9, 40)], options)
    assert [(t.frames[0], t.frames[-1]) for t in tracks] == [(9, 39)]


def test_crop_geometry_median_filter_ignores_a_one_frame_jump():
    boxes = np.tile([100.0, 100.0, 200.0, 220.0], (30, 1))
    boxes[15] += 80
    geometry = sv.crop_geometry(sv.Track(np.arange(30), boxes), sv.TrackOptions())
    np.testing.assert_allclose(geometry, np.tile([60.0, 150.0, 160.0], (30, 1)))


def test_crop_face_region_and_padding():
    options = sv.TrackOptions()
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[150:250, 150:250] = 255
    # s = 50 around (200, 200): rows y - s .. y + 1.8 s = 150..290, columns x -+ 1.4 s = 130..270
    crop = sv.crop_face(frame, 50.0, 200.0, 200.0, options)
    assert crop.shape == (224, 224, 3)
    expected = cv2.resize(frame[150:290, 130:270], (224, 224))
    np.testing.assert_array_equal(crop, expected)
    corner = sv.crop_face(frame, 50.0, 10.0, 10.0, options)  # mostly outside: grey padding
    assert (corner[:40, :40] == 110).all()


def test_sync_confidence_on_a_video_file(tmp_path, random_syncnet):
    rng = np.random.default_rng(1)
    videos = tmp_path / "videos"
    videos.mkdir()
    audio = (rng.standard_normal(24 * 640) * 4000).astype(np.int16)
    write_video(videos / "a.mp4", moving_square_clip(24, 128), audio=audio)

    options = sv.TrackOptions(min_track=10)
    score = sv.sync_confidence(videos / "a.mp4", random_syncnet, FixedBoxDetector([10, 10, 118, 118]),
                               options=options)
    assert set(score) == {"offset", "lse_c", "lse_d", "num_tracks"}
    assert score["num_tracks"] == 1 and -15 <= score["offset"] <= 15
    assert score["lse_c"] >= 0 and score["lse_d"] > 0

    with pytest.raises(UserError, match="face not detected"):
        sv.sync_confidence(videos / "a.mp4", random_syncnet, FixedBoxDetector([10, 10, 60, 60]),
                           options=options)  # 50 px faces are too small


# ----------------------------------------------------------------------------------------
# CLI


def test_cli_missing_video_exits_2_with_one_line(tmp_path, capsys):
    """In this process (the `python -m` path of the same check runs in test_reference_cli)."""
    from scripts import eval_sync_conf

    assert eval_sync_conf.main(["--video_path", str(tmp_path / "nope.mp4")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "nope.mp4" in lines[0] and "not found" in lines[0] and not captured.out


def test_cli_folder_mode_writes_csv(tmp_path, random_syncnet, monkeypatch, capsys):
    from scripts import eval_sync_conf

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(20 * 640) * 4000).astype(np.int16)
    write_video(videos / "one.mp4", moving_square_clip(20, 128, seed=3), audio=audio)
    (videos / "one.wav").unlink()
    model_path = tmp_path / "syncnet_v2.model"
    torch.save(random_syncnet.state_dict(), model_path)
    monkeypatch.setattr(sv, "make_detector", lambda name, **kwargs: FixedBoxDetector([10, 10, 118, 118]))
    csv_out = tmp_path / "out" / "scores.csv"
    code = eval_sync_conf.main(["--videos_dir", str(videos), "--initial_model", str(model_path),
                                "--device", "cpu", "--csv_out", str(csv_out), "--min_track", "10"])
    assert code == 0
    rows = list(csv.DictReader(open(csv_out)))
    assert [r["video"] for r in rows] == ["one.mp4"]
    assert float(rows[0]["lse_c"]) >= 0 and float(rows[0]["lse_d"]) > 0 and rows[0]["error"] == ""
    assert not list(csv_out.parent.glob("*.tmp"))
    assert "mean over 1 videos" in capsys.readouterr().out

    code = eval_sync_conf.main(["--video_path", str(videos / "one.mp4"), "--initial_model",
                                str(tmp_path / "missing.model"), "--device", "cpu"])
    assert code == 2
    assert "LatentSync-1.5" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Fréchet distance and FVD


def test_frechet_distance_of_a_translated_set_is_the_squared_shift():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    assert abs(frechet_distance(x, x)) < 1e-8
    # scaling one set by a: trace term (1 - a)^2 tr(S)
    cov = np.cov(x, rowvar=False)
    assert frechet_distance(x, 2 * x) == pytest.approx(float(np.square(x.mean(0)).sum() + np.trace(cov)),
                                                       rel=1e-6)


TINY_I3D = """
import torch
import torch.nn.functional as F


class TinyI3D(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, (3, 3, 3))

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = True):
        if rescale or resize or not return_features:
            raise RuntimeError("FVD must call I3D with rescale=False, resize=False, return_features=True")
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected [B, 3, 16, 224, 224]")
        if x.min() < 0.0 or x.max() > 1.0:
            raise RuntimeError("expected values in [0, 1]")
        small = F.avg_pool3d(x, (1, 8, 8))
        motion = (small[:, :, 1:] - small[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        return torch.cat([torch.relu(self.conv(small)).mean(dim=(2, 3, 4)), 10.0 * motion], dim=1)
"""


@pytest.fixture(scope="module")
def tiny_i3d_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i3d")
    (folder / "tiny_i3d_def.py").write_text(TINY_I3D)
    sys.path.insert(0, str(folder))
    try:
        import tiny_i3d_def
        scripted = torch.jit.script(tiny_i3d_def.TinyI3D())
    finally:
        sys.path.remove(str(folder))
    path = folder / "i3d_torchscript.pt"
    scripted.save(str(path))
    return path


def clip_folders(root: Path, other: str, count: int, frames: int, change, seed: int) -> tuple[Path, Path]:
    """`root/real` with `count` moving-square clips of `frames` frames and `root/<other>` with
    `change(clip, rng)` of each, under the same file names."""
    real, changed = root / "real", root / other
    real.mkdir()
    changed.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        clip = moving_square_clip(frames, 64, seed=i)
        write_video(real / f"clip{i}.mp4", clip)
        write_video(changed / f"clip{i}.mp4", change(clip, rng))
    return real, changed


@pytest.fixture(scope="module")
def fvd_folders(tmp_path_factory):
    return clip_folders(tmp_path_factory.mktemp("fvd"), "shuffled", 4, 40,
                        lambda clip, rng: clip[rng.permutation(len(clip))], seed=0)


def test_fvd_zero_against_itself_and_larger_for_shuffled_frames(tiny_i3d_path, fvd_folders):
    real, shuffled = fvd_folders
    model = fvd.load_i3d(tiny_i3d_path)
    detector = FixedBoxDetector([8, 4, 56, 60])
    same = fvd.compute_fvd(real, real, model, detector)
    different = fvd.compute_fvd(real, shuffled, model, detector)
    assert different > 0
    assert abs(same) < 1e-3 * different


def test_fvd_face_clip_crops_frames_20_to_35(fvd_folders):
    real, _ = fvd_folders
    detector = FixedBoxDetector([8.7, 4.2, 56.9, 70])  # truncated to ints, clipped to 64
    clip = fvd.face_clip(real / "clip1.mp4", detector)
    assert clip.shape == (16, 224, 224, 3) and detector.calls == 16
    frames = read_frames(real / "clip1.mp4", 20, 16, fps=None)
    expected = cv2.resize(frames[0][4:64, 8:56], (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(clip[0], expected)


def test_fvd_frame_without_face_names_file_and_frame(fvd_folders):
    real, _ = fvd_folders
    with pytest.raises(UserError, match=r"clip2\.mp4: frame 23: no face detected"):
        fvd.face_clip(real / "clip2.mp4", FixedBoxDetector([8, 4, 56, 60], missing={3}))


def test_fvd_missing_i3d_and_cli(tmp_path, tiny_i3d_path, fvd_folders, monkeypatch, capsys):
    from scripts import eval_fvd

    with pytest.raises(UserError, match="i3d_torchscript.pt.*LatentSync-1.5"):
        fvd.load_i3d(tmp_path / "i3d_torchscript.pt")
    real, shuffled = fvd_folders
    monkeypatch.setattr(sv, "make_detector", lambda name, **kwargs: FixedBoxDetector([8, 4, 56, 60]))
    args = ["--real_videos_dir", str(real), "--fake_videos_dir", str(shuffled), "--device", "cpu"]
    assert eval_fvd.main(args + ["--i3d_path", str(tiny_i3d_path)]) == 0
    assert "FVD:" in capsys.readouterr().out
    assert eval_fvd.main(args + ["--i3d_path", str(tmp_path / "none.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------
# SSIM and FID


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert image_metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    a, b = np.full((20, 20), 100, np.uint8), np.full((20, 20), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert image_metrics.ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))

    # an 11x11 image is one window: Gaussian-weighted statistics (sigma 1.5)
    p = rng.integers(0, 256, (11, 11)).astype(float)
    q = np.clip(p + rng.normal(0, 30, (11, 11)), 0, 255).round()
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mp, mq = (w * p).sum(), (w * q).sum()
    vp, vq, cpq = (w * (p - mp) ** 2).sum(), (w * (q - mq) ** 2).sum(), (w * (p - mp) * (q - mq)).sum()
    c2 = (0.03 * 255) ** 2
    expected = (2 * mp * mq + c1) * (2 * cpq + c2) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2))
    assert image_metrics.ssim(p.astype(np.uint8), q.astype(np.uint8)) == pytest.approx(expected, rel=1e-9)


def test_ssim_decreases_with_noise_and_is_symmetric():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (7, 7), 2)
    scores = []
    for sigma in (2, 10, 40):
        noisy = np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)
        scores.append(image_metrics.ssim(image, noisy))
        assert image_metrics.ssim(noisy, image) == pytest.approx(scores[-1], abs=1e-12)
    assert 1 > scores[0] > scores[1] > scores[2]
    channels = [image_metrics.ssim(image[..., c], noisy[..., c]) for c in range(3)]
    assert image_metrics.ssim(image, noisy) == pytest.approx(np.mean(channels))


def _tiny_extractor(frames):
    small = np.stack([cv2.resize(f, (4, 4), interpolation=cv2.INTER_AREA) for f in frames])
    return small.reshape(len(frames), -1)[:, :8].astype(np.float64)


def test_fid_zero_for_same_frames_and_grows_with_distortion():
    rng = np.random.default_rng(2)
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (9, 9), 3)
              for _ in range(40)]
    assert abs(image_metrics.fid(frames, frames, _tiny_extractor, batch_size=7)) < 1e-6
    values = [image_metrics.fid(frames, [np.clip(f.astype(int) + d, 0, 255).astype(np.uint8) for f in frames],
                                _tiny_extractor) for d in (5, 20)]
    assert 0 < values[0] < values[1]


def test_inception_weights_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="inception_v3_google-0cc3c7bd.pth"):
        image_metrics.InceptionFeatures(tmp_path / "inception_v3_google-0cc3c7bd.pth")


def test_ssim_fid_folders_and_cli(tmp_path, monkeypatch, capsys):
    from scripts import eval_ssim_fid

    real, fake = clip_folders(tmp_path, "fake", 2, 8, seed=3, change=lambda clip, rng: np.clip(
        clip + rng.normal(0, 25, clip.shape), 0, 255).astype(np.uint8))
    same = image_metrics.evaluate_folders(real, real, _tiny_extractor)
    assert same["ssim"] == pytest.approx(1.0) and abs(same["fid"]) < 1e-6 and same["num_videos"] == 2
    other = image_metrics.evaluate_folders(real, fake, _tiny_extractor, frame_stride=2)
    assert other["ssim"] < 0.9 and other["fid"] > 0

    args = ["--real_videos_dir", str(real), "--fake_videos_dir", str(fake), "--device", "cpu"]
    assert eval_ssim_fid.main(args + ["--inception_path", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert eval_ssim_fid.main(args + ["--no_fid"]) == 0
    assert "SSIM:" in capsys.readouterr().out


def test_inception_features_load_a_local_torchvision_file(tmp_path):
    import torchvision

    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
               path)
    extractor = image_metrics.InceptionFeatures(path)
    frames = np.zeros((2, 40, 50, 3), np.uint8)
    frames[1] = 255
    feats = extractor(frames)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert not np.array_equal(feats[0], feats[1])
    torch.save({"fc.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not torchvision Inception v3 weights"):
        image_metrics.InceptionFeatures(path)
