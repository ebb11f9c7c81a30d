"""What the UNet trainer takes from the inference side, imported in this one place: the noise
scheduler (the training noise schedule is the inference one, both from configs/scheduler_config.json),
the VAE loader, and the pipeline with its options for the validation videos."""

from latentsync.loading import load_vae
from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
from latentsync.pipelines.options import LipsyncOptions
from latentsync.schedulers import make_scheduler

__all__ = ["LipsyncOptions", "LipsyncPipeline", "load_vae", "make_scheduler"]
