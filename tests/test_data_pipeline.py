"""Data processing pipeline: raw videos -> aligned, in-sync, good-quality training clips.

The end-to-end tests run the real command on the two demo clips (downscaled to 540x960 and cut
to 6 s to keep the CPU cost down, so --min_face_size is 80 instead of 256) plus bad files made
here, with random-weight SyncNet v2 and hyperIQA networks saved in the official formats and
thresholds that let every real clip pass.
"""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.audio import load_audio
from latentsync.data.preprocess.common import PipelineOptions
from latentsync.data.preprocess.runner import (STAGES, check_checkpoints, discover_inputs,
                                               shard)
from latentsync.data.preprocess.segment import segment_bounds
from latentsync.data.preprocess.sync_av import shift_audio
from latentsync.errors import UserError
from latentsync.eval.hyper_iqa import (HyperNet, load_hyper_iqa, quality_frame_indices,
                                       score_frames)
from latentsync.io import ffmpeg_exe
from latentsync.video import VideoWriter, count_frames, iter_frames, mux_audio, probe_video

from conftest import MEDIA, REPO, need

DEMO1, DEMO2 = MEDIA / "demo1_video.mp4", MEDIA / "demo2_video.mp4"

CLIP_SECONDS = 6  # one 5-10 s segment per clip
TEST_ARGS = ["--resolution", "256", "--min_face_size", "80", "--sync_conf_threshold=-1e9",
             "--quality_threshold=-1e9", "--max_sync_offset", "15", "--no_progress"]
GOOD = ["demo1_shot_001_000.mp4", "sub/demo2_shot_001_000.mp4"]
STAGE_FOLDERS = [s.folder for s in STAGES]
# FaceMesh lip contour (outer and inner lips)
LIPS = [0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185,
        191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405,
        409, 415]


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "scripts.data_processing_pipeline", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_files(out: Path) -> dict[str, str]:
    """Every visible file of the stage folders and reports -> its hash."""
    files = {}
    for folder in STAGE_FOLDERS + ["reports"]:
        for path in sorted((out / folder).rglob("*")):
            rel = path.relative_to(out)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                files[rel.as_posix()] = sha256(path)
    return files


def read_report(out: Path, folder: str) -> dict[str, tuple[str, str]]:
    with open(out / "reports" / f"{folder}.csv", newline="") as f:
        return {row["input"]: (row["reason"], row["detail"]) for row in csv.DictReader(f)}


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_pipeline")


@pytest.fixture(scope="module")
def raw_dir(work) -> Path:
    """Two good clips (one in a sub-folder) and five bad ones."""
    need(DEMO1, DEMO2)
    raw = work / "raw"
    (raw / "sub").mkdir(parents=True)
    small = ["-c:v", "libx264", "-crf", "18", "-c:a", "aac"]
    # lanczos: MediaPipe misses the face in frame 124 of the bilinear downscale, and stage 2 now
    # copies this conforming video stream unchanged (no re-encode to blur that frame past it)
    ffmpeg("-i", str(DEMO1), "-t", str(CLIP_SECONDS), "-vf", "scale=540:960:flags=lanczos",
           *small, str(raw / "demo1.mp4"))
    ffmpeg("-i", str(DEMO2), "-t", str(CLIP_SECONDS), "-vf", "scale=540:960", *small,
           str(raw / "sub" / "demo2.mp4"))
    demo1 = str(raw / "demo1.mp4")
    # two copies of the head region side by side: MediaPipe sees two faces
    ffmpeg("-i", demo1, "-filter_complex", "[0:v]crop=300:400:146:160,split[a][b];[a][b]hstack",
           *small, str(raw / "two_faces.mp4"))
    ffmpeg("-i", demo1, "-vf", "scale=270:480", *small, str(raw / "small_face.mp4"))  # ~55 px
    ffmpeg("-i", demo1, "-t", "2", "-an", "-c:v", "libx264", str(raw / "no_audio.mp4"))
    full = work / "full.mp4"  # moov atom at the end: the first half alone is not a video
    ffmpeg("-i", demo1, "-t", "2", *small, str(full))
    (raw / "truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (raw / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    return raw


@pytest.fixture(scope="module")
def checkpoints(work) -> Path:
    """Random-weight SyncNet v2 and hyperIQA saved as plain state dicts (official layout)."""
    from latentsync.eval.syncnet_v2 import SyncNetV2

    folder = work / "checkpoints" / "auxiliary"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), folder / "syncnet_v2.model")
    torch.save(HyperNet().state_dict(), folder / "koniq_pretrained.pkl")
    return folder.parent


@pytest.fixture(scope="module")
def clean_run(work, raw_dir, checkpoints):
    """An uninterrupted run; its output is moved to `out_clean` so that other runs can use the
    same output path (and produce byte-identical file lists)."""
    raw_hashes = {p.name: sha256(p) for p in raw_dir.rglob("*") if p.is_file()}
    result = run_cli("--input_dir", str(raw_dir), "--output_dir", str(work / "out"),
                     "--checkpoints_dir", str(checkpoints), *TEST_ARGS, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (work / "out").rename(work / "out_clean")
    return work / "out_clean", result, raw_hashes


# ---------------------------------------------------------------------------- end to end


def test_every_bad_file_is_dropped_at_its_stage_and_good_clips_survive(clean_run, raw_dir):
    out, result, raw_hashes = clean_run
    valid = read_report(out, "valid")
    assert set(valid) == {"not_a_video.mp4", "truncated.mp4", "no_audio.mp4"}
    assert valid["not_a_video.mp4"][0] == "unreadable"
    assert valid["truncated.mp4"][0] == "unreadable"
    assert valid["no_audio.mp4"][0] == "no_audio"
    faces = read_report(out, "single_face")
    assert set(faces) == {"two_faces_shot_001_000.mp4", "small_face_shot_001_000.mp4"}
    assert faces["two_faces_shot_001_000.mp4"][0] == "multiple_faces"
    assert faces["small_face_shot_001_000.mp4"][0] == "face_too_small"
    for folder in STAGE_FOLDERS:  # nothing else was dropped anywhere
        if folder not in ("valid", "single_face"):
            assert read_report(out, folder) == {}, folder

    listed = (out / "fileslist.txt").read_text().splitlines()
    final = out.parent / "out" / "high_visual_quality"  # paths were written before the move
    assert listed == sorted(str((final / name).resolve()) for name in GOOD)
    for name in GOOD:
        clip = out / "high_visual_quality" / name
        info = probe_video(clip)
        assert (info.width, info.height, info.fps, info.num_frames) == (256, 256, 25.0, 150)
        assert info.has_audio and abs(len(load_audio(clip)) / 16000 - CLIP_SECONDS) < 0.1
    # raw inputs are never deleted or modified
    assert {p.name: sha256(p) for p in raw_dir.rglob("*") if p.is_file()} == raw_hashes
    # the summary table names every stage with its drops
    assert "multiple_faces: 1" in result.stdout and "no_audio: 1" in result.stdout
    assert all(folder in result.stdout for folder in STAGE_FOLDERS)


def test_kept_clips_have_their_audio_moved_by_the_measured_offset(clean_run):
    import json

    out = clean_run[0]
    name = GOOD[0]
    lines = [json.loads(line) for path in (out / "ledger" / "av_synced").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    entry = next(e for e in lines if e["input"] == name)
    offset = int(entry["detail"].split("offset ")[1].split()[0])  # "..., offset -15 frames"
    before, after = load_audio(out / "aligned" / name), load_audio(out / "av_synced" / name)
    window = slice(32000, 48000)  # 1 s in the middle, lags up to 15 frames = 0.6 s
    lags = range(-10000, 10001, 8)
    scores = [np.dot(after[window], before[window.start - lag:window.stop - lag]) for lag in lags]
    assert abs(lags[int(np.argmax(scores))] - offset * 640) <= 16
    np.testing.assert_array_equal(next(iter_frames(out / "aligned" / name, fps=None)),
                                  next(iter_frames(out / "av_synced" / name, fps=None)))


def test_aligned_demo1_face_has_its_mouth_in_the_mask_region(clean_run):
    from latentsync.face import load_mask, make_face_detector

    out = clean_run[0]
    frame = next(iter_frames(out / "aligned" / "demo1_shot_001_000.mp4", fps=None))[0]
    assert frame.shape == (256, 256, 3)
    faces = make_face_detector("mediapipe").detect(frame)
    assert len(faces) == 1
    lips = np.round(faces[0].landmarks[LIPS]).astype(int)
    mask = load_mask(resolution=256)  # 0 = generated region
    assert (mask[lips[:, 1], lips[:, 0]] == 0).all(), lips
    assert abs(lips[:, 0].mean() - 128) < 20  # horizontally centred


def test_killed_in_stage_6_and_restarted_gives_the_same_result(work, raw_dir, checkpoints,
                                                               clean_run):
    out = work / "out"
    args = ["--input_dir", str(raw_dir), "--output_dir", str(out), "--checkpoints_dir",
            str(checkpoints), *TEST_ARGS]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "scripts.data_processing_pipeline", *args,
               "--num_workers", "2"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    aligned = out / "aligned"
    deadline = time.monotonic() + 600
    try:
        while not (aligned.is_dir() and any(p.is_file() for p in aligned.rglob("*"))):
            assert process.poll() is None, "the run ended before stage 6 produced a file"
            assert time.monotonic() < deadline, "stage 6 never started"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "av_synced").exists() and not (out / "fileslist.txt").exists()

    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    clean = clean_run[0]
    assert (out / "fileslist.txt").read_bytes() == (clean / "fileslist.txt").read_bytes()
    # same file names and byte-identical contents in every stage folder and report
    assert stage_files(out) == stage_files(clean)
    leftovers = [p for folder in STAGE_FOLDERS for p in (out / folder).rglob(".*")]
    assert leftovers == []  # temporary files of the killed run were cleaned up

    # a third run finds everything done (drops included) and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_cli(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for line in again.stdout.splitlines()[1:9]:  # stage rows: inputs == resumed
        columns = line.split()
        assert columns[2] == columns[5], line
    changed = [p for p, t in mtimes.items()
               if p.stat().st_mtime_ns != t and "ledger" not in p.parts]
    assert all(p.name in ("fileslist.txt",) or p.parent.name == "reports" for p in changed)
    assert stage_files(out) == stage_files(clean)


def test_ray_backend_gives_the_same_clips(work, raw_dir, clean_run):
    pytest.importorskip("ray")
    raw = work / "raw_ray"
    raw.mkdir()
    for name in ("demo1.mp4", "not_a_video.mp4"):
        os.link(raw_dir / name, raw / name)
    out = work / "out_ray"
    result = run_cli("--input_dir", str(raw), "--output_dir", str(out), "--ray_address",
                     "local", "--num_workers", "1", "--skip_stages", "5,6,7,8",
                     "--checkpoints_dir", str(work / "nowhere"), *TEST_ARGS, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(read_report(out, "valid")) == {"not_a_video.mp4"}
    clean = clean_run[0]
    name = "demo1_shot_001_000.mp4"
    assert sha256(out / "segments" / name) == sha256(clean / "segments" / name)
    # skipped stages pass clips through: the survivors still land in high_visual_quality
    assert sha256(out / "high_visual_quality" / name) == sha256(clean / "segments" / name)
    assert (out / "fileslist.txt").read_text().splitlines() == [
        str((out / "high_visual_quality" / name).resolve())]


def test_missing_checkpoint_stops_before_any_work_naming_file_and_source(work, raw_dir):
    out = work / "out_missing"
    empty = work / "empty_checkpoints"
    result = run_cli("--input_dir", str(raw_dir), "--output_dir", str(out),
                     "--checkpoints_dir", str(empty), timeout=120)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1
    assert "syncnet_v2.model" in message[0] and "ByteDance/LatentSync-1.5" in message[0]
    assert not out.exists()
    result = run_cli("--input_dir", str(raw_dir), "--output_dir", str(out), "--skip_stages",
                     "7", "--checkpoints_dir", str(empty), timeout=120)
    assert result.returncode == 2 and "koniq_pretrained.pkl" in result.stderr


# ------------------------------------------------------------------------------ pieces


def test_shards_split_the_sorted_inputs_into_contiguous_near_equal_parts():
    items = [f"v{i:02d}.mp4" for i in range(11)]
    parts = [shard(items, i, 4) for i in range(4)]
    assert sum(parts, []) == items
    assert sorted(len(p) for p in parts) == [2, 3, 3, 3]
    assert shard(items, 0, 1) == items
    with pytest.raises(UserError):
        shard(items, 4, 4)


def test_discovery_is_recursive_sorted_and_skips_the_output_folder(tmp_path):
    for name in ["b.mp4", "a/c.MOV", "a/.hidden.mp4", "notes.txt", "out/valid/x.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = discover_inputs(tmp_path, exclude=tmp_path / "out")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/c.MOV", "b.mp4"]
    with pytest.raises(UserError):
        discover_inputs(tmp_path / "missing")


def test_segments_are_5_to_10_seconds_and_short_shots_are_dropped():
    assert segment_bounds(124, 125) == []
    assert segment_bounds(125, 125) == [(0, 125)]
    assert segment_bounds(249, 125) == [(0, 249)]
    assert segment_bounds(250, 125) == [(0, 125), (125, 250)]
    for frames in range(125, 2000, 37):
        bounds = segment_bounds(frames, 125)
        assert bounds[0][0] == 0 and bounds[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(125 <= end - start < 250 for start, end in bounds)


def test_checkpoint_check_only_asks_for_stages_that_run(tmp_path):
    check_checkpoints(PipelineOptions(checkpoints_dir=str(tmp_path), skip_stages=(7, 8)))
    with pytest.raises(UserError, match="koniq_pretrained.pkl"):
        check_checkpoints(PipelineOptions(checkpoints_dir=str(tmp_path), skip_stages=(7,)))


@pytest.fixture(scope="module")
def click_clip(tmp_path_factory) -> Path:
    """2 s of 64x64 video with clicks at 0.5 s and 1.2 s in otherwise silent 16 kHz audio."""
    folder = tmp_path_factory.mktemp("clicks")
    rate = 16000
    audio = np.zeros(2 * rate, np.float32)
    for at in (0.5, 1.2):
        audio[int(at * rate):int(at * rate) + 40] = 0.8
    wav = folder / "clicks.wav"
    import soundfile

    soundfile.write(str(wav), audio, rate)
    silent = folder / "silent.mp4"
    with VideoWriter(silent, 25, 64, 64) as writer:
        writer.write(np.random.default_rng(0).integers(0, 255, (50, 64, 64, 3), np.uint8))
    clip = folder / "clip.mp4"
    mux_audio(silent, wav, clip)
    return clip


def _click_positions(path: Path) -> np.ndarray:
    audio = np.abs(load_audio(path))
    above = np.flatnonzero(audio > 0.3)
    starts = above[np.concatenate([[True], np.diff(above) > 100])]
    return starts


@pytest.mark.parametrize("offset", [3, -2])
def test_stage_7_moves_the_audio_by_the_detected_offset(click_clip, tmp_path, offset):
    before = _click_positions(click_clip)
    out = tmp_path / "shifted.mp4"
    shift_audio(click_clip, out, offset)
    after = _click_positions(out)
    assert len(before) == len(after) == 2
    np.testing.assert_allclose(after - before, offset * 640, atol=8)  # 640 samples per frame
    frames_in = np.concatenate(list(iter_frames(click_clip, fps=None)))
    frames_out = np.concatenate(list(iter_frames(out, fps=None)))
    np.testing.assert_array_equal(frames_in, frames_out)  # video stream copied
    assert abs(len(load_audio(out)) / 16000 - 2.0) < 0.1


# ------------------------------------------------------------------ stream copy (--reencode)

COPY_SECONDS = 12  # 300 frames at 25 fps: two stage-4 pieces


def _test_clip(path: Path, rate: int, audio: list[str], video: list[str]) -> Path:
    """`COPY_SECONDS` of ffmpeg's test pattern (every frame differs) with a sine tone."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={rate}:duration={COPY_SECONDS}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={COPY_SECONDS}",
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", *video,
           "-c:a", "aac", *audio, str(path))
    return path


@pytest.fixture(scope="module")
def copy_clips(tmp_path_factory) -> dict[str, Path]:
    """25 fps H.264 with one key frame (frame 0) and B-frames (conforming video) with 44.1 kHz
    stereo or 16 kHz mono audio, and a 30 fps clip (must be re-encoded)."""
    folder = tmp_path_factory.mktemp("copy")
    sparse = ["-g", "1000", "-bf", "2", "-sc_threshold", "0"]
    return {
        "stereo": _test_clip(folder / "stereo.mp4", 25, ["-ac", "2"], sparse),
        "mono16k": _test_clip(folder / "mono16k.mp4", 25, ["-ac", "1", "-ar", "16000"], sparse),
        "fps30": _test_clip(folder / "fps30.mp4", 30, ["-ac", "2"], []),
    }


def decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(iter_frames(path, fps=None)))


def test_stage_2_copies_a_conforming_video_stream_and_resamples_only_the_audio(copy_clips,
                                                                                 tmp_path):
    from latentsync.data.preprocess.resample import AUDIO_ONLY, COPIED, REENCODED, resample
    from latentsync.data.preprocess.streams import read_layout

    for name, how in (("stereo", AUDIO_ONLY), ("mono16k", COPIED)):
        result = resample(copy_clips[name], tmp_path / name, PipelineOptions())
        assert result.kept and result.detail == how, (name, result)
        out = Path(result.outputs[0])
        np.testing.assert_array_equal(decoded(out), decoded(copy_clips[name]))  # same frames
        layout = read_layout(out)
        assert (layout.audio_codec, layout.audio_rate, layout.audio_channels) == ("aac", 16000, 1)
        assert abs(len(load_audio(out)) / 16000 - COPY_SECONDS) < 0.1
    forced = resample(copy_clips["stereo"], tmp_path / "always", PipelineOptions(reencode="always"))
    assert forced.detail == REENCODED and probe_video(forced.outputs[0]).num_frames == 300


def test_stage_2_re_encodes_other_rates_with_a_key_frame_per_piece(copy_clips, tmp_path):
    from latentsync.data.preprocess.resample import REENCODED, resample
    from latentsync.data.preprocess.streams import read_layout

    result = resample(copy_clips["fps30"], tmp_path, PipelineOptions())
    assert result.kept and result.detail == REENCODED
    layout = read_layout(Path(result.outputs[0]))
    assert layout.constant_rate and layout.num_frames == count_frames(copy_clips["fps30"])
    assert {0, 125, 250} <= layout.starts and layout.video_copyable


def _assert_piece_is(piece: np.ndarray, source: np.ndarray, start: int, exact: bool) -> None:
    """`piece` shows source frames start, start+1, ...: identical for a copy, and for a
    re-encode each of its first and last frames is closest to the source frame of its index."""
    window = source[start:start + len(piece)]
    assert piece.shape == window.shape
    if exact:
        np.testing.assert_array_equal(piece, window)
        return
    for i in (0, len(piece) - 1):
        errors = [np.abs(piece[i].astype(int) - source[j]).mean()
                  for j in range(max(0, start + i - 2), min(len(source), start + i + 3))]
        assert int(np.argmin(errors)) == min(2, start + i), (i, errors)


def test_stage_4_stream_copies_pieces_on_key_frames_with_the_right_frames(copy_clips, tmp_path):
    from latentsync.data.preprocess.resample import resample
    from latentsync.data.preprocess.segment import segment
    from latentsync.data.preprocess.streams import read_layout

    shot = Path(resample(copy_clips["fps30"], tmp_path / "shot", PipelineOptions()).outputs[0])
    result = segment(shot, tmp_path / "pieces", PipelineOptions())
    assert result.detail == "2 of 2 pieces copied"
    source = decoded(shot)
    for path, start, length in zip(sorted(result.outputs), (0, 125), (125, 175)):
        piece = decoded(Path(path))
        assert len(piece) == length
        _assert_piece_is(piece, source, start, exact=True)
        assert abs(len(load_audio(path)) / 16000 - length / 25) < 0.07  # audio cut alike

    # one key frame only (frame 0): the first piece is copied up to a clean split near the
    # middle, the second re-encoded from there
    sparse = copy_clips["stereo"]
    layout = read_layout(sparse)
    assert layout.starts == {0}
    result = segment(sparse, tmp_path / "sparse", PipelineOptions())
    assert result.detail == "1 of 2 pieces copied"
    source, pieces = decoded(sparse), [decoded(Path(p)) for p in sorted(result.outputs)]
    middle = len(pieces[0])
    assert middle in layout.splits and 125 <= middle < 250 and 125 <= 300 - middle < 250
    assert sum(len(p) for p in pieces) == 300
    _assert_piece_is(pieces[0], source, 0, exact=True)
    _assert_piece_is(pieces[1], source, middle, exact=False)


def test_stage_4_always_re_encodes_near_equal_pieces(copy_clips, tmp_path):
    from latentsync.data.preprocess.segment import segment

    result = segment(copy_clips["stereo"], tmp_path, PipelineOptions(reencode="always"))
    assert result.detail == "0 of 2 pieces copied"
    assert [probe_video(p).num_frames for p in sorted(result.outputs)] == [150, 150]


def test_segment_seconds_flag_sets_the_piece_length(copy_clips, tmp_path, capsys):
    from latentsync.data.preprocess.segment import segment
    from scripts.data_processing_pipeline import build_parser, make_options

    parser = build_parser()
    options = make_options(parser.parse_args(["--input_dir", "raw", "--segment_seconds", "4", "--reencode", "always"]))
    result = segment(copy_clips["stereo"], tmp_path, options)  # 12 s: three 4 s pieces
    assert [probe_video(p).num_frames for p in sorted(result.outputs)] == [100, 100, 100]
    options = make_options(parser.parse_args(["--input_dir", "raw", "--segment_seconds", "13"]))
    assert segment(copy_clips["stereo"], tmp_path / "long", options).reason == "too_short"
    for bad in ("0", "-2", "five"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--input_dir", "raw", "--segment_seconds", bad])
        assert "--segment_seconds: expected a positive number of seconds" in capsys.readouterr().err


def test_piece_boundaries_move_to_key_frames_within_the_5_to_10_s_limits():
    from latentsync.data.preprocess.segment import keyframe_bounds

    assert keyframe_bounds(124, 125, {0}) == []
    assert keyframe_bounds(300, 125) == segment_bounds(300, 125)  # nothing to move to
    every_piece = set(range(0, 2000, 125))
    assert keyframe_bounds(610, 125, every_piece) == [(0, 125), (125, 250), (250, 375),
                                                       (375, 610)]
    assert keyframe_bounds(300, 125, {0, 250}, {0, 140, 160}) == [(0, 140), (140, 300)]
    # a key frame beats a nearer split; one beyond 175 would leave under 5 s for the last piece
    assert keyframe_bounds(300, 125, {0, 170}, {0, 150, 170}) == [(0, 170), (170, 300)]
    assert keyframe_bounds(300, 125, {0, 180}, {0, 150, 180}) == [(0, 150), (150, 300)]
    rng = np.random.default_rng(0)
    for frames in range(125, 3000, 53):
        starts = set(rng.choice(frames, size=frames // 40 + 1).tolist()) | {0}
        splits = set(rng.choice(frames, size=frames // 4 + 1).tolist())
        bounds = keyframe_bounds(frames, 125, starts, splits)
        assert len(bounds) == len(segment_bounds(frames, 125))
        assert bounds[0][0] == 0 and bounds[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(125 <= end - start < 250 for start, end in bounds)


# ------------------------------------------------------------------------------ hyperIQA


@pytest.fixture(scope="module")
def hyper_model() -> HyperNet:
    torch.manual_seed(1)
    return HyperNet().eval()


def test_hyper_iqa_has_the_published_layout_and_loads_strictly(tmp_path, hyper_model):
    model = hyper_model
    state = model.state_dict()
    shapes = {"res.conv1.weight": (64, 3, 7, 7), "res.layer4.2.conv3.weight": (2048, 512, 1, 1),
              "res.lda1_pool.0.weight": (16, 256, 1, 1), "res.lda1_fc.weight": (16, 1024),
              "res.lda2_fc.weight": (16, 512), "res.lda3_fc.weight": (16, 256),
              "res.lda4_fc.weight": (176, 2048), "conv1.0.weight": (1024, 2048, 1, 1),
              "conv1.4.weight": (112, 512, 1, 1), "fc1w_conv.weight": (512, 112, 3, 3),
              "fc4w_conv.weight": (8, 112, 3, 3), "fc4b_fc.weight": (14, 112),
              "fc5w_fc.weight": (14, 112), "fc5b_fc.weight": (1, 112)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("res.fc.") for k in state)  # no ImageNet classifier
    path = tmp_path / "koniq_pretrained.pkl"
    torch.save(state, path)
    loaded = load_hyper_iqa(path)
    frames = np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), np.uint8)
    np.testing.assert_allclose(score_frames(loaded, frames), score_frames(model, frames),
                               rtol=1e-5, atol=1e-5)
    del state["fc5b_fc.bias"]
    torch.save(state, path)
    with pytest.raises(UserError, match="fc5b_fc.bias"):
        load_hyper_iqa(path)
    with pytest.raises(UserError, match="not found"):
        load_hyper_iqa(tmp_path / "missing.pkl")


def test_hyper_iqa_scores_each_image_with_its_own_target_net(hyper_model):
    model = hyper_model
    frames = np.random.default_rng(1).integers(0, 255, (3, 240, 300, 3), np.uint8)
    frames[1] //= 4  # a darker image
    together = score_frames(model, frames)
    alone = np.array([score_frames(model, frames[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    assert np.isfinite(together).all() and len(set(np.round(together, 4))) == 3
    assert quality_frame_indices(150) == [0, 75, 149]
