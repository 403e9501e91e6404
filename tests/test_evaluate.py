import contextlib
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import evaluate as ev


def write_split(root, images):
    """images: {stem: (width, height, [gt boxes x1 y1 x2 y2] or None for no label file)}."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, (width, height, boxes) in images.items():
        Image.new("RGB", (width, height)).save(root / "images" / f"{stem}.png")
        if boxes is not None:
            (root / "labels" / f"{stem}.txt").write_text(yolo_lines(boxes, width, height))
    return root


def yolo_lines(boxes, width, height, scores=None):
    lines = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        line = f"0 {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}"
        lines.append(line + (f" {scores[i]}" if scores is not None else "") + "\n")
    return "".join(lines)


def write_predictions(root, predictions, sizes):
    """predictions: {stem: [(x1, y1, x2, y2, score), ...]}."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, rows in predictions.items():
        width, height = sizes[stem]
        (root / f"{stem}.txt").write_text(
            yolo_lines([r[:4] for r in rows], width, height, scores=[r[4] for r in rows]))
    return root


GT = [[10, 10, 50, 50], [100, 100, 200, 200], [150, 10, 190, 40]]


def test_perfect_predictions_score_one(tmp_path):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT), "b": (300, 300, [[0, 0, 30, 30]])})
    pred = write_predictions(tmp_path / "pred", {"a": [(*b, 0.9) for b in GT], "b": [(0, 0, 30, 30, 0.5)]},
                             {"a": (300, 300), "b": (300, 300)})
    metrics = ev.score(gt, pred)
    assert metrics["ap"] == pytest.approx(1.0) and metrics["ap50"] == pytest.approx(1.0)
    assert metrics["ap75"] == pytest.approx(1.0) and metrics["ar100"] == pytest.approx(1.0)
    assert metrics["gt_boxes"] == 4 and metrics["predictions"] == 4


def test_hand_computed_case(tmp_path):
    # 3 ground-truth boxes. Ranked: exact hit (0.9), a false positive (0.8), a hit on the second box
    # at IoU 0.72 (0.7); the third is missed. For IoU thresholds 0.50..0.70 recall/precision run
    # (1/3, 1), (1/3, 1/2), (2/3, 2/3): COCO's 101-point interpolation gives 34 points at 1 and
    # 33 at 2/3, AP = 56/101. For 0.75..0.95 only the first hit counts: AP = 34/101.
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    pred = write_predictions(tmp_path / "pred", {"a": [(10, 10, 50, 50, 0.9), (250, 250, 290, 290, 0.8),
                                                       (100, 100, 200, 172, 0.7)]}, {"a": (300, 300)})
    metrics = ev.score(gt, pred)
    assert metrics["ap50"] == pytest.approx(56 / 101)
    assert metrics["ap75"] == pytest.approx(34 / 101)
    assert metrics["ap"] == pytest.approx((5 * 56 / 101 + 5 * 34 / 101) / 10)


def test_false_positive_on_an_image_without_ground_truth_counts(tmp_path):
    # Empty image b holds the top-scored false positive: precision (0, 1/2) at recall (0, 1) -> 0.5.
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT[:1]), "b": (300, 300, [])})
    pred = write_predictions(tmp_path / "pred", {"a": [(10, 10, 50, 50, 0.5)], "b": [(0, 0, 40, 40, 0.9)]},
                             {"a": (300, 300), "b": (300, 300)})
    assert ev.score(gt, pred)["ap"] == pytest.approx(0.5)


def test_max_dets_caps_detections_per_image(tmp_path):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    pred = write_predictions(tmp_path / "pred", {"a": [(*b, s) for b, s in zip(GT, (0.9, 0.8, 0.7))]},
                             {"a": (300, 300)})
    assert ev.score(gt, pred, max_dets=2)["ap50"] == pytest.approx(67 / 101)  # recall stops at 2/3


def test_no_predictions_score_zero(tmp_path):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    (tmp_path / "pred").mkdir()
    metrics = ev.score(gt, tmp_path / "pred")
    assert metrics["ap"] == 0.0 and metrics["ap50"] == 0.0 and metrics["predictions"] == 0


def test_score_equals_a_direct_cocoeval_run(orchard_real, tmp_path):
    split = orchard_real / "test"
    rng = np.random.default_rng(0)
    pred = tmp_path / "pred"
    pred.mkdir()
    for label in sorted((split / "labels").glob("*.txt")):
        rows = np.loadtxt(label, ndmin=2)
        rows = rows[rng.random(len(rows)) > 0.2]                            # miss some apples
        rows[:, 1:3] += rng.normal(0, 0.01, (len(rows), 2))                # shift boxes
        extra = np.c_[np.zeros(2), rng.uniform(0.1, 0.9, (2, 2)), np.full((2, 2), 0.05)]
        rows = np.clip(np.r_[rows, extra], 0, 1)                           # and false positives
        scores = rng.uniform(0.01, 1, len(rows))
        (pred / label.name).write_text("".join(f"0 {r[1]} {r[2]} {r[3]} {r[4]} {s}\n" for r, s in zip(rows, scores)))
    assert ev.main(["score", "--gt", str(split), "--pred", str(pred), "--out", str(tmp_path / "m.json"),
                    "--export_coco", str(tmp_path / "coco")]) == 0
    ours = json.loads((tmp_path / "m.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "coco" / "gt.json"))
        coco_dt = coco_gt.loadRes(str(tmp_path / "coco" / "predictions.json"))
        direct = COCOeval(coco_gt, coco_dt, "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert [ours["ap"], ours["ap50"], ours["ap75"]] == pytest.approx(direct.stats[:3].tolist())
    assert 0.1 < ours["ap"] < 0.9
    assert min(a["id"] for a in coco_gt.dataset["annotations"]) == 1
    assert ours["images"] == 32


def test_bad_inputs_are_named(tmp_path, capsys):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT), "b": (300, 300, None)})
    pred = write_predictions(tmp_path / "pred", {"a": [(10, 10, 50, 50, 0.9)]}, {"a": (300, 300)})
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert "b.png" in capsys.readouterr().err                      # unlabelled image refused by name
    (gt / "labels" / "b.txt").write_text("")
    (pred / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1 0.9\n")
    with pytest.raises(ev.EvaluationInputError, match="ghost.txt"):
        ev.score(gt, pred)


@pytest.mark.parametrize("content, message", [
    (b"0 0.5 0.5 0.1 0.1 0.9\n0 0.5 1.2 0.1 0.1 0.9\n", r"a.txt:2: values out of range"),
    (b"0 0.5 0.5 0.1 0.1\n", r"a.txt:1: expected 6 columns"),
    (b"0 0.5 0.5 0.1 0.1 0.9\n1 0.1 0.1 0.1 0.1 0.99\n", r"a.txt:2: class 1"),   # other classes are
    (b"nan 0.5 0.5 0.1 0.1 0.9\n", r"a.txt:1: class nan"),                         # not silently ignored
    (b"\xff\xfe\x00garbage", r"a.txt: unreadable"),
])
def test_bad_prediction_lines_are_named(tmp_path, content, message):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.txt").write_bytes(content)
    with pytest.raises(ev.EvaluationInputError, match=message):
        ev.score(gt, tmp_path / "pred")


# ---- table ----------------------------------------------------------------------------------------
def write_results(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "seed", "ap", "ap50", "ap75"])
        writer.writerows(rows)
    return path


def test_table_means_stds_gaps_and_files(tmp_path):
    results = write_results(tmp_path / "runs.csv", [
        ("baseline", "yolov8n", 0, 0.40, 0.70, 0.40), ("baseline", "yolov8n", 1, 0.42, 0.74, 0.44),
        ("genfusion", "yolov8n", 0, 0.30, 0.60, 0.25), ("genfusion", "yolov8n", 1, 0.34, 0.64, 0.29),
        ("genfusion", "yolov5nu", 0, 0.20, 0.50, 0.10)])
    table = ev.write_table(results, tmp_path / "out")
    by_key = {(e["dataset"], e["model"]): e for e in table}
    base, ours = by_key[("baseline", "yolov8n")], by_key[("genfusion", "yolov8n")]
    assert base["ap_mean"] == pytest.approx(0.41) and base["ap_std"] == pytest.approx(0.02 / np.sqrt(2))
    assert ours["ap_gap"] == pytest.approx(0.32 - 0.41) and base["ap_gap"] is None
    assert ours["ap75_gap"] == pytest.approx(0.27 - 0.42)
    assert ours["paper_ap_mean"] == 0.31 and ours["paper_ap75_std"] == 0.012
    lonely = by_key[("genfusion", "yolov5nu")]
    assert lonely["seeds"] == 1 and lonely["ap_std"] == 0.0 and lonely["ap_gap"] is None
    assert lonely["paper_ap_mean"] == 0.27                       # yolov5nu stands for the paper's yolov5n
    markdown = (tmp_path / "out" / "table1.md").read_text()
    assert "| genfusion | yolov8n | 2 | 0.320 ± 0.028 **-0.090** |" in markdown
    with open(tmp_path / "out" / "table1.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert Image.open(tmp_path / "out" / "table1.png").size[0] > 500


def test_table_rejects_a_csv_without_the_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("dataset,model,ap\nbaseline,yolov8n,0.4\n")
    with pytest.raises(ev.EvaluationInputError, match="missing columns seed, ap50, ap75"):
        ev.read_results(tmp_path / "bad.csv")


def test_paper_numbers_match_the_paper(paper_table1):
    with open(paper_table1, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(ev.PAPER_TABLE1) == 20
    for row in rows:
        expected = tuple(float(row[k]) for k in ("ap", "ap_std", "ap50", "ap50_std", "ap75", "ap75_std"))
        assert ev.PAPER_TABLE1[(row["dataset"], row["model"])] == expected


def test_table_command_line_with_another_baseline(tmp_path, capsys):
    results = tmp_path / "runs.csv"
    results.write_text("\ufeffDataset,Model,Seed,AP,AP50,AP75\n"          # a BOM and capitals, as spreadsheets write
                       "real,YOLOv8n,0,0.4,0.7,0.4\nreal,YOLOv8n,1,0.4,0.7,0.4\n"
                       "genfusion,YOLOv8n,0,0.3,0.6,0.3\n")
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "out")]) == 2
    assert "no rows of the baseline dataset 'baseline'" in capsys.readouterr().err
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "out"), "--baseline", "real"]) == 0
    with open(tmp_path / "out" / "table1.csv", newline="") as handle:
        rows = {r["dataset"]: r for r in csv.DictReader(handle)}
    assert float(rows["genfusion"]["ap_gap"]) == pytest.approx(-0.1)
    assert float(rows["genfusion"]["paper_ap_mean"]) == 0.31       # YOLOv8n is the paper's yolov8n


def test_table_rejects_duplicates_blanks_and_bad_numbers(tmp_path):
    header = "dataset,model,seed,ap,ap50,ap75\n"
    cases = {"baseline,yolov8n,0,0.4,0.7,0.4\nbaseline,yolov8n,0,0.5,0.7,0.4\n": "a second row",
             "baseline,,0,0.4,0.7,0.4\n": "model column is empty",
             "baseline,yolov8n,0,nan,0.7,0.4\n": "ap must be a number",
             "baseline,yolov8n,0,0.4,1.7,0.4\n": "ap50 must be a number"}
    for body, message in cases.items():
        (tmp_path / "r.csv").write_text(header + body)
        with pytest.raises(ev.EvaluationInputError, match=message):
            ev.read_results(tmp_path / "r.csv")


def test_collect_scores_every_run(tmp_path):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    perfect = [(*b, 0.9) for b in GT]
    for dataset, seed, predictions in (("baseline", 0, perfect), ("genfusion", 1, perfect[:1])):
        write_predictions(tmp_path / "runs" / dataset / "yolov8n" / f"seed{seed}" / "test_predictions",
                          {"a": predictions}, {"a": (300, 300)})
    assert ev.main(["collect", "--runs", str(tmp_path / "runs"), "--gt", str(gt), "--out", str(tmp_path / "r.csv")]) == 0
    rows = ev.read_results(tmp_path / "r.csv")
    assert [(r["dataset"], r["model"], r["seed"]) for r in rows] == [("baseline", "yolov8n", "0"), ("genfusion", "yolov8n", "1")]
    assert rows[0]["ap"] == pytest.approx(1.0) and rows[1]["ap50"] == pytest.approx(34 / 101)  # recall 1/3


# ---- max_dets: every figure at the limit --------------------------------------------------------
@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """Two 400 px images with 20 apples each (10-80 px: small and medium, no large) and 320
    detections per image: a jittered hit on most apples among false positives, scored at random
    but for one top-scored hit, so that any max-dets limit below 320 cuts hits off.
    -> (gt dir, predictions dir), the predictions at runs/baseline/yolov8n/seed0/test_predictions
    as collect finds them."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("crowded")
    labels, predictions = {}, {}
    for stem in ("a", "b"):
        corners = rng.uniform(0, 300, (20, 2))
        apples = np.c_[corners, corners + rng.uniform(10, 80, (20, 2))]
        found = apples[rng.random(20) > 0.2]
        hits = found + rng.normal(0, 2, found.shape)
        corners = rng.uniform(0, 350, (320 - len(hits), 2))
        false_positives = np.c_[corners, corners + rng.uniform(10, 50, corners.shape)]
        boxes = np.clip(np.r_[hits, false_positives], 0, 400)
        labels[stem] = (400, 400, apples.tolist())
        scores = np.r_[1.0, rng.uniform(0.01, 0.99, len(boxes) - 1)]         # a hit first, for limit 1
        predictions[stem] = [(*box, score) for box, score in zip(boxes, scores)]
    gt = write_split(root / "gt", labels)
    pred = write_predictions(root / "runs" / "baseline" / "yolov8n" / "seed0" / "test_predictions",
                             predictions, {stem: (400, 400) for stem in labels})
    return gt, pred


def direct_cocoeval(coco_dir, max_dets):
    """pycocotools' own COCOeval on evaluate's exported COCO files, maxDets holding max_dets among
    COCO's 1, 10, 100: (the evaluator, accumulated, and its printed summary)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO(str(coco_dir / "gt.json"))
        coco_dt = coco_gt.loadRes(str(coco_dir / "predictions.json"))
        direct = COCOeval(coco_gt, coco_dt, "bbox")
        direct.params.maxDets = sorted({1, 10, 100, max_dets})
        direct.evaluate()
        direct.accumulate()
        if max_dets == 100:
            direct.summarize()
    return direct, printed.getvalue()


def defined_mean(values):
    """Mean of the values COCOeval defines (> -1), None when there are none: as summarize takes it."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else None


@pytest.mark.parametrize("max_dets", [1, 5, 300])
def test_every_figure_is_taken_at_the_max_dets_limit(crowded, tmp_path, max_dets):
    gt, pred = crowded
    ours = ev.score(gt, pred, max_dets=max_dets, export_coco=tmp_path / "coco")
    direct, _ = direct_cocoeval(tmp_path / "coco", max_dets)
    m = direct.params.maxDets.index(max_dets)
    precision = direct.eval["precision"][:, :, 0, :, m]          # [IoU, recall, area], one category
    recall = direct.eval["recall"][:, 0, 0, m]                     # [IoU], area all
    assert direct.params.areaRngLbl == ["all", "small", "medium", "large"]
    assert direct.params.iouThrs[[0, 5]] == pytest.approx([0.5, 0.75])
    expected = {"ap": defined_mean(precision[:, :, 0]), "ap50": defined_mean(precision[0, :, 0]),
                "ap75": defined_mean(precision[5, :, 0]), "ap_small": defined_mean(precision[:, :, 1]),
                "ap_medium": defined_mean(precision[:, :, 2]), "ap_large": None,
                f"ar{max_dets}": defined_mean(recall)}
    assert {name: ours[name] for name in expected} == pytest.approx(expected)
    assert ours["ap"] > 0
    assert ours["ap"] != pytest.approx(ev.score(gt, pred, max_dets=320)["ap"])   # the limit cuts hits off


def test_max_dets_100_equals_cocoeval_summarize(crowded, tmp_path, capsys):
    gt, pred = crowded
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "m.json"),
                    "--export_coco", str(tmp_path / "coco")]) == 0
    printed = capsys.readouterr().out
    ours = json.loads((tmp_path / "m.json").read_text())
    direct, summary = direct_cocoeval(tmp_path / "coco", 100)
    names = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
    assert [ours[name] for name in names] == pytest.approx(direct.stats[:5].tolist() + [None])
    assert direct.stats[5] == -1 and ours["ar100"] == pytest.approx(direct.stats[8])
    ours_lines = [line for line in printed.splitlines() if line.startswith(" Average")]
    assert len(ours_lines) == 7 and set(ours_lines) <= set(summary.splitlines())  # COCOeval's lines


def test_collect_with_max_dets_300_feeds_table(crowded, tmp_path, capsys):
    gt, pred = crowded
    runs = pred.parents[3]
    assert ev.main(["collect", "--runs", str(runs), "--gt", str(gt), "--out", str(tmp_path / "r.csv"),
                    "--max_dets", "300"]) == 0
    with open(tmp_path / "r.csv", newline="") as handle:
        row, = csv.DictReader(handle)
    assert float(row["ap"]) == pytest.approx(ev.score(gt, pred, max_dets=300)["ap"])
    assert ev.main(["table", "--results", str(tmp_path / "r.csv"), "--out_dir", str(tmp_path / "t")]) == 0
    with open(tmp_path / "t" / "table1.csv", newline="") as handle:
        entry, = csv.DictReader(handle)
    assert float(entry["ap_mean"]) == pytest.approx(float(row["ap"]))


# ---- ground-truth warnings ------------------------------------------------------------------------
def test_zero_size_and_duplicate_ground_truth_boxes_are_warned_of(tmp_path, capsys):
    # a.txt: line 2 is zero-size (w = 0), line 4 repeats line 1; b.txt is clean.
    gt = write_split(tmp_path / "gt", {"a": (300, 300, [GT[0], [100, 100, 100, 150], GT[1], GT[0]]),
                                       "b": (300, 300, GT)})
    for seed in (0, 1):
        write_predictions(tmp_path / "runs" / "baseline" / "yolov8n" / f"seed{seed}" / "test_predictions",
                          {"a": [(*GT[0], 0.9)]}, {"a": (300, 300)})
    pred = tmp_path / "runs" / "baseline" / "yolov8n" / "seed0" / "test_predictions"
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "m.json")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: {gt / 'labels' / 'a.txt'}: zero-size boxes (w or h is 0 px) on lines 2; "
            f"duplicate boxes on lines 4 (= line 1)\n") in err
    assert "b.txt" not in err and "still count as ground truth" in err
    assert json.loads((tmp_path / "m.json").read_text())["gt_boxes"] == 7      # counted, as before
    assert ev.main(["collect", "--runs", str(tmp_path / "runs"), "--gt", str(gt),
                    "--out", str(tmp_path / "r.csv")]) == 0
    assert capsys.readouterr().err.count("a.txt") == 1                          # once, not once per run


def test_warnings_beyond_ten_label_files_are_counted(capsys):
    ev.warn_gt_boxes([f"warning: {k}.txt: ..." for k in range(12)])
    lines = capsys.readouterr().err.splitlines()
    assert lines[:10] == [f"warning: {k}.txt: ..." for k in range(10)]
    assert lines[10:] == ["warning: 2 more label files with zero-size or duplicate boxes", ev.GT_BOX_NOTE]


# ---- output paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command, flag, target, problem", [
    ("score", "--out", "folder", "is a folder, not a file"),
    ("score", "--out", "file/m.json", "is a file, not a folder"),
    ("score", "--out", "/proc/genfusion/m.json", "cannot create files in /proc"),
    ("score", "--export_coco", "file", "is a file, not a folder"),
    ("collect", "--out", "folder", "is a folder, not a file"),
    ("collect", "--out", "file/sub/r.csv", "is a file, not a folder"),
    ("table", "--out_dir", "file", "is a file, not a folder"),
    ("table", "--out_dir", "file/sub", "is a file, not a folder"),
    ("table", "--out_dir", "/proc/genfusion", "cannot create files in /proc"),
])
def test_unusable_outputs_are_one_line_errors(tmp_path, capsys, command, flag, target, problem):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    pred = write_predictions(tmp_path / "runs" / "baseline" / "yolov8n" / "seed0" / "test_predictions",
                             {"a": [(*GT[0], 0.9)]}, {"a": (300, 300)})
    results = write_results(tmp_path / "r.csv", [("baseline", "yolov8n", 0, 0.4, 0.7, 0.4)])
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    path = target if target.startswith("/") else str(tmp_path / target)
    inputs = {"score": ["--gt", str(gt), "--pred", str(pred)],
              "collect": ["--gt", str(gt), "--runs", str(tmp_path / "runs")],
              "table": ["--results", str(results)]}[command]
    before = sorted(tmp_path.rglob("*"))
    assert ev.main([command, *inputs, flag, path]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.strip()]                   # one line
    assert captured.err.startswith(f"error: {flag} {path}: ") and problem in captured.err
    assert captured.out == ""                                                    # refused before scoring
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "keep"


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        ev.write_atomic(tmp_path / "folder", "text")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    (tmp_path / "m.json").write_text("old")

    def write_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        ev.create_atomic(tmp_path / "m.json", write_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.json"]
    assert (tmp_path / "m.json").read_text() == "old"
