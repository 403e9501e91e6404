import csv
import json
import subprocess
import sys
import time

import pytest

import evaluate
import train_detectors as td
from conftest import REPO


def test_training_arguments_are_the_papers_with_every_augmentation_off(tmp_path):
    arguments = td.train_arguments("data.yaml", tmp_path / "run" / "seed3", 3, 100, 768, 8, "0", 8)
    assert {k: arguments[k] for k in ("optimizer", "lr0", "momentum", "weight_decay", "batch", "imgsz",
                                      "iou", "amp", "seed", "deterministic")} == \
        {"optimizer": "SGD", "lr0": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "batch": 8, "imgsz": 768,
         "iou": 0.45, "amp": True, "seed": 3, "deterministic": True}
    augmentations = ["hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
                     "fliplr", "mosaic", "mixup", "cutmix", "copy_paste", "close_mosaic"]
    assert all(arguments[name] == 0 for name in augmentations)
    from ultralytics.cfg import get_cfg
    config = get_cfg(overrides={k: v for k, v in arguments.items() if k != "data"})  # ultralytics accepts them all
    assert config.mosaic == 0 and config.fliplr == 0 and config.optimizer == "SGD"


def test_trained_run_predicts_and_scores(tiny_detector, orchard_prepared):
    row = json.loads((tiny_detector / "run.json").read_text())
    assert row["status"] == "done" and row["epochs"] == 2 and row["val_map50_95"] is not None
    predictions = sorted((tiny_detector / "test_predictions").glob("*.txt"))
    assert len(predictions) == 32
    lines = [line.split() for p in predictions for line in p.read_text().splitlines()]
    assert lines and all(len(fields) == 6 and 0.001 <= float(fields[5]) <= 1 for fields in lines)
    metrics = evaluate.score(orchard_prepared / "real" / "test", tiny_detector / "test_predictions")
    assert 0 <= metrics["ap"] <= 1 and metrics["predictions"] == len(lines)
    with open(tiny_detector.parents[2] / "runs.csv", newline="") as handle:
        runs = list(csv.DictReader(handle))
    assert [(r["dataset"], r["model"], r["seed"], r["status"]) for r in runs] == [("baseline", "yolov8n", "0", "done")]
    args = (tiny_detector / "args.yaml").read_text()
    assert "mosaic: 0.0" in args and "optimizer: SGD" in args and "lr0: 0.01" in args


def test_finished_run_is_skipped(tiny_detector, orchard_prepared, capsys):
    before = (tiny_detector / "run.json").stat().st_mtime_ns
    assert td.main(["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n", "--seeds", "0",
                    "--epochs", "2", "--imgsz", "128", "--init", "scratch", "--workers", "0",
                    "--test_images", str(orchard_prepared / "real" / "test" / "images"),
                    "--project", str(tiny_detector.parents[2])]) == 0
    assert "skipped (done)" in capsys.readouterr().out
    assert (tiny_detector / "run.json").stat().st_mtime_ns == before


def test_killed_run_resumes(orchard_prepared, tmp_path, capsys):
    argv = ["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n", "--seeds", "1",
            "--epochs", "3", "--imgsz", "128", "--init", "scratch", "--workers", "0",
            "--test_images", str(orchard_prepared / "real" / "test" / "images"), "--project", str(tmp_path)]
    run_dir = tmp_path / "baseline" / "yolov8n" / "seed1"
    process = subprocess.Popen([sys.executable, str(REPO / "train_detectors.py"), *argv],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "weights" / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the first checkpoint finish writing
    process.kill()
    process.wait()
    assert not (run_dir / "run.json").exists(), "the run finished before it could be killed"
    assert td.main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    with open(run_dir / "results.csv", newline="") as handle:
        epochs = [int(float(r["epoch"])) for r in csv.DictReader(handle)]
    assert sorted(set(epochs)) == [1, 2, 3]  # (ultralytics may log the epoch in flight at the kill twice)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"


def test_bad_inputs_are_named(orchard_prepared, tmp_path, capsys):
    test_images = str(orchard_prepared / "real" / "test" / "images")
    good = f"baseline={orchard_prepared / 'real.yaml'}"
    (tmp_path / "empty.yaml").write_text(f"path: {tmp_path}\ntrain: train/images\nval: val/images\nnames: {{0: apple}}\n")
    cases = [(["--data", f"genfusion={tmp_path / 'empty.yaml'}"], "train folder"),
             (["--data", good, "--models", "yolov9000"], "unknown model names yolov9000"),
             (["--data", "baseline"], "expected NAME=YAML"),
             (["--data", good, "--init", "pretrained"], "offline"),
             (["--data", good, "--init", "pretrained", "--weights_dir", str(tmp_path)], "yolov8n.pt")]
    for extra, message in cases:
        assert td.main([*extra, "--models", "yolov8n", "--test_images", test_images, "--project", str(tmp_path)]
                       if "--models" not in extra else
                       [*extra, "--test_images", test_images, "--project", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
