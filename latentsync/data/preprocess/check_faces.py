"""Stage 5: keep clips that show exactly one face, large enough, in every checked frame.

MediaPipe FaceMesh (every frame detected on its own) must find exactly one face whose box
(extent of the face mesh, a little tighter than a detector box) is at least `min_face_size`
pixels wide and high. `face_check_stride` N checks frames 0, N, 2N, ... and always the last
frame (1 = every frame, as the reference does; larger values trade certainty for speed).
"""

from __future__ import annotations

from pathlib import Path

from latentsync.data.preprocess.common import (PipelineOptions, StageResult, face_detector,
                                               link_or_copy)
from latentsync.errors import UserError
from latentsync.video import count_frames, iter_frames

FOLDER = "single_face"


def face_problem(path: Path, min_face_size: int, stride: int = 1) -> tuple[str, str]:
    """(reason, detail) of the first checked frame that fails, or ('', '') if all pass."""
    detector = face_detector()
    last = count_frames(path, fps=None) - 1
    index = 0
    for chunk in iter_frames(path, fps=None):
        for frame in chunk:
            if index % stride == 0 or index == last:
                reason, detail = _frame_problem(detector.detect(frame), min_face_size)
                if reason:
                    return reason, f"frame {index}: {detail}"
            index += 1
    return "", ""


def _frame_problem(faces, min_face_size: int) -> tuple[str, str]:
    if not faces:
        return "no_face", "no face found"
    if len(faces) > 1:
        return "multiple_faces", f"{len(faces)} faces found"
    x1, y1, x2, y2 = faces[0].box
    width, height = x2 - x1, y2 - y1
    if min(width, height) < min_face_size:
        return "face_too_small", f"face box {width:.0f}x{height:.0f} px < {min_face_size} px"
    return "", ""


def check_faces(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Link the clip into `output_dir` if every checked frame has one large enough face."""
    try:
        reason, detail = face_problem(input_path, options.min_face_size,
                                      max(1, options.face_check_stride))
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    if reason:
        return StageResult.drop(reason, detail)
    return StageResult.keep(link_or_copy(input_path, output_dir / input_path.name))
