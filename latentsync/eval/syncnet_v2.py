"""Lip-sync confidence (LSE-C) and distance (LSE-D) with the SyncNet v2 network.

`SyncNetV2` has the layer layout of the public `syncnet_v2.model` (joonson/syncnet_python,
mirrored in the HF repo ByteDance/LatentSync-1.5 as `auxiliary/syncnet_v2.model`), so that
file loads strictly. `evaluate_offset` scores one face crop sequence against its audio exactly
as the reference does: MFCCs at 100 per second, 5-frame lip windows against 20-column MFCC
windows, mean distance per audio shift of -15..15 frames, LSE-D = the smallest mean distance,
LSE-C = median minus smallest, offset = 15 - best shift (offset > 0: the audio is early).

`sync_confidence` runs the whole-video procedure: shots (PySceneDetect ContentDetector),
per-frame face boxes, greedy IoU tracks, smoothed square-ish crops at 224 px, one score per
track. Deviations from the reference, all on purpose:
- Face boxes come from the reference's S3FD (`latentsync.eval.s3fd`) when
  `checkpoints/auxiliary/sfd_face.pth` is present (detector "auto"); otherwise from MediaPipe,
  whose face-mesh box is a little tighter, so scores are then not comparable with published ones.
- Crops and audio stay in memory: the reference writes each crop as an mp4v video plus AAC,
  then re-reads it as JPEGs and WAV; those lossy round trips are skipped.
- A track takes at most one face per frame (the reference's list mutation can take two).
- Nothing is written to or deleted from a shared temp folder.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import medfilt
from torch import nn

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.constants import INT16_SCALE, MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.eval.media import list_videos, read_audio_int16
from latentsync.eval.weights import load_weights_strictly
from latentsync.face.tracking import box_iou
from latentsync.io import atomic_open
from latentsync.video import iter_single_frames

logger = logging.getLogger(__name__)

SYNCNET_V2_PATH = str(default_path("syncnet_v2"))
SYNCNET_V2_SOURCE = f"get it from {checkpoint_file('syncnet_v2').source()}"

SAMPLES_PER_FRAME = SAMPLE_RATE // MODEL_FPS  # 640
MFCC_PER_FRAME = 4  # 100 MFCC columns per second
LIP_WINDOW = 5  # frames per lip input
MFCC_WINDOW = 20  # MFCC columns per audio input
VSHIFT = 15  # frames searched either way
BATCH_SIZE = 20
CROP_SIZE = 224
PAIRWISE_EPS = 1e-6
EMBED_DIM = 1024
CSV_FIELDS = ("video", "offset", "lse_c", "lse_d", "num_tracks", "error")


# ----------------------------------------------------------------------------------------
# network


def _conv_bn_relu(conv: nn.Module, channels: int, bn=nn.BatchNorm2d) -> list[nn.Module]:
    return [conv, bn(channels), nn.ReLU(inplace=True)]


def _fc_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                         nn.Linear(512, EMBED_DIM))


class SyncNetV2(nn.Module):
    """SyncNet v2: a 2-D CNN on 13x20 MFCC windows and a 3-D CNN on five 224x224 frames."""

    def __init__(self):
        super().__init__()
        bn3 = nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), 64),
            nn.MaxPool2d(1, 1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), 192),
            nn.MaxPool2d(3, (1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), 384),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), 256),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), 256),
            nn.MaxPool2d(3, 2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), 512),
        )
        self.netfcaud = _fc_head()
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, bn3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), 256, bn3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), 512, bn3),
        )
        self.netfclip = _fc_head()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] MFCC windows -> [B, 1024] audio embeddings."""
        hidden = self.netcnnaud(mfcc)
        return self.netfcaud(hidden.reshape(hidden.shape[0], -1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] raw 0-255 BGR frames -> [B, 1024] lip embeddings."""
        hidden = self.netcnnlip(frames)
        return self.netfclip(hidden.reshape(hidden.shape[0], -1))

    def forward(self, mfcc: torch.Tensor, frames: torch.Tensor):
        """Both embeddings: (audio [B, 1024], lip [B, 1024])."""
        return self.forward_aud(mfcc), self.forward_lip(frames)


def load_syncnet_v2(path: str | os.PathLike = SYNCNET_V2_PATH, device="cpu") -> SyncNetV2:
    """SyncNetV2 in eval mode with the weights of `path` (a plain state dict), loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: SyncNet v2 checkpoint not found; {SYNCNET_V2_SOURCE}")
    return load_weights_strictly(SyncNetV2(), path, device, "SyncNet v2", wrapper_key="state_dict")


# ----------------------------------------------------------------------------------------
# features and offset search


def mfcc_features(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """[13, T] MFCCs (python_speech_features defaults, 100 columns per second).

    `wav` is mono int16 samples, or floats in [-1, 1] (scaled by INT16_SCALE to the int16 range,
    which is what the reference feeds in).
    """
    from python_speech_features import mfcc

    wav = np.asarray(wav)
    signal = wav.astype(np.float64) * INT16_SCALE if wav.dtype.kind == "f" else wav.astype(np.float64)
    return np.ascontiguousarray(mfcc(signal, sr).T)


@dataclass
class SyncResult:
    """Sync score of one crop sequence: offset in frames (> 0: audio early), LSE-D, LSE-C."""

    offset: int
    min_dist: float  # LSE-D
    confidence: float  # LSE-C
    dists: np.ndarray  # [2*vshift+1] mean distance per shift; index k = audio shifted by k-vshift
    frame_dists: np.ndarray = field(repr=False)  # [N, 2*vshift+1] per lip window


def num_windows(num_frames: int, num_samples: int) -> int:
    """How many 5-frame windows the reference scores: L - 5 with L = min(frames, samples/640)."""
    return min(num_frames, num_samples // SAMPLES_PER_FRAME) - (LIP_WINDOW - 1) - 1


def _to_crops(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {list(frames.shape)}")
    if frames.shape[1:3] != (CROP_SIZE, CROP_SIZE):
        frames = np.stack([cv2.resize(f, (CROP_SIZE, CROP_SIZE)) for f in frames])
    return frames


@torch.no_grad()
def lip_features(model: SyncNetV2, frames: np.ndarray, count: int, batch_size: int = BATCH_SIZE,
                 device=None) -> torch.Tensor:
    """[count, 1024] embeddings of lip windows frames[v:v+5], v = 0..count-1 (raw 0-255 BGR)."""
    device = device or next(model.parameters()).device
    frames = _to_crops(frames)
    out = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        clip = torch.from_numpy(frames[start:stop + LIP_WINDOW - 1]).to(device, torch.float32)
        clip = clip.permute(3, 0, 1, 2)  # [3, n, H, W]
        batch = torch.stack([clip[:, v:v + LIP_WINDOW] for v in range(stop - start)])
        out.append(model.forward_lip(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)


@torch.no_grad()
def audio_features(model: SyncNetV2, mfcc: np.ndarray, count: int, batch_size: int = BATCH_SIZE,
                   device=None) -> torch.Tensor:
    """[count, 1024] embeddings of MFCC columns 4v..4v+19, v = 0..count-1."""
    device = device or next(model.parameters()).device
    needed = MFCC_PER_FRAME * (count - 1) + MFCC_WINDOW
    if mfcc.shape[1] < needed:
        raise ValueError(f"{count} windows need {needed} MFCC columns, got {mfcc.shape[1]}")
    cc = torch.from_numpy(np.asarray(mfcc, np.float32)).to(device)
    out = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        batch = torch.stack([cc[None, :, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_WINDOW]
                             for v in range(start, stop)])
        out.append(model.forward_aud(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)


def score_offsets(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """The reference's offset search on precomputed embeddings (row v of each = window v).

    d[v, k] = |lip_v - aud_{v+k-vshift}| with zero rows outside the audio; D = mean over v.
    """
    lip, aud = lip.float(), aud.float()
    count, width = lip.shape[0], 2 * vshift + 1
    padded = F.pad(aud, (0, 0, vshift, vshift))
    index = torch.arange(count)[:, None] + torch.arange(width)[None, :]
    frame_dists = F.pairwise_distance(lip[:, None, :].expand(-1, width, -1), padded[index],
                                      eps=PAIRWISE_EPS)
    dists = frame_dists.mean(dim=0)
    min_dist, best = torch.min(dists, dim=0)
    confidence = torch.median(dists) - min_dist
    return SyncResult(offset=vshift - int(best), min_dist=float(min_dist),
                      confidence=float(confidence), dists=dists.numpy(),
                      frame_dists=frame_dists.numpy())


def evaluate_offset(model: SyncNetV2, frames: np.ndarray, wav: np.ndarray, vshift: int = VSHIFT,
                    batch_size: int = BATCH_SIZE, device=None) -> SyncResult:
    """Score face crops `frames` (uint8 [T, 224, 224, 3], BGR as the reference reads them)
    against mono 16 kHz audio `wav` (int16, or float in [-1, 1])."""
    count = num_windows(len(frames), len(wav))
    if count < 1:
        raise UserError(f"clip too short for SyncNet: {len(frames)} frames, {len(wav)} samples "
                        f"(need at least {LIP_WINDOW + 1} frames of video and audio)")
    mfcc = mfcc_features(wav)
    lip = lip_features(model, frames, count, batch_size, device)
    aud = audio_features(model, mfcc, count, batch_size, device)
    return score_offsets(lip, aud, vshift)


# ----------------------------------------------------------------------------------------
# face tracks (shots, boxes, IoU tracks, crops)


@dataclass
class TrackOptions:
    """Shot/track/crop settings of the reference (LatentSync values)."""

    min_track: int = 50  # a track needs more than this many detections (syncnet_python: 100)
    min_face_size: float = 100.0  # mean box side in pixels
    max_frame_gap: int = MODEL_FPS  # one second of missing detections ends a track
    iou_threshold: float = 0.5
    smooth_kernel: int = 13
    crop_scale: float = 0.4
    pad_value: int = 110
    crop_size: int = CROP_SIZE


@dataclass
class Track:
    """One face track: consecutive frame indices and their (interpolated) boxes."""

    frames: np.ndarray  # [n] int
    boxes: np.ndarray  # [n, 4] float x1, y1, x2, y2


def make_detector(name: str = "mediapipe", s3fd_path: str | os.PathLike | None = None, device=None):
    """The face detector backend `name` (imported late: tests swap in a fake).

    "s3fd" is the reference's detector (weights `s3fd_path`, default
    checkpoints/auxiliary/sfd_face.pth); "auto" picks it when that file exists, else MediaPipe
    with a warning that scores are then not comparable with published numbers. Other names
    go to `latentsync.face.detectors.make_face_detector`.
    """
    from latentsync.eval.s3fd import choose_face_detector, make_s3fd_detector
    from latentsync.face.detectors import make_face_detector

    if name in ("auto", "s3fd"):
        name = choose_face_detector(name, s3fd_path)
    if name == "s3fd":
        return make_s3fd_detector(s3fd_path, device)
    return make_face_detector(name, device=device)


def detect_boxes_and_shots(video_path: str | os.PathLike, detector
                           ) -> tuple[list[list[np.ndarray]], list[tuple[int, int]]]:
    """Per-frame face boxes (25 fps frames) and shots [start, end) from ContentDetector."""
    from scenedetect.detectors import ContentDetector

    shot_detector = ContentDetector()
    boxes, cuts, count = [], [], 0
    for index, rgb in enumerate(iter_single_frames(video_path, fps=MODEL_FPS)):
        faces = detector.detect(rgb)
        boxes.append([np.asarray(f.box, np.float64) for f in faces])
        cuts += shot_detector.process_frame(index, _scene_frame(np.ascontiguousarray(rgb[:, :, ::-1])))  # BGR
        count = index + 1
    if count == 0:
        raise UserError(f"{video_path}: the video has no frames")
    cuts += shot_detector.post_process(count)
    edges = [0] + sorted(c for c in set(cuts) if 0 < c < count) + [count]
    return boxes, list(zip(edges[:-1], edges[1:]))


def _scene_frame(frame: np.ndarray) -> np.ndarray:
    """The frame downscaled the way PySceneDetect's auto-downscale does (to ~256 px wide)."""
    factor = max(frame.shape[:2]) / 256.0
    if factor <= 1.0:
        return frame
    size = (max(1, round(frame.shape[1] / factor)), max(1, round(frame.shape[0] / factor)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def track_shot(shot_boxes: list[list[np.ndarray]], first_frame: int,
               options: TrackOptions) -> list[Track]:
    """Greedy IoU tracks in one shot; `shot_boxes[i]` are the boxes of frame first_frame+i."""
    remaining = [list(b) for b in shot_boxes]
    tracks = []
    while True:
        picked: list[tuple[int, np.ndarray]] = []
        for offset, faces in enumerate(remaining):
            frame = first_frame + offset
            if picked and frame - picked[-1][0] > options.max_frame_gap:
                break
            for j, box in enumerate(faces):
                if not picked or box_iou(box, picked[-1][1]) > options.iou_threshold:
                    picked.append((frame, box))
                    del faces[j]
                    break
        if not picked:
            return tracks
        if len(picked) > options.min_track:
            track = _interpolate(picked)
            sides = track.boxes[:, 2:] - track.boxes[:, :2]
            if max(sides[:, 0].mean(), sides[:, 1].mean()) > options.min_face_size:
                tracks.append(track)


def _interpolate(picked: list[tuple[int, np.ndarray]]) -> Track:
    known = np.array([f for f, _ in picked])
    boxes = np.stack([b for _, b in picked])
    frames = np.arange(known[0], known[-1] + 1)
    return Track(frames, np.stack([np.interp(frames, known, boxes[:, i]) for i in range(4)], 1))


def find_tracks(boxes: list[list[np.ndarray]], shots: list[tuple[int, int]],
                options: TrackOptions) -> list[Track]:
    """Tracks of every shot that is at least `min_track` frames long."""
    tracks = []
    for start, end in shots:
        if end - start >= options.min_track:
            tracks += track_shot(boxes[start:end], start, options)
    return tracks


def crop_geometry(track: Track, options: TrackOptions) -> np.ndarray:
    """[n, 3] per-frame (half size s, centre x, centre y), each median-filtered (zero-padded ends)."""
    b = track.boxes
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x, y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([medfilt(v, kernel_size=options.smooth_kernel) for v in (s, x, y)], 1)


def crop_face(frame: np.ndarray, s: float, x: float, y: float, options: TrackOptions) -> np.ndarray:
    """The [crop_size, crop_size, 3] crop: rows y-s .. y+s(1+2c), columns x ± s(1+c)."""
    c = options.crop_scale
    pad = int(s * (1 + 2 * c))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                value=(options.pad_value,) * 3)
    my, mx = y + pad, x + pad
    face = padded[int(my - s):int(my + s * (1 + 2 * c)), int(mx - s * (1 + c)):int(mx + s * (1 + c))]
    if face.size == 0:
        raise ValueError(f"empty face crop (s={s}, x={x}, y={y})")
    return cv2.resize(face, (options.crop_size, options.crop_size))


def crop_tracks(video_path: str | os.PathLike, tracks: list[Track],
                options: TrackOptions) -> list[np.ndarray]:
    """For each track, its face crops as uint8 [n, 224, 224, 3] BGR (second pass over the video)."""
    geometry = [crop_geometry(t, options) for t in tracks]
    crops: list[list[np.ndarray]] = [[] for _ in tracks]
    last = max(int(t.frames[-1]) for t in tracks)
    for index, rgb in enumerate(iter_single_frames(video_path, fps=MODEL_FPS)):
        if index > last:
            break
        frame = np.ascontiguousarray(rgb[:, :, ::-1])  # SyncNet v2 was trained on BGR crops
        for i, track in enumerate(tracks):
            pos = index - int(track.frames[0])
            if 0 <= pos < len(track.frames):
                crops[i].append(crop_face(frame, *geometry[i][pos], options))
    return [np.stack(c) for c in crops]


def sync_confidence(video_path: str | os.PathLike, model: SyncNetV2, detector, device=None,
                    options: TrackOptions | None = None) -> dict:
    """Offset (int of the mean over tracks), LSE-C and LSE-D (means over tracks) of one video."""
    options = options or TrackOptions()
    video_path = Path(video_path)
    if not video_path.is_file():
        raise UserError(f"{video_path}: video file not found")
    wav = read_audio_int16(video_path, SAMPLE_RATE)
    if hasattr(detector, "reset"):
        detector.reset()
    boxes, shots = detect_boxes_and_shots(video_path, detector)
    tracks = find_tracks(boxes, shots, options)
    if not tracks:
        raise UserError(f"{video_path}: face not detected (no face track longer than "
                        f"{options.min_track} frames with faces over {options.min_face_size:g} px)")
    results = []
    for track, crops in zip(tracks, crop_tracks(video_path, tracks, options)):
        audio = wav[int(track.frames[0]) * SAMPLES_PER_FRAME:(int(track.frames[-1]) + 1) * SAMPLES_PER_FRAME]
        try:
            results.append(evaluate_offset(model, crops, audio, device=device))
        except UserError as exc:
            raise UserError(f"{video_path}: frames {track.frames[0]}-{track.frames[-1]}: {exc}") from None
    return dict(offset=int(np.mean([r.offset for r in results])),
                lse_c=float(np.mean([r.confidence for r in results])),
                lse_d=float(np.mean([r.min_dist for r in results])),
                num_tracks=len(results))


def evaluate_folder(videos_dir: str | os.PathLike, model: SyncNetV2, detector, device=None,
                    csv_out: str | os.PathLike | None = None,
                    options: TrackOptions | None = None) -> dict:
    """Score every video of a folder; videos that fail (UserError) are skipped and reported.

    Returns the mean LSE-C / LSE-D over the scored videos and the per-video rows; with
    `csv_out`, the rows are written there (temporary name, then renamed).
    """
    rows = []
    for video in list_videos(videos_dir):
        try:
            score = sync_confidence(video, model, detector, device, options)
            rows.append(dict(video=video.name, error="", **score))
        except UserError as exc:
            logger.warning("skipping %s", exc)
            rows.append(dict(video=video.name, offset="", lse_c="", lse_d="", num_tracks=0,
                             error=str(exc)))
    if csv_out is not None:
        write_csv(rows, csv_out)
    scored = [r for r in rows if not r["error"]]
    if not scored:
        raise UserError(f"{videos_dir}: no video could be scored (first problem: {rows[0]['error']})")
    return dict(lse_c=float(np.mean([r["lse_c"] for r in scored])),
                lse_d=float(np.mean([r["lse_d"] for r in scored])),
                num_videos=len(scored), rows=rows)


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write per-video rows to `path` via a temporary file in the same folder."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
