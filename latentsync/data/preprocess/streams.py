"""Stream copy instead of re-encoding: what of a clip can be copied, and the copying cuts.

The layout comes from demuxing (no decoding), so it costs a fraction of a second per clip.

* `constant_rate`: frame i is shown at i / 25 s after the file start (within `GRID_TOLERANCE`)
  and the clip ends after its last frame's 40 ms, i.e. resampling to 25 fps would keep every
  frame once: copying the video stream gives the same frames as re-encoding it.
* `splits`: display indices s where the first s packets in decode order are exactly the frames
  0..s-1. A copied piece may end there: nothing it holds references a later frame.
* `starts`: splits whose next packet is a key frame shown at that index (no leading pictures of
  an open GOP): a copied piece may start there, it decodes without any earlier frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.preprocess.common import cut_clip
from latentsync.video import VideoPackets, open_video, read_packets

COPY_VIDEO_CODECS = ("h264", "hevc", "mpeg4")  # what an .mp4 holds and every stage decodes
COPY_PIXEL_FORMATS = ("yuv420p",)  # what the re-encoded clips have too
COPY_AUDIO_CODECS = ("aac",)
GRID_TOLERANCE = Fraction(1, 1000)  # seconds a frame time may be off its 1/25 s grid point


@dataclass
class StreamLayout:
    """The facts of one clip that decide between stream copy and re-encoding."""

    video_codec: str = ""
    pixel_format: str = ""
    num_frames: int = 0
    constant_rate: bool = False  # frame i at i / MODEL_FPS, and nothing before or after
    starts: frozenset = field(default_factory=frozenset)  # a copy may start at these frames
    splits: frozenset = field(default_factory=frozenset)  # a copy may end at these frames
    audio_codec: str = ""
    audio_rate: int = 0
    audio_channels: int = 0

    @property
    def video_copyable(self) -> bool:
        """The video stream can go into the 25 fps .mp4 outputs unchanged."""
        return (self.video_codec in COPY_VIDEO_CODECS and self.constant_rate
                and self.pixel_format in COPY_PIXEL_FORMATS)

    @property
    def audio_conforms(self) -> bool:
        """The audio is already AAC at 16 kHz mono (else it is re-encoded, which is cheap)."""
        return (self.audio_codec in COPY_AUDIO_CODECS and self.audio_rate == SAMPLE_RATE
                and self.audio_channels == 1)

    def can_copy(self, start: int, end: int) -> bool:
        """Frames [start, end) can be cut out by stream copy."""
        return self.video_copyable and start in self.starts and (end in self.splits)


def read_layout(path: Path) -> StreamLayout:
    """The stream layout of `path` (UserError if it has no readable video stream)."""
    container, video = open_video(path)
    with container:
        layout = StreamLayout(video_codec=video.codec_context.name,
                              pixel_format=str(video.codec_context.pix_fmt or ""))
        if container.streams.audio:
            audio = container.streams.audio[0].codec_context
            layout.audio_codec, layout.audio_rate = audio.name, int(audio.sample_rate or 0)
            layout.audio_channels = int(audio.channels or 0)
        packets = read_packets(container, video, path)
    _fill_frames(layout, packets)
    return layout


def _fill_frames(layout: StreamLayout, packets: VideoPackets) -> None:
    """Frame count, constant-rate check, and the cut points of the decode order."""
    times = packets.times
    shown_at = {decode: shown for shown, decode in enumerate(packets.order)}
    layout.num_frames = len(times)
    on_grid = all(abs(t - Fraction(i, MODEL_FPS)) <= GRID_TOLERANCE for i, t in enumerate(times))
    layout.constant_rate = on_grid and math.floor(packets.end * MODEL_FPS + Fraction(1, 2)) == len(times)
    splits, starts, highest = {0, len(times)}, set(), -1
    for decode, key in enumerate(packets.keyframes):
        if highest == decode - 1:  # packets 0..decode-1 are exactly frames 0..decode-1
            splits.add(decode)
            if key and shown_at[decode] == decode:
                starts.add(decode)
        highest = max(highest, shown_at[decode])
    layout.splits, layout.starts = frozenset(splits), frozenset(starts)


def cut_piece(src: Path, dst: Path, start: int, end: int, layout: StreamLayout | None,
              keyframe_interval: int | None = None) -> bool:
    """Frames [start, end) of `src` into `dst`: by stream copy where `layout` allows it and the
    copy has exactly those frames, else re-encoded (`cut_clip`). True if copied.

    `layout` None (the `--reencode always` path) always re-encodes.
    """
    if layout is not None and layout.can_copy(start, end):
        cut_clip(src, dst, start, end - start, copy_video=True)
        copied = read_layout(dst)
        if copied.num_frames == end - start and copied.constant_rate:
            return True
    cut_clip(src, dst, start, end - start, keyframe_interval=keyframe_interval)
    return False
