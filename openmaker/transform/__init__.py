"""Batch transform jobs: a model's serving containers fed the objects of an S3 prefix."""
