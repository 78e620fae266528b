"""Script mode: the user's code, packed as `sourcedir.tar.gz`, unpacked into /opt/ml/code.

The `sagemaker` SDK names the tarball in the `sagemaker_submit_directory` hyperparameter. The
toolkit would fetch it itself, but only from AWS S3 with boto3; openmaker fetches it through its
own store (the embedded one included) and the toolkit finds /opt/ml/code already filled.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import tempfile

from openmaker.store import StoreError, read_object, resolve
from openmaker.training.host.spec import HostSpec

SUBMIT_DIRECTORY = "sagemaker_submit_directory"


class SourceError(Exception):
    pass


def submit_directory(hyperparameters: dict[str, str]) -> str | None:
    raw = hyperparameters.get(SUBMIT_DIRECTORY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # the toolkit accepts unquoted values too
    return str(value)


def install_source(spec: HostSpec) -> None:
    uri = submit_directory(spec.plan.command.hyperparameters)
    if uri is None or uri.startswith("/opt/ml/"):
        return
    code_dir = spec.ml_dir / "code"
    try:
        data = asyncio.run(read_object(resolve(uri, spec.store)))
    except StoreError as exc:
        raise SourceError(f"cannot read the source code at {uri}: {exc}") from None
    with tempfile.TemporaryFile(dir=spec.work_dir) as archive:
        archive.write(data)
        archive.seek(0)
        try:
            with tarfile.open(fileobj=archive, mode="r:*") as tar:
                # The "data" filter refuses absolute names, `..` and links leaving the folder.
                tar.extractall(code_dir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise SourceError(f"cannot unpack the source code {uri}: {exc}") from None
