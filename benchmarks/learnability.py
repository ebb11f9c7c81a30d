"""Does training learn lip sync? Train the whole stack on a known-truth corpus and measure it.

    python -m benchmarks.learnability --work_dir DIR [--quick] [--threads 2]

Steps (each recorded in DIR/steps.json when finished; re-running skips them, and an interrupted
training step continues from its trainer's training state):
  corpus        synthetic talking faces with known mouth tracks (scripts/make_synthetic_corpus.py)
  data_*        the data pipeline on each split (stages 1-6; the sync and quality stages need
                downloaded networks and are skipped)
  whisper       checkpoints/whisper/tiny.pt if present, else a seeded random Whisper-tiny encoder
  vae           a small VAE (scripts/train_vae.py, configs/vae/learnability.yaml)
  syncnet       StableSyncNet (scripts/train_syncnet.py, configs/syncnet/learnability.yaml)
  syncnet_eval  balanced held-out accuracy (in-sync / shifted windows of held-out sentences)
  unet_stage1   UNet, noise loss (scripts/train_unet.py, configs/unet/learnability.yaml)
  unet_stage2   motion modules + pixel losses + the SyncNet loss, from stage 1's weights
  dubs          every held-out clip dubbed with another held-out sentence, and the controls
  score         mouth-opening correlation, LSE-C/LSE-D/offset (the benchmark's SyncNet), mouth SSIM/PSNR
  report        DIR/report/learnability.md, summary.json, losses.png, clips.png, opening.png
--quick trains the same models with fewer clips and steps (benchmarks/learnability_parts/plan.py)
and fails (exit code 1) unless held-out SyncNet accuracy >= 0.75 and the dubs' mouth-opening
correlation is at least 0.3 above the zeroed-audio control's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.learnability_parts.plan import (PLANS, REAL_WHISPER, REPO, STAGE2_OVERRIDES, SYNCNET_CONFIG,
                                                UNET_CONFIG, VAE_CONFIG, WHISPER_TINY_DIMS, Layout, Plan)
from benchmarks.learnability_parts.steps import QUIET_ENV, Steps, StepFailed, run_module

SEED = 1247
SPLITS = ("train", "heldout")
EXIT_TARGET_MISSED = 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True, help="folder for everything the run writes (resumable)")
    parser.add_argument("--quick", action="store_true", help="small run (about 8 minutes) that asserts the trend")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each step that runs beside others (1: on a busy machine more "
                             "threads were slower); a step that runs alone gets threads x jobs")
    parser.add_argument("--jobs", type=int, default=2,
                        help="work run side by side: corpus clips, data pipeline workers, the SyncNet beside "
                             "the VAE and the UNet's first stage, and the dubs (1: one at a time)")
    parser.add_argument("--whisper_path", default=None,
                        help=f"Whisper checkpoint (default: {REAL_WHISPER.relative_to(REPO)} if present, "
                             "else a seeded random Whisper-tiny encoder)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the corpus, the stand-in Whisper, every trainer and the dubs (default {SEED}: "
                             "the trainers keep their configs' run.seed)")
    args = parser.parse_args(argv)
    for flag in ("threads", "jobs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


# -- steps ---------------------------------------------------------------------------------------

def make_corpus(plan: Plan, layout: Layout, workers: int, seed: int) -> dict:
    run_module("scripts.make_synthetic_corpus", [
        "--output_dir", layout.corpus, "--num_clips", plan.num_clips, "--seed", seed,
        "--heldout_fraction", plan.heldout_fraction, "--min_seconds", plan.min_seconds, "--size", plan.size,
        "--workers", workers, "--no_progress"], layout.logs / "corpus.log", 1)
    return {}


def run_data_pipeline(plan: Plan, layout: Layout, split: str, workers: int) -> dict:
    """Stages 1-6 on one corpus split: pieces of at least the plan's clip length (every clip is
    kept), the one-face check on every 5th frame (a rendered clip has its face in every frame)."""
    run_module("scripts.data_processing_pipeline", [
        "--input_dir", layout.corpus / split, "--output_dir", layout.data(split), "--resolution", 256,
        "--segment_seconds", plan.min_seconds, "--face_check_stride", 5,
        "--min_face_size", 64, "--skip_stages", "7,8", "--num_workers", workers, "--no_progress"],
        layout.logs / f"data_{split}.log", 1)
    clips = sorted(layout.clips(split).glob("*.mp4"))
    if not clips:
        raise StepFailed(f"the data pipeline kept no {split} clip; see {layout.logs / f'data_{split}.log'}")
    return dict(clips=len(clips))


STAND_IN_CONV_GAIN = 4.0
STAND_IN_KIND = "stand-in (seeded random Whisper-tiny, no positional embedding, input convolutions x4)"


def make_whisper(layout: Layout, given: str | None, seed: int) -> dict:
    """The Whisper checkpoint path: the given or real one, else a stand-in: a seeded random
    Whisper-tiny whose encoder has no positional embedding and input convolutions STAND_IN_CONV_GAIN
    times stronger. Plain random weights give features that are 80 % the sinusoidal positional
    embedding: speech and silence differ by a fifth of the norm and change as much from frame to
    frame in silence as in speech, so the audio is buried under the time stamp. The stand-in's
    features change 40x more over speech than over silence (measured on a corpus sentence)."""
    if given or REAL_WHISPER.is_file():
        return dict(path=str(given or REAL_WHISPER), kind="given" if given else "pretrained")
    import torch
    import whisper

    from latentsync.io import atomic_save_torch

    torch.manual_seed(seed)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**WHISPER_TINY_DIMS))
    with torch.no_grad():  # let the speech, not the time stamp, dominate the features (docstring)
        model.encoder.positional_embedding.zero_()
        model.encoder.conv1.weight.mul_(STAND_IN_CONV_GAIN)
        model.encoder.conv2.weight.mul_(STAND_IN_CONV_GAIN)
    layout.whisper.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_torch({"dims": WHISPER_TINY_DIMS, "model_state_dict": model.state_dict()}, layout.whisper)
    return dict(path=str(layout.whisper), kind=STAND_IN_KIND)


def train(layout: Layout, module: str, config_flag: str, config: Path, name: str, max_steps: int,
          overrides: list[str], threads: int) -> dict:
    """One trainer run `layout.runs/name`: new, or continued from its newest training state."""
    run_dir = layout.run_dir(name)
    checkpoints = run_dir / "checkpoints"
    common = ["--max_train_steps", max_steps, "--device", "cpu", "--num_threads", threads, "--no_progress"]
    if checkpoints.is_dir() and any(checkpoints.glob("training-state-*.pt")):
        args = ["--resume_from", run_dir, *common]
    else:
        args = [config_flag, config, "--train_output_dir", layout.runs, "--run_name", name, *common, *overrides]
    run_module(module, args, layout.logs / f"{name}.log", threads)
    final = layout.checkpoint(name, max_steps)
    if not final.is_file():
        raise StepFailed(f"{name}: {final} was not written; see {layout.logs / f'{name}.log'}")
    return dict(checkpoint=str(final))


def seed_overrides(seed: int) -> list[str]:
    """Trainer overrides for a run at another seed than the default (which keeps each config's run.seed)."""
    return [] if seed == SEED else [f"run.seed={seed}"]


def data_overrides(layout: Layout) -> list[str]:
    return [f"data.train_data_dir={layout.clips('train')}", f"data.audio_mel_cache_dir={layout.cache / 'mel'}"]


def syncnet_ckpt(layout: Layout, plan: Plan) -> Path:
    return layout.checkpoint("syncnet", plan.syncnet_steps)


def unet_overrides(layout: Layout, plan: Plan, whisper: str) -> list[str]:
    return [*data_overrides(layout), f"data.audio_embeds_cache_dir={layout.cache / 'embeds'}",
            f"ckpt.vae_path={layout.vae}", f"ckpt.whisper_path={whisper}",
            f"ckpt.syncnet_ckpt_path={syncnet_ckpt(layout, plan)}", f"data.syncnet_config_path={layout.syncnet_config}",
            *plan.unet_overrides]


def evaluate_syncnet(layout: Layout, plan: Plan, seed: int) -> dict:
    from benchmarks.learnability_parts.scoring import syncnet_accuracy
    from latentsync.io import read_yaml
    from latentsync.models import load_syncnet

    model = load_syncnet(layout.syncnet_config, syncnet_ckpt(layout, plan), device="cpu").eval()
    result = syncnet_accuracy(model, read_yaml(layout.syncnet_config), layout.clips("heldout"),
                              plan.syncnet_eval_samples, seed)
    print(f"    held-out SyncNet accuracy {result['accuracy']:.3f} (in sync {result['in_sync_accuracy']:.3f}, "
          f"shifted {result['shifted_accuracy']:.3f}, {result['samples']} samples)", flush=True)
    return result


def dub_all(layout: Layout, plan: Plan, whisper: str, jobs: int, seed: int) -> dict:
    """Every held-out clip's dubs, `jobs` clips at a time (each worker thread with its own pipeline;
    the pipelines are loaded first, one after the other: model loading is not thread-safe)."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.learnability_parts import dubbing
    from latentsync.loading import ModelFiles
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
    from latentsync.pipelines.options import LipsyncOptions
    from latentsync.synthetic.corpus import read_manifest

    stage2 = layout.run_dir("unet_stage2")
    options = LipsyncOptions(inference_steps=plan.inference_steps, seed=seed, show_progress=False)
    pairs = dubbing.dub_pairs(read_manifest(layout.corpus), plan.max_dubs)
    files = ModelFiles(unet_config=stage2 / "config.yaml", whisper=whisper, vae=layout.vae,
                       unet_ckpt=layout.checkpoint("unet_stage2", plan.stage1_steps + plan.stage2_steps))
    pipelines = queue.SimpleQueue()
    for _ in range(min(jobs, len(pairs))):
        pipelines.put(LipsyncPipeline.from_files(files, device="cpu"))

    def dub(pair) -> tuple[str, int]:
        clip, new, third = pair
        folder = layout.dubs / dubbing.clip_name(clip)
        n_out = dubbing.prepare_inputs(layout.corpus, folder, clip, new, third, plan.dub_frames)
        pipeline = pipelines.get()
        try:
            dubbing.make_dubs(pipeline, options, layout.corpus, folder, clip)
        finally:
            pipelines.put(pipeline)
        print(f"    dubbed {dubbing.clip_name(clip)} with {dubbing.clip_name(new)}", flush=True)
        return dubbing.clip_name(clip), n_out

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(frames=dict(pool.map(dub, pairs)))


def score_all(layout: Layout, plan: Plan, frames: dict) -> dict:
    from benchmarks.learnability_parts import dubbing
    from latentsync.face import make_face_detector
    from latentsync.io import read_yaml
    from latentsync.models import load_syncnet
    from latentsync.synthetic.corpus import read_manifest

    config = read_yaml(layout.syncnet_config)
    syncnet = load_syncnet(layout.syncnet_config, syncnet_ckpt(layout, plan), device="cpu").eval()
    detector = make_face_detector("mediapipe")
    clips = []
    try:
        for clip, new, _ in dubbing.dub_pairs(read_manifest(layout.corpus), plan.max_dubs):
            name = dubbing.clip_name(clip)
            scores = dubbing.score_clip(layout.corpus, layout.dubs / name, clip, new, frames[name], syncnet,
                                        config, detector)
            print(f"    {name}: mouth correlation dub {scores['dub']['mouth_correlation']:.3f}, zero audio "
                  f"{scores['zero_audio']['mouth_correlation']:.3f}, truth {scores['truth']['mouth_correlation']:.3f}",
                  flush=True)
            clips.append(scores)
    finally:
        detector.close()
    return dict(clips=clips)


def histories(layout: Layout) -> dict:
    """The loss history of each trainer run, from its newest training state."""
    import torch

    out = {}
    for name in ("vae", "syncnet", "unet_stage1", "unet_stage2"):
        states = sorted((layout.run_dir(name) / "checkpoints").glob("training-state-*.pt"),
                        key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        if states:
            out[name] = torch.load(states[-1], map_location="cpu", weights_only=True).get("history", {})
    return out


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    from benchmarks.learnability_parts.report import summarise, write_report

    plan = PLANS["quick" if args.quick else "full"]
    layout = Layout(Path(args.work_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    steps = Steps(layout.root, total=11, jobs=args.jobs)
    t, alone = args.threads, args.threads * args.jobs
    steps.run("corpus", lambda: make_corpus(plan, layout, args.jobs, args.seed))
    for split in SPLITS:  # each split with `jobs` worker processes (the splits differ 4x in size)
        steps.run(f"data_{split}", lambda: run_data_pipeline(plan, layout, split, args.jobs))
    whisper = steps.run("whisper", lambda: make_whisper(layout, args.whisper_path, args.seed))
    base = [*unet_overrides(layout, plan, whisper["path"]), *seed_overrides(args.seed)]
    results = {}

    def syncnet_chain():  # the SyncNet needs only the data ...
        steps.run("syncnet", lambda: train(layout, "scripts.train_syncnet", "--config_path", SYNCNET_CONFIG,
                                           "syncnet", plan.syncnet_steps,
                                           [*data_overrides(layout), f"data.val_data_dir={layout.clips('heldout')}",
                                            *plan.syncnet_overrides, *seed_overrides(args.seed)], t))
        results["accuracy"] = steps.run("syncnet_eval", lambda: evaluate_syncnet(layout, plan, args.seed))

    def unet_chain():  # ... and the UNet's first stage only the VAE: they train side by side
        steps.run("vae", lambda: train(layout, "scripts.train_vae", "--config_path", VAE_CONFIG, "vae",
                                       plan.vae_steps, [f"data.train_data_dir={layout.clips('train')}",
                                                        *plan.vae_overrides, *seed_overrides(args.seed)], t))
        steps.run("unet_stage1", lambda: train(layout, "scripts.train_unet", "--unet_config_path", UNET_CONFIG,
                                               "unet_stage1", plan.stage1_steps, [*base, *plan.stage1_overrides], t))

    steps.parallel("training", syncnet_chain, unet_chain)
    accuracy = results["accuracy"]
    stage2 = [*base, *STAGE2_OVERRIDES,
              f"ckpt.resume_ckpt_path={layout.checkpoint('unet_stage1', plan.stage1_steps)}"]
    steps.run("unet_stage2", lambda: train(layout, "scripts.train_unet", "--unet_config_path", UNET_CONFIG,
                                           "unet_stage2", plan.stage1_steps + plan.stage2_steps, stage2, alone))
    dubs = steps.run("dubs", lambda: dub_all(layout, plan, whisper["path"], args.jobs, args.seed))
    scores = steps.run("score", lambda: score_all(layout, plan, dubs["frames"]))
    extra = dict(whisper=whisper["kind"], seed=args.seed, cpu_minutes=round(steps.total_cpu_seconds() / 60, 2),
                 steps={k: v["seconds"] for k, v in steps.done.items()})
    summary = summarise(plan.name, accuracy, scores["clips"], steps.total_seconds(), steps.peak_kb(), extra)
    command = "python -m benchmarks.learnability " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = write_report(layout.report, summary, scores["clips"], steps.done, histories(layout), command, commit())
    print(f"report: {path}")
    for name, target in summary["targets"].items():
        print(f"  {'ok  ' if target['met'] else 'MISS'} {name}: {target['value']:.3f}")
    return summary


def main(argv=None) -> int:
    from latentsync.errors import exit_on_termination

    args = parse_args(argv)
    exit_on_termination()  # SIGTERM unwinds like Ctrl-C: the running step's child process is stopped
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for key, value in QUIET_ENV.items():  # MediaPipe / TFLite chatter of the in-process steps
        os.environ.setdefault(key, value)
    try:
        import torch

        torch.set_num_threads(args.threads)
        summary = run(args)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        missed = [name for name, t in summary["targets"].items() if not t["met"] and not name.startswith("minutes")]
        if missed:
            print("quick-run trend not met: " + "; ".join(missed), file=sys.stderr)
            return EXIT_TARGET_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
