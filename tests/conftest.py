"""Shared test setup: the repo root on sys.path (tests import the scripts; scripts never import
each other) and the real data beside the project, which CI requires (GENFUSION_REQUIRE_DATA=1)."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
# tests/run.sh's workers (pytest-xdist) each keep to cores of their own, and so does every process a
# test starts: two torch processes each with a thread per core of the machine would fight over the
# same cores (measured on 2 cores: the 65 s detection test took 220 s beside another worker).
if os.environ.get("PYTEST_XDIST_WORKER") and hasattr(os, "sched_setaffinity"):
    cores, workers = sorted(os.sched_getaffinity(0)), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    if len(cores) >= workers:
        own = cores[int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))::workers]
        os.sched_setaffinity(0, own)
        os.environ["OMP_NUM_THREADS"] = str(len(own))
# ultralytics binds its logger to the sys.stdout of its first import. First imported inside a test that
# captures its output, it would write to that test's closed stream ever after: every later test that
# logs would fail with logging errors. So it is imported here, once, for the session.
os.environ.setdefault("YOLO_OFFLINE", "1")
import ultralytics  # noqa: E402,F401


# tests/run.sh runs the files on two workers (pytest-xdist, one file to a worker at a time, in this
# order): the slowest go first, so that neither worker is left with a long file at the end. Seconds
# measured on one core each, the suite on 2 cores taking 526 s (982 s in one process).
SLOWEST_FILES_FIRST = ["test_run_all.py",  # 330
                       "test_model_families.py",  # 240
                       "test_sd21_architecture.py",  # 134
                       "test_own_data.py",  # 118
                       "test_detection_learns.py",  # 89
                       "test_model_sources.py",  # 50
                       "test_label_studio.py",  # 45
                       "test_train_detectors.py",  # 40
                       "test_train_dreambooth.py"]  # 40


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def shared_path(relative):
    """A path under ../shared; skips the test when absent, or fails when GENFUSION_REQUIRE_DATA=1."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent (it sits beside the project; see README)"
        if os.environ.get("GENFUSION_REQUIRE_DATA") == "1":
            pytest.fail(message + " and GENFUSION_REQUIRE_DATA=1")
        pytest.skip(message)
    return path


def stages_run(stdout):
    """The stages a run_all.sh run's output says it ran, in order."""
    return [m.group(1) for m in re.finditer(r"^== (\w+) done in", stdout, re.MULTILINE)]


def dry_run_of(argv):
    """The stages run_all.sh ARGV --dry_run says it would run, and its whole output."""
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), *argv, "--dry_run"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [m.group(1) for m in re.finditer(r"^== (\w+): would run", result.stdout, re.MULTILINE)], result.stdout


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
