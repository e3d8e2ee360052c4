"""``m2unet-train``: a smoke training through the console script, export, and the engine's predictor."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m2unet.phantom import make_phantom
from m2unet.predictor import Predictor
from m2unet.weights import load_weights
from train.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "m2unet-train"


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "train.cli"]
    return subprocess.run(command + list(args), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["phantoms", "fit", "cv", "export"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: m2unet-train {command}" in capsys.readouterr().out


def test_smoke_training_export_and_predictor(tmp_path):
    data, run, weights = tmp_path / "data", tmp_path / "run", tmp_path / "w" / "demo.pt"
    made = _run("phantoms", str(data), "--count", "3", "--shape", "16", "64", "64", "--seed", "5")
    assert made.returncode == 0, made.stderr
    assert (data / "labels.csv").read_text().splitlines()[0] == "case,label,mask"

    fitted = _run("fit", "--labels", str(data / "labels.csv"), "--out", str(run), "--preset", "smoke",
                  "--set", "steps_per_epoch=3", "--device", "cpu")
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(fitted.stdout.strip().splitlines()[-1])["steps"] == 3
    assert json.loads((run / "recipe.json").read_text())["steps_per_epoch"] == 3
    assert "fit smoke" in fitted.stderr  # the progress bar (tqdm writes to stderr)

    exported = _run("export", str(run), "--out", str(weights), "--version", "0.0.1-smoke")
    assert exported.returncode == 0, exported.stderr
    card = (weights.parent / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in card and "3 cases listed in labels.csv" in card and "| bag_size | 2 |" in card

    loaded = load_weights(weights)
    assert loaded.metadata.trained is True and loaded.metadata.recipe["preset"] == "smoke"
    assert loaded.metadata.preprocessing["in_plane_spacing_mm"] == 6.0
    predictor = Predictor.from_weights(weights, device="cpu", bags=1)
    phantom = make_phantom(11, shape=(16, 64, 64))
    prediction = predictor.predict(phantom.volume, seed=1)
    assert prediction.lobe_map.shape == phantom.volume.shape
    assert 0.0 <= prediction.probability_severe <= 1.0
    assert prediction.model_version == "0.0.1-smoke" and prediction.weights_sha256 == loaded.sha256


def test_bad_csv_stops_before_training(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("case,label\nmissing.nii.gz,severe\n")
    code = main(["fit", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "run"), "--preset", "smoke"])
    assert code == 2
    err = capsys.readouterr().err
    assert "labels.csv: row 2: case 'missing.nii.gz' not found" in err
    assert not (tmp_path / "run").exists()


def test_unknown_recipe_setting_is_refused(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("case,label\n")
    code = main(["fit", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "run"), "--set", "lr=3"])
    assert code == 2 and "unknown recipe settings ['lr']" in capsys.readouterr().err


def test_cv_through_the_cli_writes_the_report(tmp_path):
    from m2unet.phantom_dicom import write_nifti

    rows = ["case,label,mask"]
    for seed in range(6):
        p = make_phantom(seed, shape=(12, 48, 48), severity="severe" if seed % 2 else "non-severe")
        image, mask = write_nifti(p, tmp_path, stem=f"c{seed}")
        rows.append(f"{image.name},{p.severity},{mask.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["cv", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "cv"), "--preset", "smoke",
                 "--folds", "2", "--set", "steps_per_epoch=1", "--set", "validation_fraction=0.34", "--device", "cpu",
                 "--no-progress"])
    assert code == 0
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "| Method | Accuracy | Precision | Recall | F1 Score | AUC |" in report
    assert "| Method | DSC | SEN | PPV |" in report
    data = json.loads((tmp_path / "cv" / "report.json").read_text())
    assert len(data["fold_results"]) == 2
    tested = sorted(c["case"] for f in data["fold_results"] for c in f["cases"])
    assert tested == sorted(f"c{s}.nii.gz" for s in range(6))  # every case is tested exactly once
    assert np.all([0 <= f["threshold"] <= 1 for f in data["fold_results"]])
