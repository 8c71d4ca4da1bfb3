"""Losses for AFF training and the compatible-training baselines (BCT, REG, LCE, CSD)."""

from asymfuse.cloud.losses.arcface import ArcFaceHead, arcface_logits, arcface_loss
from asymfuse.cloud.losses.compatible import bct_loss, csd_loss, fit_gallery_classifier, lce_loss, reg_loss
from asymfuse.cloud.losses.ema import EMAClassifier

__all__ = [
    "ArcFaceHead",
    "EMAClassifier",
    "arcface_logits",
    "arcface_loss",
    "bct_loss",
    "csd_loss",
    "fit_gallery_classifier",
    "lce_loss",
    "reg_loss",
]
