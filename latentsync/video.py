"""Streaming video input/output for LatentSync: probe, decode in chunks, encode, mux audio.

The reference reads a whole re-encoded 25 fps copy of the video into memory and shells out to
ffmpeg with unquoted command strings. Here:

* `probe_video` / `iter_frames` / `iter_single_frames` / `count_frames` / `read_frames` are the
  project's only frame readers. Their contract: uint8 RGB (channel order R, G, B; callers that
  need OpenCV's BGR flip the last axis), in display orientation (the rotation stored by phones
  is applied), resampled on the fly to a constant frame rate by the rule below (`fps=None`:
  every decoded frame once). Memory does not grow with the clip length.
* `open_media` / `open_video` are the project's only way to open a file with PyAV (a one-line
  UserError naming the file when it is missing, not media, or lacks the stream), and
  `read_packets` its only demux-only frame timing (times, clip end, key frames; the data
  pipeline's stream-copy decisions use it too).
* `VideoWriter` pipes raw RGB frames into ffmpeg (`latentsync.io`: argument lists, temporary
  name renamed on success, a failure is a one-line error with ffmpeg's own reason).
* `mux_audio` puts the ORIGINAL driving audio (its own sample rate and channels) next to the
  generated video; `resample_video` makes the constant-fps, 16 kHz mono copies used by the data
  pipeline.

Frame-rate conversion rule (identical to ffmpeg's `fps` filter with its default rounding, which
is what `resample_video` runs; checked against it in the tests, also for variable frame rates):
with times t_i measured from the file's start time (the earliest stream start, as the ffmpeg
command line does), source frame i covers the output slots from `round(t_i * fps)` (halves round
up) to the next frame's slot, so output frame k (time k / fps) shows the latest source frame
with t_i <= (k + 1/2) / fps. Frames covering no slot are dropped, frames covering several are
repeated, nothing is blended. A video starting after its audio begins with repeats of its first
shown frame (keeps A/V sync). The clip ends at the last packet's time plus its duration, giving
`round(end * fps)` output frames (2 s at any source rate -> 50 frames at 25 fps). A frame the
decoder rejects (damaged file) is covered by the previous good one, so with an `fps` the number
of frames is always `count_frames(path, fps)`. Note that plain `ffmpeg -r` differs: it lets
the output drift up to 1.1 frames and then adds frames (52 instead of 50 for 2 s at 30 -> 25).
"""

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import soundfile

from latentsync.constants import MODEL_FPS, OUTPUT_CRF, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.io import (atomic_output, commit, discard, ffmpeg_command, ffmpeg_failure, run_ffmpeg,
                           temp_path_for)

PathLike = Union[str, os.PathLike]

DEFAULT_CHUNK_SIZE = 16  # frames per yielded chunk (one UNet segment)
COLOR_SPACE = "bt709"  # written videos are converted with and tagged as BT.709 (HD standard)
AUDIO_BITRATE = "192k"  # AAC bitrate for muxed output audio
FPS_MAX_DENOMINATOR = 1001000  # float fps -> exact fraction (29.97, 30000/1001, 12.5 ...)
# names that used to be re-exported here: they still resolve, with a DeprecationWarning, until
# the last importers take them from their own module
@dataclass
class VideoInfo:
    """What a caller needs to know about a video file before decoding it."""

    path: str
    width: int  # display width (after rotation)
    height: int  # display height (after rotation)
    fps: float  # average source frame rate
    num_frames: int  # source frames (not resampled; see count_frames)
    duration: float  # seconds
    has_audio: bool
    rotation: int  # display rotation in degrees counter-clockwise (0, 90, 180, 270)


# --------------------------------------------------------------------------------------------
# reading


def _check_exists(path: PathLike, what: str = "video file") -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: {what} not found")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a file")
    return path


def av_reason(error: Exception) -> str:
    """The short reason of a PyAV error (its strerror), for one-line messages."""
    return getattr(error, "strerror", None) or str(error)


def open_media(path: PathLike, kind: Optional[str] = None, what: str = "media file"):
    """The project's one way to open a file with PyAV: the input container of `path`, or a
    one-line UserError naming the file when it is missing, a folder, not readable by FFmpeg or
    (with `kind` "video" or "audio") without such a stream. `what` names the file in messages
    ("video file", "audio file", ...). Use it as a context manager."""
    path = _check_exists(path, what)
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise UserError(f"{path}: not a readable {what} ({av_reason(e)})") from None
    if kind is not None and not getattr(container.streams, kind):
        container.close()
        raise UserError(f"{path}: contains no {kind} stream")
    return container


def open_video(path: PathLike) -> Tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` with PyAV and return (container, first video stream), or raise UserError."""
    container = open_media(path, "video", what="video file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _decoded_frames(container, stream, path: str) -> Iterator[av.VideoFrame]:
    """Decode the video stream. Like the ffmpeg command line, a packet the decoder rejects
    (damaged or cut-off data) is skipped; a stream of which nothing decodes is a UserError."""
    decoded, failure = 0, None
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                failure = e
                continue
            decoded += len(frames)
            yield from frames
    except av.error.FFmpegError as e:  # the demuxer itself gave up: keep what was decoded
        failure = e
    if decoded == 0 and failure is not None:
        raise UserError(f"{path}: cannot decode the video ({av_reason(failure)})")


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a decoded frame, snapped to a multiple of 90."""
    degrees = getattr(frame, "rotation", 0) or 0
    return int(round(degrees / 90.0)) * 90 % 360


def _to_rgb(frame: av.VideoFrame, rotation: int, size: Tuple[int, int]) -> np.ndarray:
    """Decoded frame -> uint8 RGB [H, W, 3] in display orientation; `size` is the stored (w, h)."""
    width, height = size
    if (frame.width, frame.height) != (width, height):  # size change mid-stream: keep the first
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)  # np.rot90 turns counter-clockwise, like the matrix
    return rgb


def _as_fraction(fps: float) -> Fraction:
    if fps is None or not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)


def _slot(seconds: Fraction, fps: Fraction) -> int:
    """Output slot of a time: round(seconds * fps), halves rounded up (ffmpeg's fps filter)."""
    return math.floor(seconds * fps + Fraction(1, 2))


def _default_frame_duration(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return 1 / Fraction(rate) if rate else Fraction(1, MODEL_FPS)


class _Resampler:
    """Maps items with times (presentation order) to constant-rate output slots.

    Each item covers the slots from its own slot to the next item's slot. An item whose range is
    empty is dropped. Slots before the first covering item (a video starting after the file's
    start) repeat that item, as ffmpeg's fps filter does.
    """

    def __init__(self, fps: Fraction):
        self.fps = fps
        self.next_slot = 0  # first output slot not yet emitted
        self.pending = None  # item waiting for the next item's time to know how often it shows
        self.pending_slot = 0

    def _emit_until(self, until: int) -> List:
        if self.pending is None or until <= self.pending_slot:
            return []
        out = [self.pending] * (until - self.next_slot)
        self.next_slot = until
        return out

    def push(self, item, seconds: Fraction) -> List:
        """Add an item at `seconds`; return the items to output now (in order, with repeats)."""
        slot = _slot(seconds, self.fps)
        if self.pending is not None:
            slot = max(slot, self.pending_slot)  # tolerate non-monotonic times
        out = self._emit_until(slot)
        self.pending, self.pending_slot = item, slot
        return out

    def finish(self, end_seconds: Fraction) -> List:
        """Flush the last item up to the clip end (at least one output frame overall)."""
        until = max(_slot(end_seconds, self.fps), self.pending_slot + (self.next_slot == 0))
        out = self._emit_until(until)
        self.pending = None
        return out


def _time_origin(container, stream) -> Optional[Fraction]:
    """Time (in the video stream's clock, seconds) that output frame 0 starts at.

    Like the ffmpeg command line: the file's start time, i.e. the earliest start of any stream.
    A video that starts after its audio thus begins with repeats of its first frame, keeping
    audio and video in sync. None if the file does not say (then: the first frame's time).
    """
    if container.start_time is None:
        return None
    origin = Fraction(container.start_time, av.time_base)
    if stream.start_time is not None and stream.time_base:
        own = stream.start_time * Fraction(stream.time_base)
        if abs(own - origin) <= Fraction(1, av.time_base):  # avoid microsecond rounding
            origin = own
    return origin


@dataclass(frozen=True)
class VideoPackets:
    """A video stream's frame timing, read by demuxing only (no decoding; a fraction of a second
    per clip). Times are seconds since the file start (`_time_origin`), as the resampling rule
    of the module docstring measures them."""

    keyframes: Tuple[bool, ...]  # decode order: the packet is a key frame
    order: Tuple[int, ...]  # presentation order: order[k] is the decode index of the k-th frame shown
    times: Tuple[Fraction, ...]  # presentation order: when each frame is shown
    end: Fraction  # the clip end: the last frame's time plus its duration


def read_packets(container, stream, path: PathLike) -> VideoPackets:
    """The `VideoPackets` of `stream` in an open container (UserError naming `path` if the
    demuxer fails or the stream has no frames)."""
    time_base = Fraction(stream.time_base)
    pts, durations, keyframes = [], [], []
    origin = _time_origin(container, stream)
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None or packet.is_discard:
                continue
            pts.append(packet.pts)
            durations.append(packet.duration or 0)
            keyframes.append(bool(packet.is_keyframe))
    except av.error.FFmpegError as e:
        raise UserError(f"{path}: cannot read the video ({av_reason(e)})") from None
    if not pts:
        raise UserError(f"{path}: the video stream has no frames")
    order = sorted(range(len(pts)), key=pts.__getitem__)
    origin = pts[order[0]] * time_base if origin is None else origin
    times = tuple(pts[i] * time_base - origin for i in order)
    last = durations[order[-1]]
    end = times[-1] + (last * time_base if last else _default_frame_duration(stream))
    return VideoPackets(tuple(keyframes), tuple(order), times, end)


def _frame_times(frames, stream, origin) -> Iterator[Tuple[av.VideoFrame, Fraction]]:
    """Yield (frame, seconds since `origin`); origin None means the first frame's time."""
    time_base = Fraction(stream.time_base) if stream.time_base else None
    default = _default_frame_duration(stream)
    previous = None
    for frame in frames:
        if frame.pts is not None and time_base is not None:
            t = frame.pts * time_base
            origin = t if origin is None else origin
            seconds = t - origin
        else:  # no timestamp: assume the average rate
            seconds = Fraction(0) if previous is None else previous + default
        previous = seconds
        yield frame, seconds


def probe_video(path: PathLike) -> VideoInfo:
    """Read size (as displayed), frame rate, length, audio presence and rotation of a video.

    Decodes the first frame to make sure the file is really decodable and to read its
    display rotation. Raises UserError naming the file for missing, non-video, undecodable
    or empty files.
    """
    path = _check_exists(path)
    container, stream = open_video(path)
    with container:
        first = next(_decoded_frames(container, stream, path), None)
        if first is None:
            raise UserError(f"{path}: the video stream has no decodable frames")
        rotation = _rotation(first)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        num_frames = stream.frames
        duration = stream_duration(container, stream)
        if num_frames <= 0:  # header does not say: count packets (no pixel decoding)
            times, end = _packet_times(path)
            num_frames = len(times)
            duration = duration or float(end)
        if not duration and fps:
            duration = num_frames / fps
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            num_frames=int(num_frames),
            duration=float(duration),
            has_audio=bool(container.streams.audio),
            rotation=rotation,
        )


def stream_duration(container, stream) -> float:
    """Seconds the stream (else the container) says it lasts; 0.0 when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _packet_times(path: str) -> Tuple[Sequence[Fraction], Fraction]:
    """Presentation times (seconds since the file start, sorted) of all video packets, and the
    clip end time, read by demuxing only (no decoding)."""
    container, stream = open_video(path)
    with container:
        packets = read_packets(container, stream, path)
    return packets.times, packets.end


def _slot_sources(times: Sequence[Fraction], end: Fraction, fps: Optional[float]) -> List[int]:
    """For each output frame, the index of the source frame it shows (see module docstring)."""
    if fps is None:
        return list(range(len(times)))
    resampler = _Resampler(_as_fraction(fps))
    sources = []
    for index, seconds in enumerate(times):
        sources += resampler.push(index, seconds)
    return sources + resampler.finish(end)


def count_frames(path: PathLike, fps: Optional[float] = MODEL_FPS) -> int:
    """Number of frames `iter_frames(path, fps)` yields, from packet timestamps (no decoding)."""
    times, end = _packet_times(_check_exists(path))
    return len(_slot_sources(times, end, fps))


def iter_frames(
    path: PathLike, fps: Optional[float] = MODEL_FPS, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[np.ndarray]:
    """Stream a video as uint8 RGB chunks `[n <= chunk_size, H, W, 3]` in display orientation.

    RGB order (not OpenCV's BGR); see the module docstring for the frame-rate rule.

    With `fps` the frames are resampled to that constant rate by timestamps (duplicated or
    dropped, see the module docstring); `fps=None` passes every decoded frame through. Only one
    chunk (plus the decoder's few reference frames) is held at a time.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    path = _check_exists(path)
    chunk, filled = None, 0  # frames are copied straight into the chunk (no list + stack)
    for rgb in _iter_rgb(path, fps):
        if chunk is None:
            chunk = np.empty((chunk_size,) + rgb.shape, np.uint8)
        chunk[filled] = rgb
        filled += 1
        if filled == chunk_size:
            yield chunk
            chunk, filled = None, 0
    if filled:
        yield chunk[:filled].copy()


def iter_single_frames(path: PathLike, fps: Optional[float] = MODEL_FPS) -> Iterator[np.ndarray]:
    """The frames of `iter_frames(path, fps)` one by one: uint8 RGB `[H, W, 3]`, display
    orientation, same frame-rate rule. A repeated source frame is the same (read-only use) array."""
    yield from _iter_rgb(_check_exists(path), fps)


def _iter_rgb(path: str, fps: Optional[float]) -> Iterator[np.ndarray]:
    """Single RGB frames at the output rate; a repeated source frame is converted once and
    dropped source frames are never converted."""
    resampler = _Resampler(_as_fraction(fps)) if fps is not None else None
    # the clip end comes from the packet index, so damaged frames (repeated from the last good
    # one) never change the number of output frames: it is always count_frames(path, fps)
    end = _packet_times(path)[1] if resampler else None
    container, stream = open_video(path)
    with container:
        rotation = size = None
        shown, rgb = None, None
        frames = _decoded_frames(container, stream, path)
        origin = _time_origin(container, stream)
        for frame, seconds in _frame_times(frames, stream, origin):
            if size is None:
                rotation, size = _rotation(frame), (frame.width, frame.height)
            for out in resampler.push(frame, seconds) if resampler else [frame]:
                if out is not shown:
                    shown, rgb = out, _to_rgb(out, rotation, size)
                yield rgb
        if size is None:
            raise UserError(f"{path}: the video stream has no decodable frames")
        for out in resampler.finish(end) if resampler else []:
            if out is not shown:
                shown, rgb = out, _to_rgb(out, rotation, size)
            yield rgb


def read_frames(
    path: PathLike, start: int, count: int, fps: Optional[float] = MODEL_FPS
) -> np.ndarray:
    """Frames `start .. start + count - 1` of `iter_frames(path, fps)` as one uint8 array.

    For random access by training datasets: seeks to the key frame before the first needed
    source frame and decodes only up to the last one; falls back to decoding from the start if
    the seek does not deliver the needed frames. Raises IndexError if the range leaves the clip.
    """
    path = _check_exists(path)
    times, end = _packet_times(path)  # seconds since the origin, sorted
    sources = _slot_sources(times, end, fps)
    if start < 0 or count < 1 or start + count > len(sources):
        raise IndexError(
            f"{path}: frames {start}..{start + count - 1} requested, clip has {len(sources)}"
        )
    wanted = sources[start : start + count]
    decoded = _decode_times(path, {times[i] for i in wanted}, times[wanted[0]])
    if decoded is None:  # seeking did not work for this file: decode from the beginning
        return _read_sequential(path, start, count, fps)
    return np.stack([decoded[times[i]] for i in wanted])


def _decode_times(path: str, wanted: set, first: Fraction) -> Optional[dict]:
    """Decode the frames at the `wanted` times (seconds since the origin, as in _packet_times)
    after seeking near `first`; None if some wanted frame was not seen."""
    container, stream = open_video(path)
    time_base = Fraction(stream.time_base)
    found = {}
    with container:
        try:
            first_frame = next(_decoded_frames(container, stream, path))  # rotation, size
            origin = _time_origin(container, stream)
            if origin is None:
                origin = first_frame.pts * time_base
            rotation, size = _rotation(first_frame), (first_frame.width, first_frame.height)
            container.seek(
                math.floor((origin + first) / time_base), stream=stream, backward=True
            )
            last = max(wanted)
            for frame in _decoded_frames(container, stream, path):
                if frame.pts is None:
                    return None
                seconds = frame.pts * time_base - origin
                if seconds in wanted and seconds not in found:
                    found[seconds] = _to_rgb(frame, rotation, size)
                if seconds >= last:
                    break
        except (StopIteration, TypeError, UserError, av.error.FFmpegError):
            return None
    return found if len(found) == len(wanted) else None


def _read_sequential(path: str, start: int, count: int, fps: Optional[float]) -> np.ndarray:
    out, position = [], 0
    for chunk in iter_frames(path, fps=fps):
        lo, hi = max(start - position, 0), min(start + count - position, len(chunk))
        if lo < hi:
            out.append(chunk[lo:hi])
        position += len(chunk)
        if position >= start + count:
            break
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# writing


class VideoWriter:
    """Encode uint8 RGB frames to an H.264 mp4 by piping them into ffmpeg.

    Frames go to a temporary file next to `out_path`, which is renamed to `out_path` only when
    `close()` succeeds; leaving a `with` block by an exception deletes it. If ffmpeg fails or
    dies, `write`/`close` raise an ExternalToolError with its exit status and last stderr lines. H.264 in yuv420p
    needs even sizes, so an odd width/height is padded by one pixel replicating the last
    column/row (`self.out_width`, `self.out_height` give the encoded size). Colours are
    converted with the BT.709 matrix and tagged so, which players and PyAV honour.
    """

    def __init__(
        self, out_path: PathLike, fps: float, width: int, height: int, crf: int = OUTPUT_CRF
    ):
        if width < 1 or height < 1:
            raise ValueError(f"invalid frame size {width}x{height}")
        _as_fraction(fps)
        self.out_path = Path(out_path)
        self.fps, self.width, self.height, self.crf = fps, width, height, crf
        self.out_width, self.out_height = width + width % 2, height + height % 2
        self.frames_written = 0
        self.temp_path = temp_path_for(self.out_path)
        self._stderr = tempfile.TemporaryFile()
        command = ffmpeg_command([
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{self.out_width}x{self.out_height}", "-framerate", str(_as_fraction(fps)),
            "-i", "pipe:0",
            "-an", "-vf", f"scale=out_color_matrix={COLOR_SPACE}:out_range=tv",
            "-colorspace", COLOR_SPACE, "-color_primaries", COLOR_SPACE, "-color_trc", COLOR_SPACE,
            "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(self.temp_path),
        ], reads_stdin=True)  # fmt: skip
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError:
            self._cleanup()
            raise
        self.closed = False

    def write(self, frames: np.ndarray) -> None:
        """Append frames `[n, H, W, 3]` (or one frame `[H, W, 3]`), uint8 RGB."""
        if self.closed:
            raise ValueError("VideoWriter is closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames [n, {self.height}, {self.width}, 3], "
                f"got {frames.dtype} {list(frames.shape)}"
            )
        if (self.out_width, self.out_height) != (self.width, self.height):
            pad = ((0, 0), (0, self.out_height - self.height), (0, self.out_width - self.width))
            frames = np.pad(frames, pad + ((0, 0),), mode="edge")
        try:
            self._process.stdin.write(np.ascontiguousarray(frames).data)  # no extra copy
        except OSError:  # BrokenPipeError: ffmpeg is gone
            code = self._process.wait()
            error = ffmpeg_failure(f"encode {self.out_path}", code, self._stderr_text())
            self.abort()
            raise error from None
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish encoding and move the file to `out_path`; raises if ffmpeg failed."""
        if self.closed:
            return
        try:
            self._process.stdin.close()
        except OSError:
            pass
        code = self._process.wait()
        if code != 0:
            error = ffmpeg_failure(f"encode {self.out_path}", code, self._stderr_text())
            self.abort()
            raise error
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"could not write {self.out_path}: no frames were written")
        commit(self.temp_path, self.out_path)
        self.closed = True
        self._stderr.close()

    def abort(self) -> None:
        """Stop ffmpeg and delete the temporary file; `out_path` is left untouched."""
        if self.closed:
            return
        if self._process.poll() is None:
            self._process.kill()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self.closed = True
        discard(self.temp_path)
        self._stderr.close()

    def _stderr_text(self) -> bytes:
        self._stderr.seek(0)
        return self._stderr.read()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        if not getattr(self, "closed", True):
            self.abort()


def _require_stream(path: PathLike, kind: str) -> str:
    """Check that `path` opens and has a stream of `kind` ('video' or 'audio')."""
    with open_media(path, kind):
        return os.fspath(path)


def mux_audio(
    video_path: PathLike,
    audio_path: PathLike,
    out_path: PathLike,
    duration: Optional[float] = None,
) -> None:
    """Write `out_path` = the video stream of `video_path` (copied, not re-encoded) + the audio
    of `audio_path` as AAC at its own sample rate and channels, cut to `duration` seconds.

    The video is not shortened; the audio is only cut (never padded). Temp name + rename.
    """
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    video_path = _require_stream(video_path, "video")
    audio_path = _require_stream(audio_path, "audio")
    cut = ["-t", f"{duration:.6f}"] if duration is not None else []
    args = [
        "-i", video_path, *cut, "-i", audio_path,
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
        "-c:a", "aac", "-b:a", AUDIO_BITRATE,
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    run_ffmpeg(args, out_path, f"mux {audio_path} into {video_path}")


def write_audio_wav(path: PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] (`[n]` or `[n, channels]`) as 16-bit PCM WAV."""
    with atomic_output(path) as temp:
        soundfile.write(str(temp), np.asarray(samples), int(sample_rate), "PCM_16", format="WAV")


def keyframe_args(interval: int | None) -> list[str]:
    """ffmpeg output options putting a key frame on every `interval`-th frame (0, n, 2n, ...);
    none for None. x264's own scene-cut key frames stay."""
    return [] if not interval else ["-force_key_frames", f"expr:eq(mod(n,{interval}),0)"]


def resample_video(
    in_path: PathLike,
    out_path: PathLike,
    fps: float = MODEL_FPS,
    audio_rate: int = SAMPLE_RATE,
    keyframe_interval: int | None = None,
    info: VideoInfo | None = None,
) -> None:
    """Re-encode a clip to constant `fps` H.264 (display orientation) with mono AAC audio at
    `audio_rate` (no audio track if the input has none), with a key frame every
    `keyframe_interval` output frames if given (the fps filter runs first, so frame n of the
    output is frame n at `fps`). Frames follow the same timestamp rule as
    `iter_frames(in_path, fps)`. `info`: the input's `probe_video`, if the caller has it.
    Temp name + rename."""
    info = info or probe_video(in_path)
    filters = [f"fps={_as_fraction(fps)}"]  # ffmpeg rotates to display orientation before this
    if info.width % 2 or info.height % 2:
        right, bottom = info.width % 2, info.height % 2
        filters += [
            f"pad=w={info.width + right}:h={info.height + bottom}",
            f"fillborders=right={right}:bottom={bottom}:mode=smear",
        ]
    args = [
        "-i", info.path, "-map", "0:v:0", "-map", "0:a:0?",
        "-vf", ",".join(filters),
        "-c:v", "libx264", "-crf", str(OUTPUT_CRF), "-pix_fmt", "yuv420p",
        *keyframe_args(keyframe_interval),
        "-c:a", "aac", "-ar", str(int(audio_rate)), "-ac", "1",
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    run_ffmpeg(args, out_path, f"resample {info.path}")
