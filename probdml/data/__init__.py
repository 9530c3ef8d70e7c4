"""Datasets: TFDS builders, input pipelines and samplers."""
