"""Stage 3: cut at scene changes found by PySceneDetect's AdaptiveDetector (threshold 2).

A clip without scene changes is linked through unchanged as `<name>_shot_001.mp4`; otherwise
every shot is cut frame-accurately as `<name>_shot_<NNN>.mp4` (1-based, 3 digits). With
`--reencode auto` (default) a shot that starts on a key frame and ends on a clean decode-order
split is stream-copied, and re-encoded shots get a key frame every 125 frames so that stage 4 can
copy their pieces; `--reencode always` re-encodes every shot.
"""

from __future__ import annotations

from pathlib import Path

from latentsync.data.preprocess.common import (PipelineOptions, StageResult, link_or_copy,
                                               output_name, segment_frames)
from latentsync.data.preprocess.streams import cut_piece, read_layout
from latentsync.errors import UserError
from latentsync.video import count_frames

FOLDER = "shots"
ADAPTIVE_THRESHOLD = 2.0  # the reference's `detect-adaptive --threshold 2`


def find_shots(path: Path) -> list[tuple[int, int]]:
    """Shots of a constant-rate clip as frame ranges [start, end); the whole clip if no cut."""
    from scenedetect import AdaptiveDetector, detect

    total = count_frames(path, fps=None)
    scenes = detect(str(path), AdaptiveDetector(adaptive_threshold=ADAPTIVE_THRESHOLD))
    shots = [(s.get_frames(), e.get_frames()) for s, e in scenes]
    shots = [(max(0, s), min(total, e)) for s, e in shots if min(total, e) > max(0, s)]
    return shots or [(0, total)]


def detect_shots(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write one file per shot into `output_dir`."""
    auto = options.reencode == "auto"
    try:
        shots = find_shots(input_path)
        total = count_frames(input_path, fps=None)
        layout = read_layout(input_path) if auto else None
    except (UserError, RuntimeError) as exc:
        return StageResult.drop("unreadable", str(exc).splitlines()[0])
    outputs = []
    for number, (start, end) in enumerate(shots, start=1):
        out = output_dir / output_name(input_path, f"_shot_{number:03d}")
        if len(shots) == 1 and (start, end) == (0, total):
            link_or_copy(input_path, out)
        else:
            cut_piece(input_path, out, start, end, layout,
                      keyframe_interval=segment_frames(options) if auto else None)
        outputs.append(out)
    return StageResult.keep(*outputs)
