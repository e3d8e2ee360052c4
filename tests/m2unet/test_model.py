import json
import subprocess
import sys

import pytest
import torch

from m2unet.model import M2UNet, float32_mib, table_i

# Table I, parameters per block in K = 1024 (rounded as the paper prints them)
TABLE_I_K = {
    "Encoding block 1": 37,
    "Encoding block 2": 72,
    "Encoding block 3": 72,
    "Encoding block 4": 72,
    "Encoding block 5": 2595,
    "Embedding-Level MIL": 193,
    "Image-Level MIL": 48,
    "Classifier": 0.3,
    "Decoding block 5": 397,
    "Decoding block 4": 145,
    "Decoding block 3": 145,
    "Decoding block 2": 145,
    "Decoding block 1": 0.5,
}


def test_sizes_match_table_iii():
    assert float32_mib(M2UNet("m2unet")) == pytest.approx(15.32, abs=0.005)
    assert float32_mib(M2UNet("seg_only")) == pytest.approx(14.37, abs=0.005)


def test_blocks_match_table_i():
    blocks = table_i(M2UNet())
    assert set(blocks) == set(TABLE_I_K)
    for row, k in TABLE_I_K.items():
        assert blocks[row] / 1024 == pytest.approx(k, abs=0.51 if k >= 1 else 0.1), row


def test_json_summary_cli():
    out = subprocess.run([sys.executable, "-m", "m2unet.model", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert round(info["total_mib"], 2) == 15.32 and round(info["seg_only_mib"], 2) == 14.37
    assert info["blocks"]["Encoding block 5"] == 2657280


@pytest.mark.parametrize("variant", ["m2unet", "cls_only", "seg_only"])
def test_forward_shapes(variant):
    model = M2UNet(variant).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 2, 1, 128, 128) * 255)
    assert (out.severity_logits is None) == (variant == "seg_only")
    assert (out.segmentation_logits is None) == (variant == "cls_only")
    if out.severity_logits is not None:
        assert out.severity_logits.shape == (2, 2)
    if out.segmentation_logits is not None:
        assert out.segmentation_logits.shape == (2, 2, 7, 128, 128)


def test_embedding_bag_is_8x8_for_128_patches():
    model = M2UNet().eval()
    with torch.inference_mode():
        features = model.encode(torch.zeros(1, 1, 128, 128))
    assert features[-1].shape == (1, 512, 8, 8)


def test_full_slice_segmentation_shape():
    model = M2UNet("seg_only").eval()
    with torch.inference_mode():
        logits = model.segment(torch.zeros(1, 1, 64, 96))
    assert logits.shape == (1, 7, 64, 96)


def test_rejects_sizes_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        M2UNet().encode(torch.zeros(1, 1, 100, 128))
