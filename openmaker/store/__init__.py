"""Object stores: URIs, listing with S3 semantics, concurrent transfers, manifests."""

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
