"""S3FD face detector for the LSE-C / LSE-D face tracks (see docs/evaluation.md).

`S3FD` has the layer layout of the public `sfd_face.pth` (joonson/syncnet_python, mirrored as
`auxiliary/sfd_face.pth` in the HF repo ByteDance/LatentSync-1.5), so that file loads strictly:
a VGG16 trunk kept as one `vgg` ModuleList (convolutions at indices 0, 2, 5, ..., 28, the
dilated fc6 at 31 and fc7 at 33), L2Norm layers `L2Norm3_3` / `L2Norm4_3` / `L2Norm5_3`
(initial scales 10 / 8 / 5), four `extras` convolutions (conv6_1, conv6_2, conv7_1, conv7_2)
and six `loc` / `conf` heads on conv3_3, conv4_3, conv5_3, fc7, conv6_2 and conv7_2 (strides
4 ... 128). The conv3_3 confidence head has 4 channels: three background scores reduced by
their maximum ("max-out background") and one face score.

Note: face_alignment's `s3fd-619a316812.pth` is a different port (keys `conv1_1`, ...,
`conv3_3_norm_mbox_conf`; an undilated fc6; BGR input and other anchor centres). It is
refused here rather than loaded into the wrong network.

`detect_faces` reproduces the reference's `detect_faces(image_rgb, conf_th=0.9, scales=[0.25])`:
the RGB frame is downscaled x0.25 (bilinear), the mean (R 123, G 117, B 104) is subtracted and
the network sees the channels in RGB order; per anchor, softmax face score and box decoded
with variances 0.1 / 0.2; candidates over 0.05, NMS 0.3 (IoU above it suppressed), at most
750 kept; then scores over 0.9, boxes scaled to the full frame, NMS 0.1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.errors import UserError
from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.eval.weights import check_state_dict
from latentsync.io import load_torch_file
from latentsync.face.detectors import Face, FaceDetector

logger = logging.getLogger(__name__)

S3FD_PATH = str(default_path("s3fd"))
S3FD_SOURCE = f"get it from {checkpoint_file('s3fd').source()}"

# VGG16 trunk: channels per convolution, "M" = 2x2 max-pool, "C" = the same with ceil_mode.
VGG_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M")
FC_CHANNELS = 1024
FC6_DILATION = 6
L2NORM_SCALES = {"L2Norm3_3": 10.0, "L2Norm4_3": 8.0, "L2Norm5_3": 5.0}
L2NORM_EPS = 1e-10
EXTRAS = ((1024, 256, 1, 1), (256, 512, 3, 2), (512, 128, 1, 1), (128, 256, 3, 2))  # in, out, kernel, stride
SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)
CONF3_3_CHANNELS = 4  # 3 background scores (max-out) + 1 face score

ANCHOR_SIZES = (16, 32, 64, 128, 256, 512)  # pixels of the network input
ANCHOR_STEPS = (4, 8, 16, 32, 64, 128)
VARIANCES = (0.1, 0.2)
CANDIDATE_THRESHOLD = 0.05
CANDIDATE_NMS = 0.3
NMS_TOP_K = 5000  # highest-scoring candidates that enter the per-class NMS
KEEP_TOP_K = 750
FACE_THRESHOLD = 0.9  # syncnet_detect: detect_faces(conf_th=0.9)
FINAL_NMS = 0.1
DETECT_SCALE = 0.25  # syncnet_detect: facedet_scale
MEAN_RGB = (123.0, 117.0, 104.0)

# Rough brow/nose positions as fractions of the box (S3FD gives no landmarks).
ESTIMATED_POINTS = ((0.3, 0.3), (0.7, 0.3), (0.5, 0.55))

DETECTOR_CHOICES = ("auto", "s3fd", "mediapipe", "insightface", "face_alignment")


# ----------------------------------------------------------------------------------------
# network


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (`weight`)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + L2NORM_EPS
        return x / norm * self.weight.view(1, -1, 1, 1)


def _vgg_layers() -> tuple[list[nn.Module], list[int]]:
    """The VGG16 trunk (ReLU and pooling layers hold indices too, as in the state dict) and the
    indices after which conv3_3, conv4_3 and conv5_3 (with their ReLU) are tapped."""
    layers: list[nn.Module] = []
    taps, channels, convs_in_block = [], 3, 0
    for item in VGG_CONFIG:
        if item in ("M", "C"):
            if convs_in_block == 3:
                taps.append(len(layers) - 1)
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=item == "C"))
            convs_in_block = 0
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
        channels, convs_in_block = item, convs_in_block + 1
    layers += [nn.Conv2d(channels, FC_CHANNELS, 3, padding=FC6_DILATION, dilation=FC6_DILATION),
               nn.ReLU(inplace=True), nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1), nn.ReLU(inplace=True)]
    return layers, taps


class S3FD(nn.Module):
    """S3FD: per-anchor face logits and box offsets on six feature maps (strides 4 ... 128)."""

    def __init__(self):
        super().__init__()
        layers, self.taps = _vgg_layers()
        self.vgg = nn.ModuleList(layers)
        self.L2Norm3_3 = L2Norm(SOURCE_CHANNELS[0], L2NORM_SCALES["L2Norm3_3"])
        self.L2Norm4_3 = L2Norm(SOURCE_CHANNELS[1], L2NORM_SCALES["L2Norm4_3"])
        self.L2Norm5_3 = L2Norm(SOURCE_CHANNELS[2], L2NORM_SCALES["L2Norm5_3"])
        self.extras = nn.ModuleList(nn.Conv2d(i, o, k, s, padding=k // 2) for i, o, k, s in EXTRAS)
        self.loc = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in SOURCE_CHANNELS)
        self.conf = nn.ModuleList(nn.Conv2d(c, CONF3_3_CHANNELS if i == 0 else 2, 3, padding=1)
                                  for i, c in enumerate(SOURCE_CHANNELS))

    def sources(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six feature maps the heads look at (the first three L2-normalised)."""
        norms = [self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3]
        out = []
        for index, layer in enumerate(self.vgg):
            x = layer(x)
            if index in self.taps:
                out.append(norms[self.taps.index(index)](x))
        out.append(x)
        for index, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if index % 2 == 1:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """[B, 3, H, W] mean-subtracted RGB -> box offsets [B, N, 4], logits [B, N, 2]
        (background, face) and the (height, width) of each feature map; anchors are ordered
        map by map, row-major within a map."""
        locs, confs, sizes = [], [], []
        for index, source in enumerate(self.sources(x)):
            loc, conf = self.loc[index](source), self.conf[index](source)
            if index == 0:
                conf = torch.cat([conf[:, :3].amax(dim=1, keepdim=True), conf[:, 3:]], dim=1)
            sizes.append((source.shape[2], source.shape[3]))
            locs.append(loc.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
            confs.append(conf.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2))
        return torch.cat(locs, 1), torch.cat(confs, 1), sizes


def load_s3fd(path: str | os.PathLike = S3FD_PATH, device="cpu") -> S3FD:
    """S3FD in eval mode on `device` with the weights of `path` (sfd_face.pth), loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: S3FD face detector weights not found; {S3FD_SOURCE}")
    state = load_torch_file(path, "S3FD weights file")
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, found {type(state).__name__}")
    if "conv1_1.weight" in state:
        raise UserError(f"{path}: this is face_alignment's SFD port (conv1_1 keys), a different "
                        f"network; the evaluation needs syncnet_python's sfd_face.pth; {S3FD_SOURCE}")
    model = S3FD()
    check_state_dict(model, state, str(path), "S3FD (sfd_face.pth)")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------
# anchors, decoding, NMS


def prior_boxes(feature_sizes: list[tuple[int, int]], image_size: tuple[int, int],
                steps=ANCHOR_STEPS, sizes=ANCHOR_SIZES) -> np.ndarray:
    """[N, 4] anchors (cx, cy, w, h) as fractions of the network input (height, width).

    One square anchor per cell of each map: centre ((col + 0.5) * step, (row + 0.5) * step),
    side `size`; maps in order, cells row-major (the order of `S3FD.forward`).
    """
    height, width = image_size
    priors = []
    for (rows, cols), step, size in zip(feature_sizes, steps, sizes):
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height,
                             (np.arange(cols) + 0.5) * step / width, indexing="ij")
        wh = np.broadcast_to([size / width, size / height], (rows * cols, 2))
        priors.append(np.concatenate([np.stack([cx.ravel(), cy.ravel()], 1), wh], 1))
    return np.concatenate(priors, 0) if priors else np.zeros((0, 4))


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances=VARIANCES) -> np.ndarray:
    """[N, 4] corner boxes (x1, y1, x2, y2) from offsets `loc` relative to `priors` (cx, cy, w, h):
    centre = prior centre + loc_xy * v0 * prior size, size = prior size * exp(loc_wh * v1)."""
    loc, priors = np.asarray(loc, np.float64), np.asarray(priors, np.float64)
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([centre - size / 2, centre + size / 2], 1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first.

    A box is dropped when its IoU with an already kept box is above `threshold` (areas without
    the +1 pixel convention); with `top_k`, only the top_k highest scores take part.
    """
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        lo = np.maximum(boxes[best, :2], boxes[rest, :2])
        hi = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.clip(hi - lo, 0, None).prod(axis=1)
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.array(keep, dtype=np.int64)


def select_detections(loc: np.ndarray, scores: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """[K, 5] (x1, y1, x2, y2 as fractions of the input, face score), best first: the reference's
    `Detect` step (score > 0.05, NMS 0.3 over the top 5000, at most 750 kept)."""
    scores = np.asarray(scores, np.float64)
    mask = scores > CANDIDATE_THRESHOLD
    if not mask.any():
        return np.zeros((0, 5))
    boxes = decode_boxes(np.asarray(loc)[mask], np.asarray(priors)[mask])
    keep = nms(boxes, scores[mask], CANDIDATE_NMS, NMS_TOP_K)[:KEEP_TOP_K]
    return np.concatenate([boxes[keep], scores[mask][keep, None]], 1)


# ----------------------------------------------------------------------------------------
# whole-frame detection


def preprocess(frame_rgb: np.ndarray, scale: float = DETECT_SCALE) -> torch.Tensor:
    """[1, 3, h, w] float network input: the frame resized by `scale` (bilinear, OpenCV), the
    per-channel mean (R 123, G 117, B 104) subtracted, channels kept in RGB order."""
    small = cv2.resize(frame_rgb, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    image = small.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


@torch.no_grad()
def detect_faces(net, frame_rgb: np.ndarray, device="cpu", scale: float = DETECT_SCALE,
                 threshold: float = FACE_THRESHOLD) -> np.ndarray:
    """[K, 5] face boxes (x1, y1, x2, y2 in full-frame pixels, score) of an RGB uint8 frame,
    best first; `net` maps an input batch to (loc, logits, feature sizes) like `S3FD`."""
    height, width = frame_rgb.shape[:2]
    x = preprocess(frame_rgb, scale).to(device)
    loc, logits, sizes = net(x)
    scores = torch.softmax(logits[0].float(), dim=-1)[:, 1].cpu().numpy()
    priors = prior_boxes(sizes, tuple(x.shape[2:]))
    found = select_detections(loc[0].float().cpu().numpy(), scores, priors)
    found = found[found[:, 4] > threshold]
    found[:, :4] *= np.array([width, height, width, height], np.float64)
    return found[nms(found[:, :4], found[:, 4], FINAL_NMS)]


class S3FDDetector(FaceDetector):
    """`latentsync.face` detector interface around S3FD, for the evaluation's face tracks.

    S3FD finds boxes only: `Face.points` are a rough guess from the box (brows at 30 % of the
    height and 30 % / 70 % of the width, nose at the centre, 55 % down), good enough to order
    faces but not for alignment; `Face.landmarks` is None. Use `.box` and `.score`.
    """

    name = "s3fd"

    def __init__(self, net: S3FD, device="cpu", scale: float = DETECT_SCALE,
                 threshold: float = FACE_THRESHOLD):
        self.net, self.device, self.scale, self.threshold = net, device, scale, threshold

    def _detect(self, frame_rgb: np.ndarray) -> list[Face]:
        found = detect_faces(self.net, frame_rgb, self.device, self.scale, self.threshold)
        return [Face(box=row[:4].copy(), points=estimated_points(row[:4]), score=float(row[4]))
                for row in found]


def estimated_points(box: np.ndarray) -> np.ndarray:
    """[3, 2] rough brow / brow / nose positions inside `box` (no landmark model involved)."""
    x1, y1, x2, y2 = box
    fractions = np.asarray(ESTIMATED_POINTS, np.float64)
    return np.stack([x1 + fractions[:, 0] * (x2 - x1), y1 + fractions[:, 1] * (y2 - y1)], 1)


def choose_face_detector(name: str, s3fd_path: str | os.PathLike | None = None) -> str:
    """The backend to use for option `face_backend` = `name`: "auto" is S3FD when its weights exist
    (`s3fd_path`, default checkpoints/auxiliary/sfd_face.pth), else MediaPipe with a warning.
    A requested S3FD (or an explicit `s3fd_path`) whose file is missing is a UserError."""
    if name not in DETECTOR_CHOICES:
        raise UserError(f"face_backend {name!r}: expected one of {', '.join(DETECTOR_CHOICES)}")
    path = Path(s3fd_path if s3fd_path is not None else S3FD_PATH)
    if name == "s3fd" or (name == "auto" and s3fd_path is not None):
        if not path.is_file():
            raise UserError(f"{path}: S3FD face detector weights not found; {S3FD_SOURCE}")
        return "s3fd"
    if name == "auto":
        if path.is_file():
            return "s3fd"
        logger.warning("%s not found: face boxes come from MediaPipe, so LSE-C / LSE-D are not "
                       "comparable with published numbers (which use S3FD)", path)
        return "mediapipe"
    return name


def make_s3fd_detector(path: str | os.PathLike | None = None, device=None) -> S3FDDetector:
    """An `S3FDDetector` with the weights of `path` (default checkpoints/auxiliary/sfd_face.pth)."""
    from latentsync.device import pick_device

    device = pick_device(device) if device is None or isinstance(device, str) else device
    return S3FDDetector(load_s3fd(path if path is not None else S3FD_PATH, device), device)
