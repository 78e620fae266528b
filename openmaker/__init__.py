"""openmaker: SageMaker training jobs and inference endpoints on your own machines."""

__version__ = "0.1.0"
