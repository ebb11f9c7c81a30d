"""Cutting the face out of a frame into the model's square, and pasting it back (see docs/face-processing.md).

A similarity transform maps the three face points (brows, nose) onto a fixed template in a
3:4 crop, which is stretched to res x res for the model. Everything runs in float64/float32
on the CPU with OpenCV (the reference's fp16 matrices jitter by up to a pixel; docs/reference-differences.md).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

TEMPLATE_256 = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])  # x, y before the ratio
TEMPLATE_RATIO_256 = 2.8
CROP_UNITS = (75, 100)  # width, height before the ratio
FILL_VALUE = 127
SMOOTH_PREVIOUS = 0.2  # weight of the previous smoothed nose bias
BOUNDS_MARGIN = 4  # pixels around the pasted region (covers interpolation/erosion support)


class AlignRestore:
    """Aligns faces to the model square and restores generated faces into frames.

    Holds the temporal smoothing state of the nose bias: call `reset()` at the start of every
    clip and of every run of consecutive frames with a face.
    """

    def __init__(self, resolution: int = 256):
        self.resolution = resolution
        ratio = resolution / 256 * TEMPLATE_RATIO_256
        self.template = TEMPLATE_256 * ratio
        self.crop_size = (int(CROP_UNITS[0] * ratio), int(CROP_UNITS[1] * ratio))  # (w, h)
        self.reset()

    def reset(self) -> None:
        """Clear the temporal smoothing (the next face is treated as a first frame)."""
        self._bias: np.ndarray | None = None

    def estimate(self, points: np.ndarray) -> np.ndarray:
        """The 2x3 float64 matrix mapping frame pixels to crop pixels for these 3 points.

        The similarity of `similarity_transform` plus the reference's nose bias, smoothed over
        time (0.2 previous, 0.8 current), added to the translation; updates the state.
        """
        matrix, bias = similarity_transform(points, self.template)
        if self._bias is not None:
            bias = SMOOTH_PREVIOUS * self._bias + (1 - SMOOTH_PREVIOUS) * bias
        self._bias = bias
        matrix[:, 2] += bias
        return matrix

    def align(self, frame: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face uint8 [res, res, 3], M 2x3): the aligned face square and its matrix."""
        matrix = self.estimate(points)
        crop = cv2.warpAffine(np.ascontiguousarray(frame), matrix, self.crop_size,
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(FILL_VALUE,) * 3)
        face = cv2.resize(crop, (self.resolution, self.resolution),
                          interpolation=cv2.INTER_LANCZOS4)
        return face, matrix

    def restore(self, frame: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """`frame` (uint8 [H, W, 3]) with `face` pasted back through `matrix`, soft-edged.

        `face` is uint8 [res, res, 3] (0..255) or floating point in [-1, 1] (model units).
        Only pixels inside the warped crop region can change; the result is a new array.
        The blend is rounded (the reference truncates, which loses a grey level wherever
        float error leaves a weight of 0.99999994).
        """
        face = self._face_to_crop(face)
        inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = self._pasted_bounds(inverse, width, height)
        out = frame.copy()
        if x1 <= x0 or y1 <= y0:
            return out
        local = inverse.copy()
        local[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        warped = cv2.warpAffine(face, local, size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL_VALUE,) * 3)
        warped = np.clip(warped, 0.0, 255.0)
        ones = np.ones((self.crop_size[1], self.crop_size[0]), np.float32)
        valid = cv2.warpAffine(ones, local, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid = cv2.erode(valid, np.ones((2, 2), np.uint8), anchor=(1, 1))
        soft = soft_edge(valid)[:, :, None]
        region = out[y0:y1, x0:x1].astype(np.float32)
        blended = soft * (valid[:, :, None] * warped) + (1 - soft) * region
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def _face_to_crop(self, face: np.ndarray) -> np.ndarray:
        """The face as float32 0..255 values at crop size (bicubic resize)."""
        face = np.asarray(face)
        if face.shape[-1] != 3 or face.ndim != 3:
            raise ValueError(f"expected a [res, res, 3] face, got {list(face.shape)}")
        if face.dtype == np.uint8:
            values = face.astype(np.float32)
        elif np.issubdtype(face.dtype, np.floating):
            if face.size and (face.min() < -1.5 or face.max() > 1.5):
                raise ValueError("a floating point face must hold values in [-1, 1]")
            values = (face.astype(np.float32) + 1) * 127.5
        else:
            raise ValueError(f"unsupported face dtype {face.dtype}")
        return cv2.resize(values, self.crop_size, interpolation=cv2.INTER_CUBIC)

    def _pasted_bounds(self, inverse: np.ndarray, width: int,
                       height: int) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 (exclusive) of the frame pixels the warped crop can touch."""
        crop_w, crop_h = self.crop_size
        corners = np.array([[-1, -1], [crop_w, -1], [-1, crop_h], [crop_w, crop_h]], np.float64)
        mapped = corners @ inverse[:, :2].T + inverse[:, 2]
        x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - BOUNDS_MARGIN
        x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + BOUNDS_MARGIN + 1
        return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def soft_edge(valid: np.ndarray) -> np.ndarray:
    """Blend weights: `valid` eroded by w_edge and Gaussian-blurred over 2*w_edge+1 pixels."""
    w_edge = int(math.sqrt(float(valid.sum()))) // 20
    if w_edge == 0:
        return valid.copy()
    eroded = cv2.erode(valid, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    ksize = 2 * w_edge + 1
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    return cv2.GaussianBlur(eroded, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101)


def similarity_transform(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M 2x3, nose bias [2]): least-squares similarity mapping `points` onto `template`.

    Both are [3, 2] (x, y). Scales are sample standard deviations (ddof=1) of the centred
    coordinates; a reflection is turned into a rotation. The bias is the nose row of the
    normalised template minus that of the normalised points (docs/face-processing.md), in float64.
    """
    src = np.asarray(points, dtype=np.float64).reshape(3, 2)
    dst = np.asarray(template, dtype=np.float64)
    src_c, dst_c = src.mean(axis=0), dst.mean(axis=0)
    src_s, dst_s = np.std(src - src_c, ddof=1), np.std(dst - dst_c, ddof=1)
    if not src_s > 0:
        raise ValueError(f"degenerate face points {src.tolist()}")
    src_n, dst_n = (src - src_c) / src_s, (dst - dst_c) / dst_s
    u, _, vt = np.linalg.svd(src_n.T @ dst_n)
    rotation = vt.T @ u.T
    if np.linalg.det(rotation) < 0:
        vt[-1, :] *= -1
        rotation = vt.T @ u.T
    scale = dst_s / src_s
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_c - scale * rotation @ src_c
    return matrix, dst_n[2] - src_n[2]
