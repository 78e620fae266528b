"""The digests of the images algorithms and model packages name (`TrainingImageDigest`, a
container's `ImageDigest`), as SageMaker keeps them: the registry's digest of the image when it
was registered, checked against the one given, filled in when none is, and the image it names
is the one that runs from then on (`pinned`), whatever its tag points at later.

A registry image is resolved with one manifest request (runtime/images/). An image of this
machine (a bring-your-own folder, an image file, an OCI layout) has no registry digest: a digest
given for one is refused, as it could not be checked. SageMaker's framework images are stood in
for here (or pulled only when a job runs): a digest given for one is kept and pins the image
(a pull by digest is checked by the registry), none is looked up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from openmaker.runtime.images import PullError, ReferenceError, image_store, parse_reference
from openmaker.runtime.images.skopeo import PullStopped, resolve
from openmaker.settings import Settings
from openmaker.shapes.framework_images import framework_of
from openmaker.shapes.locations import image_path
from openmaker.shapes.validate import failure

# How long a registry may take to say which image a tag names (under boto3's 60 s read
# timeout, after which it would send the request again).
RESOLVE_SECONDS = 30


@dataclass(frozen=True)
class ImageAt:
    """One image member of a request: where it is, and where its digest is (dotted paths)."""

    holder: dict[str, Any]  # the dict holding both members (filled in place)
    image_member: str  # "TrainingImage", "Image"
    digest_member: str  # "TrainingImageDigest", "ImageDigest"
    path: str  # the holder's path: "TrainingSpecification", "...Containers.1.member"


class Digests:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def fill(self, images: list[ImageAt]) -> Iterator[str]:
        """Check each image's given digest, fill in those not given; the problems found."""
        resolved: dict[str, str] = {}  # an image named twice is asked for once
        for at in images:
            image, given = at.holder.get(at.image_member), at.holder.get(at.digest_member)
            if not image:
                continue
            image_at, digest_at = f"{at.path}.{at.image_member}", f"{at.path}.{at.digest_member}"
            if image_path(image) is not None or image.startswith("openmaker://"):
                if given is not None:
                    yield failure(given, digest_at, f"Member must be null: {image} is an image "
                                  "of this machine, with no registry digest to check")  # fmt: skip
                continue
            if framework_of(image, "training") or framework_of(image, "inference"):
                continue  # kept as given (pinned() runs it by that digest)
            try:
                actual = resolved.get(image) or self._resolve(image)
            except (PullError, ReferenceError) as exc:
                yield failure(image, image_at, f"Member must name an image openmaker can pull: "
                              f"{exc}")  # fmt: skip
                continue
            if given is not None and given.lower() != actual:
                yield failure(given, digest_at, f"Member must be the digest of {image_at} "
                              f"({actual}, as its registry serves it now)")  # fmt: skip
                continue
            at.holder[at.digest_member] = resolved[image] = actual

    def _resolve(self, image: str) -> str:
        reference = parse_reference(image)
        if reference.digest is not None:
            return reference.digest  # the registry checks it when the image is pulled
        deadline = time.monotonic() + RESOLVE_SECONDS
        try:
            digest, _ = resolve(
                reference, image_store(self.settings).access, lambda: time.monotonic() > deadline
            )
        except PullStopped:
            raise PullError(f"its registry did not answer within {RESOLVE_SECONDS} s") from None
        return digest


def pinned(holder: dict[str, Any], image_member: str, digest_member: str) -> str:
    """The image a holder names, by its digest when it has one: what runs."""
    image, digest = str(holder[image_member]), holder.get(digest_member)
    if not digest or image_path(image) is not None or "@" in image:
        return image
    return f"{image}@{digest.lower()}"


def training_image(spec: dict[str, Any]) -> ImageAt:
    return ImageAt(spec, "TrainingImage", "TrainingImageDigest", "TrainingSpecification")


def inference_images(request: dict[str, Any]) -> list[ImageAt]:
    """The containers of a request's InferenceSpecification."""
    path = "InferenceSpecification"
    containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
    return [
        ImageAt(container, "Image", "ImageDigest", f"{path}.Containers.{index}.member")
        for index, container in enumerate(containers, 1)
    ]
