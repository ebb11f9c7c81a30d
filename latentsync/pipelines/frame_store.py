"""FrameStore: fixed-size uint8 records in a temporary file, so memory does not grow with video length."""

import os
from pathlib import Path

import numpy as np


class FrameStore:
    """Random-access frames (or aligned faces) of one shape, written and read by index: O(1) memory."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.shape, self.size = shape, int(np.prod(shape))
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, index: int, array: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(array, dtype=np.uint8).tobytes(), index * self.size)

    def read(self, index: int) -> np.ndarray:
        data = os.pread(self.fd, self.size, index * self.size)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape)

    def close(self) -> None:
        os.close(self.fd)
