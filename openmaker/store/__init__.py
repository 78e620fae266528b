"""Object stores: URIs, listing with S3 semantics, concurrent transfers, manifests.

The names below load with the first use of each, not with the package: a submodule such as
`openmaker.store.errors` (which the CLI imports at its start) then costs only itself, not the
transfer machinery (asyncio, urllib3, obstore's stores).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openmaker.store.errors import StoreError
    from openmaker.store.keys import UnsafeKeyError, relative_to_prefix, safe_destination
    from openmaker.store.listing import ObjectInfo, list_prefix
    from openmaker.store.location import (
        Location,
        StoreSettings,
        code_store_environment,
        resolve,
        split_s3_uri,
        store_environment,
    )
    from openmaker.store.transfer import (
        Download,
        delete_keys,
        download_all,
        read_object,
        upload_file,
    )

_HOMES = {
    "StoreError": "errors",
    "UnsafeKeyError": "keys",
    "relative_to_prefix": "keys",
    "safe_destination": "keys",
    "ObjectInfo": "listing",
    "list_prefix": "listing",
    "Location": "location",
    "StoreSettings": "location",
    "code_store_environment": "location",
    "resolve": "location",
    "split_s3_uri": "location",
    "store_environment": "location",
    "Download": "transfer",
    "delete_keys": "transfer",
    "download_all": "transfer",
    "read_object": "transfer",
    "upload_file": "transfer",
}

__all__ = [
    "Download",
    "Location",
    "ObjectInfo",
    "StoreError",
    "StoreSettings",
    "UnsafeKeyError",
    "code_store_environment",
    "delete_keys",
    "download_all",
    "list_prefix",
    "read_object",
    "relative_to_prefix",
    "resolve",
    "safe_destination",
    "split_s3_uri",
    "store_environment",
    "upload_file",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # once found, a plain attribute
    return value
