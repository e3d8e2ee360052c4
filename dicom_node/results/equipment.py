"""Who made the result objects: the node as a device (manufacturer, model, software version)."""

from __future__ import annotations

from importlib import metadata

MANUFACTURER = "m2unet-node"
MODEL_NAME = "m2unet-node"


def software_version() -> str:
    try:
        return metadata.version("m2unet-node")
    except metadata.PackageNotFoundError:
        return "0+unknown"
