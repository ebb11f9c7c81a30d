"""Validation of a UNet run: the inference pipeline with the in-training UNet on
data.val_video_path / data.val_audio_path -> `val_videos/val_video_<step>.mp4`, then the
SyncNet-v2 confidence (LSE-C) of that video when its checkpoint ckpt.syncnet_v2_path exists."""

import logging
from pathlib import Path

import torch

from latentsync.face.detectors import DEFAULT_FACE_BACKEND
from latentsync.loading import ModelFiles
from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
from latentsync.pipelines.options import LipsyncOptions
from latentsync.training.unet_config import UNetConfig

logger = logging.getLogger(__name__)

SYNC_DETECTOR = DEFAULT_FACE_BACKEND  # the face tracks of the SyncNet-v2 confidence


class Validator:
    """Renders the validation video with the in-training UNet and scores its lip sync."""

    def __init__(self, config: UNetConfig, vae, encoder, run_dir: Path, device):
        self.config, self.vae, self.encoder, self.run_dir, self.device = config, vae, encoder, run_dir, device
        self.pipeline = None
        self.syncnet_v2 = self.detector = None

    def __call__(self, unet, step: int, autocast) -> tuple[Path | None, float | None]:
        """(video, sync confidence) at `step`. The confidence is None when it is not measured (no
        SyncNet-v2 checkpoint) and NaN when the validation failed: missing, never a score of 0.
        A failed rendering gives no video (a long run goes on)."""
        data, run = self.config.data, self.config.run
        out = self.run_dir / "val_videos" / f"val_video_{step}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        was_training = unet.training
        unet.eval()
        try:
            options = LipsyncOptions(inference_steps=run.inference_steps, guidance_scale=run.guidance_scale,
                                     seed=run.seed, num_frames=data.num_frames, show_progress=False)
            with torch.no_grad(), autocast:
                self.get_pipeline(unet)(data.val_video_path, data.val_audio_path, out, options)
        except Exception as e:  # a failed validation must not end a long run
            logger.warning("validation at step %d failed: %s: %s", step, type(e).__name__, str(e).splitlines()[:1])
            return None, (float("nan") if self.syncnet_v2_path() is not None else None)
        finally:
            unet.train(was_training)
        return out, self.sync_confidence(out)

    def get_pipeline(self, unet) -> LipsyncPipeline:
        if self.pipeline is None:  # the run's config as used (config.yaml) with the models in memory
            self.pipeline = LipsyncPipeline.from_files(
                ModelFiles(unet_config=self.run_dir / "config.yaml"), device=self.device,
                face_backend=self.config.run.face_backend, unet=unet, vae=self.vae, audio_encoder=self.encoder)
        return self.pipeline

    def syncnet_v2_path(self) -> Path | None:
        """The SyncNet-v2 checkpoint of the sync confidence (ckpt.syncnet_v2_path), None if absent."""
        path = Path(self.config.ckpt.syncnet_v2_path or "")
        return path if path.is_file() else None

    def sync_confidence(self, video: Path) -> float | None:
        """SyncNet-v2 LSE-C of the validation video: NaN (missing) when scoring fails, None without
        its checkpoint. (The reference counts a failure as 0, which reads as a measured score.)"""
        path = self.syncnet_v2_path()
        if path is None:
            return None
        from latentsync.eval import syncnet_v2 as sv  # optional: only with the SyncNet-v2 checkpoint

        try:
            if self.syncnet_v2 is None:
                self.syncnet_v2 = sv.load_syncnet_v2(path, self.device)
                self.detector = sv.make_detector(SYNC_DETECTOR)
            return float(sv.sync_confidence(video, self.syncnet_v2, self.detector, self.device)["lse_c"])
        except Exception as e:  # a failed scoring must not end a long run
            logger.warning("sync confidence of %s failed (%s); recorded as missing", video, e)
            return float("nan")
