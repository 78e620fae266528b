"""Algorithms and model packages: training code and trained models packaged for others to use.

An algorithm (`CreateAlgorithm`) is its request, kept: training jobs name it instead of an image
(training.py applies it to their requests) and its validation profiles run as real training
and transform jobs (validation.py). A model package (packages.py) is a kept request too, served
by models that name it (serving/models.py).
"""
