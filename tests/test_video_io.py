"""Streaming video I/O: probing, chunked decoding with rotation and fps resampling, writing,
audio muxing, bad inputs and bounded memory (latentsync/video.py)."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from latentsync import video
from latentsync.constants import MODEL_FPS
from latentsync.errors import ExternalToolError, UserError
from latentsync.io import ffmpeg_exe

from conftest import MEDIA, need

DEMO1 = MEDIA / "demo1_video.mp4"
DEMO2 = MEDIA / "demo2_video.mp4"
FFMPEG = ffmpeg_exe()
LEVEL_STEP = 4  # index clips: frame i is a flat gray of level i * LEVEL_STEP



def ffmpeg(*args) -> None:
    command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(command, check=True)


def ffmpeg_rgb(path: Path, width: int, height: int, *filters, frames: int = 0) -> np.ndarray:
    """Decode with the ffmpeg binary itself (autorotation on) as an independent reference."""
    vf = ["-vf", ",".join(filters)] if filters else []
    limit = ["-frames:v", str(frames)] if frames else []
    raw = subprocess.run(
        [FFMPEG, "-loglevel", "error", "-i", str(path), *vf, *limit, "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def all_frames(path, fps=MODEL_FPS, chunk_size=video.DEFAULT_CHUNK_SIZE) -> np.ndarray:
    return np.concatenate(list(video.iter_frames(path, fps=fps, chunk_size=chunk_size)))


def levels(frames: np.ndarray) -> list:
    """Frame indices of an index clip."""
    return [int(round(f.mean() / LEVEL_STEP)) for f in frames]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small generated clips: 64x48 testsrc 30 fps 2 s with 440 Hz audio; 16x16 frame-index
    clips (frame i is gray i * LEVEL_STEP) at constant 30 fps, variable rate, and HEVC starting
    after its audio; an audio-only file."""
    root = tmp_path_factory.mktemp("media")
    clip = root / "land30.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=2",
        "-f", "lavfi", "-i", "sine=f=440:d=2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-c:a", "aac", "-shortest", clip,
    )  # fmt: skip
    index = root / "index30.mp4"  # 60 flat frames, lossless, key frame every 8
    frames = np.stack([np.full((16, 16, 3), i * LEVEL_STEP, np.uint8) for i in range(60)])
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "16x16",
         "-r", "30", "-i", "-", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-g", "8",
         str(index)],
        input=frames.tobytes(),
        check=True,
    )  # fmt: skip
    jitter = root / "jitter.mp4"  # variable frame rate: frames 0, 45, 90, 100, 145 ... ms
    ffmpeg(
        "-i", index, "-vf", "setpts='(N/30+0.012*mod(N\\,3))/TB'", "-fps_mode", "vfr",
        "-enc_time_base:v", "1/600", "-video_track_timescale", "600",
        "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", jitter,
    )  # fmt: skip
    late = root / "late_hevc.mp4"  # HEVC video starting 0.3 s after its audio
    ffmpeg(
        "-i", index, "-f", "lavfi", "-i", "sine=d=2.5", "-vf", "setpts=PTS+0.3/TB",
        "-c:v", "libx265", "-x265-params", "lossless=1:log-level=error", "-pix_fmt", "yuv444p",
        "-c:a", "aac", late,
    )  # fmt: skip
    audio_only = root / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=1", "-c:a", "aac", audio_only)
    return {
        "clip": clip, "index": index, "jitter": jitter, "late": late,
        "audio_only": audio_only, "root": root,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# probing and decoding


def test_probe_demo1():
    info = video.probe_video(need(DEMO1))
    assert (info.width, info.height) == (1080, 1920)
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 250
    assert info.duration == pytest.approx(10.0, abs=0.05)
    assert info.has_audio and info.rotation == 0


def test_iter_frames_demo1_chunks_match_ffmpeg():
    path = need(DEMO1)
    chunks = list(itertools.islice(video.iter_frames(path, fps=25), 2))
    assert [c.shape for c in chunks] == [(16, 1920, 1080, 3)] * 2
    assert all(c.dtype == np.uint8 for c in chunks)
    reference = ffmpeg_rgb(path, 1080, 1920, frames=18)[17]
    assert np.abs(chunks[1][1].astype(int) - reference).mean() < 0.5
    assert not np.array_equal(chunks[0][0], chunks[1][1])  # really different frames


def test_count_frames_demo1_without_decoding():
    assert video.count_frames(need(DEMO1), fps=25) == 250


def test_resample_30_to_25(media):
    clip = media["clip"]
    frames = all_frames(clip, fps=25)
    assert frames.shape == (50, 48, 64, 3)
    assert video.count_frames(clip, fps=25) == 50
    assert video.count_frames(clip, fps=None) == len(all_frames(clip, fps=None)) == 60


@pytest.mark.parametrize("fps", [25, 24, 50, 12, 29.97, 7])
@pytest.mark.parametrize("kind", ["index", "jitter", "late"])
def test_resampling_picks_the_same_frames_as_ffmpeg_fps_filter(media, fps, kind):
    path = media[kind]
    ours = levels(all_frames(path, fps=fps, chunk_size=5))
    theirs = levels(ffmpeg_rgb(path, 16, 16, f"fps={fps}"))
    assert ours == theirs
    assert video.count_frames(path, fps=fps) == len(ours)


def test_video_starting_after_its_audio_stays_in_sync(media):
    frames = levels(all_frames(media["late"], fps=25))
    assert len(frames) == 58  # 0.3 s lead-in + 2 s of video
    assert frames[:8] == [frames[8]] * 8  # the lead-in repeats the first shown frame
    assert video.count_frames(media["late"], fps=None) == 60


def test_downsampling_drops_and_upsampling_repeats(media):
    at25 = levels(all_frames(media["index"], fps=25))
    assert len(at25) == 50 and len(set(at25)) == 50 and at25 == sorted(at25)
    at60 = levels(all_frames(media["index"], fps=60))
    assert len(at60) == 120 and sorted(set(at60)) == list(range(60))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_gives_display_orientation(media, tmp_path, rotation):
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", rotation, "-i", media["clip"], "-c", "copy", rotated)
    info = video.probe_video(rotated)
    assert info.rotation == rotation
    size = (48, 64) if rotation in (90, 270) else (64, 48)
    assert (info.width, info.height) == size
    frames = all_frames(rotated, fps=None)
    reference = ffmpeg_rgb(rotated, *size)  # the ffmpeg binary applies the display matrix
    assert frames.shape == reference.shape == (60, size[1], size[0], 3)
    assert np.abs(frames.astype(int) - reference).mean() < 0.5


def test_read_frames_matches_streaming(media):
    cases = [("index", 25), ("index", None), ("clip", 25), ("jitter", 24), ("late", 25)]
    for kind, fps in cases:
        path = media[kind]
        everything = all_frames(path, fps=fps)
        for start, count in [(0, 3), (17, 9), (len(everything) - 4, 4)]:
            part = video.read_frames(path, start, count, fps=fps)
            assert np.array_equal(part, everything[start : start + count]), (kind, fps, start)
    with pytest.raises(IndexError):
        video.read_frames(media["index"], 48, 5, fps=25)


def test_damaged_tail_keeps_the_promised_frame_count(tmp_path):
    whole = tmp_path / "whole.mp4"  # index at the front, so a cut file still opens
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=4",
        "-c:v", "libx264", "-movflags", "+faststart", whole,
    )  # fmt: skip
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    expected = video.count_frames(cut, fps=25)
    assert 10 < expected < 100
    assert len(all_frames(cut, fps=25)) == expected
    assert 0 < len(all_frames(cut, fps=None)) <= video.count_frames(cut, fps=None)


# --------------------------------------------------------------------------------------------
# writing


def gradient(n: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frames = [(np.stack([x * 3 + i, y * 4, (x + y) * 2], -1) % 256) for i in range(n)]
    return np.stack(frames).astype(np.uint8)


def test_writer_round_trip_odd_size(tmp_path):
    out = tmp_path / "out.mp4"
    frames = gradient(20, 49, 65)
    with video.VideoWriter(out, fps=25, width=65, height=49) as writer:
        writer.write(frames[:7])
        writer.write(frames[7:])
    assert (writer.out_width, writer.out_height) == (66, 50)
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]  # temp file renamed away
    info = video.probe_video(out)
    assert (info.width, info.height, info.num_frames) == (66, 50, 20)
    back = all_frames(out, fps=25)
    assert back.shape == (20, 50, 66, 3)
    diff = np.abs(back[:, :49, :65].astype(int) - frames)
    assert diff.mean() < 3.0
    # the padding replicates the edge instead of adding a black line
    assert np.abs(back[:, 49, :65].astype(int) - frames[:, 48]).mean() < 6.0


def test_writer_keeps_saturated_colours(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 150, 120), (30, 200, 220)]
    frames = np.stack([np.full((32, 32, 3), c, np.uint8) for c in colours])
    with video.VideoWriter(tmp_path / "c.mp4", fps=30000 / 1001, width=32, height=32) as writer:
        writer.write(frames)
    back = all_frames(tmp_path / "c.mp4", fps=None)
    assert np.abs(back.astype(int) - frames).mean(axis=(1, 2, 3)).max() < 2.5
    cli = ffmpeg_rgb(tmp_path / "c.mp4", 32, 32)  # the colour tags make other decoders agree
    assert np.abs(cli.astype(int) - back).max() <= 1
    assert video.probe_video(tmp_path / "c.mp4").fps == pytest.approx(29.97, abs=0.01)


def test_writer_exception_leaves_no_file(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with video.VideoWriter(out, fps=25, width=32, height=32) as writer:
            writer.write(gradient(5, 32, 32))
            raise KeyError("interrupted")
    assert os.listdir(tmp_path) == []


def test_writer_ffmpeg_failure_keeps_old_output(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(ExternalToolError, match="crf"):  # ffmpeg's own complaint is in the message
        with video.VideoWriter(out, fps=25, width=32, height=32, crf=-5) as writer:
            for _ in range(50):
                writer.write(gradient(4, 32, 32))
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_writer_rejects_wrong_frames(tmp_path):
    with video.VideoWriter(tmp_path / "x.mp4", fps=25, width=32, height=32) as writer:
        with pytest.raises(ValueError):
            writer.write(np.zeros((2, 30, 32, 3), np.uint8))
        with pytest.raises(ValueError):
            writer.write(np.zeros((2, 32, 32, 3), np.float32))
        writer.write(np.zeros((32, 32, 3), np.uint8))  # a single frame is fine
    assert video.probe_video(tmp_path / "x.mp4").num_frames == 1


# --------------------------------------------------------------------------------------------
# audio


def decoded_audio(path: Path):
    """(seconds of decoded audio, sample rate, channels) of the first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate, stream.rate, stream.codec_context.channels


def test_write_audio_wav(tmp_path):
    samples = np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.5
    video.write_audio_wav(tmp_path / "a.wav", samples, 16000)
    back, rate = soundfile.read(tmp_path / "a.wav")
    assert rate == 16000 and np.abs(back - samples).max() < 1e-4
    assert os.listdir(tmp_path) == ["a.wav"]


@pytest.mark.parametrize("cut", [1.5, None])
def test_mux_audio_keeps_original_audio(media, tmp_path, cut):
    clip = media["clip"]
    t = np.arange(int(3.0 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 550 * t)], -1) * 0.3
    wav = tmp_path / "drive.wav"
    video.write_audio_wav(wav, stereo, 44100)
    out = tmp_path / "muxed.mp4"
    video.mux_audio(clip, wav, out, duration=cut)
    seconds, rate, channels = decoded_audio(out)
    assert seconds == pytest.approx(cut or 3.0, abs=0.05)
    assert (rate, channels) == (44100, 2)  # not resampled to 16 kHz mono
    assert video.count_frames(out, fps=None) == video.count_frames(clip, fps=None)
    assert np.array_equal(all_frames(out, fps=None), all_frames(clip, fps=None))  # stream copy
    assert sorted(os.listdir(tmp_path)) == ["drive.wav", "muxed.mp4"]


def test_mux_audio_without_audio_stream_is_user_error(media, tmp_path):
    with pytest.raises(UserError, match="no audio stream"):
        video.mux_audio(media["clip"], media["index"], tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == []


def test_resample_video_for_data_pipeline(media, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", 90, "-i", media["clip"], "-c", "copy", rotated)
    out = tmp_path / "res.mp4"
    video.resample_video(rotated, out, fps=25, audio_rate=16000)
    info = video.probe_video(out)
    assert (info.width, info.height, info.rotation) == (48, 64, 0)
    assert info.fps == pytest.approx(25.0)
    assert video.count_frames(out, fps=None) == video.count_frames(rotated, fps=25) == 50
    seconds, rate, channels = decoded_audio(out)
    assert (rate, channels) == (16000, 1) and seconds == pytest.approx(2.0, abs=0.05)
    same = np.abs(all_frames(out, fps=None).astype(int) - all_frames(rotated, fps=25)).mean()
    assert same < 3.0  # same frames picked, up to H.264 loss


# --------------------------------------------------------------------------------------------
# bad inputs


def bad_file(kind: str, media, tmp_path) -> Path:
    if kind == "missing":
        return tmp_path / "nothing here.mp4"
    if kind == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 20)
        return path
    if kind == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
        return path
    if kind == "truncated":
        path = tmp_path / "cut.mp4"
        path.write_bytes(need(DEMO1).read_bytes()[:3000])
        return path
    return media["audio_only"]


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "truncated", "audio_only"])
@pytest.mark.parametrize("reader", ["open", "probe", "iter", "count", "read"])
def test_bad_inputs_are_user_errors_naming_the_file(media, tmp_path, kind, reader):
    path = bad_file(kind, media, tmp_path)
    calls = {
        "open": lambda: video.open_video(path)[0].close(),
        "probe": lambda: video.probe_video(path),
        "iter": lambda: next(video.iter_frames(path)),
        "count": lambda: video.count_frames(path),
        "read": lambda: video.read_frames(path, 0, 1),
    }
    with pytest.raises(UserError) as caught:
        calls[reader]()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_open_media_names_the_file_and_the_missing_stream(media, tmp_path):
    with video.open_media(media["clip"], "video") as container:
        assert container.streams.video
    with pytest.raises(UserError, match=r"index30\.mp4: contains no audio stream$"):
        video.open_media(media["index"], "audio")
    with pytest.raises(UserError, match=r"nothing\.wav: audio file not found$"):
        video.open_media(tmp_path / "nothing.wav", "audio", what="audio file")
    with pytest.raises(UserError, match="is a folder"):
        video.open_media(tmp_path)


# --------------------------------------------------------------------------------------------
# memory

MEMORY_SCRIPT = """
import json, sys, psutil
from latentsync.video import iter_frames

def peak():
    # VmHWM: peak RSS of this process image (ru_maxrss would include the forking parent's peak)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024

process = psutil.Process()
stats = {"start": process.memory_info().rss, "frames": 0, "rss_max": 0}
for i, chunk in enumerate(iter_frames(sys.argv[1], fps=25, chunk_size=16)):
    stats["frames"] += len(chunk)
    if i == 1:  # warm-up done: decoder, converter and two chunks have existed
        stats["warm_peak"], stats["warm_rss"] = peak(), process.memory_info().rss
    stats["rss_max"] = max(stats["rss_max"], process.memory_info().rss)
    del chunk
stats["final_peak"] = peak()
print(json.dumps(stats))
"""
FRAME_BYTES = 1080 * 1920 * 3


def test_memory_does_not_grow_with_clip_length():
    path = need(DEMO2)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["frames"] == 502  # all 20 s were decoded; holding them would take ~3.1 GB
    peak_growth = stats["final_peak"] - stats["warm_peak"]
    rss_growth = stats["rss_max"] - stats["warm_rss"]
    assert peak_growth < 200e6, f"peak RSS grew by {peak_growth / 1e6:.0f} MB after warm-up"
    assert rss_growth < 200e6, f"RSS grew by {rss_growth / 1e6:.0f} MB after warm-up"
    total = stats["final_peak"] - stats["start"]
    assert total < 100 * FRAME_BYTES, f"peak {total / 1e6:.0f} MB above start"  # ~2 chunks


def test_single_frames_follow_the_chunk_reader_and_are_rgb(tmp_path):
    """The one frame contract: R, G, B order (not OpenCV's BGR), same frames as iter_frames."""
    path = tmp_path / "red.mp4"
    red = np.zeros((6, 32, 48, 3), np.uint8)
    red[..., 0] = 220
    with video.VideoWriter(path, fps=30, width=48, height=32) as writer:
        writer.write(red)
    singles = list(video.iter_single_frames(path, fps=25))
    assert len(singles) == video.count_frames(path, fps=25) == 5  # 6 frames at 30 fps -> 0.2 s
    np.testing.assert_array_equal(np.stack(singles), all_frames(path, fps=25))
    r, g, b = singles[0].reshape(-1, 3).mean(0)
    assert r > 180 and g < 40 and b < 40
    np.testing.assert_array_equal(np.stack(list(video.iter_single_frames(path, fps=None))),
                                  all_frames(path, fps=None))
