"""What the UNet trainer takes from the inference pipeline, imported in this one place: the DDIM
scheduler settings (the training noise schedule is the inference one), the VAE loader, and the
pipeline with its options for the validation videos."""

from latentsync.pipelines.lipsync_pipeline import SCHEDULER_CONFIG, LipsyncOptions, LipsyncPipeline, load_vae

__all__ = ["SCHEDULER_CONFIG", "LipsyncOptions", "LipsyncPipeline", "load_vae"]
