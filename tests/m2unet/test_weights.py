import io
import zipfile

import numpy as np
import pytest
import torch

from m2unet.labels import label_map_metadata
from m2unet.model import M2UNet
from m2unet.preprocessing import PreprocessingConfig
from m2unet.weights import (
    FORMAT,
    UNTRAINED_DESCRIPTION,
    WeightsError,
    WeightsMetadata,
    default_weights_path,
    load_weights,
    random_weights,
    save_weights,
)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("w") / "random.pt", seed=3)


def _payload(path):
    return torch.load(path, weights_only=True)


def _write(path, payload):
    torch.save(payload, path)
    return path


def test_random_weights_are_never_described_as_trained(weights_file):
    loaded = load_weights(weights_file)
    assert loaded.metadata.trained is False
    assert loaded.metadata.training_data == UNTRAINED_DESCRIPTION
    assert loaded.metadata.name == "M2UNet" and loaded.metadata.variant == "m2unet"
    assert loaded.metadata.label_map == label_map_metadata()
    assert loaded.metadata.preprocessing_config == PreprocessingConfig()
    assert not loaded.model.training
    assert len(loaded.sha256) == 64


def test_random_weights_are_deterministic(tmp_path, weights_file):
    same = _payload(random_weights(tmp_path / "a.pt", seed=3))["state_dict"]
    other = _payload(random_weights(tmp_path / "c.pt", seed=4))["state_dict"]
    reference = _payload(weights_file)["state_dict"]
    for key in ("encoding_block1.0.weight", "encoding_block1.1.running_mean"):
        assert torch.equal(same[key], reference[key])
        assert not torch.equal(other[key], reference[key])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip(tmp_path, dtype):
    torch.manual_seed(0)
    model = M2UNet("seg_only")
    bn = model.encoding_block1[1]
    bn.running_mean.uniform_(-1, 1)  # batch-norm statistics travel with the weights
    bn.running_var.uniform_(0.5, 2)
    metadata = WeightsMetadata(
        version="1.2.3",
        variant="seg_only",
        threshold=0.37,
        trained=True,
        training_data="synthetic phantoms, 10 cases",
        metrics={"dsc": 0.8},
        recipe={"lr": 0.01},
        preprocessing=PreprocessingConfig(in_plane_spacing_mm=1.5).to_dict(),
    )
    sha = save_weights(tmp_path / "w.pt", model, metadata, dtype=dtype)
    loaded = load_weights(tmp_path / "w.pt")
    assert loaded.sha256 == sha
    assert loaded.metadata == metadata
    assert loaded.metadata.preprocessing_config.in_plane_spacing_mm == 1.5
    stored = _payload(tmp_path / "w.pt")["state_dict"]
    assert stored["encoding_block1.0.weight"].dtype == dtype
    tol = 0 if dtype == torch.float32 else 2e-3
    loaded_state = loaded.model.state_dict()
    for key, value in model.state_dict().items():
        got = loaded_state[key]
        assert got.dtype == value.dtype  # float16 storage comes back as float32
        np.testing.assert_allclose(got.numpy(), value.numpy(), rtol=tol, atol=tol, err_msg=key)


def test_float16_file_is_about_half(tmp_path):
    model, metadata = M2UNet(), WeightsMetadata(version="1")
    save_weights(tmp_path / "32.pt", model, metadata)
    save_weights(tmp_path / "16.pt", model, metadata, dtype=torch.float16)
    assert (tmp_path / "16.pt").stat().st_size < 0.55 * (tmp_path / "32.pt").stat().st_size


def test_default_path_is_package_file():
    path = default_weights_path()
    assert path.name == "m2unet-demo.pt" and path.parent.name == "weights"
    assert path.parent.parent.name == "m2unet"


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.pt: not found"):
        load_weights(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_weights(tmp_path / "e.pt")


def test_truncated_file(tmp_path, weights_file):
    data = weights_file.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"t\.pt: truncated or corrupt"):
        load_weights(tmp_path / "t.pt")


def test_garbage_file(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"this is not a torch archive at all" * 10)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(tmp_path / "g.pt")


def test_corrupted_tensor_bytes(tmp_path, weights_file):
    # flip bytes inside a stored tensor record: the zip CRC no longer matches
    buf = io.BytesIO(weights_file.read_bytes())
    with zipfile.ZipFile(buf) as zf:
        name = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(weights_file.read_bytes())
    start = name.header_offset + 30 + len(name.filename) + len(name.extra) + 100
    data[start : start + 64] = bytes(64)
    (tmp_path / "c.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(tmp_path / "c.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": FORMAT, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="not a readable torch archive"):
        load_weights(tmp_path / "evil.pt")


def test_wrong_format_marker(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["format"] = "something-else"
    with pytest.raises(WeightsError, match="wrong format marker 'something-else'"):
        load_weights(_write(tmp_path / "f.pt", payload))
    with pytest.raises(WeightsError, match="wrong format marker"):
        load_weights(_write(tmp_path / "sd.pt", M2UNet().state_dict()))  # a bare state dict


def test_unsupported_version(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["format_version"] = 2
    with pytest.raises(WeightsError, match="unsupported format_version 2"):
        load_weights(_write(tmp_path / "v.pt", payload))


def test_unknown_variant(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["metadata"]["variant"] = "resnet"
    with pytest.raises(WeightsError, match="variant 'resnet' is unknown"):
        load_weights(_write(tmp_path / "u.pt", payload))


def test_state_dict_of_other_variant(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["metadata"]["variant"] = "seg_only"  # the tensors are those of the full model
    with pytest.raises(WeightsError, match=r"does not match variant 'seg_only': unexpected \d+ tensors"):
        load_weights(_write(tmp_path / "x.pt", payload))


def test_missing_tensor(tmp_path, weights_file):
    payload = _payload(weights_file)
    del payload["state_dict"]["classifier.weight"]
    with pytest.raises(WeightsError, match=r"missing 1 tensors .*classifier\.weight"):
        load_weights(_write(tmp_path / "m.pt", payload))


def test_wrong_shape(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["state_dict"]["decoding_block1.weight"] = torch.zeros(5, 64, 1, 1)
    with pytest.raises(WeightsError, match=r"decoding_block1\.weight has shape \(5, 64, 1, 1\), expected \(7, 64, 1, 1\)"):
        load_weights(_write(tmp_path / "s.pt", payload))


def test_non_finite_tensor(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["state_dict"]["classifier.bias"][0] = float("nan")
    with pytest.raises(WeightsError, match=r"classifier\.bias holds NaN"):
        load_weights(_write(tmp_path / "n.pt", payload))


def test_label_map_not_seven_classes(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["metadata"]["label_map"] = {str(i): f"class {i}" for i in range(6)}
    with pytest.raises(WeightsError, match="label map must name the 7 classes"):
        load_weights(_write(tmp_path / "l.pt", payload))


def test_bad_threshold_and_preprocessing(tmp_path, weights_file):
    payload = _payload(weights_file)
    payload["metadata"]["threshold"] = 1.5
    with pytest.raises(WeightsError, match="threshold must be a probability"):
        load_weights(_write(tmp_path / "t.pt", payload))
    payload = _payload(weights_file)
    payload["metadata"]["preprocessing"]["patch_size"] = 100
    with pytest.raises(WeightsError, match="patch_size must be a multiple of 16"):
        load_weights(_write(tmp_path / "p.pt", payload))


def test_untrained_weights_cannot_claim_real_data():
    with pytest.raises(ValueError, match="untrained weights must say so"):
        WeightsMetadata(version="1", trained=False, training_data="400 COVID-19 patients")


def test_save_refuses_mismatched_variant(tmp_path):
    with pytest.raises(ValueError, match="does not match the model"):
        save_weights(tmp_path / "w.pt", M2UNet("cls_only"), WeightsMetadata(version="1"))
    with pytest.raises(ValueError, match="dtype"):
        save_weights(tmp_path / "w.pt", M2UNet(), WeightsMetadata(version="1"), dtype=torch.int8)


def test_metadata_with_numpy_values_loads_with_weights_only(tmp_path):
    import numpy as np

    metadata = WeightsMetadata(
        version="2",
        variant="cls_only",
        trained=True,
        training_data="synthetic phantoms",
        threshold=np.float32(0.25),
        metrics={"auc": np.float64(0.91), "confusion": np.array([[3, 1], [0, 4]]), "folds": (1, 2)},
        preprocessing=PreprocessingConfig(bag_size=100),
    )
    save_weights(tmp_path / "w.pt", M2UNet("cls_only"), metadata)
    loaded = load_weights(tmp_path / "w.pt").metadata
    assert loaded.threshold == 0.25 and loaded.metrics == {"auc": 0.91, "confusion": [[3, 1], [0, 4]], "folds": [1, 2]}
    assert loaded.preprocessing_config.bag_size == 100
    with pytest.raises(ValueError, match=r"metrics\.model holds a M2UNet"):
        WeightsMetadata(version="1", metrics={"model": M2UNet("cls_only")})


def test_trained_weights_need_a_real_description():
    with pytest.raises(ValueError, match="trained weights need a description"):
        WeightsMetadata(version="1", trained=True)
