"""zstd-compressed layers, which umoci 0.4 cannot unpack: a twin of the image whose zstd layers
are stored uncompressed (their digests are then the config's diff_ids, checked), which umoci
can. Decompressing is cheaper than recompressing, and the twin shares every other blob.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Any

from openmaker.runtime.images.layout import Layout

PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CHUNK = 1024 * 1024


def has_zstd_layers(manifest: dict[str, Any]) -> bool:
    return any("zstd" in layer.get("mediaType", "") for layer in manifest.get("layers", []))


def plain_twin(layout: Layout, name: str) -> str:
    """The name of `name`'s twin without zstd layers, made if missing (under the layout's
    exclusive lock)."""
    twin = f"{name}-plain"
    if twin in layout.names():
        return twin
    if shutil.which("zstd") is None:
        raise RuntimeError("the image has zstd layers: install zstd (Debian package zstd)")
    manifest = layout.manifest(name)
    diff_ids = layout.blob_json(manifest["config"]["digest"])["rootfs"]["diff_ids"]
    layers = []
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        if "zstd" in layer["mediaType"]:
            digest, size = _decompress(layout, layer["digest"])
            if digest != diff_id:
                raise RuntimeError(f"layer {layer['digest']} does not unpack to {diff_id}")
            layer = {"mediaType": PLAIN_LAYER, "digest": digest, "size": size}
        layers.append(layer)
    layout.add_manifest(twin, {**manifest, "layers": layers})
    return twin


def _decompress(layout: Layout, digest: str) -> tuple[str, int]:
    source = layout.blob_path(digest)
    temporary = source.with_name(f".{source.name}.{os.getpid()}.tar")
    hasher, size = hashlib.sha256(), 0
    with (
        subprocess.Popen(["zstd", "-d", "-c", "-q", str(source)], stdout=subprocess.PIPE) as unzstd,
        open(temporary, "wb") as out,
    ):
        assert unzstd.stdout is not None
        while chunk := unzstd.stdout.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if unzstd.returncode != 0:
        temporary.unlink()
        raise RuntimeError(f"layer {digest} is not valid zstd")
    plain = "sha256:" + hasher.hexdigest()
    os.replace(temporary, layout.blob_path(plain))
    return plain, size
