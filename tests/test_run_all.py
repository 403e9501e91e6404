import csv
import json
import subprocess

from conftest import REPO


def run_demo(work):
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--work", str(work)],
                          capture_output=True, text=True, timeout=900)


def test_demo_runs_the_whole_chain_and_a_second_run_does_nothing(tmp_path):
    work = tmp_path / "work"
    first = run_demo(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for path in ("data/real.yaml", "data/manifest.csv", "data/stats.json", "data/instances/green",
                 "models/green/model_index.json", "models/red/loss.png", "generated/contact_sheet.png",
                 "proposals/label_studio_tasks.json", "results/table1.png", "results/table1.csv", "run_all.log"):
        assert (work / path).exists(), path
    assert len(list((work / "class_images").glob("*.png"))) == 4  # one class folder for both colours
    stats = json.loads((work / "data" / "stats.json").read_text())["colours"]["train"]
    generated = [p.name for p in (work / "generated" / "images").glob("*.png")]
    assert sum(n.startswith("green_") for n in generated) == stats["green"] > 0
    assert sum(n.startswith("red_") for n in generated) == stats["red"] > 0
    with open(work / "detectors" / "runs.csv", newline="") as handle:
        runs = sorted((r["dataset"], r["model"], r["status"]) for r in csv.DictReader(handle))
    assert runs == [("baseline", "yolov8n", "done"), ("genfusion", "yolov8n", "done")]
    table = (work / "results" / "table1.md").read_text()
    assert "| genfusion | yolov8n | 1 |" in table and "NOT reviewed" in table and "not the paper" in table
    log = (work / "run_all.log").read_text()
    for stage in ("prepare", "dreambooth green", "dreambooth red", "generate", "detectors baseline", "propose",
                  "detectors genfusion", "evaluate", "table"):
        assert f"== {stage} done in" in log, stage

    second = run_demo(work)
    assert second.returncode == 0
    assert "up to date" in second.stdout and second.stdout.count("nothing to do") == 3
    assert second.stdout.count("skipped (done)") == 2 and "this part draws 0" in second.stdout


def test_failing_stage_is_named(tmp_path):
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--minneapple", str(tmp_path / "missing"),
                             "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "stage 'prepare' failed" in result.stderr
