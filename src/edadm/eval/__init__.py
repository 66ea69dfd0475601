"""Evaluation: metric arithmetic and the demo-domain metrics."""
from .metrics import frechet_distance, gaussian_stats, inception_score, mean_std, mse, psnr

__all__ = ["frechet_distance", "gaussian_stats", "inception_score", "mean_std", "mse", "psnr"]
