"""Stage 4: split each shot into pieces of 5 to 10 s.

A shot of N frames becomes n = N // 125 pieces of (nearly) equal length N / n, each between
5 s and just under 10 s, cut frame-accurately (`<name>_000.mp4`, `<name>_001.mp4`, ...). Shots
shorter than 5 s are dropped; nothing else is thrown away (the reference's stream-copied
5 s segments end on key frames and leave a short last piece).
"""

from __future__ import annotations

from pathlib import Path

from latentsync.data.preprocess.common import (FPS, PipelineOptions, StageResult, cut_clip,
                                               link_or_copy, output_name)
from latentsync.errors import UserError
from latentsync.video import count_frames

FOLDER = "segments"


def segment_bounds(num_frames: int, segment_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges: n = num_frames // segment_frames near-equal pieces."""
    pieces = num_frames // segment_frames
    edges = [round(i * num_frames / pieces) for i in range(pieces + 1)] if pieces else []
    return list(zip(edges[:-1], edges[1:]))


def segment(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write the 5-10 s pieces of one shot into `output_dir`."""
    segment_frames = round(options.segment_seconds * FPS)
    try:
        total = count_frames(input_path, fps=None)
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    bounds = segment_bounds(total, segment_frames)
    if not bounds:
        return StageResult.drop("too_short", f"{total / FPS:.2f} s < {options.segment_seconds:g} s")
    outputs = []
    for index, (start, end) in enumerate(bounds):
        out = output_dir / output_name(input_path, f"_{index:03d}")
        if len(bounds) == 1:
            link_or_copy(input_path, out)
        else:
            cut_clip(input_path, out, start, end - start)
        outputs.append(out)
    return StageResult.keep(*outputs)
