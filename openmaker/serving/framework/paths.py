"""Where the stand-in's container finds its model and code (shared by both sides)."""

MODEL_DIR = "/opt/ml/model"
# Where the worker shows a submit directory it fetched from S3 (standin.py).
FETCHED_CODE_DIR = "/opt/ml/code"
