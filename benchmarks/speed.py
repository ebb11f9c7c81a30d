"""Speed of the inference presets against the reference settings, in one process and one run.

    .venv/bin/python benchmarks/speed.py [--quick | --tiny] [--frames 16] [--presets ...] [--no_write]
                                         [--out_dir DIR] [--only decode] [--decode_vae DIR ...]
                                         [--learnability_dir WORK] [--quality_clips 6] [--quality_frames 0]

Runs the whole pipeline (face pass, VAE, UNet, paste-back, encoding) on the same short clip cut
from assets/demo1_video.mp4 with the reference settings (DDIM 20 steps, fp32, no cache, full
decode), each preset of `--preset` (latentsync/pipelines/options.py) and the VARIANTS below (a
preset with one option set back, to show that option's share), and reports per run: wall seconds
per output frame end to end, busy seconds per phase, peak RSS, and the distance of the generated
mouth region from the reference settings' output (mean absolute difference and PSNR over the area
the mask regenerates, on the aligned 256 px faces). Then it times one guided UNet call under each
CPU kernel option (fp32, bf16 autocast, int8 Linear layers, channels_last) with its error against fp32.

The pipeline overlaps its work (latentsync/pipelines/dub_run.py, workers.py): the face pass and
the paste-back + encoding run in worker threads next to the model, so phase times do not add up
to the wall time. Each phase's *busy* seconds are the wall seconds spent inside its own work, its
waits for the other threads left out: the pipeline tells its RunHooks when each phase begins and
ends (latentsync/pipelines/results.py), and PhaseTimer adds them up; `outside_model` is the run's
wall time minus the model's busy time (VAE encode, UNet, VAE decode): the part of the run the
overlap did not hide.

Models: the stage2 layout (configs/unet/stage2.yaml, 256 px) and an SD-sized VAE with random
weights (every parameter drawn with std 1/sqrt(fan_in), as scripts/make_tiny_checkpoints.py does);
`--quick` narrows both (UNet and VAE widths 32..128) so a run fits minutes on a 2-core CPU; `--tiny`
uses the tiny test checkpoints of scripts/make_tiny_checkpoints.py (seconds: checks that the
benchmark runs, its numbers say nothing about real models). The audio features come from the tiny
random Whisper of scripts/make_tiny_checkpoints.py (64-d, so the UNet's cross_attention_dim is 64).
These models are random, so their outputs show only how far each preset drifts from the reference
settings. Quality comes from `--learnability_dir WORK`, a finished run of benchmarks/learnability.py:
its trained models dub the first `--quality_clips` held-out clips under every settings, scored as
that benchmark scores its dubs (mouth-opening correlation with the truth track, LSE-C, mouth SSIM,
under its summary.json key names); the report then says, per preset, whether it is at least its
target speed-up (balanced 2x, fast 4x) with correlation and LSE-C within 5 % of the reference settings'.

Last, the decode_region table: decoding only the latent rows of the mouth region
(LipsyncOptions.decode_region "mouth") against the full decode, per margin of extra latent rows, on
the SD VAE architecture (256 px) and the learnability VAE config (128 px), both with random weights
(with `--tiny`: the tiny VAE), plus any trained VAE folders given with --decode_vae; `--only decode`
measures just that table and merges it into the existing report.

Writes speed.md and speed.json to --out_dir (default docs/benchmarks) unless --no_write.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latentsync.errors import EXIT_USER_ERROR, UserError  # noqa: E402
from latentsync.io import atomic_write_text  # noqa: E402
from latentsync.pipelines.options import PRESETS, LipsyncOptions, preset_options  # noqa: E402
from latentsync.pipelines.results import (AUDIO, DECODE, DENOISE, ENCODE, FACE_PASS, MUX, PHASES, WRITE,  # noqa: E402
                                          RunHooks)

MEDIA = REPO / "assets"
OUT_DIR = REPO / "docs" / "benchmarks"
REFERENCE_NAME = "reference"
REFERENCE_SETTINGS = PRESETS["quality"]  # the quality preset is the reference settings (= the option defaults)
# a preset with one option set back to the reference: shows what that option alone buys end to end
VARIANTS = {"fast, full decode": ("fast", dict(decode_region="full")),
            "balanced, fp32": ("balanced", dict(autocast="off"))}
MODEL_PHASES = (ENCODE, DENOISE, DECODE)  # the model's work (main thread)
# busy seconds reported per run, in pipeline order (see PhaseTimer), then outside_model; the UNet
# calls (UNET) are most of DENOISE and not reported apart
REPORTED_PHASES = (AUDIO, FACE_PASS, *MODEL_PHASES, WRITE, MUX)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=512)
QUICK_UNET_WIDTHS = [32, 64, 128, 128]
QUICK_VAE_WIDTHS = [32, 64, 128, 128]
CLIP_SIZE = "540:960"  # demo1 scaled 1/2: keeps the face, 4x fewer pixels to decode and encode
KERNEL_OPTIONS = [("fp32", dict()), ("bf16 autocast", dict(autocast="bf16")), ("int8", dict(cpu_kernels="int8")),
                  ("channels_last", dict(cpu_kernels="channels_last")),
                  ("int8+channels_last", dict(cpu_kernels="int8+channels_last"))]
DECODE_MARGINS = (0, 1, 2, 3, 4)  # latent rows decoded above the mask's first generated row
DECODE_FRAMES = 4  # aligned demo1 faces per decode (one VAE_BATCH of the pipeline)
LEARNABILITY_VAE = REPO / "configs/vae/learnability.yaml"


# -- set-up --------------------------------------------------------------------------------------

def make_clip(tmp: Path, frames: int) -> tuple[Path, Path]:
    """The first `frames` frames of demo1 (25 fps, 540x960) and as much of demo1's speech."""
    import soundfile

    from latentsync.constants import MODEL_FPS, SAMPLE_RATE
    from latentsync.io import ffmpeg_exe

    video, audio = tmp / "clip.mp4", tmp / "clip.wav"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(MEDIA / "demo1_video.mp4"), "-frames:v",
                    str(frames), "-vf", f"fps={MODEL_FPS},scale={CLIP_SIZE}", "-an", "-c:v", "libx264", "-crf", "12",
                    str(video)], check=True)
    wav, sr = soundfile.read(MEDIA / "demo1_audio.wav", dtype="float32")
    assert sr == SAMPLE_RATE, sr
    soundfile.write(audio, wav[: frames * SAMPLE_RATE // MODEL_FPS], sr)
    return video, audio


def build_pipeline(size: str, tmp: Path):
    """LipsyncPipeline on the CPU: the tiny test checkpoints (size "tiny"), or random-weight
    stage2-layout models ("full", or narrowed with "quick")."""
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from latentsync.audio import AudioEncoder
    from latentsync.loading import ModelFiles
    from latentsync.models import UNet3DConditionModel
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
    from scripts.make_tiny_checkpoints import SEED, make_tiny_checkpoints, model_files, randomize

    tiny = make_tiny_checkpoints(tmp / "tiny")
    if size == "tiny":
        return LipsyncPipeline.from_files(model_files(tiny), device="cpu")
    encoder = AudioEncoder(tiny / "whisper/tiny.pt", device="cpu")
    config = REPO / "configs/unet/stage2.yaml"
    model = OmegaConf.to_container(OmegaConf.load(config).model)
    model["cross_attention_dim"] = encoder.dim
    vae_config = dict(SD_VAE)
    if size == "quick":
        model["block_out_channels"] = QUICK_UNET_WIDTHS
        vae_config["block_out_channels"] = QUICK_VAE_WIDTHS
    # every parameter re-drawn: the default init zeroes the UNet's output layers, which would make
    # every sampler's result trivially equal
    generator = torch.Generator().manual_seed(SEED)
    unet = randomize(UNet3DConditionModel.from_config(model), generator).eval()
    vae = randomize(AutoencoderKL(**vae_config), generator).eval()
    return LipsyncPipeline.from_files(ModelFiles(unet_config=config), device="cpu", unet=unet, vae=vae,
                                      audio_encoder=encoder)


def model_description(size: str) -> str:
    return {"tiny": "tiny test checkpoints (scripts/make_tiny_checkpoints.py)",
            "quick": f"stage2 layout narrowed to {QUICK_UNET_WIDTHS}, VAE {QUICK_VAE_WIDTHS}",
            "full": "stage2 layout (320..1280), SD-sized VAE"}[size] + ", random weights"


def run_settings_list(presets: list[str]) -> dict[str, LipsyncOptions]:
    """The reference settings, the presets asked for and the VARIANTS of those presets, by name."""
    settings = {REFERENCE_NAME: LipsyncOptions(**REFERENCE_SETTINGS, show_progress=False)}
    settings.update({name: preset_options(name, show_progress=False) for name in presets})
    for name, (preset, values) in VARIANTS.items():
        if preset in presets:
            settings[name] = preset_options(preset, show_progress=False, **values)
    return settings


def each_distinct(settings: dict[str, LipsyncOptions], measure) -> dict[str, dict]:
    """`measure(name, options, index)` of each settings in order; settings equal to an earlier
    one's (quality = the reference settings) are not run again but reuse its result, marked `same_as`."""
    results = {}
    for name, opts in settings.items():
        same = next((earlier for earlier in results if settings[earlier] == opts), None)
        results[name] = dict(results[same], same_as=same) if same is not None else measure(name, opts, len(results))
    return results


# -- measuring -----------------------------------------------------------------------------------

class PhaseTimer(RunHooks):
    """Busy wall seconds per phase of one run, and the generated faces by output frame (the
    pipeline's RunHooks: nothing of the pipeline is replaced).

    audio: reading the speech and the Whisper features; face_pass: the face-pass worker's whole
    work (it never waits for another thread); encode, denoise, decode: the model, on the main
    thread; write: the writer's paste-back and encoding, its waits for the model's frames left
    out; mux: muxing the speech in. Phases of different threads overlap, so their sum can exceed
    the wall time. The faces [res, res, 3] in [-1, 1] are those the writer pastes back (a
    segment's overlapping tail resolved as written).
    """

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.faces: dict[int, np.ndarray] = {}
        self._started: dict[tuple[int, str], float] = {}

    def begin(self, phase: str) -> None:
        self._started[threading.get_ident(), phase] = time.perf_counter()

    def end(self, phase: str) -> None:  # each phase is timed from one thread only, so no lock is needed
        self.seconds[phase] += time.perf_counter() - self._started.pop((threading.get_ident(), phase))

    def face(self, frame: int, face: np.ndarray) -> None:
        self.faces[frame] = face.astype(np.float32)


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def mouth_distance(faces: dict, reference: dict, mask: np.ndarray) -> dict:
    """Mean absolute difference (0..255 scale) and PSNR (dB) over the regenerated face area."""
    region = mask < 0.5  # the mask keeps 1 = original pixels
    diffs = np.concatenate([(faces[j] - reference[j])[region].ravel() for j in sorted(reference)]) * 127.5
    mse = float(np.mean(diffs ** 2))
    psnr = None if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))  # None: identical
    return dict(mouth_mae=float(np.mean(np.abs(diffs))), mouth_psnr_db=psnr)


def run_settings(pipe, video, audio, out: Path, opts: LipsyncOptions) -> dict:
    """One whole pipeline call: wall and busy seconds (PhaseTimer), peak RSS and the generated faces."""
    timer = PhaseTimer()
    rss_reset = reset_peak_rss()
    start = time.perf_counter()
    result = pipe(video, audio, out, opts, hooks=timer)
    total = time.perf_counter() - start
    phases = {name: timer.seconds[name] for name in REPORTED_PHASES}
    phases["outside_model"] = total - sum(phases[name] for name in MODEL_PHASES)
    return dict(seconds=total, seconds_per_frame=total / result.num_frames, frames=result.num_frames,
                phases={k: round(v, 2) for k, v in phases.items()}, peak_rss_mb=round(peak_rss_mb(), 1),
                peak_rss_is_per_run=rss_reset, options={k: getattr(opts, k) for k in REFERENCE_SETTINGS},
                faces=timer.faces)


def kernel_table(pipe, frames: int, repeats: int = 2) -> list[dict]:
    """One guided UNet call (2 x `frames` frames) per CPU kernel option: seconds and error vs fp32."""
    from latentsync.device import autocast_dtype

    size = pipe.resolution // 8
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, frames, size, size, generator=generator)
    audio = torch.randn(2 * frames, 50, pipe.unet.config.cross_attention_dim, generator=generator)
    rows, reference = [], None
    for name, values in KERNEL_OPTIONS:
        opts = LipsyncOptions(**values)
        if values.get("autocast") and autocast_dtype(values["autocast"], pipe.unet.device) is None:
            rows.append(dict(option=name, seconds=None, max_abs_error=None, note="not native here: falls back to fp32"))
            continue
        with torch.no_grad(), pipe.speed.apply(opts) as runtime:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                with runtime.cast():
                    out = runtime.unet(x, 500, encoder_hidden_states=audio).sample.float()
                times.append(time.perf_counter() - start)
        reference = out if reference is None else reference
        error = (out - reference).abs()
        rows.append(dict(option=name, seconds=round(min(times), 3), max_abs_error=float(error.max()),
                         mean_abs_error=float(error.mean()), output_mean_abs=float(reference.abs().mean())))
    return rows


# -- decode_region: decoding only the mouth rows -------------------------------------------------

def aligned_faces(video: Path, resolution: int, count: int) -> torch.Tensor:
    """The first `count` faces of `video`, aligned as the pipeline aligns them: [n, 3, res, res] in [-1, 1]."""
    from latentsync.constants import MODEL_FPS
    from latentsync.face.alignment import AlignRestore
    from latentsync.face.detectors import make_face_detector
    from latentsync.face.tracking import FaceTracker
    from latentsync.video import iter_frames

    tracker, aligner, faces = FaceTracker(make_face_detector("mediapipe")), AlignRestore(resolution), []
    frames = (frame for chunk in iter_frames(video, fps=MODEL_FPS) for frame in chunk)
    for frame in frames:
        face = tracker.track(frame)
        if face is not None:
            faces.append(aligner.align(frame, face.points)[0])
            if len(faces) == count:
                break  # the rest of the video is not needed
    if len(faces) < count:
        raise RuntimeError(f"{video}: only {len(faces)} faces found")
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def decode_vaes(trained: list[str], tiny: bool = False) -> list[tuple[str, object, int]]:
    """(name, VAE, resolution): SD's VAE architecture at 256 px and the learnability config at 128 px
    (`tiny`: the tiny test VAE at 256 px instead) with random weights (std 1/sqrt(fan_in)), and any
    trained VAE folders given (at their sample_size)."""
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from scripts.make_tiny_checkpoints import SEED, VAE_CONFIG, randomize

    generator = torch.Generator().manual_seed(SEED)
    if tiny:
        vaes = [("tiny test VAE, random weights", randomize(AutoencoderKL(**VAE_CONFIG), generator), 256)]
    else:
        small = OmegaConf.to_container(OmegaConf.load(LEARNABILITY_VAE).model)
        vaes = [("SD VAE architecture, random weights", randomize(AutoencoderKL(**SD_VAE), generator), 256),
                ("learnability VAE config, random weights", randomize(AutoencoderKL(**small), generator), 128)]
    for folder in trained:
        vae = AutoencoderKL.from_pretrained(folder)
        vaes.append((f"trained VAE {Path(folder).parent.name}/{Path(folder).name} ({vae.config.block_out_channels})",
                     vae, int(vae.config.sample_size)))
    return vaes


def _paired_ratio(fn, baseline, repeats: int) -> tuple[float, object]:
    """(median of time(fn) / time(baseline) over `repeats` back-to-back pairs, fn's result): pairs
    cancel most of the drift of a CPU shared with other jobs."""
    ratios, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        baseline()
        middle = time.perf_counter()
        out = fn()
        ratios.append((time.perf_counter() - middle) / (middle - start))
    return float(np.median(ratios)), out


@torch.no_grad()
def decode_region_rows(name: str, vae, resolution: int, faces: torch.Tensor, repeats: int) -> dict:
    """Error (0..255 levels, inside the area the mask regenerates) and time of decoding only the
    mouth rows, per margin, against the full decode of the same latents (the faces' posterior means)."""
    from latentsync.face.mask import load_mask
    from latentsync.models.vae import decode_rows, first_generated_row, vae_scale_factor

    vae = vae.eval()
    mask = load_mask(resolution=resolution)
    factor = vae_scale_factor(vae)
    first = first_generated_row(mask, factor)
    latents = vae.encode(faces).latent_dist.mean
    start = time.perf_counter()
    full = vae.decode(latents).sample.clamp(-1, 1)
    full_seconds = time.perf_counter() - start
    region = torch.from_numpy(mask[first * factor:] < 0.5).expand(full.shape[0], 3, -1, -1)
    rows = []
    for margin in DECODE_MARGINS:
        ratio, part = _paired_ratio(lambda: decode_rows(vae, latents, first, margin).clamp(-1, 1),
                                    lambda: vae.decode(latents), repeats)
        error = (part - full[..., first * factor:, :]).abs()[region] * 127.5
        rows.append(dict(margin=margin, max_abs_error=round(float(error.max()), 3),
                         mean_abs_error=round(float(error.mean()), 4), time_ratio=round(ratio, 3)))
        print(f"decode_region {name} margin {margin}: {rows[-1]}", flush=True)
    return dict(vae=name, resolution=resolution, latent_rows=latents.shape[-2], first_row=first,
                frames=faces.shape[0], full_decode_seconds=round(full_seconds, 3), margins=rows)


def decode_region_report(video: Path, trained: list[str], repeats: int, tiny: bool = False) -> dict:
    """The decode_region section of speed.json: one row set per VAE."""
    from latentsync.models.vae import DECODE_MARGIN

    tables = []
    for name, vae, resolution in decode_vaes(trained, tiny):
        faces = aligned_faces(video, resolution, DECODE_FRAMES)
        tables.append(decode_region_rows(name, vae, resolution, faces, repeats))
    return dict(environment=environment(), default_margin=DECODE_MARGIN, vaes=tables)


def decode_markdown(section: dict | None) -> str:
    if not section:
        return ""
    env = section["environment"]
    lines = [f"Decoding only the mouth rows (`decode_region` mouth, latentsync/models/vae.py `decode_rows`) against "
             f"the full decode of the same latents (`{section.get('command', '')}` at commit {env['commit']}, "
             f"{env['date']}, {env['threads']} threads; "
             f"default margin {section['default_margin']}). Error in 0..255 levels inside the area the mask "
             f"regenerates; time ratio = mouth decode / full decode (median of back-to-back pairs).", "",
             "| VAE | px | latent rows decoded | margin | max abs error | mean abs error | time ratio |",
             "|---|---|---|---|---|---|---|"]
    for t in section["vaes"]:
        for r in t["margins"]:
            decoded = f"{t['latent_rows'] - max(t['first_row'] - r['margin'], 0)} of {t['latent_rows']}"
            lines.append(f"| {t['vae']} | {t['resolution']} | {decoded} | {r['margin']} | {r['max_abs_error']:.2f} | "
                         f"{r['mean_abs_error']:.3f} | {r['time_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


# -- quality on the learnability benchmark's trained models -------------------------------------

# as in the learnability summary.json (each the mean over clips of the score without "dub_")
QUALITY_KEYS = ("dub_mouth_correlation", "dub_lse_c", "dub_mouth_ssim", "dub_open_ratio", "dub_texture_ratio",
                "dub_leak_correlation")
GATED_KEYS = ("dub_mouth_correlation", "dub_lse_c")  # kept "within 5 %" of the reference settings
QUALITY_TOLERANCE = 0.05
SPEEDUP_TARGETS = {"balanced": 2.0, "fast": 4.0}
LEARNABILITY_STEPS = ("corpus", "whisper", "vae", "syncnet", "unet_stage2")


def learnability_models(work: Path) -> dict:
    """The checkpoints a finished learnability run (benchmarks/learnability.py) recorded in steps.json."""
    steps_file = work / "steps.json"
    if not steps_file.is_file():
        raise UserError(f"{work}: no steps.json; run python -m benchmarks.learnability --work_dir {work} first")
    done = json.loads(steps_file.read_text())
    missing = [step for step in LEARNABILITY_STEPS if step not in done]
    if missing:
        raise UserError(f"{steps_file}: the learnability run has not finished {', '.join(missing)}")
    return dict(unet=Path(done["unet_stage2"]["result"]["checkpoint"]),
                syncnet=Path(done["syncnet"]["result"]["checkpoint"]), whisper=done["whisper"]["result"]["path"])


def quality_runs(work: Path, settings: dict, clips: int, max_frames: int, tmp: Path) -> dict:
    """Each settings' dubs of the first `clips` held-out clips of a learnability run (its trained
    models, each clip dubbed with the next held-out sentence, as that benchmark does; the first
    `max_frames` frames when not 0), scored as that benchmark scores them: the means over clips
    of QUALITY_KEYS, and seconds per frame."""
    import dataclasses

    from benchmarks.learnability import SEED
    from benchmarks.learnability_parts import dubbing
    from benchmarks.learnability_parts.plan import Layout
    from latentsync.face.detectors import make_face_detector
    from latentsync.loading import ModelFiles
    from latentsync.models import load_syncnet
    from latentsync.io import read_yaml
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
    from latentsync.synthetic.corpus import read_manifest

    layout, models = Layout(work), learnability_models(work)
    pipe = LipsyncPipeline.from_files(ModelFiles(unet_config=models["unet"].parent.parent / "config.yaml",
                                                 unet_ckpt=models["unet"], whisper=models["whisper"],
                                                 vae=layout.vae), device="cpu")
    syncnet = load_syncnet(layout.syncnet_config, models["syncnet"], device="cpu").eval()
    config, detector = read_yaml(layout.syncnet_config), make_face_detector("mediapipe")
    try:
        truths = {}
        for clip, new, third in dubbing.dub_pairs(read_manifest(layout.corpus), clips):
            folder = tmp / "quality" / dubbing.clip_name(clip)
            n_out = dubbing.prepare_inputs(layout.corpus, folder, clip, new, third, max_frames)
            truth = dubbing.load_truth(folder, n_out, detector)
            truths[dubbing.clip_name(clip)] = (clip, folder, truth)
        score = lambda path, truth: dubbing.score_video(path, truth, syncnet, config, detector)  # noqa: E731
        section = dict(work_dir=str(work), clips=len(truths), max_frames=max_frames, resolution=pipe.resolution,
                       models={k: str(v) for k, v in models.items()},
                       truth_lse_c=float(np.mean([score(f / "truth.mp4", t)["lse_c"] for _, f, t in truths.values()])),
                       runs={})

        def measure(name: str, opts: LipsyncOptions, index: int) -> dict:
            opts, scores, seconds, frames = dataclasses.replace(opts, seed=SEED), [], 0.0, 0
            for clip_id, (clip, folder, truth) in truths.items():
                out = tmp / "quality" / f"{clip_id}-{index}.mp4"
                start = time.perf_counter()
                frames += pipe(str(layout.corpus / clip["clip"]), str(folder / "speech.wav"), str(out), opts).num_frames
                seconds += time.perf_counter() - start
                scores.append(score(out, truth))
            result = {key: float(np.mean([x[key.removeprefix("dub_")] for x in scores])) for key in QUALITY_KEYS}
            result["seconds_per_frame"] = seconds / frames
            print(f"quality {name}: {result}", flush=True)
            return result

        section["runs"] = each_distinct(settings, measure)
    finally:
        detector.close()
    return section


def quality_verdicts(runs: dict, quality: dict) -> dict:
    """Per preset with a speed-up target: the speed-up and each gated metric as a fraction of the
    reference settings', and whether the presets' targets hold (at least the target speed-up, and
    no gated metric more than QUALITY_TOLERANCE below the reference settings')."""
    reference = quality["runs"][REFERENCE_NAME]
    verdicts = {}
    for name, target in SPEEDUP_TARGETS.items():
        if name not in runs or name not in quality["runs"]:
            continue
        ratios = {key: quality["runs"][name][key] / reference[key] if reference[key] > 0 else None
                  for key in GATED_KEYS}
        within = all(r is not None and r >= 1 - QUALITY_TOLERANCE for r in ratios.values())
        verdicts[name] = dict(speedup=runs[name]["speedup"], speedup_target=target,
                              quality_vs_reference=ratios, met=bool(runs[name]["speedup"] >= target and within))
    return verdicts


def quality_markdown(quality: dict | None, verdicts: dict) -> str:
    if not quality:
        return ""
    frames = f"; first {quality['max_frames']} frames of each clip" if quality.get("max_frames") else ""
    lines = [f"Quality with the learnability benchmark's trained models (`{quality['work_dir']}`): each settings "
             f"dubs the first {quality['clips']} held-out clips with the next held-out sentence, scored as that "
             f"benchmark scores its dubs (means over clips; the truth rendering's LSE-C is "
             f"{quality['truth_lse_c']:.3f}){frames}. The seconds per frame here are of these models "
             f"({quality['resolution']} px).", "",
             f"| settings | mouth-opening corr. | LSE-C | mouth SSIM | open ratio | texture ratio | leak corr. | "
             f"s/frame ({quality['resolution']} px) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in quality["runs"].items():
        cells = " | ".join(f"{r[key]:.3f}" if key in r else "-" for key in QUALITY_KEYS)  # older reports lack some
        lines.append(f"| {name} | {cells} | {r['seconds_per_frame']:.2f} |")
    if verdicts:
        lines += ["", "| preset | speed-up (256 px) | target | corr. vs reference | LSE-C vs reference | met |",
                  "|---|---|---|---|---|---|"]
        for name, v in verdicts.items():
            q = v["quality_vs_reference"]
            cells = [f"{q[k]:.1%}" if q[k] is not None else "-" for k in GATED_KEYS]
            lines.append(f"| {name} | {v['speedup']:.2f}x | {v['speedup_target']:.0f}x | {cells[0]} | {cells[1]} | "
                         f"{'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


# -- reporting -----------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    from latentsync.device import cpu_capability, native_cpu_dtype

    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                commit=git_commit(), torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), cpu_capability=cpu_capability(),
                native_bf16=native_cpu_dtype(torch.bfloat16), cores=os.cpu_count())


# table columns after the settings name: (heading, key in a run's `phases`)
PHASE_COLUMNS = (("audio", AUDIO), ("face", FACE_PASS), ("VAE enc", ENCODE), ("UNet", DENOISE), ("VAE dec", DECODE),
                 ("paste+write", WRITE), ("mux", MUX), ("outside model", "outside_model"))


def table(runs: dict) -> str:
    heads = ["settings", "s/frame", "speedup", *(h for h, _ in PHASE_COLUMNS), "peak RSS MB", "mouth MAE",
             "mouth PSNR dB"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, r in runs.items():
        phases = r.get("phases", r.get("stages", {}))  # ("stages": a report from before the hooks)
        cells = [_seconds(phases.get(key)) for _, key in PHASE_COLUMNS]  # "-": a report from before a phase
        lines.append(f"| {name} | {r['seconds_per_frame']:.2f} | {r['speedup']:.2f}x | " + " | ".join(cells) +
                     f" | {r['peak_rss_mb']:.0f} | {r['mouth_mae']:.2f} | {_db(r['mouth_psnr_db'])} |")
    return "\n".join(lines)


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _db(value) -> str:
    return "identical" if value is None else f"{value:.1f}"


def kernel_markdown(rows: list[dict]) -> str:
    lines = ["| UNet call | seconds | max abs error vs fp32 | mean abs error (output mean abs) |", "|---|---|---|---|"]
    for r in rows:
        if r["seconds"] is None:
            lines.append(f"| {r['option']} | - | - | {r['note']} |")
        else:
            lines.append(f"| {r['option']} | {r['seconds']:.2f} | {r['max_abs_error']:.4f} | "
                         f"{r['mean_abs_error']:.5f} ({r['output_mean_abs']:.3f}) |")
    return "\n".join(lines)


def settings_lines(runs: dict) -> str:
    return "\n".join(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r["options"].items()) for name, r in runs.items())


def write_reports(report: dict, command: str, out_dir: Path) -> None:
    env, runs = report["environment"], report["runs"]
    md = f"""# Inference speed: presets against the reference settings

Command: `{command}` at commit {env['commit']}, {env['date']}; torch {env['torch']}, {env['threads']} threads,
{env['cores']}-core {env['cpu']} CPU, capability {env['cpu_capability']}, native bf16: {env['native_bf16']}
(shared with other jobs, so timings are noisy). Model: {report['model']}; clip: {report['clip']}.

{table(runs)}

Seconds per output frame are the wall time of the whole call (audio and Whisper features, face
pass, VAE, UNet, paste-back, encoding, mux) over the output frames. The face pass and the
paste-back + encoding run in worker threads next to the model (latentsync/pipelines/dub_run.py),
so the phase columns are *busy* seconds for the whole clip, as the pipeline's timing hooks
report them: time inside each phase's own work, its waits for the other threads left out;
overlapping phases share the CPU, so they add up to more than the wall time. "outside model" is
the wall time minus the model's busy time (VAE enc + UNet + VAE dec): what the overlap did not
hide (audio features, waiting for the first faces and for the last frames to be written, mux). Mouth MAE (0..255) and PSNR compare each run's generated faces with the reference
settings' inside the regenerated (mask) area. The weights are random, so these distances show how
far a preset's sampling drifts from DDIM-20, not lip-sync quality. A run whose settings equal an
earlier run's (quality = the reference settings) reuses that run.{_variant_lines(runs)}

Settings:
{settings_lines(runs)}

One guided UNet call ({report['kernel_frames']} frames x 2) per CPU kernel option, error against fp32:

{kernel_markdown(report['kernels'])}

{decode_markdown(report.get('decode_region'))}
{quality_markdown(report.get('quality'), report.get('verdicts', {}))}"""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("speed.md", md), ("speed.json", json.dumps(report, indent=1) + "\n")):
        atomic_write_text(out_dir / name, text)


def _variant_lines(runs: dict) -> str:
    """What the VARIANTS rows of `runs` are (empty when none ran)."""
    return "".join(f' "{name}" is the {preset} preset with ' + ", ".join(f"{k} {v}" for k, v in values.items()) + "."
                   for name, (preset, values) in VARIANTS.items() if name in runs)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="narrow models (minutes instead of an hour)")
    size.add_argument("--tiny", action="store_true", help="the tiny test checkpoints (seconds; checks the benchmark "
                                                          "runs, says nothing about real speed)")
    parser.add_argument("--frames", type=int, default=16,
                        help=f"clip length in frames (16 = one segment; at least {DECODE_FRAMES})")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--no_write", action="store_true", help="print only; write no report")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR, help="folder of speed.md and speed.json")
    parser.add_argument("--only", choices=["decode"], default=None,
                        help="decode: measure only the decode_region table and merge it into the existing report")
    parser.add_argument("--decode_vae", nargs="*", default=[], metavar="DIR",
                        help="trained diffusers VAE folders to add to the decode_region table")
    parser.add_argument("--learnability_dir", type=Path, default=None, metavar="WORK",
                        help="a finished `python -m benchmarks.learnability --work_dir WORK` run: measure each "
                             "settings' quality with its trained models")
    parser.add_argument("--quality_clips", type=int, default=6,
                        help="held-out clips dubbed per settings for the quality table (at least 1)")
    parser.add_argument("--quality_frames", type=int, default=0,
                        help="dub only the first N frames of each clip for the quality table (0: whole clips)")
    args = parser.parse_args(argv)
    if args.quality_clips < 1 or args.quality_frames < 0:
        parser.error(f"--quality_clips {args.quality_clips} / --quality_frames {args.quality_frames}: "
                     "need at least 1 clip and 0 (whole clips) or more frames")
    if args.frames < DECODE_FRAMES:
        parser.error(f"--frames {args.frames}: must be at least {DECODE_FRAMES} (the decode_region table's faces)")
    for folder in args.decode_vae:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"--decode_vae {folder}: not a diffusers VAE folder (no config.json)")
    args.size = "tiny" if args.tiny else "quick" if args.quick else "full"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.only == "decode":
            return decode_only(args, command)
        return run_all(args, command)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def measure_runs(pipe, video: Path, audio: Path, tmp: Path, presets: list[str]) -> dict:
    """One pipeline call per settings (reference, presets, variants), with speedup and mouth distance."""
    settings = run_settings_list(presets)

    def measure(name: str, opts: LipsyncOptions, index: int) -> dict:
        run = run_settings(pipe, video, audio, tmp / f"run{index}.mp4", opts)
        print(f"{name}: {run['seconds_per_frame']:.2f} s/frame, busy seconds {run['phases']}", flush=True)
        return run

    runs = each_distinct(settings, measure)
    reference = runs[REFERENCE_NAME]
    reference_faces = reference["faces"]
    if not reference_faces:
        raise UserError(f"{MEDIA / 'demo1_video.mp4'}: no face found in the clip's first {reference['frames']} frames")
    for r in runs.values():
        r["speedup"] = reference["seconds_per_frame"] / r["seconds_per_frame"]
        r.update(mouth_distance(r["faces"], reference_faces, pipe.mask))
    for r in runs.values():
        r.pop("faces", None)  # shared by runs that reuse another: dropped after every distance is taken
    return runs


def run_all(args, command: str) -> int:
    """The whole benchmark: presets, kernel options, decode_region table; the reports."""
    if args.learnability_dir is not None:
        learnability_models(args.learnability_dir)  # an unfinished run is refused before the speed part
    report = dict(environment=environment(), command=command,
                  clip=f"demo1, first {args.frames} frames at {CLIP_SIZE}", model=model_description(args.size))
    print(json.dumps(report["environment"]))
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        tmp = Path(tmp)
        video, audio = make_clip(tmp, args.frames)
        pipe = build_pipeline(args.size, tmp)
        report["runs"] = measure_runs(pipe, video, audio, tmp, args.presets)
        report["kernel_frames"] = min(LipsyncOptions().num_frames, args.frames)  # one segment of the clip
        report["kernels"] = kernel_table(pipe, report["kernel_frames"], repeats=1 if args.size != "full" else 2)
        report["decode_region"] = decode_region_report(video, args.decode_vae, repeats=1 if args.tiny else 2,
                                                       tiny=args.tiny)
        report["decode_region"]["command"] = command
        if args.learnability_dir is not None:
            add_quality(report, args.learnability_dir.resolve(), args, tmp)
    print()
    print(table(report["runs"]))
    print()
    print(kernel_markdown(report["kernels"]))
    print()
    print(decode_markdown(report["decode_region"]))
    print(quality_markdown(report.get("quality"), report.get("verdicts", {})))
    if not args.no_write:
        write_reports(report, command, args.out_dir)
        print(f"\nwrote {args.out_dir / 'speed.md'} and {args.out_dir / 'speed.json'}")
    return 0


def add_quality(report: dict, work: Path, args, tmp: Path) -> None:
    """The quality section, each run's QUALITY_KEYS and the per-preset verdicts, into `report`."""
    report["quality"] = quality_runs(work, run_settings_list(args.presets), args.quality_clips, args.quality_frames,
                                     tmp)
    for name, r in report["runs"].items():
        r.update({key: report["quality"]["runs"][name][key] for key in QUALITY_KEYS})
    report["verdicts"] = quality_verdicts(report["runs"], report["quality"])


def decode_only(args, command: str) -> int:
    """`--only decode`: the decode_region table alone, merged into the existing speed.json/.md (whose
    preset and kernel tables, and the command that made them, stay as they are)."""
    path = args.out_dir / "speed.json"
    if not args.no_write and not path.exists():
        raise UserError(f"{path}: no report to merge into; run the whole benchmark first")
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        video, _ = make_clip(Path(tmp), DECODE_FRAMES)
        section = decode_region_report(video, args.decode_vae, repeats=1 if args.tiny else 3, tiny=args.tiny)
    section["command"] = command
    print(decode_markdown(section))
    if not args.no_write:
        report = json.loads(path.read_text())
        report["decode_region"] = section
        header = (args.out_dir / "speed.md").read_text().split("`")
        write_reports(report, report.get("command") or (header[1] if len(header) > 1 else "unknown"), args.out_dir)
        print(f"wrote {args.out_dir / 'speed.md'} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
