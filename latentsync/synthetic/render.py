"""Render talking-face frames: an identity photo, a head motion and a mouth track, kept separate.

`render_clip(identity, head_motion, mouth_track)` yields one uint8 RGB frame per mouth-track row.
The three inputs are independent, so the truth of a dub is simply the clip's identity and head
motion rendered with another sentence's mouth track.

How a frame is made:
1. Mouth: every vertex of the identity's face mesh (MediaPipe, 468 points) is displaced in a
   frame fixed to the mouth (centre between the inner lips, x along the corners, unit = half
   the mouth width). "open" drops the lower lip in a lens shape (corners stay) and the jaw and
   chin with it, and lifts the upper lip a little; "width" moves the lips towards or away from
   the mouth's centre line (rounded "oo" vs spread "ee"). A photo whose lips are slightly apart
   is closed first. The image is warped piecewise-affinely over the mesh triangles that move.
2. The hole between the inner lips (the mesh has no triangles there) is filled with a dark
   cavity, and with upper and lower teeth when the mouth is open wide.
3. Head motion: a small similarity (shift, roll, scale) and lighting (colour gain, a horizontal
   light gradient), then downscaling to the output size.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from latentsync.synthetic.identities import Identity
from latentsync.synthetic.motion import HeadMotion
from latentsync.synthetic.visemes import OPEN, WIDTH

UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
JAW_DROP = 0.9  # lower-lip drop at open = 1, in half mouth widths
UPPER_LIFT = 0.18  # upper-lip lift relative to the lower-lip drop
UPPER_EXTENT = 0.9  # how far above the lips the lift fades out (half widths)
CHIN_BLEND = 1.0  # below the lips the lens shape turns into the jaw's shape over this distance
JAW_HALF_WIDTH = 2.4  # the jaw's drop fades out sideways at this distance from the mouth centre
WIDTH_GAIN = 0.22  # horizontal stretch of the lips at width 0 / 1 (fraction of the half width)
OPEN_NARROWING = 0.08  # an open jaw pulls the corners in a little
WIDTH_REACH = 0.35  # squared fall-off distance of the width change around the lips
CAVITY_RGB = np.array([52, 18, 22], dtype=np.float32)
TEETH_RGB = np.array([214, 208, 192], dtype=np.float32)
TEETH_HEIGHT = 0.17  # visible height of the upper teeth in the middle (half mouth widths)
LOWER_TEETH, LOWER_TEETH_SHADE = 0.6, 0.75  # lower teeth: relative height and brightness
TEETH_FROM, TEETH_FULL = 0.3, 0.7  # teeth fade in between these openings
SUBPIXEL_BITS = 4


@dataclass
class MouthFrame:
    """The mouth's own coordinates in an identity photo: centre, unit axes, half width."""

    centre: np.ndarray
    x_axis: np.ndarray  # from the image-left corner to the image-right corner
    y_axis: np.ndarray  # perpendicular, pointing down the face
    half_width: float

    def local(self, points: np.ndarray) -> np.ndarray:
        """[N, 2] (u, v) of image points, in half mouth widths."""
        rel = points - self.centre
        return np.stack([rel @ self.x_axis, rel @ self.y_axis], axis=1) / self.half_width

    def to_image(self, delta: np.ndarray) -> np.ndarray:
        """[N, 2] image displacements of local displacements (du, dv)."""
        return self.half_width * (delta[:, :1] * self.x_axis + delta[:, 1:] * self.y_axis)


def mouth_frame(landmarks: np.ndarray) -> MouthFrame:
    left, right = landmarks[61], landmarks[291]
    x_axis = (right - left) / np.linalg.norm(right - left)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    centre = (landmarks[13] + landmarks[14]) / 2
    return MouthFrame(centre, x_axis, y_axis, float(np.linalg.norm(right - left) / 2))


@functools.lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """int [T, 3] triangles of the MediaPipe face mesh (3-cycles of its tessellation edges,
    minus the two spurious ones whose edges all belong to three triangles)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    neighbours = defaultdict(set)
    for a, b in FACEMESH_TESSELATION:
        neighbours[a].add(b)
        neighbours[b].add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION
                 for c in neighbours[a] & neighbours[b]}
    edge_use = defaultdict(int)
    for t in triangles:
        for edge in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
            edge_use[edge] += 1
    real = [t for t in sorted(triangles)
            if not all(edge_use[e] == 3 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    return np.array(real, dtype=np.int64)


def _curve(local: np.ndarray, indices, u: np.ndarray) -> np.ndarray:
    """v of a lip contour (given by landmark indices) interpolated at u."""
    points = local[list(indices)]
    order = np.argsort(points[:, 0])
    return np.interp(u, points[order, 0], points[order, 1])


def mouth_displacements(landmarks: np.ndarray, frame: MouthFrame, open_: float, width: float) -> np.ndarray:
    """float [468, 2] image displacement of every mesh vertex for one mouth shape."""
    local = frame.local(landmarks)
    u, v = local[:, 0], local[:, 1]
    parting = _curve(local, UPPER_INNER, u)
    rest_gap = np.clip(_curve(local, LOWER_INNER, u) - parting, 0, None)
    lens = np.sqrt(np.clip(1 - u ** 2, 0, None))
    jaw = np.clip(1 - (u / JAW_HALF_WIDTH) ** 2, 0, None)
    drop = JAW_DROP * open_
    lower = v > parting
    lower[list(LOWER_INNER[1:-1] + LOWER_OUTER[1:-1])] = True
    lower[list(UPPER_INNER[1:-1] + UPPER_OUTER[1:-1])] = False
    blend = np.clip((v - parting) / CHIN_BLEND, 0, 1)
    dv_lower = drop * ((1 - blend) * lens + blend * jaw)
    fade_up = np.clip(1 - (parting - v) / UPPER_EXTENT, 0, 1)
    dv = np.where(lower, dv_lower, -UPPER_LIFT * drop * lens * fade_up)
    dv[list(UPPER_INNER)] += rest_gap[list(UPPER_INNER)] / 2  # close a photo's parted lips
    dv[list(LOWER_INNER)] -= rest_gap[list(LOWER_INNER)] / 2
    near = np.exp(-np.clip(np.abs(u) - 1, 0, None) ** 2 / WIDTH_REACH - (v - parting) ** 2 / WIDTH_REACH)
    du = u * near * (WIDTH_GAIN * (2 * width - 1) - OPEN_NARROWING * open_)
    return frame.to_image(np.stack([du, dv], axis=1))


def _affines(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """[T, 2, 3] affine maps taking each destination triangle onto its source triangle."""
    ones = np.ones((*dst.shape[:2], 1))
    dst_h = np.concatenate([dst, ones], axis=2)  # [T, 3, 3]
    det = np.linalg.det(dst_h)
    ok = np.abs(det) > 1e-9
    out = np.zeros((len(src), 2, 3))
    out[~ok] = [[1, 0, 0], [0, 1, 0]]
    out[ok] = np.linalg.solve(dst_h[ok], src[ok]).transpose(0, 2, 1)
    return out


def _box(points: np.ndarray, shape, margin: int = 2) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer bounds of `points` plus `margin`, clipped to an image `shape`."""
    low = np.floor(points.reshape(-1, 2).min(axis=0)).astype(int) - margin
    high = np.ceil(points.reshape(-1, 2).max(axis=0)).astype(int) + margin + 1
    return max(low[0], 0), max(low[1], 0), min(high[0], shape[1]), min(high[1], shape[0])


def warp_mesh(image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`image` with the mesh triangles moved from `src` to `dst` vertex positions; only the
    triangles with a moving vertex are redrawn, inside their bounding box."""
    triangles = mesh_triangles()
    moving = np.linalg.norm(dst - src, axis=1) > 1e-3
    triangles = triangles[moving[triangles].any(axis=1)]
    out = image.copy()
    if len(triangles) == 0:
        return out
    x0, y0, x1, y1 = _box(dst[triangles], image.shape)
    ids = np.full((y1 - y0, x1 - x0), -1, dtype=np.int32)
    scale = 1 << SUBPIXEL_BITS
    for i, tri in enumerate(np.round((dst[triangles] - (x0, y0)) * scale).astype(np.int32)):
        cv2.fillConvexPoly(ids, tri, i, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    maps = np.stack([xs, ys], axis=2)
    inside = ids >= 0
    affine = _affines(src[triangles], dst[triangles])[ids[inside]]
    points = np.stack([xs[inside], ys[inside], np.ones(int(inside.sum()), np.float32)], axis=1)
    maps[inside] = np.einsum("nij,nj->ni", affine, points)
    out[y0:y1, x0:x1] = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
    return out


def _polygon_mask(shape, polygons, offset) -> np.ndarray:
    """float32 [H, W] anti-aliased coverage of the filled polygons (float [K, 2] each, image
    pixels; `offset` is the (x, y) of the mask's top-left corner)."""
    mask = np.zeros(shape, dtype=np.uint8)
    scale = 1 << SUBPIXEL_BITS
    cv2.fillPoly(mask, [np.round((p - offset) * scale).astype(np.int32) for p in polygons], 255,
                 lineType=cv2.LINE_AA, shift=SUBPIXEL_BITS)
    return mask.astype(np.float32) / 255


def draw_mouth_inside(image: np.ndarray, points: np.ndarray, frame: MouthFrame, open_: float) -> np.ndarray:
    """Fill the hole between the displaced inner lips (`points`: all mesh vertices, displaced)
    with a dark cavity, and teeth that fade in as the mouth opens wide. Changes `image`."""
    upper, lower = points[list(UPPER_INNER)], points[list(LOWER_INNER)]
    x0, y0, x1, y1 = _box(np.concatenate([upper, lower]), image.shape)
    offset, shape = np.array([x0, y0]), (y1 - y0, x1 - x0)
    cavity = _polygon_mask(shape, [np.concatenate([upper, lower[::-1]])], offset)
    if cavity.max() == 0:
        return image
    patch = image[y0:y1, x0:x1].astype(np.float32)
    patch += cavity[..., None] * (CAVITY_RGB - patch)
    teeth = float(np.clip((open_ - TEETH_FROM) / (TEETH_FULL - TEETH_FROM), 0, 1))
    if teeth > 0:
        lens = np.sqrt(np.clip(1 - frame.local(upper)[:, 0] ** 2, 0, None))[:, None]
        height = TEETH_HEIGHT * frame.half_width * lens * frame.y_axis
        top = _polygon_mask(shape, [np.concatenate([upper, (upper + height)[::-1]])], offset)
        bottom = _polygon_mask(shape, [np.concatenate([lower, (lower - LOWER_TEETH * height)[::-1]])], offset)
        for mask, shade in ((top, 1.0), (bottom, LOWER_TEETH_SHADE)):
            alpha = (np.minimum(mask, cavity) * teeth)[..., None]
            patch += alpha * (shade * TEETH_RGB - patch)
    image[y0:y1, x0:x1] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)
    return image


def _head_and_light(image: np.ndarray, motion: HeadMotion, index: int, size: int) -> np.ndarray:
    """Apply frame `index` of the head motion (similarity + lighting) and scale to `size`."""
    side = image.shape[0]
    centre = (side / 2, side / 2)
    matrix = cv2.getRotationMatrix2D(centre, float(motion.angle[index]), float(motion.scale[index]))
    matrix[:, 2] += motion.shift[index] * side
    moved = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    small = cv2.resize(moved, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    ramp = 1 + motion.light_tilt[index] * np.linspace(-1, 1, size, dtype=np.float32)
    small *= ramp[None, :, None] * motion.gain[index].astype(np.float32)
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def render_frame(identity: Identity, motion: HeadMotion, index: int, open_: float, width: float,
                 size: int) -> np.ndarray:
    """One uint8 RGB [size, size, 3] frame: the identity's mouth shaped (open_, width), moved and
    lit by frame `index` of `motion`."""
    frame = mouth_frame(identity.landmarks)
    dst = identity.landmarks + mouth_displacements(identity.landmarks, frame, open_, width)
    warped = warp_mesh(identity.image, identity.landmarks, dst)
    warped = draw_mouth_inside(warped, dst, frame, open_)
    return _head_and_light(warped, motion, index, size)


def render_clip(identity: Identity, head_motion: HeadMotion, mouth_track: np.ndarray,
                size: int = 256) -> Iterator[np.ndarray]:
    """Yield uint8 RGB [size, size, 3] frames, one per row of `mouth_track` ([n, 2] open, width);
    `head_motion` must have at least that many frames."""
    if len(head_motion) < len(mouth_track):
        raise ValueError(f"head motion has {len(head_motion)} frames, mouth track {len(mouth_track)}")
    for index, row in enumerate(np.asarray(mouth_track, dtype=np.float64)):
        yield render_frame(identity, head_motion, index, float(row[OPEN]), float(row[WIDTH]), size)
