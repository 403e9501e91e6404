"""run_all.sh on your own data: orchard-real as two classes through --source yolo, with the
tiny-random models, from the first stage to Table 1, then with other proposers and the CLIP filter."""
import csv
import json
import subprocess

from conftest import REPO, dry_run_of, shared_path, stages_run, two_class_orchard


def test_your_own_two_class_data_runs_the_chain_with_a_model_per_class_and_scores_each_class(tmp_path):
    """orchard-real as two classes (green_apple, red_apple) through --source yolo: a group and a
    DreamBooth model per class, --total split by the groups, the prompts per group, both classes in
    the review's config, and a score per class."""
    root, _ = two_class_orchard(shared_path("data/orchard-real"), tmp_path / "two_class", per_split=6)
    (tmp_path / "variants.txt").write_text("{}\n{} at dusk\n")
    work = tmp_path / "work"
    own_data = ["--source", "yolo", "--input", str(root), "--work", str(work), "--model", "tiny-random",
                "--resolution", "64", "--max_train_steps", "2", "--num_class_images", "2", "--instance_prompt",
                "a photo of sks {group}", "--prompt_variants", str(tmp_path / "variants.txt"), "--total", "6",
                "--models", "yolov8n", "--seeds", "0", "--epochs", "1", "--imgsz", "64", "--init", "scratch",
                "--datasets", "baseline,genfusion"]
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), *own_data], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result.stdout) == ["prepare", "dreambooth_green_apple", "dreambooth_red_apple", "generate",
                                         "detectors_baseline", "propose", "detectors_genfusion", "datasets",
                                         "evaluate", "table", "report"]
    stats = json.loads((work / "data" / "stats.json").read_text())
    assert stats["classes"] == ["green_apple", "red_apple"] and stats["groups"] == {"green_apple": 6, "red_apple": 6}
    with open(work / "generated" / "manifest.csv", newline="") as handle:
        generated = list(csv.DictReader(handle))
    assert sorted(r["file"].rsplit("_", 1)[0] for r in generated) == ["green_apple"] * 3 + ["red_apple"] * 3
    assert all(r["prompt"] in (f"a photo of sks {r['file'].rsplit('_', 1)[0]}", f"a photo of sks "
                                  f"{r['file'].rsplit('_', 1)[0]} at dusk") for r in generated)
    assert "green_apple" in (work / "proposals" / "data.yaml").read_text()

    assert (work / "proposals" / "label_studio_config.xml").read_text().count("<Label ") == 2
    with open(work / "results" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # the scores per class (their values against pycocotools: test_detection_learns.py, where AP is not 0)
    assert [r["dataset"] for r in rows] == ["baseline", "genfusion"]
    assert all(r[f"ap_{name}"] != "" for r in rows for name in ("green_apple", "red_apple"))
    table = (work / "results" / "table1.md").read_text()
    assert "green_apple" in table and "red_apple" in table and "Paper" not in table

    # No labelled real set to train a proposer: an open-vocabulary model proposes from the class names,
    # its threshold set on the instance photos' labels; only what depends on the labels runs again
    result = subprocess.run(
        ["bash", str(REPO / "run_all.sh"), *own_data, "--labels", "open_vocabulary=tiny-random-owlv2"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result.stdout) == ["propose", "detectors_genfusion", "datasets", "evaluate", "table", "report"]
    proposals = json.loads((work / "proposals" / "proposals.json").read_text())
    assert proposals["family"] == "OWLv2" and proposals["queries"] == ["green_apple", "red_apple"]
    assert proposals["chosen_by"].endswith(f"{work / 'data' / 'fewshot.yaml'} train")
    assert "Generated labels: the proposals of tiny-random-owlv2 as they are, NOT reviewed" in \
        (work / "results" / "table1.md").read_text()
    # the few-shot detector as proposer: it trains before it proposes, and what it labels runs again
    stages, _ = dry_run_of(own_data + ["--labels", "fewshot"])
    assert stages == ["detectors_fewshot", "propose", "detectors_genfusion", "datasets", "evaluate", "table",
                      "report"]
    # the CLIP filter before the labels: tiny-random-clip finds the 6 generated noise images unlike the
    # instance photos, and the run stops there, saying so, before anything is labelled
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), *own_data, "--filter", "clip=tiny-random-clip"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1 and stages_run(result.stdout) == ["filter"]
    with open(work / "filter" / "filter.csv", newline="") as handle:
        assert [row["kept"] for row in csv.DictReader(handle)] == ["no"] * 6
    assert "the CLIP filter kept none of the generated images" in result.stderr
