"""LipsyncPipeline: a talking-head video + a speech track -> the dubbed video (SPEC 5).

The call reads top to bottom as the algorithm:
  1. speech -> Whisper features (silence muted) -> one audio chunk per output frame;
  2. face pass over the video (streamed): track the speaker, align each face to the model square;
  3. plan 16-frame segments over runs of output frames that have a face;
  4. per segment: VAE-encode masked and reference faces, DDIM with classifier-free guidance,
     decode, keep generated pixels only inside the mask;
  5. paste the faces back into their frames and stream them to the encoder; mux the speech.
Frames, aligned faces and generated faces never pile up in memory: aligned faces (and, when the
video has to loop, the source frames) go to fixed-size records in a temporary folder.
"""

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from tqdm.auto import tqdm

from latentsync.audio import chunk_indices, load_audio
from latentsync.errors import UserError
from latentsync.face.alignment import AlignRestore
from latentsync.face.mask import DEFAULT_MASK_PATH, load_mask
from latentsync.face.tracking import FaceTracker
from latentsync.models.unet import DeepCache
from latentsync.vad import mute_silence, speech_frames
from latentsync.video import VideoWriter, count_frames, iter_frames, mux_audio, probe_video

logger = logging.getLogger(__name__)

VAE_SCALING = 0.18215  # the reference overrides the VAE config with these
VAE_SHIFT = 0.0
VAE_BATCH = 4  # frames per VAE call: the VAE works frame by frame, so this only bounds peak memory
SAMPLE_RATE = 16000
FPS = 25.0  # the model's frame rate (audio chunks are built for it)
SILENCE_MODES = ("mute", "keep", "off")
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # configs/scheduler_config.json
TAIL_MODES = ("overlap", "short")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class LipsyncOptions:
    num_inference_steps: int = 20
    guidance_scale: float = 1.5
    seed: int | None = 1247  # None: random
    num_frames: int = 16  # frames per UNet segment
    enable_deepcache: bool = False
    silence: str = "mute"  # mute: model hears silence there; keep: original frames; off: as the reference
    segment_tail: str = "overlap"  # overlap: last segment re-uses earlier frames to stay 16 long; short: reference
    face_index: int | None = None  # pick the speaker (left-to-right index) ...
    face_box: tuple[float, float, float, float] | None = None  # ... or by a box x1,y1,x2,y2 in the first frames
    output_fps: float | None = None  # None: 25 fps (the model's rate); e.g. the input's rate
    output_height: int | None = None  # None: the input's resolution
    crf: int = 18
    work_dir: str | None = None  # where temporary records go (default: system temp)
    show_progress: bool = True


@dataclass
class Segment:
    frames: list[int]  # output frame indices generated together
    write_from: int  # index into `frames` of the first frame not produced by an earlier segment


class FrameStore:
    """Fixed-size uint8 records in a file: O(1) memory whatever the number of frames."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.shape, self.size = shape, int(np.prod(shape))
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, index: int, array: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(array, dtype=np.uint8).tobytes(), index * self.size)

    def read(self, index: int) -> np.ndarray:
        data = os.pread(self.fd, self.size, index * self.size)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class FaceTrack:
    """What the face pass learned about each source frame."""

    has_face: np.ndarray  # bool [N]
    matrices: np.ndarray  # float64 [N, 2, 3] frame -> crop
    faces: FrameStore  # aligned faces [res, res, 3]
    frames: FrameStore | None  # source frames, kept only when the video has to loop
    num_frames: int
    height: int
    width: int


def source_index(j: int, num_source: int) -> int:
    """Ping-pong looping: 0..N-1, N-1..0, 0..N-1, ... (turn frames repeat, as the reference)."""
    k = j % (2 * num_source)
    return k if k < num_source else 2 * num_source - 1 - k


def plan_segments(generate: np.ndarray, length: int, tail: str = "overlap") -> list[Segment]:
    """Split runs of True in `generate` into segments of `length` frames.

    With tail="overlap" a run's short remainder is generated as the run's last `length` frames
    (only the new ones are written), so no segment is shorter than a full one unless the run is.
    """
    segments = []
    idx = np.flatnonzero(generate)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1) if idx.size else []
    for run in runs:
        run = run.tolist()
        for start in range(0, len(run), length):
            part = run[start:start + length]
            if tail == "overlap" and len(part) < length and len(run) >= length:
                segments.append(Segment(run[-length:], length - len(part)))
            else:
                segments.append(Segment(part, 0))
    return segments


class LipsyncPipeline(DiffusionPipeline):
    def __init__(self, vae: AutoencoderKL, unet, scheduler: DDIMScheduler, audio_encoder=None, face_detector=None,
                 resolution: int = 256, mask_path: str | os.PathLike = DEFAULT_MASK_PATH):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        if resolution % 8:
            raise UserError(f"resolution {resolution}: must be divisible by 8")
        if audio_encoder is not None and audio_encoder.dim != unet.config.cross_attention_dim:
            raise UserError(f"{audio_encoder.ckpt_path}: gives {audio_encoder.dim}-d features but the UNet "
                            f"expects cross_attention_dim {unet.config.cross_attention_dim}")
        self.audio_encoder, self.face_detector = audio_encoder, face_detector
        self.resolution = resolution
        self.mask = load_mask(mask_path, resolution)

    @classmethod
    def from_checkpoints(cls, unet_config_path, inference_ckpt_path, whisper_ckpt_path, vae_path,
                         device=None, dtype=None, face_backend: str = "mediapipe",
                         checkpoints_dir: str | os.PathLike = "checkpoints") -> "LipsyncPipeline":
        """Everything inference needs, loaded from files (the CLI, Gradio and training use this)."""
        from latentsync.audio import AudioEncoder
        from latentsync.device import pick_device, pick_dtype
        from latentsync.face.detectors import make_face_detector
        from latentsync.models.checkpoint import load_unet

        device = pick_device(device)
        dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, device)
        config = _load_yaml(unet_config_path)
        resolution = int(config.get("data", {}).get("resolution", 256))
        if resolution % 8:
            raise UserError(f"{unet_config_path}: data.resolution {resolution} is not divisible by 8")
        unet = load_unet(unet_config_path, inference_ckpt_path, device=device, dtype=dtype)
        audio_encoder = AudioEncoder(whisper_ckpt_path, device=device)
        vae = load_vae(vae_path, device, dtype)
        mask_path = _resolve_mask(config.get("data", {}).get("mask_image_path"))
        detector = make_face_detector(face_backend, checkpoints_dir, device)
        return cls(vae=vae, unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG), audio_encoder=audio_encoder,
                   face_detector=detector, resolution=resolution, mask_path=mask_path)

    # -- the algorithm -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None,
                 progress: Progress | None = None) -> Path:
        opts = options or LipsyncOptions()
        self._check_options(opts)
        output_path = Path(output_path)
        probe_video(video_path)  # a clear error for anything that is not a readable video
        num_video = count_frames(video_path, FPS)
        wav = load_audio(audio_path)
        num_out = math.ceil(len(wav) * FPS / SAMPLE_RATE)  # the output is exactly as long as the speech

        speech = speech_frames(wav, FPS, num_out)
        if opts.silence == "mute":
            wav = mute_silence(wav, speech, FPS)
        features = self.audio_encoder.features(wav)
        rows = chunk_indices(features.shape[0], FPS)

        num_source = min(num_video, num_out)  # frames we need to look at
        looping = num_out > num_video
        generator = torch.Generator("cpu").manual_seed(opts.seed) if opts.seed is not None else None
        with tempfile.TemporaryDirectory(dir=opts.work_dir, prefix="latentsync-") as tmp:
            track = self.face_pass(video_path, num_video if looping else num_source, Path(tmp),
                                   keep_frames=looping, options=opts, progress=progress)
            if track.num_frames == 0:
                raise UserError(f"{video_path}: the video has no frames")
            sources = [source_index(j, track.num_frames) for j in range(num_out)]
            generate = track.has_face[sources]
            if opts.silence == "keep":
                generate &= speech
            missing = int((~track.has_face[sources]).sum())
            if missing:
                logger.warning("%s: no face in %d of %d output frames; those frames are kept unchanged",
                               video_path, missing, num_out)
            segments = plan_segments(generate, opts.num_frames, opts.segment_tail)
            noise = self.prepare_noise(generator)
            try:
                self.write_video(track, sources, segments, features, rows, noise, generator, video_path,
                                 Path(tmp) / "video.mp4", opts, progress)
            finally:
                for store in (track.faces, track.frames):
                    if store is not None:
                        store.close()
            mux_audio(Path(tmp) / "video.mp4", audio_path, output_path, duration=len(wav) / SAMPLE_RATE)
        return output_path

    def face_pass(self, video_path, num_frames: int, tmp: Path, keep_frames: bool, options: LipsyncOptions,
                  progress: Progress | None = None) -> FaceTrack:
        """Stream the first `num_frames` frames: track the speaker's face and align it."""
        res = self.resolution
        tracker = FaceTracker(self.face_detector, options.face_index, options.face_box)
        aligner = AlignRestore(res)
        faces = FrameStore(tmp / "faces.u8", (res, res, 3))
        frames = None
        has_face, matrices, count, height, width = [], [], 0, 0, 0
        bar = tqdm(total=num_frames, desc="Face detection", unit="frame", disable=not options.show_progress)
        for chunk in iter_frames(video_path, fps=FPS, chunk_size=16):
            before = count
            for frame in chunk[: num_frames - count]:
                if frames is None and keep_frames:
                    frames = FrameStore(tmp / "frames.u8", frame.shape)
                height, width = frame.shape[:2]
                face = tracker.track(frame)
                if face is None:
                    aligner.reset()  # smoothing restarts with the next run of faces
                    has_face.append(False)
                    matrices.append(np.zeros((2, 3)))
                else:
                    aligned, matrix = aligner.align(frame, face.points)
                    faces.write(count, aligned)
                    has_face.append(True)
                    matrices.append(matrix)
                if frames is not None:
                    frames.write(count, frame)
                count += 1
            bar.update(count - before)
            if progress:
                progress("faces", count, num_frames)
            if count >= num_frames:
                break
        bar.close()
        return FaceTrack(np.array(has_face, dtype=bool), np.array(matrices).reshape(-1, 2, 3), faces, frames,
                         count, height, width)

    def write_video(self, track: FaceTrack, sources: list[int], segments: list[Segment], features, rows,
                    noise, generator, video_path, out_path: Path, opts: LipsyncOptions,
                    progress: Progress | None = None) -> None:
        """Generate every segment, paste faces back and stream all output frames to the encoder."""
        num_out = len(sources)
        out_fps = opts.output_fps or FPS
        num_written = math.ceil(num_out * out_fps / FPS)
        out_h = opts.output_height or track.height
        out_w = int(round(track.width * out_h / track.height / 2) * 2) if opts.output_height else track.width
        frames = self._source_frames(track, video_path)
        aligner = AlignRestore(self.resolution)
        bar = tqdm(total=len(segments), desc="Lip sync segments", unit="segment", disable=not opts.show_progress)
        wbar = tqdm(total=num_written, desc="Writing video", unit="frame", disable=not opts.show_progress)
        pending: dict[int, np.ndarray] = {}  # generated faces not yet written (at most one segment)
        segment_iter = iter(segments)
        next_segment = next(segment_iter, None)
        written = done_segments = 0
        with VideoWriter(out_path, out_fps, out_w, out_h, crf=opts.crf) as writer:
            for j in range(num_out):
                while next_segment is not None and j == next_segment.frames[next_segment.write_from]:
                    faces = self.generate_segment(track, sources, next_segment.frames, features, rows, noise,
                                                  generator, opts)
                    for k in range(next_segment.write_from, len(next_segment.frames)):
                        pending[next_segment.frames[k]] = faces[k]
                    done_segments += 1
                    bar.update(1)
                    if progress:
                        progress("segments", done_segments, len(segments))
                    next_segment = next(segment_iter, None)
                frame = frames(sources[j])
                if j in pending:
                    frame = aligner.restore(frame, pending.pop(j), track.matrices[sources[j]])
                if opts.output_height:
                    frame = cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_AREA)
                # write every output-rate frame whose time falls on this model frame
                while written < num_written and math.floor(written * FPS / out_fps) == j:
                    writer.write(frame)
                    written += 1
                    wbar.update(1)
                if progress:
                    progress("writing", written, num_written)
        bar.close()
        wbar.close()

    def generate_segment(self, track: FaceTrack, sources: list[int], frames: list[int], features, rows, noise,
                         generator, opts: LipsyncOptions) -> np.ndarray:
        """Generated faces [f, res, res, 3] in [-1, 1] for output frames `frames`."""
        device, dtype = self.unet.device, self.unet.dtype
        faces = np.stack([track.faces.read(sources[j]) for j in frames])
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [f,3,res,res]
        mask = torch.from_numpy(self.mask)[None, None]  # [1,1,res,res], 1 = keep
        masked = pixels * mask
        audio = torch.stack([features[rows[j]].reshape(-1, features.shape[-1]) for j in frames])  # [f, 50, D]

        masked_latents = self.encode(masked, generator)
        ref_latents = self.encode(pixels, generator)
        latent_mask = torch.nn.functional.interpolate(mask, size=masked_latents.shape[-2:], mode="nearest")
        latent_mask = latent_mask[:, :, None].expand(1, 1, len(frames), *masked_latents.shape[-2:])
        latents = noise.expand(-1, -1, len(frames), -1, -1)
        latents = self.denoise(latents.to(device, dtype), latent_mask.to(device, dtype), masked_latents, ref_latents,
                               audio.to(device, dtype), opts.num_inference_steps, opts.guidance_scale,
                               opts.enable_deepcache)
        decoded = self.decode(latents)  # [f, 3, res, res] in [-1, 1]
        out = decoded * (1 - mask) + pixels * mask  # keep original pixels outside the mouth region
        return out.permute(0, 2, 3, 1).clamp(-1, 1).numpy()

    # -- diffusion steps -----------------------------------------------------------------------

    def prepare_noise(self, generator) -> torch.Tensor:
        """One Gaussian latent frame [1, 4, 1, h, w] shared by every frame and segment (reference)."""
        size = self.resolution // 8
        noise = torch.randn((1, self.unet.config.out_channels, 1, size, size), generator=generator)
        return noise * self.scheduler.init_noise_sigma

    def encode(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """VAE posterior *sample* (as the reference) x 0.18215 -> [1, 4, f, h, w]."""
        vae = self.vae
        moments = [vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist for chunk in pixels.split(VAE_BATCH)]
        mean = torch.cat([m.mean for m in moments])
        std = torch.cat([m.std for m in moments])
        eps = torch.randn(mean.shape, generator=generator).to(vae.device, mean.dtype)
        latents = (mean + std * eps - VAE_SHIFT) * VAE_SCALING
        return latents.permute(1, 0, 2, 3)[None].to(self.unet.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents[0].permute(1, 0, 2, 3) / VAE_SCALING + VAE_SHIFT
        return torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample.float().cpu()
                          for chunk in latents.split(VAE_BATCH)])

    def denoise(self, latents, mask, masked_latents, ref_latents, audio, num_inference_steps: int,
                guidance_scale: float, enable_deepcache: bool = False) -> torch.Tensor:
        """The DDIM loop with classifier-free guidance (null audio = zeros), eta = 0."""
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        guided = guidance_scale > 1.0
        if guided:
            audio = torch.cat([torch.zeros_like(audio), audio])
            mask, masked_latents, ref_latents = (torch.cat([x] * 2) for x in (mask, masked_latents, ref_latents))
        cache = DeepCache() if enable_deepcache else None
        for i, t in enumerate(self.scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            x = torch.cat([x, mask, masked_latents, ref_latents], dim=1)
            eps = self.unet(x, t, encoder_hidden_states=audio, deep_cache=cache, step_index=i).sample
            if guided:
                eps_uncond, eps_audio = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_audio - eps_uncond)
            latents = self.scheduler.step(eps, t, latents, eta=0.0).prev_sample
        return latents

    # -- helpers -------------------------------------------------------------------------------

    def _source_frames(self, track: FaceTrack, video_path) -> Callable[[int], np.ndarray]:
        """frame(i) for non-decreasing i (streamed), or any i when the frames were stored (looping)."""
        if track.frames is not None:
            return track.frames.read
        stream = (frame for chunk in iter_frames(video_path, fps=FPS, chunk_size=16) for frame in chunk)
        state = {"index": -1, "frame": None}

        def frame_at(i: int) -> np.ndarray:
            while state["index"] < i:
                state["frame"], state["index"] = next(stream), state["index"] + 1
            return state["frame"]

        return frame_at

    def _check_options(self, opts: LipsyncOptions) -> None:
        if opts.silence not in SILENCE_MODES:
            raise UserError(f"--silence {opts.silence!r}: expected one of {', '.join(SILENCE_MODES)}")
        if opts.segment_tail not in TAIL_MODES:
            raise UserError(f"--segment_tail {opts.segment_tail!r}: expected one of {', '.join(TAIL_MODES)}")
        if opts.num_inference_steps < 1:
            raise UserError("--inference_steps must be at least 1")
        if not 1 <= opts.num_frames <= 24:
            raise UserError("--num_frames must be between 1 and 24 (the motion modules' limit)")


def load_vae(vae_path, device, dtype) -> AutoencoderKL:
    """AutoencoderKL from a local diffusers folder, or a hub id (e.g. stabilityai/sd-vae-ft-mse) when online."""
    local = Path(vae_path)
    if not local.exists() and (local.is_absolute() or str(vae_path).count("/") != 1):
        raise UserError(f"{vae_path}: VAE folder not found (expected a diffusers AutoencoderKL folder "
                        f"or a hub id such as stabilityai/sd-vae-ft-mse)")
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{vae_path}: cannot load the VAE ({str(exc).splitlines()[0]}); download "
                        f"stabilityai/sd-vae-ft-mse into checkpoints/sd-vae-ft-mse") from None
    return torch.nn.Module.to(vae.eval(), device=device, dtype=dtype)


def _load_yaml(path) -> dict:
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # OmegaConf/YAML parse errors of several kinds
        raise UserError(f"{path}: not a readable YAML config ({str(exc).splitlines()[0]})") from None


def _resolve_mask(configured) -> Path:
    """The configured mask image (relative to the repo or absolute), else the packaged mask.png."""
    if configured:
        for candidate in (Path(configured), Path(__file__).resolve().parents[2] / configured):
            if candidate.is_file():
                return candidate
        logger.warning("mask image %s not found; using the packaged mask.png", configured)
    return DEFAULT_MASK_PATH
