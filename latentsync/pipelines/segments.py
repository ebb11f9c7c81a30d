"""Which output frames are generated together, and which source frame each output frame shows."""

from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    frames: list[int]  # output frame indices generated together
    write_from: int  # index into `frames` of the first frame not produced by an earlier segment


def source_index(j: int, num_source: int) -> int:
    """Ping-pong looping: 0..N-1, N-1..0, 0..N-1, ... (turn frames repeat, as the reference)."""
    k = j % (2 * num_source)
    return k if k < num_source else 2 * num_source - 1 - k


def plan_segments(generate: np.ndarray, length: int, tail: str = "overlap") -> list[Segment]:
    """Split runs of True in `generate` into segments of `length` frames.

    With tail="overlap" a run's short remainder is generated as the run's last `length` frames
    (only the new ones are written), so no segment is shorter than a full one unless the run is.
    """
    segments = []
    idx = np.flatnonzero(generate)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1) if idx.size else []
    for run in runs:
        run = run.tolist()
        for start in range(0, len(run), length):
            part = run[start:start + length]
            if tail == "overlap" and len(part) < length and len(run) >= length:
                segments.append(Segment(run[-length:], length - len(part)))
            else:
                segments.append(Segment(part, 0))
    return segments
