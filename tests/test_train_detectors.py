import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import evaluate
import train_detectors as td


def test_training_arguments_are_the_papers_with_every_augmentation_off(tmp_path):
    args = td.parse_args(["--data", "baseline=x.yaml", "--test_images", "t", "--project", "p"])
    assert (args.batch, args.imgsz, args.epochs, args.init) == (8, 768, 100, "pretrained")
    assert args.models.split(",") == ["yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolov8x",
                                      "yolov5nu", "yolov5su", "yolov5mu", "yolov5lu", "yolov5xu"]
    assert (args.nbs, args.augment, args.warmup_epochs) == (64, False, 3.0)
    arguments = td.train_arguments("data.yaml", tmp_path / "run" / "seed3", 3, args.epochs, args.imgsz, args.batch,
                                   "0", 8, args.augment, args.nbs)
    assert {k: arguments[k] for k in ("optimizer", "lr0", "momentum", "weight_decay", "batch", "imgsz",
                                      "iou", "amp", "seed", "deterministic", "cls_remap")} == \
        {"optimizer": "SGD", "lr0": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "batch": 8, "imgsz": 768,
         "iou": 0.45, "amp": True, "seed": 3, "deterministic": True, "cls_remap": False}
    augmentations = ["hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
                     "fliplr", "bgr", "mosaic", "mixup", "cutmix", "copy_paste", "close_mosaic", "multi_scale"]
    assert all(arguments[name] == 0 for name in augmentations) and arguments["augmentations"] == []
    from ultralytics.cfg import get_cfg
    config = get_cfg(overrides={k: v for k, v in arguments.items() if k != "data"})  # ultralytics accepts them all
    assert config.mosaic == 0 and config.fliplr == 0 and config.optimizer == "SGD"
    assert config.warmup_epochs == 3.0 == get_cfg().warmup_epochs  # the default is ultralytics' own
    # --augment gives ultralytics' own defaults back; --nbs and --warmup_epochs reach ultralytics unchanged
    augmented = td.train_arguments("data.yaml", tmp_path / "run" / "seed3", 3, 100, 768, 8, "0", 8, True, 8, 0.0)
    assert not set(augmentations) & set(augmented) and "augmentations" not in augmented
    config = get_cfg(overrides={k: v for k, v in augmented.items() if k != "data"})
    assert (config.mosaic, config.fliplr, config.hsv_h, config.nbs, config.optimizer, config.warmup_epochs) == \
        (1.0, 0.5, 0.015, 8, "SGD", 0.0)


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


def test_a_cpu_run_trains_in_fp32_on_every_core(tiny_detector):
    row = json.loads((tiny_detector / "run.json").read_text())
    # ultralytics' own check says no AMP on a CPU; its autocast there would be bfloat16
    assert row["amp"] is False
    assert row["threads"] == td.available_cores()


def test_offline_amp_check_gives_ultralytics_answer_on_the_cpu():
    import torch
    import ultralytics.engine.trainer as trainer
    td.offline_amp_check()
    assert trainer.check_amp(torch.nn.Linear(2, 2)) is False


def test_finished_run_is_skipped(tiny_detector, orchard_prepared, capsys):
    before = (tiny_detector / "run.json").stat().st_mtime_ns
    assert td.main(["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n", "--seeds", "0",
                    "--epochs", "2", "--imgsz", "128", "--init", "scratch", "--workers", "0",
                    "--test_images", str(orchard_prepared / "real" / "test" / "images"),
                    "--project", str(tiny_detector.parents[2])]) == 0
    assert "skipped (done)" in capsys.readouterr().out
    assert (tiny_detector / "run.json").stat().st_mtime_ns == before


def detector_argv(orchard_prepared, project, *extra):
    """A yolov8n run from scratch at 128 px on orchard-real, seed 0 and 2 epochs unless extra says otherwise."""
    return ["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n", "--seeds", "0",
            "--epochs", "2", "--imgsz", "128", "--init", "scratch", "--workers", "0",
            "--test_images", str(orchard_prepared / "real" / "test" / "images"), "--project", str(project), *extra]


def test_killed_run_trains_again_to_the_unbroken_runs_predictions(tiny_detector, orchard_prepared, tmp_path):
    """SIGKILL once epoch 1's last.pt is written, then the same command: byte for byte the test predictions of
    the unbroken run with the same seed (tiny_detector). ultralytics' resume gives others."""
    command = [sys.executable, td.__file__, *detector_argv(orchard_prepared, tmp_path)]
    run_dir = tmp_path / "baseline" / "yolov8n" / "seed0"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not zipfile.is_zipfile(run_dir / "weights" / "last.pt"):  # complete: its central directory is at the end
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before epoch 1's last.pt"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "run.json").exists()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    expected = sorted((tiny_detector / "test_predictions").glob("*.txt"))
    assert [p.name for p in sorted((run_dir / "test_predictions").glob("*.txt"))] == [p.name for p in expected]
    assert all((run_dir / "test_predictions" / p.name).read_bytes() == p.read_bytes() for p in expected)
    assert "training again from epoch 0" in rerun.stdout


class RunsOnUnpickling:
    """A pickle that creates a folder when it is loaded: proof that a checkpoint was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_killed_run_is_never_unpickled_and_starts_again_with_the_settings_asked_now(orchard_prepared, tmp_path,
                                                                                    monkeypatch):
    import torch
    from ultralytics import YOLO
    run_dir = tmp_path / "baseline" / "yolov8n" / "seed0"
    (run_dir / "weights").mkdir(parents=True)
    unpickled = tmp_path / "unpickled"
    torch.save({"epoch": 0, "train_args": {"epochs": 2, "nbs": 64}, "trap": RunsOnUnpickling(unpickled)},
               run_dir / "weights" / "last.pt")
    (run_dir / "results.csv").write_text("epoch,time\n1,1.0\n")
    calls = []

    def recorded(self, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(YOLO, "train", recorded)
    assert td.main(detector_argv(orchard_prepared, tmp_path, "--nbs", "16")) == 1  # the stub's failure
    assert not unpickled.exists()
    assert not (run_dir / "weights").exists() and not (run_dir / "results.csv").exists()
    assert len(calls) == 1 and "resume" not in calls[0] and (calls[0]["epochs"], calls[0]["nbs"]) == (2, 16)


def test_project_that_cannot_be_a_folder_is_one_line_error(orchard_prepared, tmp_path, capsys, monkeypatch):
    from ultralytics import YOLO
    monkeypatch.setattr(YOLO, "train", lambda self, **kwargs: pytest.fail("trained despite a bad --project"))
    (tmp_path / "a_file").write_text("")
    for project, problem in ((tmp_path / "a_file", "is a file, not a folder"),
                             (tmp_path / "a_file" / "runs", "cannot be created or written")):
        assert td.main(detector_argv(orchard_prepared, project)) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: --project {project}: {problem} (")


def test_bad_inputs_are_named(orchard_prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(td, "online", lambda timeout=3.0: False)
    test_images = str(orchard_prepared / "real" / "test" / "images")
    good = f"baseline={orchard_prepared / 'real.yaml'}"
    (tmp_path / "empty.yaml").write_text(f"path: {tmp_path}\ntrain: train/images\nval: val/images\nnames: {{0: apple}}\n")
    cases = [(["--data", f"genfusion={tmp_path / 'empty.yaml'}"], "train folder"),
             (["--data", good, "--models", "yolov9000"], "--models yolov9000: not a model of ultralytics"),
             (["--data", "baseline"], "expected NAME=YAML"),
             (["--data", good, "--init", "pretrained"], "offline"),           # (online is patched off below)
             (["--data", good, "--init", "pretrained", "--weights_dir", str(tmp_path)], "yolov8n.pt")]
    for extra, message in cases:
        assert td.main([*extra, "--models", "yolov8n", "--test_images", test_images, "--project", str(tmp_path)]
                       if "--models" not in extra else
                       [*extra, "--test_images", test_images, "--project", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


def test_other_settings_for_a_finished_run_and_missing_devices_are_refused(tiny_detector, orchard_prepared, capsys):
    argv = ["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n", "--seeds", "0",
            "--imgsz", "128", "--init", "scratch", "--workers", "0", "--project", str(tiny_detector.parents[2]),
            "--test_images", str(orchard_prepared / "real" / "test" / "images")]
    assert td.main([*argv, "--epochs", "5"]) == 1               # the finished run had 2 epochs
    assert "finished with other settings" in capsys.readouterr().err
    assert td.main([*argv, "--epochs", "2", "--devices", "7"]) == 2
    assert "--devices 7" in capsys.readouterr().err


# ---- unions: NAME=YAML1+YAML2 ---------------------------------------------------------------------
def write_yolo_images(images_dir, count, box="0 0.5 0.5 0.25 0.25"):
    """count 64x64 images in images_dir, each with one box in the labels folder beside it."""
    from PIL import Image
    labels_dir = images_dir.parent / "labels"
    images_dir.mkdir(parents=True)
    labels_dir.mkdir()
    for k in range(count):
        Image.new("RGB", (64, 64), (40, 90, 40)).save(images_dir / f"{images_dir.parent.name}_{k}.png")
        (labels_dir / f"{images_dir.parent.name}_{k}.txt").write_text(box + "\n")


@pytest.fixture
def union_parts(tmp_path):
    """prepare_data.py's layout (OUT/real.yaml: train/val/test) and propose_boxes.py's (GF/data.yaml:
    train = val = images), both made by hand -> (real yaml, generated yaml, the real test images)."""
    real = tmp_path / "out" / "real"
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        write_yolo_images(real / split / "images", count)
    real_yaml = tmp_path / "out" / "real.yaml"
    real_yaml.write_text(f"path: {real}\ntrain: train/images\nval: val/images\ntest: test/images\n"
                         f"names: {{0: apple}}\n")
    write_yolo_images(tmp_path / "gf" / "images", 4)
    generated_yaml = tmp_path / "gf" / "data.yaml"
    generated_yaml.write_text(f"path: {tmp_path / 'gf'}\ntrain: images\nval: images\nnames: {{0: apple}}\n")
    return real_yaml, generated_yaml, real / "test" / "images"


def union_argv(spec, test_images, project):
    return ["--data", spec, "--models", "yolov8n", "--seeds", "0", "--epochs", "1", "--imgsz", "64",
            "--init", "scratch", "--workers", "0", "--test_images", str(test_images), "--project", str(project)]


def test_a_union_trains_on_both_train_splits_and_validates_on_the_firsts_val(union_parts, tmp_path, monkeypatch):
    import yaml
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset
    real_yaml, generated_yaml, test_images = union_parts
    calls = []

    def recorded(self, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(YOLO, "train", recorded)
    project = tmp_path / "det"
    assert td.main(union_argv(f"mixed={real_yaml}+{generated_yaml}", test_images, project)) == 1   # the stub
    combined = project / "mixed" / "data.yaml"
    real = real_yaml.parent / "real"
    assert yaml.safe_load(combined.read_text()) == {"train": [str(real / "train" / "images"),
                                                             str(tmp_path / "gf" / "images")],
                                                   "val": str(real / "val" / "images"), "names": {0: "apple"}}
    assert [p.name for p in combined.parent.iterdir()] == ["data.yaml"]                  # no temp file left
    assert len(calls) == 1 and calls[0]["data"] == str(combined)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    checked = check_det_dataset(str(combined), autodownload=False)
    assert checked["train"] == [str(real / "train" / "images"), str(tmp_path / "gf" / "images")]
    assert (checked["val"], checked["nc"], checked["names"]) == (str(real / "val" / "images"), 1, {0: "apple"})


def test_a_union_run_notices_other_parts(union_parts, tmp_path):
    real_yaml, generated_yaml, test_images = union_parts
    other_yaml = generated_yaml.with_name("other.yaml")
    other_yaml.write_text(generated_yaml.read_text())
    project = tmp_path / "det"
    run, = td.plan(td.parse_args(union_argv(f"mixed={real_yaml}+{generated_yaml}", test_images, project)))
    config = td.run_config(run)
    assert config["data"] == str(project / "mixed" / "data.yaml")
    assert config["union_of"] == [str(real_yaml), str(generated_yaml)]
    Path(run["run_dir"]).mkdir(parents=True)
    (Path(run["run_dir"]) / "run.json").write_text(json.dumps({"status": "done", "config": config}))
    assert td.run_one(run, "cpu")["status"] == "skipped (done)"
    changed, = td.plan(td.parse_args(union_argv(f"mixed={real_yaml}+{other_yaml}", test_images, project)))
    assert td.run_config(changed)["data"] == config["data"]                            # the same combined path,
    with pytest.raises(td.InputError, match="finished with other settings"):           # other parts: refused
        td.run_one(changed, "cpu")
    single, = td.plan(td.parse_args(union_argv(f"baseline={real_yaml}", test_images, project)))
    assert "union_of" not in td.run_config(single)                  # runs finished before unions stay valid


def test_bad_unions_are_named(union_parts, tmp_path, capsys):
    real_yaml, generated_yaml, test_images = union_parts
    renamed = generated_yaml.with_name("renamed.yaml")
    renamed.write_text(generated_yaml.read_text().replace("apple", "fruit"))
    empty = generated_yaml.with_name("empty.yaml")
    empty.write_text(f"path: {tmp_path}\ntrain: nothing/images\nval: nothing/images\nnames: {{0: apple}}\n")
    cases = [(f"mixed={real_yaml}+", "expected NAME=YAML or NAME=YAML1+YAML2"),
             (f"mixed={real_yaml}+{empty}", f"{empty}: the train folder {tmp_path / 'nothing' / 'images'} is missing"),
             (f"mixed={real_yaml}+{renamed}", f"{renamed}: names {{0: 'fruit'}} differ from {real_yaml}'s")]
    for spec, message in cases:
        assert td.main(union_argv(spec, test_images, tmp_path / "det")) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "det").exists()                                         # refused before any output


def test_help_shows_one_default_at_most(capsys):
    with pytest.raises(SystemExit):
        td.parse_args(["--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    assert len(options) > 10 and all(option.lower().count("default") <= 1 for option in options)
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text


def test_a_train_split_given_as_a_list_of_images_is_checked_image_by_image(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "real" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "real" / "labels").mkdir(exist_ok=True)
        (tmp_path / "real" / "images" / f"{name}.png").write_bytes(b"")
    (tmp_path / "real" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "few.txt").write_text(f"./real/images/a.png\n{tmp_path / 'real' / 'images' / 'a.png'}\n")
    yaml_path = tmp_path / "few.yaml"
    yaml_path.write_text(f"path: {tmp_path}\ntrain: few.txt\nval: few.txt\nnames: {{0: apple}}\n")
    td.check_data_yaml(yaml_path)
    (tmp_path / "few.txt").write_text("./real/images/a.png\n./real/images/b.png\n")  # b has no label file
    with pytest.raises(td.InputError, match="names images without a label file: .*b.png"):
        td.check_data_yaml(yaml_path)



@pytest.mark.parametrize("module", ["train_detectors", "evaluate", "propose_boxes"])
def test_an_image_list_reads_as_ultralytics_reads_it_and_names_the_line_of_a_missing_image(tmp_path, monkeypatch,
                                                                                          module):
    script = __import__(module)
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "images" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "lists" / "few.txt"
    listing.parent.mkdir()
    (tmp_path / "lists" / "images").mkdir()
    (tmp_path / "lists" / "images" / "c.png").write_bytes(b"")
    # './' from the list's folder, another relative path from the working folder, an absolute one as it is
    listing.write_text(f"\ufeffimages/a.png\n\n  ./images/c.png  \n{tmp_path / 'images' / 'b.jpg'}\nimages/a.png\n")
    assert script.listed_images(listing) == [Path("images/a.png"), tmp_path / "lists" / "images" / "c.png",
                                             tmp_path / "images" / "b.jpg"]
    listing.write_text("images/a.png\nimages/gone.png\n")
    with pytest.raises(script.InputError, match=r"few.txt:2: images/gone.png: no such image"):
        script.listed_images(listing)
    listing.write_text("\nimages/notes.md\n")                   # not an image by its suffix: ultralytics skips it
    assert script.listed_images(listing) == []

# ---- any ultralytics detector: names, .yaml architectures, .pt detectors -------------------------------
PAPERS_MODELS = ["yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolov8x", "yolov5nu", "yolov5su", "yolov5mu", "yolov5lu",
                 "yolov5xu"]
# An architecture of one's own: four strided convolutions and a detection head on the last two.
TINY_ARCHITECTURE = """nc: 1
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [64, 3, 2]]
head:
  - [[2, 3], 1, Detect, [nc]]
"""


def models_argv(models, union_parts, project):
    """1 epoch from scratch at 64 px on union_parts' real dataset (3 train, 2 val, 2 test images of 64 px)."""
    real_yaml, _, test_images = union_parts
    return ["--data", f"baseline={real_yaml}", "--models", models, "--seeds", "0", "--epochs", "1", "--imgsz", "64",
            "--init", "scratch", "--workers", "0", "--test_images", str(test_images), "--project", str(project)]


def assert_trained_and_predicted(run_dir):
    """A finished run: run.json done, weights/best.pt, and one 'class cx cy w h conf' file per test image."""
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    assert (run_dir / "weights" / "best.pt").is_file()
    predictions = sorted((run_dir / "test_predictions").glob("*.txt"))
    assert [p.stem for p in predictions] == ["test_0", "test_1"]
    lines = [line.split() for p in predictions for line in p.read_text().splitlines()]
    assert all(len(fields) == 6 and 0.001 <= float(fields[5]) <= 1 for fields in lines)


def test_yolo26_and_rtdetr_train_from_scratch_with_their_own_classes(union_parts, tmp_path, monkeypatch):
    import torch
    from ultralytics.engine.model import Model
    trained_by, train = [], Model.train

    def recorded(self, **kwargs):
        trained_by.append(type(self).__name__)
        return train(self, **kwargs)

    monkeypatch.setattr(Model, "train", recorded)
    project = tmp_path / "det"
    assert td.main(models_argv("yolo26n,rtdetr-l", union_parts, project)) == 0
    assert trained_by == ["YOLO", "RTDETR"]
    for model in ("yolo26n", "rtdetr-l"):
        assert_trained_and_predicted(project / "baseline" / model / "seed0")
    checkpoint = torch.load(project / "baseline" / "rtdetr-l" / "seed0" / "weights" / "best.pt", weights_only=False)
    assert type(checkpoint["model"]).__name__ == "RTDETRDetectionModel"           # RT-DETR's trainer built it
    with open(project / "runs.csv", newline="") as handle:
        rows = [(r["model"], r["status"]) for r in csv.DictReader(handle)]
    assert rows == [("rtdetr-l", "done"), ("yolo26n", "done")]


def test_a_yaml_architecture_and_a_pt_detector_train_in_folders_named_by_their_stems(union_parts, tiny_detector,
                                                                                     tmp_path, capsys):
    architecture = tmp_path / "mine" / "tiny-net.yaml"
    architecture.parent.mkdir()
    architecture.write_text(TINY_ARCHITECTURE)
    weights = tiny_detector / "weights" / "best.pt"                   # a detector of one's own: a run's best.pt
    project = tmp_path / "det"
    argv = models_argv(f"{architecture},{weights}", union_parts, project)
    assert td.main(argv) == 0
    for folder, source in (("tiny-net", architecture), ("best", weights)):
        run_dir = project / "baseline" / folder / "seed0"
        assert_trained_and_predicted(run_dir)
        config = json.loads((run_dir / "run.json").read_text())["config"]
        assert config["source"] == str(source.resolve())
        assert config["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    import torch
    trained = torch.load(project / "baseline" / "best" / "seed0" / "weights" / "best.pt", weights_only=False)
    assert trained["train_args"]["model"] == str(weights.resolve())                # trained on from the .pt's weights
    assert Path(trained["model"].yaml["yaml_file"]).name == "yolov8n.yaml"
    built = torch.load(project / "baseline" / "tiny-net" / "seed0" / "weights" / "best.pt", weights_only=False)
    assert [layer[2] for layer in built["model"].yaml["backbone"]] == ["Conv"] * 4   # the architecture given
    capsys.readouterr()
    architecture.write_text(TINY_ARCHITECTURE.replace("[16, 3, 2]", "[8, 3, 2]"))   # same path, other contents
    assert td.main(argv) == 1
    assert "tiny-net/seed0 finished with other settings" in capsys.readouterr().err


def test_non_detectors_unknown_names_and_missing_files_are_refused_in_one_line(union_parts, tmp_path, capsys,
                                                                               monkeypatch):
    import torch
    from ultralytics.engine.model import Model
    from ultralytics.nn.tasks import ClassificationModel
    monkeypatch.setattr(Model, "train", lambda self, **kwargs: pytest.fail("trained a refused model"))
    classifier = tmp_path / "classifier.pt"
    torch.save({"model": ClassificationModel("yolo11n-cls.yaml", nc=2, verbose=False)}, classifier)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "net.yaml").write_text(TINY_ARCHITECTURE)
    missing = tmp_path / "missing.yaml"
    task = "not a detector (ultralytics' task for it is"
    cases = [("yolo11n-seg", f"--models yolo11n-seg: {task} 'segment'"),
             ("yolo11n-cls", f"--models yolo11n-cls: {task} 'classify'"),
             ("yolo26n-pose", f"--models yolo26n-pose: {task} 'pose'"),
             (f"yolov8n,{classifier}", f"--models {classifier}: {task} 'classify'"),
             ("yolov8s-world", "--models yolov8s-world: an open-vocabulary detector"),
             ("yolov9000", "--models yolov9000: not a model of ultralytics"),
             ("coco", "--models coco: not an ultralytics model"),                   # ultralytics' data YAML
             ("yolov8n,../yolov8n", "--models ../yolov8n: neither an ultralytics model name"),
             (str(missing), f"--models {missing}: no such file"),
             ("yolo26n,yolo26n", "--models yolo26n is given twice"),
             (f"{tmp_path / 'a' / 'net.yaml'},{tmp_path / 'b' / 'net.yaml'}", "would share the run folder")]
    for models, message in cases:
        assert td.main(models_argv(models, union_parts, tmp_path / "det")) == 2, models
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("error: --models ") and message in line, line


def test_the_papers_models_keep_their_sources_and_run_configs(union_parts, tmp_path, capsys, monkeypatch):
    real_yaml, _, test_images = union_parts
    weights = tmp_path / "weights"
    weights.mkdir()
    for model in PAPERS_MODELS:
        (weights / f"{model}.pt").write_bytes(b"")                       # only their presence is checked
    argv = ["--data", f"baseline={real_yaml}", "--seeds", "0", "--test_images", str(test_images),
            "--project", str(tmp_path / "det")]
    runs = td.plan(td.parse_args([*argv, "--weights_dir", str(weights)]))
    assert [(run["model"], run["architecture"]) for run in runs] == [(model, "YOLO") for model in PAPERS_MODELS]
    assert runs[0]["run_dir"] == str(tmp_path / "det" / "baseline" / "yolov8n" / "seed0")
    # the very config of runs finished before any ultralytics detector was accepted: they are not trained again
    assert td.run_config(runs[0]) == {"data": str(real_yaml.resolve()), "source": str(weights / "yolov8n.pt"),
                                      "epochs": 100, "imgsz": 768, "batch": 8, "nbs": 64, "augment": False}
    scratch, = td.plan(td.parse_args([*argv, "--init", "scratch", "--models", "yolov5xu"]))
    assert td.run_config(scratch)["source"] == "yolov5xu.yaml" and "source_sha256" not in td.run_config(scratch)
    cold, = td.plan(td.parse_args([*argv, "--init", "scratch", "--models", "yolov8n", "--warmup_epochs", "0"]))
    assert td.run_config(cold) == {**td.run_config(runs[0]), "source": "yolov8n.yaml", "warmup_epochs": 0.0}
    monkeypatch.setenv("COLUMNS", "1000")                                  # --help with no line broken
    with pytest.raises(SystemExit):
        td.parse_args(["--help"])
    [models_help] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  --models")]
    assert all(family in models_help for family in ("YOLO11", "YOLO12", "YOLO26", "RT-DETR", "RTDETR class",
                                                    "YOLO-World and YOLOE"))
