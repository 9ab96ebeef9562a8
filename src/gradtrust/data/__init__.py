"""Datasets: image folders, the flat ImageNet validation layout, Kinetics-style video, built-in digits."""

from gradtrust.data.samples import Batch, Sample, collate_samples

__all__ = ["Batch", "Sample", "collate_samples"]
