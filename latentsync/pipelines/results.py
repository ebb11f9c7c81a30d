"""What a pipeline run reports: typed progress events while it runs, timing hooks, and a result when done."""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

FACES, SEGMENTS, WRITING = "faces", "segments", "writing"  # the Progress stages, in the order they start
STAGES = (FACES, SEGMENTS, WRITING)

# The phases a run tells its RunHooks about, in pipeline order (names, not stages: see docs/architecture.md).
AUDIO = "audio"  # reading the speech, voice detection, Whisper features (main thread)
FACE_PASS = "face_pass"  # the face-pass worker's whole work (decode, track, align, store)
ENCODE, DENOISE, DECODE = "encode", "denoise", "decode"  # the model, per segment group (main thread)
UNET = "unet"  # one UNet call inside `denoise` (one sampling step)
WRITE = "write"  # the writer's work on one output frame (paste back, resize, encode), its waits left out
MUX = "mux"  # muxing the speech into the written video (main thread)
PHASES = (AUDIO, FACE_PASS, ENCODE, DENOISE, UNET, DECODE, WRITE, MUX)


@dataclass(frozen=True)
class Progress:
    """`done` of `total` units of `stage` are finished (frames for faces/writing, segments for segments).

    The segments and writing stages interleave: each segment is generated just before its frames
    are written.
    """

    stage: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total > 0 else 1.0


ProgressCallback = Callable[[Progress], None]


class RunHooks:
    """Told when each phase of a run begins and ends (PHASES), as diffusers' step callbacks are told
    of each step, and of every generated face handed to the writer. The base class does nothing;
    override what you need (benchmarks/speed.py times the phases with it).

    Calls come from the thread doing the work: FACE_PASS from the face-pass worker, WRITE from the
    writer, the rest (and `face`) from the calling thread. Phases of one thread do not overlap,
    but UNET runs inside DENOISE. A hook that raises ends the run with that error.
    """

    def begin(self, phase: str) -> None:
        """`phase` starts."""

    def end(self, phase: str) -> None:
        """`phase` ended (also when it raised)."""

    def face(self, frame: int, face: np.ndarray) -> None:
        """Output frame `frame` shows generated face `face` [res, res, 3] in [-1, 1] (before paste-back)."""

    @contextlib.contextmanager
    def span(self, phase: str) -> Iterator[None]:
        """`begin(phase)`, the block, `end(phase)`."""
        self.begin(phase)
        try:
            yield
        finally:
            self.end(phase)


@dataclass
class LipsyncResult:
    """The dubbed video and what a caller should know about it."""

    output_path: Path
    num_frames: int  # output frames at the model's rate
    frames_without_face: int  # output frames passed through unchanged because no face was found
    segments: int  # UNet segments generated
    warnings: list[str] = field(default_factory=list)  # one readable line each
