"""An instance's model data, fetched into the folder shown read-only at /opt/ml/model.

`ModelDataUrl` is a `model.tar.gz`, extracted; `ModelDataSource.S3DataSource` is one object
(`S3Object`, named after its key's last part, or extracted when `Gzip`) or every object under a
prefix (`S3Prefix`, keys minus the prefix as paths). An archive member that would land outside
the folder (`../evil`, an absolute path, a link out) is refused, and the instance fails.
"""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path
from typing import Any

import obstore

from openmaker.settings import StoreSettings
from openmaker.store.errors import StoreError
from openmaker.store.listing import list_prefix
from openmaker.store.location import resolve
from openmaker.store.transfer import Download, download_all


class ModelDataError(Exception):
    """The model data cannot be had; the message says why, for a person."""


def fetch(container: dict[str, Any], model_dir: Path, scratch: Path, store: StoreSettings) -> None:
    """Fill `model_dir` (empty) with the container's model data; `scratch` holds archives."""
    try:
        if url := container.get("ModelDataUrl"):
            _extract(_download_one(url, scratch, store), model_dir, url)
            return
        source = (container.get("ModelDataSource") or {}).get("S3DataSource")
        if source is None:
            return  # a model without data: the image holds it
        uri = source["S3Uri"]
        if source["S3DataType"] == "S3Object":
            if source["CompressionType"] == "Gzip":
                _extract(_download_one(uri, scratch, store), model_dir, uri)
            else:
                _download_one(uri, model_dir, store)
            return
        _download_prefix(uri, model_dir, store)
    except StoreError as exc:
        raise ModelDataError(f"the model data could not be read: {exc}") from None


def _download_one(uri: str, folder: Path, store: StoreSettings) -> Path:
    location = resolve(uri, store)
    name = location.key.rstrip("/").rsplit("/", 1)[-1]
    if not name or name in (".", ".."):
        raise ModelDataError(f"{uri} names no object")
    try:
        size = int(obstore.head(location.store, location.key)["size"])
    except FileNotFoundError:
        raise ModelDataError(f"the model data {uri} does not exist") from None
    except Exception as exc:  # obstore's errors, for a person
        raise ModelDataError(f"the model data {uri} could not be read: {exc}") from None
    target = folder / name
    asyncio.run(download_all([Download(location.store, location.key, size, target)]))
    return target


def _download_prefix(uri: str, model_dir: Path, store: StoreSettings) -> None:
    location = resolve(uri, store)
    found = asyncio.run(list_prefix(location))
    if not found:
        raise ModelDataError(f"no object has the prefix {uri}")
    downloads = []
    for item in found:
        relative = item.key[len(location.key) :].lstrip("/")
        if not relative:
            continue
        downloads.append(Download(location.store, item.key, item.size, model_dir / relative))
    asyncio.run(download_all(downloads))


def _extract(archive: Path, model_dir: Path, uri: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The "data" filter refuses members outside the folder, links out of it, devices.
            tar.extractall(model_dir, filter="data")
    except tarfile.FilterError as exc:
        raise ModelDataError(f"the model archive {uri} was refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelDataError(f"the model archive {uri} cannot be extracted: {exc}") from None
    finally:
        archive.unlink(missing_ok=True)
