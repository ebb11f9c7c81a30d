"""Training samples for the LatentSync UNet (see docs/training.md).

One sample = a window of `num_frames` aligned faces of one clip (the ground truth), the same
frames masked with the mouth mask, a reference window from another, non-overlapping part of the
same clip, the mask itself, the Whisper chunks of the ground-truth frames and, when the SyncNet
loss is on, the SyncNet mel window of those frames:

    gt_pixel_values, masked_pixel_values, ref_pixel_values  float32 [F, 3, res, res] in [-1, 1]
    masks                                                    float32 [F, 1, res, res] (1 = keep)
    audio_embeds                                             float32 [F, 50, D] (docs/pipeline-timing.md)
    mel                                                      float32 [1, 80, ceil(F*80/fps)] or [0]
    video_path (str), start_idx, ref_start_idx (int)

Whisper features. Data-loader workers cannot share a GPU Whisper, so the features are computed
up front, in the training process, by `prepare_audio_features` (a pass over all clips with a
progress bar) through `AudioEncoder`'s own disk cache (keyed by audio content, model and
settings). The dataset only receives `{clip path: cache file}` and loads those files in the
workers. Reruns hit the cache, so the pass then only decodes and hashes each clip's audio.

Sampling. Every draw comes from a `random.Random` keyed by (seed, epoch, index), so a sample
depends only on its index: a resumed run sees exactly the batches an uninterrupted run would,
with any number of workers. The gt start s is uniform over the starts whose frames, Whisper
chunks and (if used) mel window exist and that leave room for a reference window; the reference
start r is uniform over the starts with |r - s| >= F.

Differences from the reference (docs/reference-differences.md, items 8 and 12): clips need 2F frames (the
reference skips clips under 3F and then rejection-samples r); s and r are drawn directly among
the valid starts instead of redrawing the whole sample; caches are keyed by content/file stamps,
not basenames; a broken clip is logged (once per clip and process) and another drawn, and after
`max_consecutive_failures` failures in a row the dataset raises instead of looping forever.
"""

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from tqdm import tqdm

from latentsync.audio import chunk_indices, load_audio, mel_window
from latentsync.constants import DEFAULT_SEED, MODEL_FPS, SAMPLE_RATE
from latentsync.data.common import ClipFrames, MelCache, draw_sample, error_line, frames_to_pixels, sample_rng
from latentsync.errors import UserError
from latentsync.face.mask import load_mask
from latentsync.io import load_torch_file

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 50
CLIP_ERRORS = (UserError, OSError, ValueError, IndexError, RuntimeError, EOFError, KeyError, av.FFmpegError)


@dataclass
class UNetDataOptions:
    """What a sample looks like (the `data:` section of a UNet config, plus sampling settings)."""

    num_frames: int = 16
    resolution: int = 256
    mask_path: str = "latentsync/face/mask.png"
    fps: float = MODEL_FPS
    sample_rate: int = SAMPLE_RATE
    use_mel: bool = True  # SyncNet supervision needs the mel window
    mel_cache_dir: str | None = None
    seed: int = DEFAULT_SEED
    cache_frames: bool = False  # keep decoded clips in memory (tiny data sets / overfit runs only)
    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES


# --------------------------------------------------------------------------------------------
# Whisper features, computed before training


def feature_cache_file(encoder, wav: np.ndarray) -> Path:
    """Where `encoder.features(wav)` stores its result in the encoder's disk cache."""
    return Path(encoder.cache_dir) / f"{encoder._cache_key(wav)}.pt"


def prepare_audio_features(paths: Sequence[str], encoder, sample_rate: int = SAMPLE_RATE,
                           show_progress: bool = True) -> dict[str, str]:
    """Compute (or find cached) Whisper features of every clip's own audio; `{clip: cache file}`.

    Clips whose audio cannot be decoded are logged and left out (the dataset then skips them).
    Raises UserError when no clip at all is usable.
    """
    if encoder.cache_dir is None:
        raise ValueError("prepare_audio_features needs an AudioEncoder with a cache_dir")
    files, failed = {}, 0
    for path in tqdm(paths, desc="Whisper features", unit="clip", disable=not show_progress):
        try:
            wav = load_audio(path, sample_rate)
            target = feature_cache_file(encoder, wav)
            if not target.is_file():
                encoder.features(wav)
            if not target.is_file():  # the encoder did not write where we expected
                raise RuntimeError(f"audio feature cache file {target} was not written")
        except CLIP_ERRORS as e:
            failed += 1
            logger.warning("skipping clip %s: no audio features (%s)", path, error_line(e))
            continue
        files[str(path)] = str(target)
    if not files:
        raise UserError(f"none of the {len(paths)} training clips has usable audio (see the log)")
    if failed:
        logger.warning("%d of %d clips have no usable audio and will be skipped", failed, len(paths))
    return files


# --------------------------------------------------------------------------------------------
# helpers


def valid_starts(num_frames: int, window: int, last_gt_start: int) -> list[int]:
    """gt starts 0..last_gt_start that leave room for a non-overlapping window in [0, N - F]."""
    last_any = num_frames - window
    return [s for s in range(0, min(last_gt_start, last_any) + 1) if s - window >= 0 or s + window <= last_any]


def reference_start(rng: random.Random, start: int, num_frames: int, window: int) -> int:
    """Uniform over [0, s - F] u [s + F, N - F]."""
    before = list(range(0, start - window + 1))
    after = list(range(start + window, num_frames - window + 1))
    return rng.choice(before + after)


# --------------------------------------------------------------------------------------------
# dataset


class UNetDataset(torch.utils.data.Dataset):
    """Ground-truth / masked / reference windows with their audio, drawn from aligned face clips.

    `paths`: the training clips (outputs of the data pipeline: aligned faces, 25 fps, 16 kHz).
    `feature_files`: `{clip: Whisper feature file}` from `prepare_audio_features`; clips missing
    from it are skipped. The clip is drawn at random for every sample (the index only keys the
    RNG); `length` is how many samples one epoch yields (default: the number of clips).
    """

    def __init__(self, paths: Sequence[str], feature_files: dict[str, str], options: UNetDataOptions,
                 length: int | None = None):
        if not paths:
            raise UserError("no training clips given to the UNet dataset")
        self.paths = [str(p) for p in paths]
        self.feature_files = {str(k): str(v) for k, v in feature_files.items()}
        self.options = options
        self.length = len(self.paths) if length is None else int(length)
        self.epoch = 0
        mask = torch.from_numpy(load_mask(options.mask_path, options.resolution))
        self.mask = mask[None, None].expand(options.num_frames, 1, -1, -1).contiguous()  # [F, 1, res, res]
        self.mels = MelCache(options.mel_cache_dir, options.sample_rate, keep_in_memory=options.cache_frames)
        self.clips = ClipFrames(options.num_frames, options.resolution, options.fps, options.cache_frames)
        self._features: dict[str, torch.Tensor] = {}
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (but again reproducible) set of samples for another pass."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng("unet-sample", self.options.seed, self.epoch, int(index))
        return draw_sample(self.paths, rng, self.sample_clip, CLIP_ERRORS, self._reported,
                           self.options.max_consecutive_failures,
                           "too short (needs two non-overlapping windows with audio)")

    def sample_clip(self, path: str, rng: random.Random) -> dict | None:
        """One sample from `path`, or None when the clip is too short."""
        o = self.options
        window = o.num_frames
        if path not in self.feature_files:
            raise KeyError("no Whisper features (its audio could not be decoded)")
        num_frames = self.clips.length(path)
        if num_frames < 2 * window:
            return None
        features = self.clip_features(path)
        rows = chunk_indices(features.shape[0], o.fps)  # [num_chunks, 10]
        last = min(num_frames, rows.shape[0]) - window
        mel = None
        if o.use_mel:
            mel = self.mels.get(path)
            while last >= 0 and mel_window(mel, last, window, o.fps) is None:
                last -= 1
        starts = valid_starts(num_frames, window, last)
        if not starts:
            return None
        start = rng.choice(starts)
        ref = reference_start(rng, start, num_frames, window)
        gt = frames_to_pixels(self.clips.window(path, start), o.resolution)
        ref_pixels = frames_to_pixels(self.clips.window(path, ref), o.resolution)
        audio = features[torch.from_numpy(rows[start:start + window])]  # [F, 10, L, D]
        if mel is not None:
            mel_tensor = torch.from_numpy(np.ascontiguousarray(mel_window(mel, start, window, o.fps)))[None]
        else:
            mel_tensor = torch.zeros(0)
        return {
            "gt_pixel_values": gt,
            "masked_pixel_values": gt * self.mask,
            "ref_pixel_values": ref_pixels,
            "masks": self.mask.clone(),
            "audio_embeds": audio.reshape(window, -1, features.shape[-1]).float(),
            "mel": mel_tensor.float(),
            "video_path": path,
            "start_idx": start,
            "ref_start_idx": ref,
        }

    # -- per-clip data (memoised where cheap or asked for)

    def clip_features(self, path: str) -> torch.Tensor:
        if path in self._features:
            return self._features[path]
        features = load_torch_file(self.feature_files[path], "audio feature file")
        if not torch.is_tensor(features) or features.ndim != 3:
            raise ValueError(f"{self.feature_files[path]}: not a [T, layers, dim] feature tensor")
        if self.options.cache_frames:
            self._features[path] = features
        return features
