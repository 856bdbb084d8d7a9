"""Inference: embedders (backends), preprocessing and the local and Ray executors."""
