"""Synthetic chest CT built from real lobe annotations (the second phantom source, beside the
procedural :mod:`m2unet.phantom`): real lungs, lobes, fissures and airways warped at random, a
body around them, lesions of six looks and a randomised appearance."""

from m2unet.phantoms.anatomy_phantom import AnatomyPhantom, class_map_of, make_anatomy_phantom
from m2unet.phantoms.annotations import (
    HELD_OUT,
    Annotation,
    annotation_name,
    annotation_paths,
    default_folder,
    load_annotation,
    split_annotations,
)
from m2unet.phantoms.lesions import FAMILIES, HELD_OUT_FAMILY, TRAINING_FAMILIES

__all__ = [
    "AnatomyPhantom",
    "Annotation",
    "FAMILIES",
    "HELD_OUT",
    "HELD_OUT_FAMILY",
    "TRAINING_FAMILIES",
    "annotation_name",
    "annotation_paths",
    "class_map_of",
    "default_folder",
    "load_annotation",
    "make_anatomy_phantom",
    "split_annotations",
]
