"""CPU timings of one 16-frame segment, stage by stage, with full-size random-weight models.

    .venv/bin/python benchmarks/inference_cpu.py [--configs stage2 stage2_512] [--steps 1] [--skip_rss]

For each UNet config (stage2 = 256 px / LatentSync 1.5, stage2_512 = 512 px / 1.6) it times: face
detection + alignment on demo1 frames, VAE encode (masked + reference), UNet steps (with
classifier-free guidance; `--steps` measured, 20 extrapolated), VAE decode, restore into the
1080x1920 frames and writing them. Then it runs the whole pipeline with the tiny checkpoints on a
10 s and a 60 s clip in fresh processes and reports their peak RSS (full-size models at 60 s would
take hours on a CPU; memory growth with length is what this part measures).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MEDIA = REPO / "assets"
FRAMES = 16
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=512)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:  # VmHWM: peak RSS of this process
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def segment_timings(config_name: str, steps: int) -> dict:
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from latentsync.face.detectors import make_face_detector
    from latentsync.face.tracking import FaceTracker
    from latentsync.face.alignment import AlignRestore
    from latentsync.models import UNet3DConditionModel
    from latentsync.models.unet import Conditioning
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
    from latentsync.schedulers import make_scheduler
    from latentsync.video import VideoWriter, iter_frames

    config = OmegaConf.load(REPO / f"configs/unet/{config_name}.yaml")
    res = int(config.data.resolution)
    unet = UNet3DConditionModel.from_config(OmegaConf.to_container(config.model)).eval()
    vae = AutoencoderKL(**SD_VAE).eval()
    pipe = LipsyncPipeline(vae=vae, unet=unet, scheduler=make_scheduler(), resolution=res)
    frames = next(iter_frames(MEDIA / "demo1_video.mp4", chunk_size=FRAMES))
    t = {}

    tracker, aligner = FaceTracker(make_face_detector("mediapipe")), AlignRestore(res)

    def face_stage():
        return [aligner.align(f, tracker.track(f).points) for f in frames]

    aligned, t["face"] = timed(face_stage)
    faces = torch.from_numpy(np.stack([a for a, _ in aligned])).permute(0, 3, 1, 2).float() / 127.5 - 1
    mask = torch.from_numpy(pipe.mask)[None, None]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        both, t["vae_encode"] = timed(lambda: pipe.encode(torch.cat([faces * mask, faces]), generator, groups=2))
        masked, ref = both.chunk(2, dim=2)
        latent_mask = torch.nn.functional.interpolate(mask, size=masked.shape[-2:])[:, :, None].expand(
            1, 1, FRAMES, *masked.shape[-2:])
        audio = torch.randn(FRAMES, 50, 384)
        noise = pipe.prepare_noise(generator).expand(-1, -1, FRAMES, -1, -1)
        conditioning = Conditioning(latent_mask, masked, ref)
        latents, elapsed = timed(lambda: pipe.denoise(noise, conditioning, audio, steps, 1.5))
        t["unet_per_step"] = elapsed / steps
        t["unet_20_steps"] = t["unet_per_step"] * 20
        decoded, t["vae_decode"] = timed(lambda: pipe.decode(latents))
    generated = decoded.permute(0, 2, 3, 1).clamp(-1, 1).numpy()
    restored, t["restore"] = timed(lambda: [aligner.restore(f, g, m) for f, g, (_, m) in zip(frames, generated, aligned)])
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            with VideoWriter(Path(tmp) / "o.mp4", 25, frames.shape[2], frames.shape[1]) as writer:
                writer.write(np.stack(restored))
        _, t["write"] = timed(write)
    t["peak_rss_mb"] = peak_rss_mb()
    return t


RSS_SCRIPT = """
import sys
from scripts.inference import main
code = main(sys.argv[1:])
# VmHWM is the peak RSS of this process image (ru_maxrss would include the forking parent's peak)
with open("/proc/self/status") as f:
    print("MAXRSS", next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
sys.exit(code)
"""


def rss_by_length(seconds_list=(10, 60)) -> dict:
    import soundfile

    from latentsync.io import ffmpeg_exe
    from scripts.make_tiny_checkpoints import make_tiny_checkpoints

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny_checkpoints(tmp / "tiny")
        base = tmp / "base.mp4"
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(MEDIA / "demo1_video.mp4"), "-t", "10",
                        "-vf", "scale=270:480", "-an", str(base)], check=True)
        wav, sr = soundfile.read(MEDIA / "demo2_audio.wav", dtype="float32")
        for seconds in seconds_list:
            clip = tmp / f"clip{seconds}.mp4"
            subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-stream_loop", "10", "-i", str(base), "-t",
                            str(seconds), "-c", "copy", str(clip)], check=True)
            audio = tmp / f"a{seconds}.wav"
            soundfile.write(audio, np.tile(wav, 4)[: seconds * sr], sr)
            args = ["--unet_config_path", tiny / "unet.yaml", "--inference_ckpt_path", tiny / "latentsync_unet.pt",
                    "--whisper_ckpt_path", tiny / "whisper/tiny.pt", "--vae_path", tiny / "vae", "--video_path", clip,
                    "--audio_path", audio, "--video_out_path", tmp / f"o{seconds}.mp4", "--inference_steps", "1",
                    "--guidance_scale", "1.0"]
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, *map(str, args)], cwd=REPO, capture_output=True,
                                 text=True, check=True)
            results[seconds] = (int(out.stdout.split("MAXRSS")[-1]) / 1024, time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["stage2", "stage2_512"])
    parser.add_argument("--steps", type=int, default=1, help="UNet steps to time (20 are extrapolated)")
    parser.add_argument("--skip_rss", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, {FRAMES} frames, CFG on")
    keys = ["face", "vae_encode", "unet_per_step", "unet_20_steps", "vae_decode", "restore", "write", "peak_rss_mb"]
    rows = {}
    for name in args.configs:  # one config per process would isolate peak RSS; run them separately for that
        rows[name] = segment_timings(name, args.steps)
        print(f"{name}: " + ", ".join(f"{k} {rows[name][k]:.1f}" for k in keys), flush=True)
    print(f"\n{'stage (seconds)':<18}" + "".join(f"{n:>14}" for n in rows))
    for key in keys:
        print(f"{key:<18}" + "".join(f"{rows[n][key]:>14.1f}" for n in rows))
    if not args.skip_rss:
        print("\nWhole pipeline, tiny checkpoints, 270x480 clip, 1 step:")
        print(f"{'clip':<8}{'peak RSS MB':>14}{'wall s':>10}")
        for seconds, (rss, wall) in rss_by_length().items():
            print(f"{seconds:>4} s  {rss:>14.0f}{wall:>10.1f}")


if __name__ == "__main__":
    main()
