"""`openmaker images list / pull / remove / prune`: the machine's image store
($OPENMAKER_HOME/images, runtime/images/), worked on directly, as jobs on this machine use it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Column, Table

from openmaker.cli.output import console, errors, fail
from openmaker.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from openmaker.runtime.images import ImageStore
    from openmaker.runtime.images.catalog import Pruned

images_app = typer.Typer(no_args_is_help=True, help="Pull, list and delete container images.")


def _store() -> ImageStore:
    from openmaker.runtime.images import image_store

    try:
        return image_store(load_settings())
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    raise AssertionError


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S") if seconds else ""


@images_app.command("list")
def list_images() -> None:
    """The images on this machine: references, digest, size (shared: what other images hold
    too), when pulled and last used, newest first."""
    from openmaker.runtime.images.catalog import list_images as listed

    table = Table(
        Column("Reference", overflow="fold"),
        Column("Digest", no_wrap=True),
        Column("Size", no_wrap=True, justify="right"),
        Column("Shared", no_wrap=True, justify="right"),
        Column("Pulled", no_wrap=True),
        Column("Last used", no_wrap=True),
    )
    for image in listed(_store()):
        table.add_row(
            "\n".join(image.references) or "(unknown)", image.digest[:19], _size(image.size),
            _size(image.shared), _when(image.pulled), _when(image.used),
        )  # fmt: skip
    console.print(table)


@images_app.command("pull")
def pull(reference: str) -> None:
    """Pull REFERENCE (and unpack it) as a job would, showing each layer."""
    from openmaker.runtime.images import PullError, ReferenceError, parse_reference

    try:
        parsed = parse_reference(reference)
    except ReferenceError as exc:
        raise fail(str(exc)) from None
    try:
        image = _store().prepare(parsed, lambda line: errors.print(escape(line)), use=False)
    except (PullError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    console.print(f"{escape(reference)} {image.digest}")


@images_app.command("remove")
def remove(reference: str) -> None:
    """Delete the image REFERENCE names (a reference it was pulled by, or its digest), and
    whatever of it no other image holds."""
    from openmaker.runtime.images import ReferenceError, parse_reference
    from openmaker.runtime.images.catalog import find
    from openmaker.runtime.images.catalog import remove as remove_images

    try:
        parsed = parse_reference(reference)
    except ReferenceError:
        parsed = None  # a digest
    store = _store()
    found = find(store, parsed, reference)
    if not found:
        raise fail(f"no image on this machine is {reference!r} (see `openmaker images list`)")
    for image in found:
        console.print(f"removed {escape(', '.join(image.references))} {image.digest}")
    _report(remove_images(store, found))


@images_app.command("prune")
def prune() -> None:
    """Delete the layers and unpacked roots no image holds (never one a job is using)."""
    from openmaker.runtime.images.catalog import prune as prune_store

    _report(prune_store(_store()))


def _report(pruned: Pruned) -> None:
    console.print(
        f"deleted {pruned.blobs} blobs ({_size(pruned.bytes)}) and "
        f"{len(pruned.roots)} unpacked roots"
    )
    for digest in pruned.in_use:
        console.print(f"kept the unpacked root of {digest}: in use")
