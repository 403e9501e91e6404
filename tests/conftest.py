"""Shared test setup: the repo root on sys.path (tests import the scripts; scripts never import
each other) and the real data beside the project, which CI requires (GENFUSION_REQUIRE_DATA=1)."""
import csv
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
# ultralytics binds its logger to the sys.stdout of its first import. First imported inside a test that
# captures its output, it would write to that test's closed stream ever after: every later test that
# logs would fail with logging errors. So it is imported here, once, for the session.
os.environ.setdefault("YOLO_OFFLINE", "1")
import ultralytics  # noqa: E402,F401


def shared_path(relative):
    """A path under ../shared; skips the test when absent, or fails when GENFUSION_REQUIRE_DATA=1."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent (it sits beside the project; see README)"
        if os.environ.get("GENFUSION_REQUIRE_DATA") == "1":
            pytest.fail(message + " and GENFUSION_REQUIRE_DATA=1")
        pytest.skip(message)
    return path


def help_sections(text):
    """--help text -> {section title: {option invocation: its help text on one line}}."""
    sections, entries, option = {}, None, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            entries, option = sections.setdefault(line[:-1], {}), None
        elif line.startswith("  -") and entries is not None:
            option, _, help_text = line.strip().partition("  ")
            entries[option] = help_text.strip()
        elif line.startswith("   ") and option:
            entries[option] = f"{entries[option]} {line.strip()}".strip()
        else:
            option = None
    return sections


def two_class_orchard(source, root, per_split=None):
    """orchard-real as a two-class YOLO folder: every box of a green photo is green_apple (0), of a red
    one red_apple (1), named by classes.txt as Label Studio's YOLO export does; per_split: only the
    first photos of each split, that many of each colour. -> (root, {file: colour})."""
    with open(source / "manifest.csv", newline="") as handle:
        colour = {r["file"]: r["color"] for r in csv.DictReader(handle)}
    for split in ("train", "val", "test"):
        (root / split / "labels").mkdir(parents=True)
        (root / split / "images").mkdir()
        labels = sorted((source / split / "labels").glob("*.txt"))
        if per_split:
            labels = [label for c in ("green", "red") for label in
                      [p for p in labels if colour[f"{p.stem}.jpg"] == c][:per_split]]
        for label in labels:
            (root / split / "images" / f"{label.stem}.jpg").symlink_to(source / split / "images" / f"{label.stem}.jpg")
            class_id = {"green": "0", "red": "1"}[colour[f"{label.stem}.jpg"]]
            (root / split / "labels" / label.name).write_text(
                "".join(f"{class_id} {line.split(maxsplit=1)[1]}\n" for line in label.read_text().splitlines()
                        if line.strip()))
    (root / "classes.txt").write_text("green_apple\nred_apple\n")
    return root, colour


@pytest.fixture(scope="session")
def orchard_real():
    return shared_path("data/orchard-real")


@pytest.fixture(scope="session")
def paper_table1():
    return shared_path("paper/table1.csv")


@pytest.fixture(scope="session")
def orchard_prepared(tmp_path_factory):
    """orchard-real prepared at 128 px (prepare_data.py): OUT with real.yaml and real/{train,val,test}."""
    import prepare_data
    source = shared_path("data/orchard-real")
    out = tmp_path_factory.mktemp("orchard_prepared")
    assert prepare_data.main(["--source", "yolo", "--input", str(source), "--output_dir", str(out),
                              "--resolution", "128", "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_detector(orchard_prepared, tmp_path_factory):
    """yolov8n from scratch, 2 epochs at 128 px on orchard-real (train_detectors.py): its run folder."""
    import train_detectors
    project = tmp_path_factory.mktemp("detectors")
    assert train_detectors.main(["--data", f"baseline={orchard_prepared / 'real.yaml'}", "--models", "yolov8n",
                                 "--seeds", "0", "--epochs", "2", "--imgsz", "128", "--init", "scratch",
                                 "--workers", "0", "--test_images", str(orchard_prepared / "real" / "test" / "images"),
                                 "--project", str(project)]) == 0
    return project / "baseline" / "yolov8n" / "seed0"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps its state (precision, accumulation) per process; scripts called in-process
    one after another each start from a fresh one, as they do from the shell."""
    yield
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
