"""What a pipeline run reports: typed progress events while it runs and a result when it is done."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

FACES, SEGMENTS, WRITING = "faces", "segments", "writing"  # the stages, in the order they start
STAGES = (FACES, SEGMENTS, WRITING)


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


@dataclass
class LipsyncResult:
    """The dubbed video and what a caller should know about it."""

    output_path: Path
    num_frames: int  # output frames at the model's rate
    frames_without_face: int  # output frames passed through unchanged because no face was found
    segments: int  # UNet segments generated
    warnings: list[str] = field(default_factory=list)  # one readable line each
