"""DubRun: one call of LipsyncPipeline, as an object whose methods are its three workers.

A run holds what one dub needs besides the models: the speech (features per output frame), the
face track (what the face pass learned), the schedule (which segments to generate), the worker
threads and the channel between them, the shared noise frame and the generator, the options,
the runtime (speed options applied to the UNet), the progress callback and the timing hooks.

    face_pass()  worker thread: stream the video, track and align the speaker's face -> track
    generate()   main thread:   plan segments as the face pass finishes frames, VAE-encode,
                                denoise and decode them (the pipeline's encode / denoise / decode),
                                hand every output frame in order to the writer -> channel
    write()      worker thread: paste each generated face back and stream the frames to the encoder

The three overlap (workers.py): the face pass runs ahead of the model, segments are generated as
soon as the face pass has passed their frames, and the writer encodes while the next segment is
denoised. The result is the same as doing the steps one after the other. Frames, aligned faces and
generated faces never pile up in memory: aligned faces (and, when the video has to loop, the
source frames) go to fixed-size records in the run's temporary folder (frame_store.py); generated
faces wait in the channel, at most QUEUED_SEGMENTS segments.
"""

import contextlib
import math
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.face.alignment import AlignRestore
from latentsync.face.tracking import FaceTracker
from latentsync.models.unet import Conditioning
from latentsync.pipelines.acceleration import Runtime
from latentsync.pipelines.frame_store import FrameStore
from latentsync.pipelines.options import LipsyncOptions
from latentsync.pipelines.results import (DECODE, DENOISE, ENCODE, FACE_PASS, FACES, SEGMENTS, WRITE, WRITING,
                                          LipsyncResult, Progress, ProgressCallback, RunHooks)
from latentsync.pipelines.segments import Segment, SegmentPlanner, source_index
from latentsync.pipelines.workers import Channel, Stopped, Workers
from latentsync.video import VideoWriter, iter_frames

FRAME_CHUNK = 16  # frames decoded per read of the input video
QUEUED_SEGMENTS = 2  # output frames waiting for the writer, in segments: bounds memory, lets the workers overlap


@dataclass
class Speech:
    """The speech track of one run, ready for the model."""

    wav: np.ndarray  # 16 kHz mono (silence muted with silence "mute"): what the UNet hears
    num_out: int  # output frames at the model's rate: the output is exactly as long as the speech
    has_speech: np.ndarray  # bool [num_out]: the frame has speech (latentsync/vad.py)
    features: torch.Tensor  # Whisper features [T, layers, D]
    rows: list  # chunk_indices: the feature rows of each output frame

    @property
    def seconds(self) -> float:
        return len(self.wav) / SAMPLE_RATE

    def chunks(self, frames: list[int]) -> torch.Tensor:
        """The audio tokens of output `frames`: [f, 50, D]."""
        return torch.stack([self.features[self.rows[j]].reshape(-1, self.features.shape[-1]) for j in frames])


@dataclass
class FaceTrack:
    """What the face pass has learned about the source frames so far; the face-pass worker fills it
    while the model already works on the first frames.

    Entries below `ready` are final and never change; `done` is set once the pass has read all its
    frames, `ready` being then the number of source frames. The face pass publishes `ready` and
    `done` under the run's `Workers.changed` lock; the other threads only read entries below `ready`.
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
    has speech). `advance` plans, as soon as later frames cannot change them, the segments of the
    frames the face pass has finished, in the order `plan_segments` gives for the whole video, so
    the result does not depend on how far the face pass has got. The predicates only read.
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
        """Output frame j is planned (whether it is generated is known)."""
        return self.fed > j

    def group_ready(self, size: int) -> bool:
        """`size` segments are planned, or all that will be."""
        return len(self.planned) >= size or self.total is not None

    def take(self, size: int) -> list[Segment]:
        """Up to `size` planned segments of one length (they are denoised as one batch)."""
        group = [self.planned.popleft()]
        while len(group) < size and self.planned and len(self.planned[0].frames) == len(group[0].frames):
            group.append(self.planned.popleft())
        return group


@dataclass(frozen=True)
class OutputLayout:
    """Size and rate of the encoded video."""

    num_out: int  # output frames at the model's rate
    fps: float
    num_written: int  # frames at the output rate
    width: int
    height: int

    @classmethod
    def of(cls, num_out: int, opts: LipsyncOptions, width: int, height: int) -> "OutputLayout":
        fps = opts.output_fps or MODEL_FPS
        out_h = opts.output_height or height
        out_w = int(round(width * out_h / height / 2) * 2) if opts.output_height and height else width
        return cls(num_out, fps, math.ceil(num_out * fps / MODEL_FPS), out_w, out_h)


class DubRun:
    """The state of one pipeline call (use as a context manager: it owns the temporary folder, the
    face track and the worker threads; leaving it joins the workers first, then removes the files)."""

    def __init__(self, pipe, video_path, speech: Speech, num_video: int, options: LipsyncOptions, runtime: Runtime,
                 progress: ProgressCallback | None = None, hooks: RunHooks | None = None):
        self.pipe, self.video_path, self.speech, self.options = pipe, video_path, speech, options
        self.runtime, self.progress, self.hooks = runtime, progress, hooks or RunHooks()
        self.looping = speech.num_out > num_video
        self.num_faces = num_video if self.looping else min(num_video, speech.num_out)
        self.generator = torch.Generator("cpu").manual_seed(options.seed) if options.seed is not None else None
        self.layout: OutputLayout | None = None  # known with the first frame
        self.written = 0  # output-rate frames the writer has encoded
        self.sent = {FACES: 0, SEGMENTS: 0, WRITING: 0}  # the progress reported so far
        self._threads: dict = {}

    def __enter__(self) -> "DubRun":
        with contextlib.ExitStack() as stack:
            self.folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.options.temp_dir,
                                                                               prefix="latentsync-")))
            self.track = stack.enter_context(FaceTrack.create(self.folder, self.num_faces, self.pipe.resolution,
                                                              keep_frames=self.looping))
            self.workers = stack.enter_context(Workers())
            keep = self.speech.has_speech if self.options.silence == "keep" else None
            self.schedule = Schedule(self.track, self.speech.num_out, keep, self.options)
            self.channel = Channel(self.workers, maxsize=QUEUED_SEGMENTS * self.options.num_frames)
            self.noise = self.pipe.prepare_noise(self.generator)  # the generator's first draw
            self._resources = stack.pop_all()  # (closed by __exit__ from here on)
        return self

    def __exit__(self, *exc) -> None:
        self._resources.__exit__(*exc)

    @property
    def video_file(self) -> Path:
        """The encoded video without sound (in the run's temporary folder)."""
        return self.folder / "video.mp4"

    # -- the run, in order ---------------------------------------------------------------------

    def start_face_pass(self) -> None:
        """Start the face pass and wait for its first frame, which gives the output's size."""
        self._threads["faces"] = self.workers.start("faces", self.face_pass)
        self.workers.wait_until(lambda: self.track.ready > 0 or self.track.done, self.report)
        if self.track.ready == 0:
            raise UserError(f"{self.video_path}: the video has no frames")
        self.layout = OutputLayout.of(self.speech.num_out, self.options, self.track.width, self.track.height)

    def start_writer(self) -> None:
        self._threads["writer"] = self.workers.start("writer", self.write)

    def finish(self) -> None:
        """Wait for the writer and the face pass; the last progress events."""
        self.workers.join(self._threads["writer"], self.report)
        self.workers.join(self._threads["faces"], self.report)
        self.report()

    def result(self, output_path) -> LipsyncResult:
        num_out = self.speech.num_out
        missing = int((~self.track.has_face[[self.track.source(j) for j in range(num_out)]]).sum())
        warnings = [f"{self.video_path}: no face in {missing} of {num_out} output frames; those frames are kept "
                    f"unchanged"] if missing else []
        return LipsyncResult(Path(output_path), num_out, missing, self.schedule.total, warnings)

    # -- the three workers ---------------------------------------------------------------------

    def face_pass(self) -> None:
        """Worker thread: stream the first `num_faces` frames, track the speaker's face, align it into
        the track and publish the frames done after every chunk."""
        pipe, opts, track, workers = self.pipe, self.options, self.track, self.workers
        tracker = FaceTracker(pipe.face_detector, opts.face_index, opts.face_box)
        aligner = AlignRestore(pipe.resolution)
        bar = tqdm(total=self.num_faces, desc="Face detection", unit="frame", disable=not opts.show_progress)
        count = 0
        try:
            with (self.hooks.span(FACE_PASS), torch.no_grad(),
                  contextlib.closing(iter_frames(self.video_path, fps=MODEL_FPS, chunk_size=FRAME_CHUNK)) as chunks):
                for chunk in chunks:
                    for frame in chunk[: self.num_faces - count]:
                        if workers.stop.is_set():
                            raise Stopped()
                        face = tracker.track(frame)
                        if face is None:
                            aligner.reset()  # smoothing restarts with the next run of faces
                            track.add(count, frame, None, None)
                        else:
                            track.add(count, frame, *aligner.align(frame, face.points))
                        count += 1
                    bar.update(count - track.ready)
                    with workers.changed:
                        track.ready = count
                        workers.changed.notify_all()
                    if count >= self.num_faces:
                        break
            with workers.changed:
                track.done = True
                workers.changed.notify_all()
        finally:
            bar.close()

    def generate(self) -> None:
        """Main thread: hand every output frame in order to the writer as (source frame, generated face
        or None = unchanged); segments are generated `segment_batch` at a time, as soon as planned,
        just before their first frame is handed on."""
        schedule, batch = self.schedule, self.options.segment_batch
        pending: dict[int, np.ndarray] = {}  # generated faces not handed on yet (at most one group)
        bar = tqdm(desc="Lip sync segments", unit="segment", disable=not self.options.show_progress)
        for j in range(schedule.num_out):
            self.wait_until(lambda j=j: schedule.planned_past(j))
            face = None
            if schedule.generate[j]:
                while j not in pending:
                    self.wait_until(lambda: schedule.group_ready(batch))
                    group = schedule.take(batch)
                    faces = self.generate_group([s.frames for s in group])
                    for segment, generated in zip(group, faces):
                        pending.update((segment.frames[k], generated[k])
                                       for k in range(segment.write_from, len(segment.frames)))
                    schedule.done += len(group)
                    bar.total = schedule.total
                    bar.update(len(group))
                    self.report()
                face = pending.pop(j)
                self.hooks.face(j, face)
            self.channel.put((self.track.source(j), face))
        bar.close()

    def write(self) -> None:
        """Worker thread: paste each generated face back into its frame and stream all output frames
        to the encoder (repeated or dropped to the output rate); `written` follows."""
        layout, opts, track = self.layout, self.options, self.track
        frames = self.source_frames()
        aligner = AlignRestore(self.pipe.resolution)
        bar = tqdm(total=layout.num_written, desc="Writing video", unit="frame", disable=not opts.show_progress)
        written = 0
        try:
            with (self.hooks.span(WRITE),
                  VideoWriter(self.video_file, layout.fps, layout.width, layout.height, crf=opts.crf) as writer):
                for j in range(layout.num_out):
                    source, face = self._next_frame()
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
                    self.written = written
        finally:
            bar.close()

    def _next_frame(self) -> tuple[int, np.ndarray | None]:
        """The writer's next (source frame, generated face or None); the wait is not WRITE time."""
        self.hooks.end(WRITE)
        try:
            return self.channel.get()
        finally:
            self.hooks.begin(WRITE)

    # -- one group of segments -----------------------------------------------------------------

    def generate_group(self, segments: list[list[int]]) -> list[np.ndarray]:
        """Generated faces [f, res, res, 3] in [-1, 1] for each of `segments` (lists of output frames, all of
        one length f), denoised together as one batch. Each segment is VAE-encoded on its own, in order,
        so the posterior noise is drawn as one segment at a time would draw it, and every segment
        starts from the same noise frame: the faces do not depend on the batch size."""
        pipe, opts, runtime = self.pipe, self.options, self.runtime
        device, dtype = pipe.unet.device, pipe.unet.dtype
        mask = torch.from_numpy(pipe.mask)[None, None]  # [1,1,res,res], 1 = keep
        inputs = [self.segment_inputs(frames, mask) for frames in segments]
        pixels, masked_latents, ref_latents, audio = (list(part) for part in zip(*inputs))
        batch, length = len(segments), len(segments[0])
        latent_mask = torch.nn.functional.interpolate(mask, size=masked_latents[0].shape[-2:], mode="nearest")
        latent_mask = latent_mask[:, :, None].expand(batch, 1, length, *masked_latents[0].shape[-2:])
        conditioning = Conditioning(latent_mask.to(device, dtype), torch.cat(masked_latents), torch.cat(ref_latents))
        latents = self.noise.expand(batch, -1, length, -1, -1)
        with self.hooks.span(DENOISE):
            latents = pipe.denoise(latents.to(device, dtype), conditioning, torch.cat(audio).to(device, dtype),
                                   opts.inference_steps, opts.guidance_scale, enable_deepcache=opts.enable_deepcache,
                                   scheduler=pipe.sampler(opts.scheduler), runtime=runtime, hooks=self.hooks)
        faces = []
        for i, original in enumerate(pixels):
            with self.hooks.span(DECODE):
                decoded = pipe.decode(latents[i:i + 1], runtime, opts.decode_region)  # [f,3,res,res] in [-1, 1]
            out = decoded * (1 - mask) + original * mask  # keep original pixels outside the mouth region
            faces.append(out.permute(0, 2, 3, 1).clamp(-1, 1).numpy())
        return faces

    def segment_inputs(self, frames: list[int], mask: torch.Tensor):
        """(pixels [f,3,res,res] in [-1, 1], masked and reference latents [1,4,f,h,w], audio [f,50,D])."""
        track = self.track
        faces = np.stack([track.faces.read(track.source(j)) for j in frames])
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        with self.hooks.span(ENCODE):
            latents = self.pipe.encode(torch.cat([pixels * mask, pixels]), self.generator, self.runtime, groups=2)
        masked_latents, ref_latents = latents.chunk(2, dim=2)
        return pixels, masked_latents, ref_latents, self.speech.chunks(frames)

    # -- helpers -------------------------------------------------------------------------------

    def wait_until(self, ready: Callable[[], bool]) -> None:
        """Wait (main thread) until `ready()`, planning the frames the face pass has finished after
        every wake-up and reporting progress."""
        self.workers.wait_until(ready, self.report, refresh=self.schedule.advance)

    def report(self) -> None:
        """Send the run's Progress events, all from the main thread (a callback may raise to cancel).

        FACES follows the face pass. SEGMENTS and WRITING are held back until the face pass is over
        (then the number of segments is known; the face pass is much faster than the model, so this
        costs little), so the stages report in their order and one progress bar over them never
        goes back. Called after every wake-up of the main thread; sends an event only when a count moved.
        """
        if self.progress is None:
            return
        self._send(FACES, self.track.ready, self.num_faces)
        if self.track.done and self.schedule.total is not None:
            self._send(SEGMENTS, self.schedule.done, self.schedule.total)
            self._send(WRITING, self.written, self.layout.num_written)

    def _send(self, stage: str, done: int, total: int) -> None:
        if self.sent[stage] != done:
            self.sent[stage] = done
            self.progress(Progress(stage, done, total))

    def source_frames(self) -> Callable[[int], np.ndarray]:
        """frame(i) for non-decreasing i (streamed), or any i when the frames were stored (looping)."""
        if self.track.frames is not None:
            return self.track.frames.read
        chunks = iter_frames(self.video_path, fps=MODEL_FPS, chunk_size=FRAME_CHUNK)
        stream = (frame for chunk in chunks for frame in chunk)
        state = {"index": -1, "frame": None}

        def frame_at(i: int) -> np.ndarray:
            while state["index"] < i:
                state["frame"], state["index"] = next(stream), state["index"] + 1
            return state["frame"]

        return frame_at
