"""LipsyncPipeline: a talking-head video + a speech track -> the dubbed video.

The call reads top to bottom as the algorithm:
  1. speech -> Whisper features (silence muted) -> one audio chunk per output frame;
  2. face pass over the video (streamed): track the speaker, align each face to the model square;
  3. plan 16-frame segments over runs of output frames that have a face (segments.py);
  4. per segment: VAE-encode masked and reference faces, denoise with the chosen sampler (DDIM by
     default, latentsync/schedulers.py) and classifier-free guidance (`segment_batch` segments per
     UNet call), decode, keep generated pixels only inside the mask;
  5. paste the faces back into their frames and stream them to the encoder; mux the speech.
Steps 2, 3-4 and 5 overlap (stages.py): the face pass runs in its own thread ahead of the model,
segments are planned and generated as soon as the face pass has passed their frames, and a writer
thread pastes back and encodes while the next segment is denoised. The result is the same as doing
the steps one after the other. Frames, aligned faces and generated faces never pile up in memory:
aligned faces (and, when the video has to loop, the source frames) go to fixed-size records in a
temporary folder (frame_store.py); generated faces wait in a queue of at most QUEUED_SEGMENTS segments.
Options are `LipsyncOptions` (options.py); the call reports `Progress` events and returns a
`LipsyncResult` (results.py). Files are read by latentsync/loading.py. A run's speed options
(autocast precision, CPU kernels, compile) are applied for that run by acceleration.py.
"""

import contextlib
import math
import os
import tempfile
from collections import deque
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
from latentsync.pipelines.segments import Segment, SegmentPlanner, plan_segments, source_index
from latentsync.pipelines.stages import Channel, Stages, Stopped
from latentsync.models.vae import decode_rows, first_generated_row, latent_scale_shift, vae_scale_factor
from latentsync.schedulers import make_sampler
from latentsync.vad import mute_silence, speech_frames
from latentsync.video import VideoWriter, count_frames, iter_frames, mux_audio, probe_video

__all__ = ["LipsyncPipeline", "LipsyncOptions", "LipsyncResult", "Progress", "plan_segments", "source_index"]

VAE_BATCH = 4  # frames per VAE decode call: the VAE works frame by frame, so this only bounds peak memory
ENCODE_BATCH = 2 * VAE_BATCH  # masked and reference faces go through the encoder together
FRAME_CHUNK = 16  # frames decoded per read of the input video
QUEUED_SEGMENTS = 2  # output frames waiting for the writer, in segments: bounds memory, lets the stages overlap


@dataclass
class FaceTrack:
    """What the face pass has learned about the source frames so far; the face-pass stage fills it
    while the model already works on the first frames.

    Entries below `ready` are final and never change; `done` is set once the pass has read all its
    frames, `ready` being then the number of source frames. The face pass publishes `ready` and
    `done` under the run's `Stages.changed` lock; the other stages only read entries below `ready`.
    """

    has_face: np.ndarray  # bool [capacity]
    matrices: np.ndarray  # float64 [capacity, 2, 3] frame -> crop
    faces: FrameStore  # aligned faces [res, res, 3]
    folder: Path
    keep_frames: bool  # also store the source frames (the video has to loop)
    frames: FrameStore | None = None  # created with the first frame when `keep_frames`
    ready: int = 0
    done: bool = False
    height: int = 0
    width: int = 0

    @classmethod
    def create(cls, folder: Path, capacity: int, resolution: int, keep_frames: bool) -> "FaceTrack":
        return cls(np.zeros(capacity, dtype=bool), np.zeros((capacity, 2, 3)),
                   FrameStore(folder / "faces.u8", (resolution, resolution, 3)), folder, keep_frames)

    def add(self, index: int, frame: np.ndarray, aligned: np.ndarray | None, matrix: np.ndarray | None) -> None:
        """Record source frame `index` (`aligned` None: no face)."""
        if self.frames is None and self.keep_frames:
            self.frames = FrameStore(self.folder / "frames.u8", frame.shape)
        self.height, self.width = frame.shape[:2]
        if aligned is not None:
            self.faces.write(index, aligned)
            self.has_face[index], self.matrices[index] = True, matrix
        if self.frames is not None:
            self.frames.write(index, frame)

    def source(self, j: int) -> int:
        """The source frame output frame `j` shows, once final (j < ready, or done): ping-pong looping."""
        return source_index(j, self.ready)

    def close(self) -> None:
        for store in (self.faces, self.frames):
            if store is not None:
                store.close()

    def __enter__(self) -> "FaceTrack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Schedule:
    """Which output frames are generated, planned while the face pass runs (main thread only).

    Output frame j is generated when its source frame has a face (and, with silence "keep", when j
    has speech). Segments come from SegmentPlanner as soon as later frames cannot change them, in
    the order `plan_segments` gives for the whole video, so the result does not depend on how far
    the face pass has got.
    """

    def __init__(self, track: FaceTrack, num_out: int, speech: np.ndarray | None, opts: LipsyncOptions):
        self.track, self.num_out, self.speech = track, num_out, speech
        self.planner = SegmentPlanner(opts.num_frames, opts.segment_tail)
        self.generate = np.zeros(num_out, dtype=bool)
        self.planned: deque[Segment] = deque()  # final segments not generated yet
        self.fed = 0  # output frames planned so far
        self.count = 0  # segments planned so far
        self.total: int | None = None  # segments of the whole video, once every frame is planned
        self.done = 0  # segments generated

    def advance(self) -> None:
        """Plan every output frame whose source frame the face pass has finished."""
        track = self.track
        known = self.num_out if track.done else min(track.ready, self.num_out)  # `done` first: then `ready` is final
        for j in range(self.fed, known):
            self.generate[j] = track.has_face[track.source(j)] and (self.speech is None or self.speech[j])
            self._add(self.planner.feed(bool(self.generate[j])))
        self.fed = max(self.fed, known)
        if self.fed == self.num_out and self.total is None:
            self._add(self.planner.finish())
            self.total = self.count

    def _add(self, segments: list[Segment]) -> None:
        self.planned.extend(segments)
        self.count += len(segments)

    def planned_past(self, j: int) -> bool:
        self.advance()
        return self.fed > j

    def group_ready(self, size: int) -> bool:
        self.advance()
        return len(self.planned) >= size or self.total is not None

    def take(self, size: int) -> list[Segment]:
        """Up to `size` planned segments of one length (they are denoised as one batch)."""
        group = [self.planned.popleft()]
        while len(group) < size and self.planned and len(self.planned[0].frames) == len(group[0].frames):
            group.append(self.planned.popleft())
        return group


class Reporter:
    """Sends a run's Progress events, all from the main thread (a callback may raise to cancel the run).

    FACES follows the face pass. SEGMENTS and WRITING are held back until the face pass is over (then
    the number of segments is known; the face pass is much faster than the model, so this costs
    little), so the stages report in their order and one progress bar over them never goes back.
    Called after every wake-up of the main thread; sends an event only when a count moved.
    """

    def __init__(self, callback: ProgressCallback | None, track: FaceTrack, schedule: Schedule, num_faces: int,
                 num_written: int):
        self.callback, self.track, self.schedule = callback, track, schedule
        self.num_faces, self.num_written = num_faces, num_written
        self.written = 0  # set by the writer stage
        self.sent = {FACES: 0, SEGMENTS: 0, WRITING: 0}

    def __call__(self) -> None:
        if self.callback is None:
            return
        self._send(FACES, self.track.ready, self.num_faces)
        if self.track.done and self.schedule.total is not None:
            self._send(SEGMENTS, self.schedule.done, self.schedule.total)
            self._send(WRITING, self.written, self.num_written)

    def _send(self, stage: str, done: int, total: int) -> None:
        if self.sent[stage] != done:
            self.sent[stage] = done
            self.callback(Progress(stage, done, total))


@dataclass(frozen=True)
class OutputLayout:
    """Size and rate of the encoded video."""

    num_out: int  # output frames at the model's rate
    fps: float
    num_written: int  # frames at the output rate
    width: int
    height: int

    @classmethod
    def of(cls, num_out: int, opts: LipsyncOptions, width: int = 0, height: int = 0) -> "OutputLayout":
        fps = opts.output_fps or MODEL_FPS
        out_h = opts.output_height or height
        out_w = int(round(width * out_h / height / 2) * 2) if opts.output_height and height else width
        return cls(num_out, fps, math.ceil(num_out * fps / MODEL_FPS), out_w, out_h)


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
                         vae_path=None, device=None, dtype=None, face_backend: str | None = None,
                         checkpoints_dir: str | os.PathLike | None = None) -> "LipsyncPipeline":
        """`from_files` with the files given one by one (whisper_ckpt_path None: picked by the UNet's
        width; vae_path None: the VAE folder under checkpoints_dir)."""
        files = loading.ModelFiles.in_folder(checkpoints_dir, unet_config=unet_config_path,
                                             unet_ckpt=inference_ckpt_path, whisper=whisper_ckpt_path, vae=vae_path)
        return cls.from_files(files, device=device, dtype=dtype, face_backend=face_backend)

    @classmethod
    def from_files(cls, files: loading.ModelFiles, device=None, dtype=None, face_backend: str | None = None,
                   **loaded) -> "LipsyncPipeline":
        """Everything inference needs, loaded from `files` (checked first: a UserError names a missing
        file and where to get it); `face_backend` None: the default detector. `loaded` (unet,
        audio_encoder, vae) are parts already in memory, used instead of loading them."""
        return cls(**loading.load_components(files, device, dtype, face_backend, **loaded))

    # -- the algorithm -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None,
                 progress: ProgressCallback | None = None) -> LipsyncResult:
        """Dub `video_path` with `audio_path` into `output_path`; `progress` receives Progress events
        (from the calling thread)."""
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
        num_faces = num_video if looping else min(num_video, num_out)
        generator = torch.Generator("cpu").manual_seed(opts.seed) if opts.seed is not None else None
        with (tempfile.TemporaryDirectory(dir=opts.temp_dir, prefix="latentsync-") as tmp,
              FaceTrack.create(Path(tmp), num_faces, self.resolution, keep_frames=looping) as track,
              Stages() as stages):  # leaving this joins the stages first, then closes the track
            face_stage = stages.start("faces", self.face_pass, video_path, track, num_faces, stages, opts)
            schedule = Schedule(track, num_out, speech if opts.silence == "keep" else None, opts)
            report = Reporter(progress, track, schedule, num_faces, OutputLayout.of(num_out, opts).num_written)
            stages.wait_until(lambda: track.ready > 0 or track.done, report)
            if track.ready == 0:
                raise UserError(f"{video_path}: the video has no frames")
            layout = OutputLayout.of(num_out, opts, track.width, track.height)
            channel = Channel(stages, maxsize=QUEUED_SEGMENTS * opts.num_frames)
            writer = stages.start("writer", self.write_frames, channel, track, layout, video_path,
                                  Path(tmp) / "video.mp4", opts, report)
            with self.accelerator.apply(opts) as runtime:
                self.generate_frames(track, schedule, stages, channel, features, rows, self.prepare_noise(generator),
                                     generator, opts, runtime, report)
            stages.join(writer, report)
            stages.join(face_stage, report)
            report()
            mux_audio(Path(tmp) / "video.mp4", audio_path, output_path, duration=len(wav) / SAMPLE_RATE)
            missing = int((~track.has_face[[track.source(j) for j in range(num_out)]]).sum())
        warnings = [f"{video_path}: no face in {missing} of {num_out} output frames; those frames are kept "
                    f"unchanged"] if missing else []
        return LipsyncResult(Path(output_path), num_out, missing, schedule.total, warnings)

    def face_pass(self, video_path, track: FaceTrack, num_frames: int, stages: Stages,
                  options: LipsyncOptions) -> None:
        """Stage (own thread): stream the first `num_frames` frames, track the speaker's face, align it
        into `track` and publish the frames done after every chunk."""
        tracker = FaceTracker(self.face_detector, options.face_index, options.face_box)
        aligner = AlignRestore(self.resolution)
        bar = tqdm(total=num_frames, desc="Face detection", unit="frame", disable=not options.show_progress)
        count = 0
        try:
            with torch.no_grad(), contextlib.closing(iter_frames(video_path, fps=MODEL_FPS,
                                                                 chunk_size=FRAME_CHUNK)) as chunks:
                for chunk in chunks:
                    for frame in chunk[: num_frames - count]:
                        if stages.stop.is_set():
                            raise Stopped()
                        face = tracker.track(frame)
                        if face is None:
                            aligner.reset()  # smoothing restarts with the next run of faces
                            track.add(count, frame, None, None)
                        else:
                            track.add(count, frame, *aligner.align(frame, face.points))
                        count += 1
                    bar.update(count - track.ready)
                    with stages.changed:
                        track.ready = count
                        stages.changed.notify_all()
                    if count >= num_frames:
                        break
            with stages.changed:
                track.done = True
                stages.changed.notify_all()
        finally:
            bar.close()

    def generate_frames(self, track: FaceTrack, schedule: Schedule, stages: Stages, channel: Channel, features,
                        rows, noise, generator, opts: LipsyncOptions, runtime: Runtime, report: Reporter) -> None:
        """Main-thread stage: hand every output frame in order to the writer as (source frame, generated
        face or None = unchanged); segments are generated `opts.segment_batch` at a time, as soon as
        planned, just before their first frame is handed on."""
        pending: dict[int, np.ndarray] = {}  # generated faces not handed on yet (at most one group)
        bar = tqdm(desc="Lip sync segments", unit="segment", disable=not opts.show_progress)
        for j in range(schedule.num_out):
            stages.wait_until(lambda j=j: schedule.planned_past(j), report)
            face = None
            if schedule.generate[j]:
                while j not in pending:
                    stages.wait_until(lambda: schedule.group_ready(opts.segment_batch), report)
                    group = schedule.take(opts.segment_batch)
                    faces = self.generate_segments(track, [s.frames for s in group], features, rows, noise,
                                                   generator, opts, runtime)
                    for segment, generated in zip(group, faces):
                        pending.update((segment.frames[k], generated[k])
                                       for k in range(segment.write_from, len(segment.frames)))
                    schedule.done += len(group)
                    bar.total = schedule.total
                    bar.update(len(group))
                    report()
                face = pending.pop(j)
            channel.put((track.source(j), face))
        bar.close()

    def write_frames(self, channel: Channel, track: FaceTrack, layout: OutputLayout, video_path, out_path: Path,
                     opts: LipsyncOptions, report: Reporter) -> None:
        """Stage (own thread): paste each generated face back into its frame and stream all output frames
        to the encoder (repeated or dropped to the output rate); `report.written` follows."""
        frames = self._source_frames(track, video_path)
        aligner = AlignRestore(self.resolution)
        bar = tqdm(total=layout.num_written, desc="Writing video", unit="frame", disable=not opts.show_progress)
        written = 0
        try:
            with VideoWriter(out_path, layout.fps, layout.width, layout.height, crf=opts.crf) as writer:
                for j in range(layout.num_out):
                    source, face = channel.get()
                    frame = frames(source)
                    if face is not None:
                        frame = aligner.restore(frame, face, track.matrices[source])
                    if opts.output_height:
                        frame = cv2.resize(frame, (layout.width, layout.height), interpolation=cv2.INTER_AREA)
                    # write every output-rate frame whose time falls on this model frame
                    while written < layout.num_written and math.floor(written * MODEL_FPS / layout.fps) == j:
                        writer.write(frame)
                        written += 1
                    bar.update(written - bar.n)
                    report.written = written
        finally:
            bar.close()

    def generate_segments(self, track: FaceTrack, segments: list[list[int]], features, rows, noise, generator,
                          opts: LipsyncOptions, runtime: Runtime | None = None) -> list[np.ndarray]:
        """Generated faces [f, res, res, 3] in [-1, 1] for each of `segments` (lists of output frames, all of
        one length f), denoised together as one batch. Each segment is VAE-encoded on its own, in order,
        so the posterior noise is drawn as one segment at a time would draw it, and every segment
        starts from the same noise frame: the faces do not depend on the batch size."""
        device, dtype = self.unet.device, self.unet.dtype
        mask = torch.from_numpy(self.mask)[None, None]  # [1,1,res,res], 1 = keep
        inputs = [self._segment_inputs(track, frames, features, rows, mask, generator, runtime) for frames in segments]
        pixels, masked_latents, ref_latents, audio = (list(part) for part in zip(*inputs))
        batch, length = len(segments), len(segments[0])
        latent_mask = torch.nn.functional.interpolate(mask, size=masked_latents[0].shape[-2:], mode="nearest")
        latent_mask = latent_mask[:, :, None].expand(batch, 1, length, *masked_latents[0].shape[-2:])
        latents = noise.expand(batch, -1, length, -1, -1)
        latents = self.denoise(latents.to(device, dtype), latent_mask.to(device, dtype), torch.cat(masked_latents),
                               torch.cat(ref_latents), torch.cat(audio).to(device, dtype), opts.inference_steps,
                               opts.guidance_scale, opts.enable_deepcache, self.sampler(opts.scheduler), runtime)
        faces = []
        for i, original in enumerate(pixels):
            decoded = self.decode(latents[i:i + 1], runtime, opts.decode_region)  # [f, 3, res, res] in [-1, 1]
            out = decoded * (1 - mask) + original * mask  # keep original pixels outside the mouth region
            faces.append(out.permute(0, 2, 3, 1).clamp(-1, 1).numpy())
        return faces

    def _segment_inputs(self, track: FaceTrack, frames: list[int], features, rows, mask, generator, runtime):
        """(pixels [f,3,res,res] in [-1, 1], masked and reference latents [1,4,f,h,w], audio [f,50,D])."""
        faces = np.stack([track.faces.read(track.source(j)) for j in frames])
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        masked_latents, ref_latents = self.encode(torch.cat([pixels * mask, pixels]), generator, runtime,
                                                  groups=2).chunk(2, dim=2)
        audio = torch.stack([features[rows[j]].reshape(-1, features.shape[-1]) for j in frames])
        return pixels, masked_latents, ref_latents, audio

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

    def decode(self, latents: torch.Tensor, runtime: Runtime | None = None, region: str = "full") -> torch.Tensor:
        """Latents [1, 4, f, h, w] -> faces [f, 3, res, res] in [-1, 1].

        region "mouth" decodes only the latent rows from the mask's first generated row (less
        DECODE_MARGIN rows of context) down (models/vae.py `decode_rows`); the rows above, which the
        mask keeps entirely from the source, come back as zeros.
        """
        scale, shift = latent_scale_shift(self.vae)
        latents = latents[0].permute(1, 0, 2, 3) / scale + shift
        first = first_generated_row(self.mask, vae_scale_factor(self.vae)) if region == "mouth" else 0
        with _cast(runtime):
            rows = torch.cat([decode_rows(self.vae, chunk.to(self.vae.dtype), first).float().cpu()
                              for chunk in latents.split(VAE_BATCH)])
        return torch.nn.functional.pad(rows, (0, 0, self.resolution - rows.shape[-2], 0))

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
