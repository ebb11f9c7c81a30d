"""LipsyncPipeline: a talking-head video + a speech track -> the dubbed video.

The call reads top to bottom as the algorithm:
  1. speech -> Whisper features (silence muted) -> one audio chunk per output frame;
  2. face pass over the video (streamed): track the speaker, align each face to the model square;
  3. plan 16-frame segments over runs of output frames that have a face (segments.py);
  4. per segment: VAE-encode masked and reference faces (one batch), denoise with the chosen
     sampler (DDIM by default, latentsync/schedulers.py) and classifier-free guidance, decode,
     keep generated pixels only inside the mask;
  5. paste the faces back into their frames and stream them to the encoder; mux the speech.
Frames, aligned faces and generated faces never pile up in memory: aligned faces (and, when the
video has to loop, the source frames) go to fixed-size records in a temporary folder (frame_store.py).
Options are `LipsyncOptions` (options.py); the call reports `Progress` events and returns a
`LipsyncResult` (results.py). Files are read by latentsync/loading.py. A run's speed options
(autocast precision, CPU kernels, compile) are applied for that run by acceleration.py.
"""

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, SchedulerMixin
from tqdm.auto import tqdm

from latentsync import loading
from latentsync.audio import chunk_indices, load_audio
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.face.alignment import AlignRestore
from latentsync.face.mask import DEFAULT_MASK_PATH, load_mask
from latentsync.face.tracking import FaceTracker
from latentsync.models.unet import DeepCache
from latentsync.pipelines.acceleration import Accelerator, Runtime
from latentsync.pipelines.frame_store import FrameStore
from latentsync.pipelines.options import LipsyncOptions, check_options
from latentsync.pipelines.results import FACES, SEGMENTS, WRITING, LipsyncResult, Progress, ProgressCallback
from latentsync.pipelines.segments import Segment, plan_segments, source_index
from latentsync.models.vae import latent_scale_shift
from latentsync.schedulers import make_sampler
from latentsync.vad import mute_silence, speech_frames
from latentsync.video import VideoWriter, count_frames, iter_frames, mux_audio, probe_video

__all__ = ["LipsyncPipeline", "LipsyncOptions", "LipsyncResult", "Progress", "plan_segments", "source_index"]

VAE_BATCH = 4  # frames per VAE decode call: the VAE works frame by frame, so this only bounds peak memory
ENCODE_BATCH = 2 * VAE_BATCH  # masked and reference faces go through the encoder together
FRAME_CHUNK = 16  # frames decoded per read of the input video


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

    def close(self) -> None:
        for store in (self.faces, self.frames):
            if store is not None:
                store.close()


class LipsyncPipeline(DiffusionPipeline):
    def __init__(self, vae: AutoencoderKL, unet, scheduler: SchedulerMixin, audio_encoder=None, face_detector=None,
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
        self.accelerator = Accelerator(unet)

    @classmethod
    def from_checkpoints(cls, unet_config_path, inference_ckpt_path, whisper_ckpt_path=None,
                         vae_path=loading.DEFAULT_VAE, device=None, dtype=None, face_backend: str = "mediapipe",
                         checkpoints_dir: str | os.PathLike = loading.CHECKPOINTS_DIR) -> "LipsyncPipeline":
        """Everything inference needs, loaded from files (whisper_ckpt_path None: picked by the UNet's width)."""
        files = loading.resolve_files(unet_config_path, inference_ckpt_path, whisper_ckpt_path, vae_path,
                                      checkpoints_dir)
        return cls(**loading.load_components(files, device, dtype, face_backend, checkpoints_dir))

    # -- the algorithm -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None,
                 progress: ProgressCallback | None = None) -> LipsyncResult:
        """Dub `video_path` with `audio_path` into `output_path`; `progress` receives Progress events."""
        opts = options or LipsyncOptions()
        check_options(opts)
        limit = getattr(self.unet, "max_frames", None)
        if limit is not None and opts.num_frames > limit:
            raise UserError(f"num_frames must be <= {limit} for this UNet (its motion modules encode "
                            f"{limit} frame positions; got {opts.num_frames})")
        loading.check_job_paths(video_path, audio_path, output_path)
        probe_video(video_path)  # a clear error for anything that is not a readable video
        num_video = count_frames(video_path, MODEL_FPS)
        wav = load_audio(audio_path)
        num_out = math.ceil(len(wav) * MODEL_FPS / SAMPLE_RATE)  # the output is exactly as long as the speech

        speech = speech_frames(wav, MODEL_FPS, num_out)
        if opts.silence == "mute":
            wav = mute_silence(wav, speech, MODEL_FPS)
        features = self.audio_encoder.features(wav)
        rows = chunk_indices(features.shape[0], MODEL_FPS)

        looping = num_out > num_video
        generator = torch.Generator("cpu").manual_seed(opts.seed) if opts.seed is not None else None
        with tempfile.TemporaryDirectory(dir=opts.temp_dir, prefix="latentsync-") as tmp:
            track = self.face_pass(video_path, num_video if looping else min(num_video, num_out), Path(tmp),
                                   keep_frames=looping, options=opts, progress=progress)
            try:
                if track.num_frames == 0:
                    raise UserError(f"{video_path}: the video has no frames")
                sources = [source_index(j, track.num_frames) for j in range(num_out)]
                generate = track.has_face[sources]
                if opts.silence == "keep":
                    generate &= speech
                segments = plan_segments(generate, opts.num_frames, opts.segment_tail)
                with self.accelerator.apply(opts) as runtime:
                    self.write_video(track, sources, segments, features, rows, self.prepare_noise(generator),
                                     generator, video_path, Path(tmp) / "video.mp4", opts, runtime, progress)
            finally:
                track.close()
            mux_audio(Path(tmp) / "video.mp4", audio_path, output_path, duration=len(wav) / SAMPLE_RATE)
        missing = int((~track.has_face[sources]).sum())
        warnings = [f"{video_path}: no face in {missing} of {num_out} output frames; those frames are kept "
                    f"unchanged"] if missing else []
        return LipsyncResult(Path(output_path), num_out, missing, len(segments), warnings)

    def face_pass(self, video_path, num_frames: int, tmp: Path, keep_frames: bool, options: LipsyncOptions,
                  progress: ProgressCallback | None = None) -> FaceTrack:
        """Stream the first `num_frames` frames: track the speaker's face and align it."""
        res = self.resolution
        tracker = FaceTracker(self.face_detector, options.face_index, options.face_box)
        aligner = AlignRestore(res)
        faces = FrameStore(tmp / "faces.u8", (res, res, 3))
        frames = None
        has_face, matrices, count, height, width = [], [], 0, 0, 0
        bar = tqdm(total=num_frames, desc="Face detection", unit="frame", disable=not options.show_progress)
        for chunk in iter_frames(video_path, fps=MODEL_FPS, chunk_size=FRAME_CHUNK):
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
                progress(Progress(FACES, count, num_frames))
            if count >= num_frames:
                break
        bar.close()
        return FaceTrack(np.array(has_face, dtype=bool), np.array(matrices).reshape(-1, 2, 3), faces, frames,
                         count, height, width)

    def write_video(self, track: FaceTrack, sources: list[int], segments: list[Segment], features, rows,
                    noise, generator, video_path, out_path: Path, opts: LipsyncOptions, runtime: Runtime,
                    progress: ProgressCallback | None = None) -> None:
        """Generate every segment, paste faces back and stream all output frames to the encoder."""
        num_out = len(sources)
        out_fps = opts.output_fps or MODEL_FPS
        num_written = math.ceil(num_out * out_fps / MODEL_FPS)
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
                                                  generator, opts, runtime)
                    for k in range(next_segment.write_from, len(next_segment.frames)):
                        pending[next_segment.frames[k]] = faces[k]
                    done_segments += 1
                    bar.update(1)
                    if progress:
                        progress(Progress(SEGMENTS, done_segments, len(segments)))
                    next_segment = next(segment_iter, None)
                frame = frames(sources[j])
                if j in pending:
                    frame = aligner.restore(frame, pending.pop(j), track.matrices[sources[j]])
                if opts.output_height:
                    frame = cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_AREA)
                # write every output-rate frame whose time falls on this model frame
                while written < num_written and math.floor(written * MODEL_FPS / out_fps) == j:
                    writer.write(frame)
                    written += 1
                    wbar.update(1)
                if progress:
                    progress(Progress(WRITING, written, num_written))
        bar.close()
        wbar.close()

    def generate_segment(self, track: FaceTrack, sources: list[int], frames: list[int], features, rows, noise,
                         generator, opts: LipsyncOptions, runtime: Runtime | None = None) -> np.ndarray:
        """Generated faces [f, res, res, 3] in [-1, 1] for output frames `frames`."""
        device, dtype = self.unet.device, self.unet.dtype
        faces = np.stack([track.faces.read(sources[j]) for j in frames])
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [f,3,res,res]
        mask = torch.from_numpy(self.mask)[None, None]  # [1,1,res,res], 1 = keep
        masked = pixels * mask
        audio = torch.stack([features[rows[j]].reshape(-1, features.shape[-1]) for j in frames])  # [f, 50, D]

        masked_latents, ref_latents = self.encode(torch.cat([masked, pixels]), generator, runtime,
                                                groups=2).chunk(2, dim=2)
        latent_mask = torch.nn.functional.interpolate(mask, size=masked_latents.shape[-2:], mode="nearest")
        latent_mask = latent_mask[:, :, None].expand(1, 1, len(frames), *masked_latents.shape[-2:])
        latents = noise.expand(-1, -1, len(frames), -1, -1)
        latents = self.denoise(latents.to(device, dtype), latent_mask.to(device, dtype), masked_latents, ref_latents,
                               audio.to(device, dtype), opts.inference_steps, opts.guidance_scale,
                               opts.enable_deepcache, self.sampler(opts.scheduler), runtime)
        decoded = self.decode(latents, runtime)  # [f, 3, res, res] in [-1, 1]
        out = decoded * (1 - mask) + pixels * mask  # keep original pixels outside the mouth region
        return out.permute(0, 2, 3, 1).clamp(-1, 1).numpy()

    # -- diffusion steps -----------------------------------------------------------------------

    def prepare_noise(self, generator) -> torch.Tensor:
        """One Gaussian latent frame [1, 4, 1, h, w] shared by every frame and segment (reference)."""
        size = self.resolution // 8
        noise = torch.randn((1, self.unet.config.out_channels, 1, size, size), generator=generator)
        return noise * self.scheduler.init_noise_sigma

    def encode(self, pixels: torch.Tensor, generator, runtime: Runtime | None = None, groups: int = 1) -> torch.Tensor:
        """VAE posterior *sample* (as the reference), shifted and scaled by the VAE's own config
        (`scaling_factor` 0.18215 for SD's VAE) -> [1, 4, f, h, w].

        `pixels` may hold `groups` equal-length image sets (masked and reference faces go through the
        encoder together); the posterior noise is drawn per set, as separate calls would draw it.
        """
        vae = self.vae
        with _cast(runtime):
            moments = [vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
                       for chunk in pixels.split(ENCODE_BATCH)]
        mean = torch.cat([m.mean for m in moments]).float()
        std = torch.cat([m.std for m in moments]).float()
        eps = torch.cat([torch.randn(part.shape, generator=generator) for part in mean.chunk(groups)]).to(vae.device)
        scale, shift = latent_scale_shift(vae)
        latents = (mean + std * eps - shift) * scale
        return latents.permute(1, 0, 2, 3)[None].to(self.unet.dtype)

    def decode(self, latents: torch.Tensor, runtime: Runtime | None = None) -> torch.Tensor:
        scale, shift = latent_scale_shift(self.vae)
        latents = latents[0].permute(1, 0, 2, 3) / scale + shift
        with _cast(runtime):
            return torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample.float().cpu()
                              for chunk in latents.split(VAE_BATCH)])

    def sampler(self, kind: str) -> SchedulerMixin:
        """The scheduler of one segment: the pipeline's own DDIM (stateless between segments), or a
        fresh multistep sampler on the same noise schedule (they keep state across steps)."""
        if kind == "ddim" and isinstance(self.scheduler, DDIMScheduler):
            return self.scheduler
        return make_sampler(kind, self.scheduler.config)

    def denoise(self, latents, mask, masked_latents, ref_latents, audio, inference_steps: int,
                guidance_scale: float, enable_deepcache: bool = False, scheduler: SchedulerMixin | None = None,
                runtime: Runtime | None = None) -> torch.Tensor:
        """The sampling loop with classifier-free guidance (null audio = zeros); DDIM with eta = 0.

        `scheduler` defaults to the pipeline's (DDIM); it gets `set_timesteps` here, which also resets
        a multistep sampler's history.
        """
        scheduler = scheduler or self.scheduler
        unet = runtime.unet if runtime else self.unet
        scheduler.set_timesteps(inference_steps, device=latents.device)
        guided = guidance_scale > 1.0
        if guided:
            audio = torch.cat([torch.zeros_like(audio), audio])
            mask, masked_latents, ref_latents = (torch.cat([x] * 2) for x in (mask, masked_latents, ref_latents))
        cache = DeepCache() if enable_deepcache else None
        for i, t in enumerate(scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents
            x = scheduler.scale_model_input(x, t)
            x = torch.cat([x, mask, masked_latents, ref_latents], dim=1)
            with _cast(runtime):
                eps = unet(x, t, encoder_hidden_states=audio, deep_cache=cache, step_index=i).sample
            eps = eps.to(latents.dtype)
            if guided:
                eps_uncond, eps_audio = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_audio - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents

    # -- helpers -------------------------------------------------------------------------------

    def _source_frames(self, track: FaceTrack, video_path) -> Callable[[int], np.ndarray]:
        """frame(i) for non-decreasing i (streamed), or any i when the frames were stored (looping)."""
        if track.frames is not None:
            return track.frames.read
        chunks = iter_frames(video_path, fps=MODEL_FPS, chunk_size=FRAME_CHUNK)
        stream = (frame for chunk in chunks for frame in chunk)
        state = {"index": -1, "frame": None}

        def frame_at(i: int) -> np.ndarray:
            while state["index"] < i:
                state["frame"], state["index"] = next(stream), state["index"] + 1
            return state["frame"]

        return frame_at


def _cast(runtime: Runtime | None):
    """The run's autocast context (none without a runtime or reduced precision)."""
    return runtime.cast() if runtime is not None else contextlib.nullcontext()
