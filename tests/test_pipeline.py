"""Lip-sync inference end to end with the tiny random checkpoints, and the DDIM loop's parity."""

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import MEDIA, REFERENCE, REPO, need
from latentsync.models.unet import Conditioning
from latentsync.pipelines.lipsync_pipeline import LipsyncOptions, LipsyncPipeline
from latentsync.pipelines.segments import plan_segments, source_index
from latentsync.schedulers import make_scheduler
from latentsync.io import ffmpeg_exe
from scripts.inference import main as inference_main
from scripts.make_tiny_checkpoints import make_tiny_checkpoints

FAST = dict(inference_steps=2, guidance_scale=1.5, show_progress=False)


# -- helpers -----------------------------------------------------------------------------------

def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def read_video(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate)
        audio = c.streams.audio[0] if c.streams.audio else None
        audio_s = float(audio.duration * audio.time_base) if audio is not None else None
    return np.stack(frames), fps, audio_s


def cli(tiny, video, audio, out, *extra):
    return run_cli(["--unet_config_path", tiny / "unet.yaml", "--inference_ckpt_path", tiny / "latentsync_unet.pt",
                           "--whisper_ckpt_path", tiny / "whisper/tiny.pt", "--vae_path", tiny / "vae",
                           "--video_path", video, "--audio_path", audio, "--video_out_path", out,
                           "--inference_steps", "2", *extra])


def run_cli(args):
    return inference_main([str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(tiny):
    return LipsyncPipeline.from_checkpoints(tiny / "unet.yaml", tiny / "latentsync_unet.pt", tiny / "whisper/tiny.pt",
                                            tiny / "vae", device="cpu")


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """demo1, first 2 s, scaled to 540x960 (keeps the face, 16x fewer pixels)."""
    out = tmp_path_factory.mktemp("clips") / "small.mp4"
    ffmpeg("-i", need(MEDIA / "demo1_video.mp4"), "-t", 2, "-vf", "scale=540:960", "-c:v", "libx264", "-crf", 12,
           "-c:a", "aac", out)
    return out


def speech_wav(tmp_path, seconds, name="speech.wav", source="demo2_audio.wav"):
    wav, sr = soundfile.read(need(MEDIA / source), dtype="float32")
    reps = int(np.ceil(seconds * sr / len(wav)))
    wav = np.tile(wav, reps)[: int(seconds * sr)]
    path = tmp_path / name
    soundfile.write(path, wav, sr)
    return path


# -- the DDIM loop ---------------------------------------------------------------------------

def test_scheduler_matches_the_reference_config():
    shipped = json.loads((REPO / "configs/scheduler_config.json").read_text())
    scheduler = make_scheduler()
    assert type(scheduler).__name__ == "DDIMScheduler"
    assert all(scheduler.config[k] == v for k, v in shipped.items() if not k.startswith("_") and k in scheduler.config)
    assert (scheduler.config.beta_start, scheduler.config.steps_offset, scheduler.config.set_alpha_to_one) == (
        0.00085, 1, False)
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(951, 0, -50))


def test_ddim_loop_reproduces_reference_fixture():
    base = need(REFERENCE / "ddim_tiny_stage2")
    io = load_file(str(base / "io.safetensors"))
    meta = json.loads((base / "meta.json").read_text())
    unet_dir = REFERENCE / "unet_tiny_stage2"
    from latentsync.models import UNet3DConditionModel
    unet = UNet3DConditionModel.from_config(OmegaConf.to_container(OmegaConf.load(unet_dir / "config.yaml").model))
    unet.load_state_dict(load_file(str(unet_dir / "weights.safetensors")))
    unet.eval()
    pipe = LipsyncPipeline(vae=None, unet=unet, scheduler=make_scheduler(), resolution=128)
    conditioning = Conditioning(io["mask"], io["masked_image_latents"], io["ref_latents"])
    with torch.no_grad():
        final = pipe.denoise(io["initial_latents"], conditioning, io["audio_embeds"], meta["num_inference_steps"],
                             meta["guidance_scale"])
    assert pipe.scheduler.timesteps.tolist() == meta["timesteps"] == io["timesteps"].tolist()
    assert (final - io["final_latents"]).abs().max() < 1e-4


# -- planning --------------------------------------------------------------------------------

def test_ping_pong_looping_repeats_turn_frames():
    assert [source_index(j, 4) for j in range(10)] == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]


def test_segments_cover_face_runs_only_and_keep_full_length_tails():
    generate = np.array([True] * 20 + [False] * 3 + [True] * 5)
    segments = plan_segments(generate, 16, "overlap")
    assert [s.frames for s in segments] == [list(range(16)), list(range(4, 20)), list(range(23, 28))]
    assert [s.write_from for s in segments] == [0, 12, 0]
    written = [f for s in segments for f in s.frames[s.write_from:]]
    assert written == np.flatnonzero(generate).tolist()  # every face frame exactly once
    short = plan_segments(generate, 16, "short")
    assert [len(s.frames) for s in short] == [16, 4, 5]


# -- end to end --------------------------------------------------------------------------------

def test_demo1_dubbed_video_has_audio_length_input_resolution_and_untouched_background(tiny, tmp_path):
    """The demo clip (1080 x 1920) with the first 4 s of its speech (the whole 9.6 s cost 75 s)."""
    video, speech = need(MEDIA / "demo1_video.mp4"), need(MEDIA / "demo1_audio.wav")
    samples, rate = soundfile.read(speech)
    audio = tmp_path / "speech_4s.wav"
    soundfile.write(audio, samples[:4 * rate], rate)
    out = tmp_path / "out.mp4"
    assert cli(tiny, video, audio, out, "--inference_steps", "1", "--guidance_scale", "1.0") == 0
    frames, fps, audio_s = read_video(out)
    source, _, _ = read_video(video)
    assert fps == 25 and len(frames) == 100  # 4 s of speech
    assert frames.shape[1:] == source.shape[1:] == (1920, 1080, 3)
    assert audio_s == pytest.approx(4.0, abs=0.05)
    diff = np.abs(frames.astype(np.int16) - source[:100].astype(np.int16))
    # far from the face (top and bottom of the portrait frame) only codec noise remains
    assert diff[:, :300].mean() < 2.0 and diff[:, -500:].mean() < 2.0
    # the mouth region is regenerated (random weights, so it changes a lot)
    assert diff[:, 740:820, 520:660].mean() > 5.0


def test_audio_longer_than_video_loops_the_video(pipe, small_clip, tmp_path):
    audio = speech_wav(tmp_path, 3.0)  # 75 frames from a 50-frame clip
    out = pipe(small_clip, audio, tmp_path / "loop.mp4", LipsyncOptions(**FAST)).output_path
    frames, fps, audio_s = read_video(out)
    assert len(frames) == 75 and audio_s == pytest.approx(3.0, abs=0.05)
    # output frame 50 + k shows source frame 49 - k: compare the background (top band)
    for k in (0, 5, 20):
        a, b = frames[49 - k, :200].astype(int), frames[50 + k, :200].astype(int)
        assert np.abs(a - b).mean() < 2.0


def test_30fps_clip_is_resampled_to_25(pipe, small_clip, tmp_path):
    clip30 = tmp_path / "clip30.mp4"
    ffmpeg("-i", small_clip, "-r", 30, "-c:v", "libx264", "-crf", 12, "-an", clip30)
    audio = speech_wav(tmp_path, 1.6)
    frames, fps, _ = read_video(pipe(clip30, audio, tmp_path / "o30.mp4", LipsyncOptions(**FAST)).output_path)
    assert fps == 25 and len(frames) == 40


def test_output_at_the_input_frame_rate(pipe, small_clip, tmp_path):
    clip30 = tmp_path / "clip30.mp4"
    ffmpeg("-i", small_clip, "-r", 30, "-c:v", "libx264", "-crf", 12, "-an", clip30)
    audio = speech_wav(tmp_path, 1.6)
    frames, fps, _ = read_video(pipe(clip30, audio, tmp_path / "o.mp4",
                                     LipsyncOptions(**FAST, output_fps=30)).output_path)
    assert fps == 30 and len(frames) == 48


def test_frames_without_a_face_pass_through_unchanged(pipe, small_clip, tmp_path):
    spliced = tmp_path / "spliced.mp4"  # frames 20..34 black
    ffmpeg("-i", small_clip, "-vf", "drawbox=enable='between(n,20,34)':x=0:y=0:w=iw:h=ih:color=black:t=fill",
           "-c:v", "libx264", "-crf", 12, "-an", spliced)
    source, _, _ = read_video(spliced)
    audio = speech_wav(tmp_path, 2.0)
    events = []
    result = pipe(spliced, audio, tmp_path / "o.mp4", LipsyncOptions(**FAST), progress=events.append)
    frames, _, _ = read_video(result.output_path)
    assert len(frames) == 50
    assert (result.num_frames, result.frames_without_face) == (50, 15)
    assert len(result.warnings) == 1 and "no face in 15 of 50 output frames" in result.warnings[0]
    assert result.segments == 3  # frames 0..19 (16 + an overlapping tail of 4) and 35..49
    for stage, total in (("faces", 50), ("segments", 3), ("writing", 50)):
        done = [e.done for e in events if e.stage == stage]
        assert done == sorted(done) and done[-1] == total, (stage, done)
        assert all(e.total == total for e in events if e.stage == stage)
    assert frames[21:34].max() <= 20  # still black: nothing was pasted there
    diff = np.abs(frames.astype(int) - source.astype(int))
    assert diff[21:34].mean() < 1.0
    assert diff[:18, 370:410, 260:330].mean() > 3.0  # faces around the gap were generated


def test_silent_audio_is_fine(pipe, small_clip, tmp_path):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000), 16000)
    for mode in ("mute", "keep"):
        frames, _, audio_s = read_video(pipe(small_clip, silent, tmp_path / f"{mode}.mp4",
                                             LipsyncOptions(**FAST, silence=mode)).output_path)
        assert len(frames) == 25 and audio_s == pytest.approx(1.0, abs=0.05)
    source, _, _ = read_video(small_clip)
    kept, _, _ = read_video(tmp_path / "keep.mp4")
    muted, _, _ = read_video(tmp_path / "mute.mp4")
    mouth = (slice(None), slice(370, 410), slice(260, 330))
    keep_diff = np.abs(kept.astype(int) - source[:25].astype(int))
    assert keep_diff.mean() < 2.5 and keep_diff[mouth].mean() < 2.5  # nobody speaks: original frames
    assert np.abs(muted.astype(int) - source[:25].astype(int))[mouth].mean() > 3.0  # generated (with silence)


# -- bad input -------------------------------------------------------------------------------

def make_bad_inputs(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    audio_only = tmp_path / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=1", "-c:a", "aac", audio_only)
    video_only = tmp_path / "video_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=size=64x64:rate=25", "-t", 1, "-c:v", "libx264", "-pix_fmt", "yuv420p",
           video_only)
    return text, audio_only, video_only


@pytest.mark.parametrize("case", ["missing video", "not a video", "no video frames", "audio without audio stream",
                                  "missing audio"])
def test_bad_input_gives_one_line_error_and_no_output(tiny, small_clip, tmp_path, capsys, case):
    text, audio_only, video_only = make_bad_inputs(tmp_path)
    wav = speech_wav(tmp_path, 1.0)
    video, audio = {
        "missing video": (tmp_path / "nope.mp4", wav),
        "not a video": (text, wav),
        "no video frames": (audio_only, wav),
        "audio without audio stream": (small_clip, video_only),
        "missing audio": (small_clip, tmp_path / "nope.wav"),
    }[case]
    out = tmp_path / "out.mp4"
    assert cli(tiny, video, audio, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


def test_unreadable_checkpoint_and_bad_resolution_are_refused(tiny, small_clip, tmp_path, capsys):
    wav = speech_wav(tmp_path, 1.0)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x04garbage")
    args = ["--unet_config_path", tiny / "unet.yaml", "--inference_ckpt_path", broken, "--whisper_ckpt_path",
            tiny / "whisper/tiny.pt", "--vae_path", tiny / "vae", "--video_path", small_clip, "--audio_path", wav,
            "--video_out_path", tmp_path / "o.mp4"]
    assert run_cli(args) == 2
    assert "broken.pt" in capsys.readouterr().err
    config = OmegaConf.load(tiny / "unet.yaml")
    config.data.resolution = 252
    OmegaConf.save(config, tmp_path / "bad_res.yaml")
    args[1], args[3] = tmp_path / "bad_res.yaml", tiny / "latentsync_unet.pt"
    assert run_cli(args) == 2
    assert "divisible by 8" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_batch_csv_skips_rows_whose_output_exists(tiny, small_clip, tmp_path, capsys):
    wav = speech_wav(tmp_path, 0.8)
    done = tmp_path / "done.mp4"
    done.write_bytes(b"existing result")
    rows = tmp_path / "rows.csv"
    rows.write_text(f"video,audio,output\n{small_clip},{wav},{done}\n{small_clip},{wav},{tmp_path / 'new.mp4'}\n")
    assert inference_main(["--unet_config_path", str(tiny / "unet.yaml"), "--inference_ckpt_path",
                           str(tiny / "latentsync_unet.pt"), "--whisper_ckpt_path", str(tiny / "whisper/tiny.pt"),
                           "--vae_path", str(tiny / "vae"), "--batch_csv", str(rows), "--inference_steps", "1"]) == 0
    assert done.read_bytes() == b"existing result"
    frames, _, _ = read_video(tmp_path / "new.mp4")
    assert len(frames) == 20


# -- memory ----------------------------------------------------------------------------------

RSS_SCRIPT = """
import sys
from scripts.inference import main
code = main(sys.argv[1:])
# VmHWM is the peak RSS of this process image (ru_maxrss would include the forking parent's peak)
with open("/proc/self/status") as f:
    print("MAXRSS", next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
sys.exit(code)
"""


def test_peak_memory_does_not_grow_with_clip_length(tiny, tmp_path):
    """A 24 s clip peaks within 100 MB of a 4 s one: holding its 500 extra decoded frames
    (270 x 480 RGB) alone would take 190 MB more."""
    base = tmp_path / "base.mp4"
    ffmpeg("-i", need(MEDIA / "demo1_video.mp4"), "-t", 4, "-vf", "scale=270:480", "-c:v", "libx264", "-crf", 18,
           "-an", base)
    long = tmp_path / "long.mp4"
    ffmpeg("-stream_loop", 5, "-i", base, "-t", 24, "-c", "copy", long)
    peaks = {}
    for name, video, seconds in (("4s", base, 4), ("24s", long, 24)):
        audio = speech_wav(tmp_path, seconds, f"{name}.wav")
        result = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, "--unet_config_path", tiny / "unet.yaml", "--inference_ckpt_path",
             tiny / "latentsync_unet.pt", "--whisper_ckpt_path", tiny / "whisper/tiny.pt", "--vae_path", tiny / "vae",
             "--video_path", video, "--audio_path", audio, "--video_out_path", tmp_path / f"{name}.mp4",
             "--inference_steps", "1", "--guidance_scale", "1.0"],
            cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks[name] = int(result.stdout.split("MAXRSS")[-1])
    print("peak RSS kB", peaks)
    assert peaks["24s"] - peaks["4s"] < 100_000, peaks


def test_whisper_width_must_match_the_unet(tiny):
    from latentsync.audio import AudioEncoder
    from latentsync.errors import UserError
    from latentsync.models import UNet3DConditionModel

    unet_dir = need(REFERENCE / "unet_tiny_stage2")  # cross_attention_dim 96; tiny Whisper gives 64
    unet = UNet3DConditionModel.from_config(OmegaConf.to_container(OmegaConf.load(unet_dir / "config.yaml").model))
    with pytest.raises(UserError, match=r"tiny\.pt: gives 64-d features but the UNet expects cross_attention_dim 96"):
        LipsyncPipeline(vae=None, unet=unet, scheduler=make_scheduler(),
                        audio_encoder=AudioEncoder(tiny / "whisper/tiny.pt", device="cpu"), resolution=128)


# -- mistakes are reported before the slow imports ---------------------------------------------

HEAVY_SCRIPT = """
import sys
from scripts.inference import main
code = main(sys.argv[1:])
print("HEAVY", ",".join(m for m in ("torch", "diffusers", "mediapipe") if m in sys.modules))
sys.exit(code)
"""


def fast_fail_args(tiny, tmp_path, case):
    """CLI arguments with one mistake; returns (args, text the error must contain)."""
    video, audio = tmp_path / "in.mp4", tmp_path / "in.wav"
    video.write_bytes(b"not decoded before the models load")
    audio.write_bytes(b"neither is this")
    paths = {"unet_config_path": tiny / "unet.yaml", "inference_ckpt_path": tiny / "latentsync_unet.pt",
             "whisper_ckpt_path": tiny / "whisper/tiny.pt", "vae_path": tiny / "vae", "video_path": video,
             "audio_path": audio, "video_out_path": tmp_path / "out.mp4"}
    missing = tmp_path / "absent" / "file"
    key, value, expected = {
        "unet ckpt": ("inference_ckpt_path", missing, "absent/file: checkpoint file not found"),
        "unet config": ("unet_config_path", missing, "absent/file: config file not found"),
        "whisper": ("whisper_ckpt_path", missing, "absent/file: Whisper checkpoint not found"),
        "vae folder": ("vae_path", tmp_path / "absent_vae", "absent_vae: VAE folder not found"),
        "video": ("video_path", missing, "absent/file: input video not found"),
        "audio": ("audio_path", missing, "absent/file: input audio not found"),
        "output is the video": ("video_out_path", video, "the output path is the input video"),
        "output is the audio": ("video_out_path", tmp_path / "." / "in.wav", "the output path is the input audio"),
        "bad option": ("video_out_path", tmp_path / "out.mp4", "inference_steps must be >= 1"),
    }[case]
    paths[key] = value
    args = [str(a) for k, v in paths.items() for a in (f"--{k}", v)]
    return args + (["--inference_steps", "0"] if case == "bad option" else []), expected


@pytest.mark.parametrize("case", ["unet ckpt", "unet config", "whisper", "vae folder", "video", "audio",
                                  "output is the video", "output is the audio", "bad option"])
def test_mistakes_are_reported_before_torch_is_imported(tiny, tmp_path, case):
    args, expected = fast_fail_args(tiny, tmp_path, case)
    before = {p: p.read_bytes() for p in tmp_path.glob("in.*")}
    result = subprocess.run([sys.executable, "-c", HEAVY_SCRIPT, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and expected in result.stderr
    assert result.stdout.split("HEAVY")[-1].strip() == "", result.stdout  # torch, diffusers, mediapipe not loaded
    assert {p: p.read_bytes() for p in tmp_path.glob("in.*")} == before  # inputs untouched


def test_inference_sh_reports_a_missing_checkpoint_in_one_line(tmp_path):
    result = subprocess.run([str(REPO / "inference.sh"), "--video_path", need(MEDIA / "demo1_video.mp4"),
                             "--audio_path", need(MEDIA / "demo1_audio.wav"), "--video_out_path", tmp_path / "o.mp4",
                             "--inference_ckpt_path", tmp_path / "nope.pt"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1  # one line: the file, where to get it, how to smoke-test without it
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.pt'}: checkpoint file not found (")
    assert "scripts.make_tiny_checkpoints" in result.stderr


# -- the Whisper file follows the UNet's width ---------------------------------------------------

@pytest.mark.parametrize("width, name", [(384, "whisper/tiny.pt"), (768, "whisper/small.pt")])
def test_whisper_checkpoint_is_picked_from_cross_attention_dim(tiny, tmp_path, capsys, width, name):
    from latentsync import loading

    config = OmegaConf.load(tiny / "unet.yaml")
    config.model.cross_attention_dim = width
    OmegaConf.save(config, tmp_path / "unet.yaml")
    ckpts = tmp_path / "ckpts"
    args = ["--unet_config_path", tmp_path / "unet.yaml", "--inference_ckpt_path", tiny / "latentsync_unet.pt",
            "--vae_path", tiny / "vae", "--checkpoints_dir", ckpts, "--video_path", need(MEDIA / "demo1_video.mp4"),
            "--audio_path", need(MEDIA / "demo1_audio.wav"), "--video_out_path", tmp_path / "o.mp4"]
    assert run_cli(args) == 2  # not downloaded yet: the message names the file that was picked
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {ckpts / name}: Whisper checkpoint not found (")
    (ckpts / name).parent.mkdir(parents=True)
    (ckpts / name).write_bytes((tiny / "whisper/tiny.pt").read_bytes())
    files = loading.resolve_files(tmp_path / "unet.yaml", tiny / "latentsync_unet.pt", None, tiny / "vae", ckpts)
    assert files.whisper == ckpts / name
    explicit = loading.resolve_files(tmp_path / "unet.yaml", tiny / "latentsync_unet.pt", tiny / "whisper/tiny.pt",
                                     tiny / "vae", ckpts)
    assert explicit.whisper == tiny / "whisper/tiny.pt"  # an explicit path wins


def test_unknown_width_has_no_default_whisper(tiny):
    from latentsync import loading
    from latentsync.errors import UserError

    with pytest.raises(UserError, match=r"unet\.yaml: model\.cross_attention_dim 64 has no default Whisper"):
        loading.resolve_files(tiny / "unet.yaml", tiny / "latentsync_unet.pt", None, tiny / "vae")
