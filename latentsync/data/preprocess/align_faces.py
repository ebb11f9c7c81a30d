"""Stage 6: affine-align the face of every frame (the inference alignment, `AlignRestore`) and
write `resolution` x `resolution` face videos with the clip's audio.

The smoothing state of the alignment and the followed face are reset for every clip (the
reference leaks them from one clip into the next). A frame without a face drops
the clip. The face video is encoded to a hidden temporary file in the stage folder, muxed with
the source audio (cut to the video length) into another temporary file, and renamed.
"""

from __future__ import annotations

from pathlib import Path

from latentsync.constants import MODEL_FPS, OUTPUT_CRF
from latentsync.data.preprocess.common import PipelineOptions, StageResult, face_detector
from latentsync.errors import UserError
from latentsync.face.alignment import AlignRestore
from latentsync.face.tracking import FaceTracker
from latentsync.io import discard, temp_path_for
from latentsync.video import VideoWriter, iter_frames, mux_audio

FOLDER = "aligned"


class _NoFace(Exception):
    pass


def write_aligned(input_path: Path, silent_path: Path, resolution: int) -> int:
    """Encode the aligned faces of `input_path` to `silent_path`; returns the frame count.

    Raises _NoFace(frame index) when a frame has no face (nothing is left behind).
    """
    tracker = FaceTracker(face_detector())
    tracker.reset()
    aligner = AlignRestore(resolution)
    aligner.reset()
    index = 0
    with VideoWriter(silent_path, MODEL_FPS, resolution, resolution, crf=OUTPUT_CRF) as writer:
        for chunk in iter_frames(input_path, fps=None):
            faces = []
            for frame in chunk:
                face = tracker.track(frame)
                if face is None:
                    raise _NoFace(index)
                faces.append(aligner.align(frame, face.points)[0])
                index += 1
            writer.write(faces)
    return index


def align_faces(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write the aligned face video `<name>.mp4` (with audio) into `output_dir`."""
    out = output_dir / input_path.name
    silent = temp_path_for(output_dir / f"{input_path.stem}.faces.mp4")  # the video before muxing
    try:
        frames = write_aligned(input_path, silent, options.resolution)
        mux_audio(silent, input_path, out, duration=frames / MODEL_FPS)
    except _NoFace as exc:
        return StageResult.drop("no_face", f"frame {exc.args[0]}: no face found")
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    finally:
        discard(silent)
    return StageResult.keep(out)
