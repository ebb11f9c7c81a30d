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


class SegmentPlanner:
    """`plan_segments` for a mask that arrives a value at a time (the face pass runs ahead of the UNet).

    A segment is handed out as soon as no later value can change it: a full-length one when its last
    frame arrives, a run's tail when the run ends. The segments, in order, are exactly those of
    `plan_segments` over the whole mask.
    """

    def __init__(self, length: int, tail: str = "overlap"):
        self.length, self.tail = length, tail
        self.next = 0  # index of the next value
        self.run_start: int | None = None  # first index of the run of True being fed
        self.handed = 0  # segments of that run already handed out

    def feed(self, value: bool) -> list[Segment]:
        """The segments that became final with the value of frame `self.next`."""
        j, self.next = self.next, self.next + 1
        if not value:
            return self._close(j)
        if self.run_start is None:
            self.run_start, self.handed = j, 0
        if (j + 1 - self.run_start) % self.length:
            return []
        self.handed += 1
        return [Segment(list(range(j + 1 - self.length, j + 1)), 0)]

    def finish(self) -> list[Segment]:
        """The segments of the run still open at the end of the mask."""
        return self._close(self.next)

    def _close(self, end: int) -> list[Segment]:
        if self.run_start is None:
            return []
        start, self.run_start = self.run_start, None
        run = plan_segments(np.ones(end - start, dtype=bool), self.length, self.tail)[self.handed:]
        return [Segment([start + f for f in s.frames], s.write_from) for s in run]
