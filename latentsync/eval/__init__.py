"""Evaluation metrics: LSE-C/LSE-D (`syncnet_v2`), FVD (`fvd`), SSIM and FID (`image_metrics`)."""
