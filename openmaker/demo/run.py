"""Preparing the demo: the digits data set into the embedded store, the script beside it."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from openmaker.cli.request_builder import TrainFlags, default_bucket
from openmaker.settings import Settings
from openmaker.store import resolve, upload_file

SCRIPT = Path(__file__).with_name("train_digits.py")


def prepare_demo(settings: Settings) -> TrainFlags:
    # Imported here: scikit-learn takes a second to load, which every other command would pay.
    import numpy as np
    from sklearn.datasets import load_digits

    bucket = default_bucket(settings)
    data_uri = f"s3://{bucket}/demo/digits/train"
    digits = load_digits()
    table = np.column_stack([digits.data, digits.target])
    with tempfile.TemporaryDirectory() as staging:
        csv = Path(staging) / "digits.csv"
        np.savetxt(csv, table, delimiter=",", fmt="%g")
        asyncio.run(upload_file(csv, resolve(f"{data_uri}/digits.csv", settings.store)))
    return TrainFlags(
        base_job_name="digits",
        entry_point=SCRIPT.name,
        source_dir=SCRIPT.parent,
        inputs={"train": data_uri},
        hyperparameters={"C": "1.0", "max-iter": "500"},
    )
