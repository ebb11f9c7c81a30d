"""The benchmark's measures, all taken from video frames and audio (never from a model's insides).

* mouth correlation: Pearson correlation of the mouth opening measured with MediaPipe on the
  frames (latentsync/synthetic/measure.py) with the truth track of the speech;
* LSE-D / LSE-C / AV offset with the benchmark's own StableSyncNet, computed as SyncNet v2's
  LSE is (latentsync/eval/syncnet_v2.py): faces aligned as the data pipeline aligns them, every
  16-frame window embedded, distances to the audio windows shifted by -VSHIFT..VSHIFT frames
  averaged over windows; LSE-D = the smallest mean distance, LSE-C = median minus smallest,
  offset = the shift of the smallest (> 0: audio early);
* SSIM / PSNR of the mouth region against the truth rendering (box from the truth frame's lips);
* open ratio, texture ratio and leak correlation (latentsync/eval/mouth.py): the mouth's mean
  opening over speech frames and its texture against the truth rendering's, and the correlation
  of its opening with the source clip's own mouth track;
* held-out SyncNet accuracy on balanced in-sync / shifted samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from latentsync.constants import MODEL_FPS, SAMPLE_RATE

VSHIFT = 8  # frames of audio shift searched, as many as the data pipeline's sync stage allows


def face_pass(frames: np.ndarray, resolution: int, detector) -> tuple:
    """One MediaPipe detection per frame gives both (a) the mouth track of the largest face
    (latentsync/eval/mouth.py MouthTrack: opening, mouth box and its texture; NaN / None without a
    face) and (b) the face aligned as the data pipeline's stage 6 aligns it (uint8 [n, res, res, 3];
    a frame without a face repeats the previous face)."""
    from latentsync.eval.mouth import MouthTrack, mouth_of
    from latentsync.face.alignment import AlignRestore

    aligner = AlignRestore(resolution)
    aligner.reset()
    measures, faces, last = [], [], np.zeros((resolution, resolution, 3), np.uint8)
    for frame in frames:
        found = detector.detect(np.ascontiguousarray(frame))
        face = max(found, key=lambda f: f.area) if found else None
        if face is not None:
            last = aligner.align(frame, face.points)[0]
        measures.append(mouth_of(frame, face))
        faces.append(last)
    return MouthTrack.of(measures), np.stack(faces)


@torch.no_grad()
def sync_scores(syncnet, faces: np.ndarray, wav: np.ndarray, config, batch: int = 32) -> dict:
    """LSE-D, LSE-C and AV offset of aligned `faces` against 16 kHz `wav` with a StableSyncNet
    whose `config` is its YAML as a mapping (data.num_frames, resolution, lower_half)."""
    from latentsync.audio import mel_window, syncnet_melspectrogram
    from latentsync.data.syncnet_dataset import frames_to_tensor

    data = config["data"]
    F = int(data["num_frames"])
    mel = syncnet_melspectrogram(wav)
    n = min(len(faces), math.floor(len(wav) * MODEL_FPS / SAMPLE_RATE)) - F + 1
    starts = [s for s in range(max(n, 0)) if mel_window(mel, s, F, MODEL_FPS) is not None]
    if len(starts) <= 2 * VSHIFT:
        return dict(lse_d=float("nan"), lse_c=float("nan"), offset=0)
    device = next(syncnet.parameters()).device
    vision, audio = [], []
    for i in range(0, len(starts), batch):
        part = starts[i:i + batch]
        frames = torch.stack([frames_to_tensor(faces[s:s + F], data["resolution"], data["lower_half"]) for s in part])
        mels = torch.stack([torch.from_numpy(np.ascontiguousarray(mel_window(mel, s, F, MODEL_FPS),
                                                                  dtype=np.float32))[None] for s in part])
        v, a = syncnet(frames.to(device), mels.to(device))
        vision.append(v.float().cpu())
        audio.append(a.float().cpu())
    vision, audio = torch.cat(vision), torch.cat(audio)
    dists = []
    for shift in range(-VSHIFT, VSHIFT + 1):  # audio window v + shift against lip window v
        lo, hi = max(0, -shift), min(len(starts), len(starts) - shift)
        dists.append(torch.linalg.vector_norm(vision[lo:hi] - audio[lo + shift:hi + shift], dim=1).mean())
    dists = torch.stack(dists)
    best = int(torch.argmin(dists))
    return dict(lse_d=float(dists[best]), lse_c=float(torch.median(dists) - dists[best]), offset=best - VSHIFT)


def mouth_similarity(frames: np.ndarray, truth: np.ndarray, boxes: list) -> tuple[float, float]:
    """Mean SSIM and PSNR (dB) of the mouth boxes of `frames` against `truth` frames."""
    from latentsync.eval.image_metrics import SSIM_WINDOW, ssim

    ssims, psnrs = [], []
    for frame, real, box in zip(frames, truth, boxes):
        if box is None or box[2] - box[0] < SSIM_WINDOW or box[3] - box[1] < SSIM_WINDOW:
            continue
        x1, y1, x2, y2 = box
        a, b = frame[y1:y2, x1:x2], real[y1:y2, x1:x2]
        ssims.append(ssim(a, b))
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        psnrs.append(10 * math.log10(255.0 ** 2 / max(mse, 1e-10)))
    return (float(np.mean(ssims)) if ssims else float("nan"), float(np.mean(psnrs)) if psnrs else float("nan"))


@torch.no_grad()
def syncnet_accuracy(syncnet, config, clips_dir, num_samples: int, seed: int) -> dict:
    """Accuracy of `syncnet` on in-sync / shifted samples of the clips in `clips_dir` (the
    training sampler: half in sync on average), with the in-sync and the shifted halves scored
    separately; `accuracy` is their mean (balanced)."""
    from latentsync.data.syncnet_dataset import SyncNetDataset
    from latentsync.models.stable_syncnet import SYNC_THRESHOLD, cosine_similarity

    data = config["data"]
    dataset = SyncNetDataset(str(clips_dir), num_frames=data["num_frames"], resolution=data["resolution"],
                             lower_half=data["lower_half"], seed=seed, length=num_samples,
                             cache_frames=True)  # each held-out clip decoded once
    device = next(syncnet.parameters()).device
    correct, count = np.zeros(2), np.zeros(2)
    for batch in torch.utils.data.DataLoader(dataset, batch_size=32):
        vision, audio = syncnet(batch["frames"].to(device), batch["mel"].to(device))
        predicted = (cosine_similarity(vision, audio) > SYNC_THRESHOLD).cpu().numpy()
        label = batch["label"].numpy() > 0.5
        for value in (0, 1):
            correct[value] += np.sum((predicted == label)[label == value])
            count[value] += np.sum(label == value)
    rates = correct / np.maximum(count, 1)
    return dict(accuracy=float(rates.mean()), in_sync_accuracy=float(rates[1]), shifted_accuracy=float(rates[0]),
                samples=int(count.sum()))
