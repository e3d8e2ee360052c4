"""M2UNet, the multi-task multi-instance UNet of Table I, and its ablations.

Blocks are named after Table I's rows. The encoder is shared by the segmentation sub-network (the
decoding blocks) and the classification sub-network (embedding-level MIL, image-level MIL,
classifier). Variants: ``m2unet`` (both), ``cls_only`` and ``seg_only`` (Section IV-B).

    python -m m2unet.model --json
prints the float32 size of M2UNet and Seg. Only (MiB, Table III) and the parameters per block.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from m2unet.gcp import GlobalContrastPooling
from m2unet.labels import NUM_CLASSES

Variant = Literal["m2unet", "cls_only", "seg_only"]
VARIANTS: tuple[str, ...] = ("m2unet", "cls_only", "seg_only")

# Table I
WIDTH = 64  # kernels of every encoder/decoder conv but encoding block 5
EMBEDDING_DIM = 512  # encoding block 5
EMBEDDING_CONCEPTS = 256  # embedding-level MIL
IMAGE_CONCEPTS = 128  # image-level MIL
NUM_SEVERITY_CLASSES = 2  # non-severe, severe
DOWNSAMPLING = 16  # four 2x2 max-poolings

TABLE_I_ROWS: dict[str, str] = {
    "Encoding block 1": "encoding_block1",
    "Encoding block 2": "encoding_block2",
    "Encoding block 3": "encoding_block3",
    "Encoding block 4": "encoding_block4",
    "Encoding block 5": "encoding_block5",
    "Embedding-Level MIL": "embedding_level_mil",
    "Image-Level MIL": "image_level_mil",
    "Classifier": "classifier",
    "Decoding block 5": "decoding_block5",
    "Decoding block 4": "decoding_block4",
    "Decoding block 3": "decoding_block3",
    "Decoding block 2": "decoding_block2",
    "Decoding block 1": "decoding_block1",
}


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """One {conv, batchnorm, ReLU} row of Table I: 3x3 kernels, padding 1, stride 1."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class EncodingBlock(nn.Sequential):
    """Two {conv, batchnorm, ReLU} layers (encoding blocks 1-5)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__(*conv_bn_relu(in_channels, mid_channels), *conv_bn_relu(mid_channels, out_channels))


class DecodingBlock(nn.Module):
    """{up-sample, conv, batchnorm, ReLU, concat} then two {conv, batchnorm, ReLU} (blocks 5-2)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int = WIDTH) -> None:
        super().__init__()
        self.up = nn.Sequential(*conv_bn_relu(in_channels, out_channels))
        self.fuse = EncodingBlock(out_channels + skip_channels, out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up(x)
        return self.fuse(torch.cat([x, skip], dim=1))


class EmbeddingLevelMIL(nn.Module):
    """Each patch is a bag of its encoder positions (8x8 for a 128x128 patch): GCP, 1x1 conv, BN."""

    def __init__(self) -> None:
        super().__init__()
        self.gcp = GlobalContrastPooling(EMBEDDING_DIM, EMBEDDING_CONCEPTS)
        self.conv = nn.Conv2d(EMBEDDING_CONCEPTS, EMBEDDING_CONCEPTS, kernel_size=1)
        self.bn = nn.BatchNorm2d(EMBEDDING_CONCEPTS)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[P, 512, h, w]`` -> ``[P, 256]``."""
        instances = embedding.flatten(2).transpose(1, 2)  # [P, h*w, 512]
        pooled = self.gcp(instances)[:, :, None, None]
        return F.relu(self.bn(self.conv(pooled))).flatten(1)


class ImageLevelMIL(nn.Module):
    """Each CT volume is a bag of its patches: GCP over the patch features, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.gcp = GlobalContrastPooling(EMBEDDING_CONCEPTS, IMAGE_CONCEPTS)
        self.conv = nn.Conv2d(IMAGE_CONCEPTS, IMAGE_CONCEPTS, kernel_size=1)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """``[B, n, 256]`` -> ``[B, 128]``."""
        pooled = self.gcp(patch_features)[:, :, None, None]
        return F.relu(self.conv(pooled)).flatten(1)


@dataclass
class M2UNetOutput:
    """``severity_logits`` ``[B, 2]`` (index 1 = severe) and ``segmentation_logits``
    ``[B, n, 7, H, W]``; either is None where the variant lacks that sub-network."""

    severity_logits: torch.Tensor | None
    segmentation_logits: torch.Tensor | None


class M2UNet(nn.Module):
    def __init__(self, variant: Variant = "m2unet", num_classes: int = NUM_CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.encoding_block1 = EncodingBlock(in_channels, WIDTH, WIDTH)
        self.encoding_block2 = EncodingBlock(WIDTH, WIDTH, WIDTH)
        self.encoding_block3 = EncodingBlock(WIDTH, WIDTH, WIDTH)
        self.encoding_block4 = EncodingBlock(WIDTH, WIDTH, WIDTH)
        self.encoding_block5 = EncodingBlock(WIDTH, EMBEDDING_DIM, EMBEDDING_DIM)
        if self.has_classifier:
            self.embedding_level_mil = EmbeddingLevelMIL()
            self.image_level_mil = ImageLevelMIL()
            self.classifier = nn.Conv2d(IMAGE_CONCEPTS, NUM_SEVERITY_CLASSES, kernel_size=1)
        if self.has_decoder:
            self.decoding_block5 = DecodingBlock(EMBEDDING_DIM, WIDTH)
            self.decoding_block4 = DecodingBlock(WIDTH, WIDTH)
            self.decoding_block3 = DecodingBlock(WIDTH, WIDTH)
            self.decoding_block2 = DecodingBlock(WIDTH, WIDTH)
            self.decoding_block1 = nn.Conv2d(WIDTH, num_classes, kernel_size=1)

    @property
    def has_classifier(self) -> bool:
        return self.variant in ("m2unet", "cls_only")

    @property
    def has_decoder(self) -> bool:
        return self.variant in ("m2unet", "seg_only")

    # -- the shared encoder -------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[P, 1, H, W]`` (H, W multiples of 16) -> outputs of encoding blocks 1..5."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be [P, {self.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[-1] % DOWNSAMPLING or images.shape[-2] % DOWNSAMPLING:
            raise ValueError(f"image height and width must be multiples of {DOWNSAMPLING}, got {tuple(images.shape[-2:])}")
        e1 = self.encoding_block1(images)
        e2 = self.encoding_block2(F.max_pool2d(e1, 2))
        e3 = self.encoding_block3(F.max_pool2d(e2, 2))
        e4 = self.encoding_block4(F.max_pool2d(e3, 2))
        e5 = self.encoding_block5(F.max_pool2d(e4, 2))
        return e1, e2, e3, e4, e5

    # -- the segmentation sub-network ------------------------------------------------------------
    def decode(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Encoder outputs -> segmentation logits ``[P, 7, H, W]``."""
        if not self.has_decoder:
            raise RuntimeError(f"variant {self.variant!r} has no decoder")
        e1, e2, e3, e4, e5 = features
        d = self.decoding_block5(e5, e4)
        d = self.decoding_block4(d, e3)
        d = self.decoding_block3(d, e2)
        d = self.decoding_block2(d, e1)
        return self.decoding_block1(d)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Whole slices or patches ``[P, 1, H, W]`` -> segmentation logits ``[P, 7, H, W]``."""
        return self.decode(self.encode(images))

    # -- the classification sub-network ----------------------------------------------------------
    def classify(self, embedding: torch.Tensor, bag_size: int) -> torch.Tensor:
        """Encoding block 5 outputs of ``B * bag_size`` patches -> severity logits ``[B, 2]``."""
        if not self.has_classifier:
            raise RuntimeError(f"variant {self.variant!r} has no classifier")
        if embedding.shape[0] % bag_size:
            raise ValueError(f"{embedding.shape[0]} patches do not split into bags of {bag_size}")
        patch_features = self.embedding_level_mil(embedding)  # [B*n, 256]
        bags = patch_features.reshape(-1, bag_size, patch_features.shape[-1])
        volume_features = self.image_level_mil(bags)[:, :, None, None]  # [B, 128, 1, 1]
        return self.classifier(volume_features).flatten(1)

    def forward(self, bags: torch.Tensor) -> M2UNetOutput:
        """Bags of patches ``[B, n, 1, H, W]`` -> :class:`M2UNetOutput`."""
        if bags.ndim != 5:
            raise ValueError(f"bags must be [B, n, 1, H, W], got {tuple(bags.shape)}")
        batch, bag_size = bags.shape[:2]
        features = self.encode(bags.flatten(0, 1))
        severity = self.classify(features[-1], bag_size) if self.has_classifier else None
        segmentation = None
        if self.has_decoder:
            segmentation = self.decode(features).unflatten(0, (batch, bag_size))
        return M2UNetOutput(severity_logits=severity, segmentation_logits=segmentation)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def float32_mib(module: nn.Module) -> float:
    """Size of the learnable parameters as float32, in MiB (Table III's MB, 1 MB = 2**20 bytes)."""
    return count_parameters(module) * 4 / 2**20


def table_i(model: M2UNet) -> dict[str, int]:
    """Learnable parameters per Table I row present in ``model``."""
    return {row: count_parameters(getattr(model, attr)) for row, attr in TABLE_I_ROWS.items() if hasattr(model, attr)}


def summary() -> dict:
    full, seg_only = M2UNet("m2unet"), M2UNet("seg_only")
    return {
        "total_mib": round(float32_mib(full), 4),
        "seg_only_mib": round(float32_mib(seg_only), 4),
        "cls_only_mib": round(float32_mib(M2UNet("cls_only")), 4),
        "parameters": count_parameters(full),
        "blocks": table_i(full),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m2unet.model", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    info = summary()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"M2UNet {info['total_mib']:.2f} MiB, Seg. Only {info['seg_only_mib']:.2f} MiB (float32)")
        for row, count in info["blocks"].items():
            print(f"  {row:<22} {count / 1024:8.1f}K")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
