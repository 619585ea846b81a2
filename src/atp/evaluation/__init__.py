"""Scoring a model: inference (whole image, sliding window, flip, the ACDC prior), the confusion matrix and
mIoU, benchmark-server exports, and the summaries of sweeps and seeds."""
