"""Validation of a UNet run: the inference pipeline with the in-training UNet on
data.val_video_path / data.val_audio_path -> `val_videos/val_video_<step>.mp4`, then the
SyncNet-v2 confidence (LSE-C) of that video when its checkpoint ckpt.syncnet_v2_path exists."""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from latentsync.loading import ModelFiles
from latentsync.training.pipeline_parts import LipsyncOptions, LipsyncPipeline

logger = logging.getLogger(__name__)

DEFAULT_INFERENCE_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 1.5
SYNC_DETECTOR = "mediapipe"


class Validator:
    """Renders the validation video with the in-training UNet and scores its lip sync."""

    def __init__(self, config: DictConfig, vae, encoder, run_dir: Path, device):
        self.config, self.vae, self.encoder, self.run_dir, self.device = config, vae, encoder, run_dir, device
        self.pipeline = None
        self.syncnet_v2 = self.detector = None

    def __call__(self, unet, step: int, autocast) -> tuple[Path | None, float | None]:
        """(video, sync confidence) at `step`; (None, None) when rendering fails (a long run goes on)."""
        data, run = self.config.data, self.config.run
        out = self.run_dir / "val_videos" / f"val_video_{step}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        was_training = unet.training
        unet.eval()
        try:
            options = LipsyncOptions(inference_steps=int(run.get("inference_steps", DEFAULT_INFERENCE_STEPS)),
                                     guidance_scale=float(run.get("guidance_scale", DEFAULT_GUIDANCE_SCALE)),
                                     seed=int(run.seed), num_frames=int(data.num_frames), show_progress=False)
            with torch.no_grad(), autocast:
                self.get_pipeline(unet)(data.val_video_path, data.val_audio_path, out, options)
        except Exception as e:  # a failed validation must not end a long run
            logger.warning("validation at step %d failed: %s: %s", step, type(e).__name__, str(e).splitlines()[:1])
            return None, None
        finally:
            unet.train(was_training)
        return out, self.sync_confidence(out)

    def get_pipeline(self, unet) -> LipsyncPipeline:
        if self.pipeline is None:  # the run's config as used (config.yaml) with the models in memory
            self.pipeline = LipsyncPipeline.from_files(
                ModelFiles(unet_config=self.run_dir / "config.yaml"), device=self.device,
                face_backend=str(self.config.run.get("face_backend", SYNC_DETECTOR)),
                unet=unet, vae=self.vae, audio_encoder=self.encoder)
        return self.pipeline

    def sync_confidence(self, video: Path) -> float | None:
        """SyncNet-v2 LSE-C of the validation video (0 when scoring fails); None without its checkpoint."""
        path = Path(str(self.config.ckpt.get("syncnet_v2_path") or ""))
        if not path.is_file():
            return None
        from latentsync.eval import syncnet_v2 as sv  # optional: only with the SyncNet-v2 checkpoint

        try:
            if self.syncnet_v2 is None:
                self.syncnet_v2 = sv.load_syncnet_v2(path, self.device)
                self.detector = sv.make_detector(SYNC_DETECTOR)
            return float(sv.sync_confidence(video, self.syncnet_v2, self.detector, self.device)["lse_c"])
        except Exception as e:  # the reference counts failures as 0
            logger.warning("sync confidence of %s failed (%s); counted as 0", video, e)
            return 0.0
