"""The content types the toolkits' default handlers take and give: JSON, CSV and NPY arrays."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
# Read as text (str) by the toolkits before input_fn sees them; any other type stays bytes.
TEXT_TYPES = (JSON, CSV)


class UnsupportedFormat(ValueError):
    """A content type the default handlers cannot read or write (a 415)."""


def base_type(content_type: str) -> str:
    """`text/csv; charset=utf-8` -> `text/csv`."""
    return content_type.split(";", 1)[0].strip().lower()


def decode(data: str | bytes, content_type: str) -> Any:
    """A request body as a numpy array."""
    kind = base_type(content_type)
    if kind == JSON:
        return np.array(json.loads(data))
    if kind == CSV:
        text = data if isinstance(data, str) else data.decode()
        return np.genfromtxt(io.StringIO(text), delimiter=",", ndmin=2)  # rows × columns
    if kind == NPY:
        raw = data if isinstance(data, bytes) else data.encode()
        return np.load(io.BytesIO(raw), allow_pickle=False)
    raise UnsupportedFormat(f"Content type {content_type} is not supported by the default input_fn")


def encode(value: Any, accept: str) -> bytes:
    """A prediction (array, list, number) in the `accept` content type."""
    kind = base_type(accept)
    if kind == JSON:
        return json.dumps(_plain(value)).encode()
    if kind == CSV:
        out = io.StringIO()
        np.savetxt(out, np.asarray(value), delimiter=",", fmt="%s")
        return out.getvalue().encode()
    if kind == NPY:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        return buffer.getvalue()
    raise UnsupportedFormat(f"Accept type {accept} is not supported by the default output_fn")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    return value
