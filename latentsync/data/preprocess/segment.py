"""Stage 4: split each shot into pieces of 5 to 10 s.

A shot of N frames becomes n = N // 125 pieces (`<name>_000.mp4`, `<name>_001.mp4`, ...), each
between 5 s and just under 10 s; shots shorter than 5 s are dropped, nothing else is thrown
away (the reference's stream-copied 5 s segments end on key frames and leave a short last
piece).

`--reencode always`: the pieces are near-equal (N / n frames) and every one is re-encoded.
`--reencode auto` (default): the boundaries start from the same near-equal split and move, within
the 5-to-under-10 s limits, to the nearest frame where a stream copy can start (a key frame), else
to where the copy of the piece before can end; a piece that starts on a key frame and ends on a
clean decode-order split is stream-copied, any other piece is re-encoded. The clips stages 2 and 3
encode have a key frame every 125 frames, so their pieces are all copied (125, 125, ..., and the
rest on the last piece).
"""

from __future__ import annotations

from pathlib import Path

from latentsync.constants import MODEL_FPS
from latentsync.data.preprocess.common import (PipelineOptions, StageResult, link_or_copy, output_name,
                                               segment_frames)
from latentsync.data.preprocess.streams import cut_piece, read_layout
from latentsync.errors import UserError
from latentsync.video import count_frames

FOLDER = "segments"


def segment_bounds(num_frames: int, segment_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges: n = num_frames // segment_frames near-equal pieces."""
    pieces = num_frames // segment_frames
    edges = [round(i * num_frames / pieces) for i in range(pieces + 1)] if pieces else []
    return list(zip(edges[:-1], edges[1:]))


def keyframe_bounds(num_frames: int, segment_frames: int, starts=frozenset(),
                    splits=frozenset()) -> list[tuple[int, int]]:
    """Like `segment_bounds` (same count, every piece `segment_frames` to under twice that), with
    each boundary moved to the nearest frame in `starts` (a copy of the next piece may start
    there), else, if the piece before starts in `starts`, in `splits` (its copy may end there)."""
    pieces = num_frames // segment_frames
    if not pieces:
        return []
    longest = 2 * segment_frames - 1
    edges = [0]
    for i in range(1, pieces):
        after = pieces - i  # pieces still to come after this boundary
        low = max(edges[-1] + segment_frames, num_frames - longest * after)
        high = min(edges[-1] + longest, num_frames - segment_frames * after)
        target = min(max(round(i * num_frames / pieces), low), high)
        by_distance = sorted(range(low, high + 1), key=lambda f: (abs(f - target), f))
        ends = splits if edges[-1] in starts else ()
        edges.append(next((f for f in by_distance if f in starts), None)
                     or next((f for f in by_distance if f in ends), target))
    edges.append(num_frames)
    return list(zip(edges[:-1], edges[1:]))


def segment(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write the 5-10 s pieces of one shot into `output_dir`; the detail counts the copies."""
    try:
        layout = read_layout(input_path) if options.reencode == "auto" else None
        total = layout.num_frames if layout else count_frames(input_path, fps=None)
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    length = segment_frames(options)
    if layout is not None and layout.video_copyable:
        bounds = keyframe_bounds(total, length, layout.starts, layout.splits)
    else:
        bounds = segment_bounds(total, length)
    if not bounds:
        return StageResult.drop("too_short", f"{total / MODEL_FPS:.2f} s < {options.segment_seconds:g} s")
    outputs, copied = [], 0
    for index, (start, end) in enumerate(bounds):
        out = output_dir / output_name(input_path, f"_{index:03d}")
        if len(bounds) == 1:
            link_or_copy(input_path, out)
            copied += 1
        else:
            copied += cut_piece(input_path, out, start, end, layout)
        outputs.append(out)
    return StageResult.keep(*outputs, detail=f"{copied} of {len(bounds)} pieces copied")
