import json
import subprocess

from conftest import REPO


def run_demo(work):
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--work", str(work)],
                          capture_output=True, text=True, timeout=600)


def test_demo_runs_every_stage_and_a_second_run_does_nothing(tmp_path):
    work = tmp_path / "work"
    first = run_demo(work)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "the plumbing, not the paper's result" in first.stdout
    for path in ("data/real.yaml", "data/manifest.csv", "data/stats.json", "data/real/test/labels",
                 "data/instances/green", "data/instances/red", "run_all.log",
                 "models/green/model_index.json", "models/red/loss.png", "generated/contact_sheet.png"):
        assert (work / path).exists(), path
    assert len(list((work / "class_images").glob("*.png"))) == 4  # one class folder for both colours
    assert json.loads((work / "results" / "self_check.json").read_text())["ap"] == 1.0
    log = (work / "run_all.log").read_text()
    stats = json.loads((work / "data" / "stats.json").read_text())["colours"]["train"]
    generated = [p.name for p in (work / "generated" / "images").glob("*.png")]
    assert sum(n.startswith("green_") for n in generated) == stats["green"] > 0
    assert sum(n.startswith("red_") for n in generated) == stats["red"] > 0
    for stage in ("prepare", "dreambooth green", "dreambooth red", "generate", "evaluate"):
        assert f"== {stage} done in" in log

    second = run_demo(work)
    assert second.returncode == 0
    assert "up to date" in second.stdout and second.stdout.count("nothing to do") == 3


def test_failing_stage_is_named(tmp_path):
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--minneapple", str(tmp_path / "missing"),
                             "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "stage 'prepare' failed" in result.stderr
