import contextlib
import csv
import io
import json
import re

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


def yolo_lines(boxes, width, height, scores=None, classes=None):
    lines = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        line = (f"{classes[i] if classes else 0} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                f"{(x2 - x1) / width} {(y2 - y1) / height}")
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
    exported = json.loads((tmp_path / "coco" / "gt.json").read_text())  # as written, before pycocotools read it
    assert {"info", "licenses", "images", "annotations", "categories"} <= exported.keys()
    assert all(not {"ignore", "_ignore"} & a.keys() for a in exported["annotations"])  # FiftyOne would skip those


def test_bad_inputs_are_named(tmp_path, capsys):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT), "b": (300, 300, None)})
    pred = write_predictions(tmp_path / "pred", {"a": [(10, 10, 50, 50, 0.9)]}, {"a": (300, 300)})
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert "b.png" in capsys.readouterr().err                      # unlabelled image refused by name
    (gt / "labels" / "b.txt").write_text("")
    (pred / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1 0.9\n")
    with pytest.raises(ev.InputError, match="ghost.txt"):
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
    with pytest.raises(ev.InputError, match=message):
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
    table = ev.write_table(results, tmp_path / "out", paper=True)
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
    with pytest.raises(ev.InputError, match="missing columns seed, ap50, ap75"):
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
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "out"), "--baseline", "real",
                    "--paper"]) == 0
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
        with pytest.raises(ev.InputError, match=message):
            ev.read_results(tmp_path / "r.csv")


def chart_texts(figure):
    """Every text drawn on a matplotlib figure: its own (the notes) and its axes' (values on bars)."""
    texts = [t.get_text() for t in figure.texts]
    return texts + [t.get_text() for axis in figure.axes for t in axis.texts]


def paper_marks(figure):
    """The number of hollow-diamond marks (the paper's values) drawn on a Table 1 figure."""
    from matplotlib.collections import PathCollection
    return sum(len(c.get_offsets()) for axis in figure.axes for c in axis.collections if isinstance(c, PathCollection))


def test_chart_writes_every_value_names_its_axes_and_shows_the_paper_marker_with_the_paper():
    rows = [{"dataset": d, "model": "yolov8n", "seed": str(s), "ap": ap, "ap50": ap + 0.3, "ap75": ap}
            for d, s, ap in (("annotation_rg0", 0, 0.2), ("annotation_rg0", 1, 0.24),   # no paper value,
                             ("baseline", 0, 0.4), ("genfusion", 0, 0.3))]             # and listed first
    notes = ["Generated labels: the proposals, `NOT` reviewed.", "Scorer: pycocotools COCOeval, $100$ dets. " * 12]
    figure = ev.table_figure(ev.summarise(rows, paper=True), notes)
    legend, = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["annotation_rg0", "baseline", "genfusion", "paper's Table 1"]
    assert [axis.get_ylabel() for axis in figure.axes] == [
        "AP@0.5:0.95\non the real test set", "AP@0.5\non the real test set", "AP@0.75\non the real test set"]
    texts = chart_texts(figure)
    for value in ("0.22±0.03", "0.40", "0.30", "0.52±0.03", "0.70", "0.60"):          # every bar, every metric
        assert value in texts
    notes_text, = [t for t in figure.texts]
    assert notes_text.get_text().split() == " ".join(notes).replace("`", "").split()     # wrapped, not cut
    assert max(len(line) for line in notes_text.get_text().splitlines()) < len(notes[1])
    assert paper_marks(figure) == 2 * 3                               # baseline and genfusion, every metric
    lonely = ev.table_figure(ev.summarise([{**rows[0], "dataset": "real"}], baseline="real", paper=True))
    assert [t.get_text() for t in lonely.legends[0].get_texts()][-1] == "paper's Table 1 (no row of it here)"
    without = ev.table_figure(ev.summarise(rows), notes)
    assert [t.get_text() for t in without.legends[0].get_texts()] == ["annotation_rg0", "baseline", "genfusion"]
    assert paper_marks(without) == 0 and "0.22±0.03" in chart_texts(without)


def test_bar_value_label_shows_the_std_only_over_several_seeds():
    assert ev.bar_value_label(0.3214, 0.0281, 2) == "0.32±0.03"
    assert ev.bar_value_label(0.3214, 0.0, 1) == "0.32"


def test_a_row_that_found_nothing_is_named_with_its_likely_causes(tmp_path, capsys):
    results = write_results(tmp_path / "r.csv", [
        ("baseline", "yolov8n", 0, 0.4, 0.7, 0.4), ("genfusion", "yolov8n", 0, 0, 0, 0),
        ("genfusion", "yolov8n", 1, 0, 0, 0), ("genfusion", "yolov5nu", 0, 0, 0.01, 0)])   # one figure > 0
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "out"),
                    "--note", "Generated labels: NOT reviewed."]) == 0
    markdown = (tmp_path / "out" / "table1.md").read_text()
    assert capsys.readouterr().out.startswith(markdown)
    paragraphs = markdown.split("\n\n")
    assert paragraphs[-2] == "Generated labels: NOT reviewed."
    assert paragraphs[-1].startswith("Found nothing: genfusion yolov8n scored 0 on every seed. Likely causes: ")
    for cause in ("trained too briefly", "nbs", "too small to see at this --imgsz", "wrong labels"):
        assert cause in paragraphs[-1]
    assert "yolov5nu" not in paragraphs[-1] and "Demo run" not in markdown


def test_a_demo_table_says_what_its_numbers_are(tmp_path):
    results = write_results(tmp_path / "r.csv", [("baseline", "yolov8n", 0, 0, 0, 0), ("genfusion", "yolov8n", 0, 0, 0, 0)])
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "out"), "--demo"]) == 0
    last = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[-1].strip()
    assert last == ev.demo_note()
    assert "not the paper" in last and "models/orchard-prior" in last
    assert "Found nothing" not in (tmp_path / "out" / "table1.md").read_text()


def test_collect_scores_every_run(tmp_path, capsys):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    perfect = [(*b, 0.9) for b in GT]
    for dataset, seed, predictions in (("baseline", 0, perfect), ("genfusion", 1, perfect[:1])):
        write_predictions(tmp_path / "runs" / dataset / "yolov8n" / f"seed{seed}" / "test_predictions",
                          {"a": predictions}, {"a": (300, 300)})
    assert ev.main(["collect", "--runs", str(tmp_path / "runs"), "--gt", str(gt), "--out", str(tmp_path / "r.csv")]) == 0
    progress = capsys.readouterr().err
    assert "scoring runs: 100%" in progress and "2/2" in progress
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
    ("table", "--out_dir", "file/sub", "cannot be created or written"),
    ("table", "--out_dir", "/proc/genfusion", "cannot be created or written"),
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


# ---- score --gt COCO JSON ---------------------------------------------------------------------------
def coco_from_export(exported, shuffle_seed=0):
    """evaluate's exported gt.json written as another tool might: images in another order with other
    ids and folder names, the apple category named 'Apple' with id 3 beside a 'leaf' category, and
    annotation ids from 0."""
    gt = json.loads(exported.read_text())
    order = np.random.default_rng(shuffle_seed).permutation(len(gt["images"]))
    new_id = {image["id"]: 100 + k for k, image in enumerate(gt["images"])}
    images = [{**gt["images"][k], "id": new_id[gt["images"][k]["id"]],
               "file_name": f"photos/{gt['images'][k]['file_name']}"} for k in order]
    annotations = [{"id": k, "image_id": new_id[a["image_id"]], "category_id": 3, "bbox": a["bbox"],
                    "area": 1.0, "iscrowd": 0} for k, a in enumerate(gt["annotations"])]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 9, "name": "leaf"}, {"id": 3, "name": "Apple"}]}


def test_a_coco_json_ground_truth_scores_as_the_same_yolo_folder(crowded, tmp_path):
    gt, pred = crowded
    yolo_metrics = ev.score(gt, pred, export_coco=tmp_path / "export")
    coco_json = tmp_path / "gt_coco.json"
    coco_json.write_text(json.dumps(coco_from_export(tmp_path / "export" / "gt.json")))
    assert ev.score(coco_json, pred) == yolo_metrics                                  # identical, not close
    for gt_source, out in ((gt, "yolo.json"), (coco_json, "coco.json")):
        assert ev.main(["score", "--gt", str(gt_source), "--pred", str(pred), "--max_dets", "5",
                        "--out", str(tmp_path / out)]) == 0
    assert (tmp_path / "yolo.json").read_text() == (tmp_path / "coco.json").read_text()
    assert yolo_metrics["gt_boxes"] == 40 and 0 < yolo_metrics["ap"] < 1


def test_a_coco_json_ground_truth_feeds_collect(crowded, tmp_path):
    gt, pred = crowded
    ev.score(gt, pred, export_coco=tmp_path / "export")
    assert ev.main(["collect", "--runs", str(pred.parents[3]), "--gt", str(tmp_path / "export" / "gt.json"),
                    "--out", str(tmp_path / "r.csv")]) == 0
    row, = ev.read_results(tmp_path / "r.csv")
    assert row["ap"] == pytest.approx(ev.score(gt, pred)["ap"])


def write_coco(path, annotations, categories=({"id": 1, "name": "apple"},), images=None):
    """A COCO JSON of one 300x300 image a.png (or images) with the given annotations."""
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": 300, "height": 300}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def coco_boxes(boxes, category_id=1, image_id=1):
    """[x1, y1, x2, y2] px boxes as COCO annotations of one image."""
    return [{"id": k + 1, "image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            for k, (x1, y1, x2, y2) in enumerate(boxes)]


def test_a_crowd_box_of_a_coco_json_is_ignored_as_cocoeval_ignores_it(tmp_path):
    crowd = {"id": 9, "image_id": 1, "category_id": 1, "bbox": [200, 200, 80, 80], "iscrowd": 1}
    pred = write_predictions(tmp_path / "pred", {"a": [(*b, 0.9) for b in GT]}, {"a": (300, 300)})
    assert ev.score(write_coco(tmp_path / "gt.json", [*coco_boxes(GT), crowd]), pred)["ap"] == pytest.approx(1.0)
    crowd["iscrowd"] = 0                                                      # an ordinary box: missed
    assert ev.score(write_coco(tmp_path / "gt.json", [*coco_boxes(GT), crowd]), pred)["ap"] < 1


@pytest.mark.parametrize("case, message", [
    ("not json", r"gt.json: not a readable COCO JSON"),
    ("no annotations list", r"gt.json: a COCO JSON needs 'images', 'annotations' and 'categories' lists"),
    ("a leaf box", r"gt.json: annotations\[1\]: category 2 is not named as a class of the data YAML: one class is "
                   r"scored, 0 = apple$"),                                                # with names [apple]
    ("a category not in the list", r"gt.json: annotations\[0\]: category 1 is not among the categories$"),
    ("two categories named as one class", r"gt.json: categories 1 and 2 are both named 'apple'"),
    ("two categories, one id", r"gt.json: two categories share an id \(ids: 1, 1\)"),
    ("a box beyond the image", r"gt.json: annotations\[0\]: bbox out of range for the 300x300 image a.png"),
    ("a negative width", r"annotations\[0\]: bbox out of range"),
    ("a NaN", r"annotations\[0\]: bbox must be four finite numbers"),
    ("three numbers", r"annotations\[0\]: bbox must be four finite numbers"),
    ("an unknown image", r"annotations\[0\]: image_id 7 is not among the images"),
    ("two images, one stem", r"gt.json: images\[1\]: a.jpg shares the stem 'a' with a.png"),
    ("no width", r"gt.json: images\[0\]: an image needs id, file_name, width and height"),
    ("no box at all", r"gt.json: no ground-truth boxes at all: AP is undefined"),
])
def test_bad_coco_ground_truth_is_named(tmp_path, case, message):
    path = tmp_path / "gt.json"
    apple, leaf, twig = {"id": 1, "name": "apple"}, {"id": 2, "name": "leaf"}, {"id": 3, "name": "twig"}
    one_box = coco_boxes(GT[:1])
    if case == "not json":
        path.write_text("{images: ")
    elif case == "no annotations list":
        path.write_text(json.dumps({"images": [], "categories": []}))
    elif case == "a leaf box":
        write_coco(path, [*one_box, *coco_boxes(GT[1:2], category_id=2)], [apple, leaf])
    elif case == "a category not in the list":
        write_coco(path, one_box, [leaf, twig])
    elif case == "two categories named as one class":
        write_coco(path, one_box, [apple, {"id": 2, "name": "Apple"}])
    elif case == "two categories, one id":
        write_coco(path, one_box, [apple, {**leaf, "id": 1}])
    elif case == "a box beyond the image":
        write_coco(path, coco_boxes([[250, 250, 400, 400]]))
    elif case == "a negative width":
        write_coco(path, coco_boxes([[50, 50, 40, 60]]))
    elif case == "a NaN":
        path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 300}],
                                    "annotations": [{**one_box[0], "bbox": [float("nan"), 1, 2, 3]}],
                                    "categories": [apple]}))
    elif case == "three numbers":
        write_coco(path, [{**one_box[0], "bbox": [1, 2, 3]}])
    elif case == "an unknown image":
        write_coco(path, coco_boxes(GT[:1], image_id=7))
    elif case == "two images, one stem":
        write_coco(path, one_box, images=[{"id": 1, "file_name": "a.png", "width": 300, "height": 300},
                                          {"id": 2, "file_name": "x/a.jpg", "width": 300, "height": 300}])
    elif case == "no width":
        write_coco(path, one_box, images=[{"id": 1, "file_name": "a.png", "height": 300}])
    else:
        write_coco(path, [], [leaf, apple])
    (tmp_path / "pred").mkdir()
    names = ["apple"] if case in ("a leaf box", "two categories named as one class") else None
    with pytest.raises(ev.InputError, match=message):
        ev.score(path, tmp_path / "pred", names=names)


def test_zero_size_and_duplicate_boxes_of_a_coco_json_are_warned_of(tmp_path, capsys):
    path = write_coco(tmp_path / "gt.json", coco_boxes([GT[0], [100, 100, 100, 150], GT[1], GT[0]]))
    (tmp_path / "pred").mkdir()
    assert ev.score(path, tmp_path / "pred")["gt_boxes"] == 4
    assert (f"warning: {path}: image a.png: zero-size boxes (w or h is 0 px) on annotations[1]; duplicate boxes "
            f"on annotations[3] (= annotations[0])\n") in capsys.readouterr().err


# ---- several classes ----------------------------------------------------------------------------------
# Image a holds three apples (class 0), image b three leaves (class 1); pear (class 2) has no ground truth.
# Rows are (x1, y1, x2, y2, score, class). Seed 0: every apple found, under a top-scored pear on an apple
# box (another class: it must not count for the apples); on b the ranking of test_hand_computed_case,
# so leaf AP50 = 56/101, AP75 = 34/101, AP = 90/202. Seed 1: b without its false positive, so for IoU
# 0.50..0.70 both hits come first (67/101) and for 0.75..0.95 only the exact one (34/101): AP = 1/2.
NAMES = ["apple", "leaf", "pear"]
SCENES = ({"a": [(*GT[0], 0.95, 2), *((*box, 0.9, 0) for box in GT)],
           "b": [(10, 10, 50, 50, 0.9, 1), (250, 250, 290, 290, 0.8, 1), (100, 100, 200, 172, 0.7, 1)]},
          {"a": [(*box, 0.9, 0) for box in GT], "b": [(10, 10, 50, 50, 0.9, 1), (100, 100, 200, 172, 0.7, 1)]})
LEAF_AP = (90 / 202, 1 / 2)


def write_class_predictions(root, scene):
    """scene: {stem: [(x1, y1, x2, y2, score, class), ...]} on 300x300 images -> the predictions folder."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, rows in scene.items():
        (root / f"{stem}.txt").write_text(yolo_lines([r[:4] for r in rows], 300, 300, scores=[r[4] for r in rows],
                                                     classes=[r[5] for r in rows]))
    return root


def write_scene(tmp_path):
    """The two-class ground truth (a YOLO folder), seed 0's predictions and a data YAML naming the
    three classes -> (gt dir, predictions dir, data YAML)."""
    gt = write_split(tmp_path / "gt", {"a": (300, 300, []), "b": (300, 300, [])})
    (gt / "labels" / "a.txt").write_text(yolo_lines(GT, 300, 300, classes=[0, 0, 0]))
    (gt / "labels" / "b.txt").write_text(yolo_lines(GT, 300, 300, classes=[1, 1, 1]))
    data = tmp_path / "data.yaml"
    data.write_text("train: images\nval: images\nnames: {0: apple, 1: leaf, 2: pear}\n")
    return gt, write_class_predictions(tmp_path / "pred", SCENES[0]), data


def hand_built_cocoeval(scene):
    """pycocotools' COCOeval on COCO dicts built here from the scene (not evaluate's), with image and
    category ids of their own -> ({class name: (its AP@0.5:0.95, AP50)}, stats[0]): a category's AP as
    pycocotools takes it, the mean of its defined precision at area all and 100 detections."""
    category = {"apple": 7, "leaf": 3, "pear": 12}
    image_id = {"a": 10, "b": 20}
    ground_truth = [("a", box, "apple") for box in GT] + [("b", box, "leaf") for box in GT]
    dataset = {"images": [{"id": i, "file_name": f"{stem}.png", "width": 300, "height": 300}
                          for stem, i in image_id.items()],
               "categories": [{"id": i, "name": name} for name, i in category.items()],
               "annotations": [{"id": n + 1, "image_id": image_id[stem], "category_id": category[name],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                               for n, (stem, (x1, y1, x2, y2), name) in enumerate(ground_truth)]}
    detections = [{"image_id": image_id[stem], "category_id": category[NAMES[c]], "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "score": s} for stem, rows in scene.items() for x1, y1, x2, y2, s, c in rows]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        direct = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    name_of = {i: name for name, i in category.items()}
    precision = direct.eval["precision"][:, :, :, 0, -1]                  # [IoU, recall, category], all, 100
    per_class = {name_of[i]: (defined_mean(precision[:, :, k]), defined_mean(precision[0, :, k]))
                 for k, i in enumerate(direct.params.catIds)}
    return per_class, float(direct.stats[0])


def test_per_class_ap_equals_pycocotools_per_category_ap_beside_the_map(tmp_path, capsys):
    gt, pred, data = write_scene(tmp_path)
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred), "--data", str(data),
                    "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    ours = json.loads((tmp_path / "m.json").read_text())
    per_class, map_direct = hand_built_cocoeval(SCENES[0])
    assert list(ours["classes"]) == NAMES
    assert per_class["pear"] == (None, None) and ours["classes"]["pear"] == {"ap": None, "ap50": None, "gt_boxes": 0}
    for name in ("apple", "leaf"):
        assert (ours["classes"][name]["ap"], ours["classes"][name]["ap50"]) == pytest.approx(per_class[name])
    assert ours["classes"]["apple"] == {"ap": 1.0, "ap50": 1.0, "gt_boxes": 3}      # the pear on an apple: no harm
    assert (ours["classes"]["leaf"]["ap"], ours["classes"]["leaf"]["ap50"]) == pytest.approx((LEAF_AP[0], 56 / 101))
    assert ours["ap"] == pytest.approx(map_direct) == pytest.approx((1 + LEAF_AP[0]) / 2)      # pear left out
    assert "  apple: AP@0.5:0.95 1.000, AP@0.5 1.000 (3 ground-truth boxes)\n" in printed
    assert f"  leaf: AP@0.5:0.95 {LEAF_AP[0]:.3f}, AP@0.5 {56 / 101:.3f} (3 ground-truth boxes)\n" in printed
    assert "  pear: no ground-truth boxes, so no AP (the mAP leaves it out)\n" in printed


def test_coco_categories_are_matched_to_the_data_yaml_names_by_name(tmp_path, capsys):
    gt, pred, data = write_scene(tmp_path)
    boxes = [(1, box, 2) for box in GT] + [(2, box, 5) for box in GT]
    coco = write_coco(tmp_path / "gt.json",
                      [{"id": n, "image_id": image, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1]}
                       for n, (image, (x1, y1, x2, y2), c) in enumerate(boxes)],
                      [{"id": 5, "name": "Leaf"}, {"id": 2, "name": "apple"}, {"id": 9, "name": "twig"}],
                      [{"id": i, "file_name": f"{stem}.png", "width": 300, "height": 300}
                       for i, stem in ((1, "a"), (2, "b"))])
    names = ev.read_class_names(data)
    assert names == NAMES
    assert ev.score(coco, pred, names=names) == ev.score(gt, pred, names=names)           # identical, not close
    # without the YAML the classes are the categories the boxes use, in the file's order: 0 = Leaf, 1 = apple
    assert ev.main(["score", "--gt", str(coco), "--pred", str(pred)]) == 2
    assert capsys.readouterr().err == f"error: {pred / 'a.txt'}:1: class 2: the classes are 0 = Leaf, 1 = apple\n"
    (pred / "a.txt").write_text(yolo_lines(GT, 300, 300, scores=[0.9] * 3, classes=[1, 1, 1]))
    assert ev.score(coco, pred)["classes"]["apple"]["ap"] == pytest.approx(1.0)   # class 1 of this file is apple


@pytest.mark.parametrize("case, message", [
    ("a predicted class beyond the names", "{pred}/a.txt:2: class 3: the classes are 0 = apple, 1 = leaf, 2 = pear"),
    ("a label class beyond the names", "{gt}/labels/b.txt:1: class 7: the classes are 0 = apple, 1 = leaf, 2 = pear"),
    ("a fractional class", "{gt}/labels/b.txt:1: class 1.5: the classes are 0 = apple, 1 = leaf, 2 = pear"),
    ("several classes, no names", "{gt}/labels/b.txt:1: class 1: no class names are given, so one class is scored, "
                                  "0 = apple; --data YAML names the classes (its names)"),
    ("names with a gap", "{data}: names must be a list or a mapping {0: name, 1: name, ...} of the class ids 0..K-1, "
                         "got {0: 'apple', 2: 'leaf'}"),
    ("a repeated name", "{data}: the name of class 1, 'Apple', repeats class 0's"),
    ("no names", "{data}: no names: a data YAML names its classes, e.g. names: {0: apple}"),
])
def test_class_ids_and_names_that_do_not_fit_are_one_line_errors(tmp_path, capsys, case, message):
    gt, pred, data = write_scene(tmp_path)
    with_data = ["--data", str(data)]
    if case == "a predicted class beyond the names":
        (pred / "a.txt").write_text("0 0.5 0.5 0.1 0.1 0.9\n3 0.5 0.5 0.1 0.1 0.9\n")
    elif case in ("a label class beyond the names", "a fractional class"):
        (gt / "labels" / "b.txt").write_text(f"{'7' if 'beyond' in case else '1.5'} 0.5 0.5 0.1 0.1\n")
    elif case == "several classes, no names":
        with_data = []
    else:
        names = {"names with a gap": "names: {0: apple, 2: leaf}\n", "a repeated name": "names: [apple, Apple]\n",
                 "no names": ""}[case]
        data.write_text(f"train: images\nval: images\n{names}")
    assert ev.main(["score", "--gt", str(gt), "--pred", str(pred), *with_data]) == 2
    expected = message.replace("{gt}", str(gt)).replace("{pred}", str(pred)).replace("{data}", str(data))
    assert capsys.readouterr().err == f"error: {expected}\n"


def test_one_class_scores_and_writes_as_before_with_or_without_its_data_yaml(tmp_path, capsys):
    gt = write_split(tmp_path / "gt", {"a": (300, 300, GT)})
    runs = tmp_path / "runs"
    pred = write_predictions(runs / "baseline" / "yolov8n" / "seed0" / "test_predictions",
                             {"a": [(*GT[0], 0.9), (250, 250, 290, 290, 0.8)]}, {"a": (300, 300)})
    (tmp_path / "data.yaml").write_text("train: images\nval: images\nnames: {0: apple}\n")
    outputs = []
    for data in ([], ["--data", str(tmp_path / "data.yaml")]):
        assert ev.main(["score", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "m.json"), *data]) == 0
        assert ev.main(["collect", "--runs", str(runs), "--gt", str(gt), "--out", str(tmp_path / "r.csv"), *data]) == 0
        outputs.append((capsys.readouterr().out, (tmp_path / "m.json").read_text(), (tmp_path / "r.csv").read_text()))
    assert outputs[0] == outputs[1]
    printed, metrics, results = outputs[0]
    assert "per class" not in printed and "classes" not in json.loads(metrics)
    assert results.splitlines()[0] == "dataset,model,seed,ap,ap50,ap75" and len(results.splitlines()) == 2


def test_collect_writes_a_column_per_class_and_table_a_mean_and_std_per_class(tmp_path):
    gt, _, data = write_scene(tmp_path)
    runs = tmp_path / "runs"
    for dataset, seed, scene in (("baseline", 0, SCENES[0]), ("baseline", 1, SCENES[1]), ("genfusion", 0, SCENES[1])):
        write_class_predictions(runs / dataset / "yolov8n" / f"seed{seed}" / "test_predictions", scene)
    assert ev.main(["collect", "--runs", str(runs), "--gt", str(gt), "--data", str(data),
                    "--out", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["dataset", "model", "seed", "ap", "ap50", "ap75", "ap_apple", "ap_leaf", "ap_pear",
                                 "ap50_apple", "ap50_leaf", "ap50_pear"]
    leaf = [LEAF_AP[0], LEAF_AP[1], LEAF_AP[1]]                                   # the seeds' scenes
    assert [float(r["ap_leaf"]) for r in rows] == pytest.approx(leaf)
    assert [float(r["ap"]) for r in rows] == pytest.approx([(1 + ap) / 2 for ap in leaf])   # mAP: pear left out
    assert {(r["ap_pear"], r["ap50_pear"], r["ap_apple"]) for r in rows} == {("", "", "1.0")}   # no ground truth: empty
    assert ev.main(["table", "--results", str(tmp_path / "r.csv"), "--out_dir", str(tmp_path / "t")]) == 0
    with open(tmp_path / "t" / "table1.csv", newline="") as handle:
        base, ours = csv.DictReader(handle)
    leaf_mean = sum(LEAF_AP) / 2
    assert float(base["ap_leaf_mean"]) == pytest.approx(leaf_mean)
    assert float(base["ap_leaf_std"]) == pytest.approx((LEAF_AP[1] - LEAF_AP[0]) / np.sqrt(2))
    assert float(ours["ap_leaf_gap"]) == pytest.approx(LEAF_AP[1] - leaf_mean)
    assert (base["ap_pear_mean"], base["ap_pear_std"], ours["ap_pear_gap"]) == ("", "", "")     # no ground truth
    assert base["ap50_apple_mean"] == "1.0"
    markdown = (tmp_path / "t" / "table1.md").read_text()
    assert ("| AP@0.5:0.95 | AP@0.5 | AP@0.75 | AP@0.5:0.95 apple | AP@0.5:0.95 leaf | AP@0.5:0.95 pear | "
            "AP@0.5 apple | AP@0.5 leaf | AP@0.5 pear |\n|" + "---|" * 12 + "\n") in markdown
    assert f"| 1.000 ± 0.000 **+0.000** | 0.500 ± 0.000 **{LEAF_AP[1] - leaf_mean:+.3f}** | – |" in markdown
    assert ev.PER_CLASS_NOTE in markdown and "Paper" not in markdown
    assert Image.open(tmp_path / "t" / "table1.png").size[0] > 500
    (tmp_path / "bad.csv").write_text("dataset,model,seed,ap,ap50,ap75,ap_leaf\nbaseline,yolov8n,0,0.4,0.7,0.4,0.3\n")
    with pytest.raises(ev.InputError, match=r"bad.csv: missing columns ap50_leaf \(a class has an ap_<name> and"):
        ev.read_results(tmp_path / "bad.csv")


@pytest.mark.parametrize("source, flags, shown", [
    ("minneapple", [], True), ("synthetic", [], False), ("yolo", [], False), ("synthetic", ["--paper"], True),
    (None, [], False), (None, ["--paper"], True)])
def test_the_paper_numbers_appear_for_a_minneapple_run_or_when_asked(tmp_path, source, flags, shown):
    results = write_results(tmp_path / "r.csv", [("baseline", "yolov8n", 0, 0.4, 0.7, 0.4),
                                                 ("genfusion", "yolov8n", 0, 0.3, 0.6, 0.3)])
    stats = []
    if source:
        (tmp_path / "stats.json").write_text(json.dumps({"config": {"source": source}, "photos": {}}))
        stats = ["--data_stats", str(tmp_path / "stats.json")]
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "t"), *stats, *flags]) == 0
    markdown = (tmp_path / "t" / "table1.md").read_text()
    with open(tmp_path / "t" / "table1.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert ("| 0.300 ± 0.000 **-0.100** | 0.600 ± 0.000 **-0.100** | 0.300 ± 0.000 **-0.100** | 0.31 ± 0.012 | "
            "0.66 ± 0.015 | 0.27 ± 0.012 |") in markdown if shown else "| 0.300 ± 0.000 **-0.100** |\n" in markdown
    assert ("Paper AP@0.5:0.95" in markdown) == ("Voetman" in markdown) == ("paper_ap_mean" in header) == shown
    assert header[:12] == ["dataset", "model", "seeds",
                           *(f"{m}_{part}" for m in ev.METRICS for part in ("mean", "std", "gap"))]


@pytest.mark.parametrize("content, message", [
    (None, "not a readable stats.json"), ('{"photos": {}}', "no config.source, where prepare_data.py's stats.json")])
def test_a_stats_file_without_a_source_is_a_one_line_error(tmp_path, capsys, content, message):
    results = write_results(tmp_path / "r.csv", [("baseline", "yolov8n", 0, 0.4, 0.7, 0.4)])
    if content:
        (tmp_path / "stats.json").write_text(content)
    assert ev.main(["table", "--results", str(results), "--out_dir", str(tmp_path / "t"),
                    "--data_stats", str(tmp_path / "stats.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data_stats {tmp_path / 'stats.json'}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "t" / "table1.md").exists()


# ---- datasets -----------------------------------------------------------------------------------------
def write_image(path, width, height, label_lines=None):
    """A black image at path and, unless label_lines is None, its label file by ultralytics' rule."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)
    if label_lines is not None:
        label = ev.label_file_of(path)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in label_lines))
    return path


@pytest.fixture
def hand_made_datasets(tmp_path):
    """Two data YAMLs with known images, boxes and sizes -> {name: YAML}.

    hand: train = [a/images, b/images] (a list of two folders; b/images/sub/ nested), val = val.txt
    (a list of './c/images/t.png' and the absolute path of a/images/p.png, shared with train), no
    test; a manifest.csv beside it lists the train images' colours but not t.png.
    real: prepare_data.py's layout, train/val/test each one image, no manifest."""
    hand = tmp_path / "hand"
    write_image(hand / "a" / "images" / "p.png", 100, 50, ["0 0.5 0.5 0.2 0.4", "0 0.25 0.25 0.1 0.2"])
    write_image(hand / "a" / "images" / "q.png", 200, 100, [])                   # labelled, no boxes
    write_image(hand / "b" / "images" / "sub" / "r.png", 40, 40,
                ["0 0.5 0.5 0.5 0.25", "0 0.5 0.5 1 1", "0 0.1 0.1 0.2 0.2"])
    write_image(hand / "b" / "images" / "s.png", 50, 50)                          # no label file
    (hand / "b" / "images" / "notes.txt").write_text("not an image")
    write_image(hand / "c" / "images" / "t.png", 64, 32, ["0 0.5 0.5 0.25 0.5"])
    (hand / "val.txt").write_text(f"./c/images/t.png\n{hand / 'a' / 'images' / 'p.png'}\n./c/readme.md\n")
    (hand / "hand.yaml").write_text(f"path: {hand}\ntrain: [a/images, b/images]\nval: val.txt\nnames: {{0: apple}}\n")
    (hand / "manifest.csv").write_text(
        "split,file,source_file,colour,red_fraction,labelled,boxes_kept,boxes_dropped,instance\n"
        "train,a/images/p.png,x,green,0.1,yes,2,0,\ntrain,a/images/q.png,x,none,,yes,0,0,\n"
        "train,b/images/sub/r.png,x,red,0.9,yes,3,0,red\ntrain,b/images/s.png,x,red,0.8,yes,0,0,\n")
    real = tmp_path / "out" / "real"
    for split, (width, box) in {"train": (80, "0 0.5 0.5 0.5 0.5"), "val": (80, "0 0.5 0.5 0.25 0.25"),
                                "test": (40, "0 0.5 0.5 0.5 0.5")}.items():
        write_image(real / split / "images" / f"{split}.png", width, width, [box])
    (tmp_path / "out" / "real.yaml").write_text(f"path: {real}\ntrain: train/images\nval: val/images\n"
                                                f"test: test/images\nnames: {{0: apple}}\n")
    return {"hand": hand / "hand.yaml", "real": tmp_path / "out" / "real.yaml"}


def test_datasets_csv_holds_the_hand_counted_figures(hand_made_datasets, tmp_path, capsys):
    argv = [item for name, path in hand_made_datasets.items() for item in ("--data", f"{name}={path}")]
    assert ev.main(["datasets", *argv, "--out_dir", str(tmp_path / "stats")]) == 0
    assert "hand train: 100%" in capsys.readouterr().err                          # a progress bar per split
    with open(tmp_path / "stats" / "datasets.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames[:4] == ["dataset", "split", "images", "boxes"]
    assert reader.fieldnames == ev.DATASET_COLUMNS
    assert [(r["dataset"], r["split"]) for r in rows] == [("hand", "train"), ("hand", "val"), ("real", "train"),
                                                          ("real", "val"), ("real", "test")]
    train, val, real_train = rows[0], rows[1], rows[2]
    # hand train: p (100x50: boxes 20x20, 10x10), q (no boxes), r (40x40: 20x10, 40x40, 8x8), s (no label file)
    assert {k: train[k] for k in ("images", "boxes", "boxes_per_image_max", "images_without_label_file",
                                  "green_images", "red_images", "none_images")} == \
        {"images": "4", "boxes": "5", "boxes_per_image_max": "3", "images_without_label_file": "1",
         "green_images": "1", "red_images": "2", "none_images": "1"}
    expected = {"boxes_per_image_mean": 5 / 4, "boxes_per_image_median": 1.0,
                "box_width_px_mean": (20 + 10 + 20 + 40 + 8) / 5, "box_width_px_median": 20,
                "box_height_px_mean": (20 + 10 + 10 + 40 + 8) / 5, "box_height_px_median": 10,
                "box_width_rel_mean": (0.2 + 0.1 + 0.5 + 1 + 0.2) / 5,
                "box_height_rel_mean": (0.4 + 0.2 + 0.25 + 1 + 0.2) / 5,
                "images_without_boxes_share": 0.5}
    assert {k: float(train[k]) for k in expected} == pytest.approx(expected, rel=1e-5)
    # hand val (the .txt list): t (64x32: 16x16) and p again; t is not in the manifest: colours unknown
    expected = {"images": 2, "boxes": 3, "boxes_per_image_mean": 1.5, "boxes_per_image_median": 1.5,
                "boxes_per_image_max": 2, "box_width_px_mean": (16 + 20 + 10) / 3, "box_width_px_median": 16,
                "box_height_rel_mean": (0.5 + 0.4 + 0.2) / 3, "images_without_boxes_share": 0}
    assert {k: float(val[k]) for k in expected} == pytest.approx(expected, rel=1e-5)
    assert (val["green_images"], val["red_images"], val["none_images"]) == ("", "", "")
    assert (real_train["images"], real_train["box_width_px_mean"], real_train["green_images"]) == ("1", "40", "")
    assert Image.open(tmp_path / "stats" / "datasets.png").format == "PNG"
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == ["datasets.csv", "datasets.png"]


def test_datasets_figure_overlays_every_dataset_with_named_axes(hand_made_datasets):
    per_dataset = {name: ev.distributions(ev.dataset_statistics(name, path)[1].values())
                   for name, path in hand_made_datasets.items()}
    figure = ev.datasets_figure(per_dataset)
    legend, = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["hand (5 images, 6 boxes)", "real (3 images, 3 boxes)"]
    assert [(a.get_xlabel(), a.get_ylabel()) for a in figure.axes] == [
        ("boxes per image", "share of images"), ("box width (px)", "share of boxes"),
        ("box height (px)", "share of boxes")]
    assert figure.get_suptitle().startswith("Datasets: boxes per image and box sizes")
    assert all(len(axis.patches) == 2 for axis in figure.axes)                      # a step line per dataset
    heights = [patch.get_path().vertices[:, 1].max() for patch in figure.axes[0].patches]
    assert heights == pytest.approx([2 / 5, 1.0])     # hand: 2 of 5 images without boxes; real: all with one


@pytest.mark.parametrize("breakage, message", [
    ("bad label", r"r.txt:2: values out of range"),
    ("a class beyond the names", r"r.txt:1: class 1: one class is scored, 0 = apple"),
    ("missing folder", r"hand.yaml: the train entry .*b/images does not exist"),
    ("no images", r"hand.yaml: no images in the val split"),
    ("twice", r"--data hand is given twice"),
])
def test_bad_datasets_inputs_are_one_line_errors(hand_made_datasets, tmp_path, capsys, breakage, message):
    hand = hand_made_datasets["hand"].parent
    data = ["--data", f"hand={hand_made_datasets['hand']}"]
    if breakage == "bad label":
        (hand / "b" / "labels" / "sub" / "r.txt").write_text("0 0.5 0.5 0.5 0.25\n0 0.5 1.5 1 1\n")
    elif breakage == "a class beyond the names":
        (hand / "b" / "labels" / "sub" / "r.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    elif breakage == "missing folder":
        import shutil
        shutil.rmtree(hand / "b")
    elif breakage == "no images":
        (hand / "val.txt").write_text("./c/readme.md\n")
    else:
        data *= 2
    assert ev.main(["datasets", *data, "--out_dir", str(tmp_path / "stats")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and re.search(message, error)
    assert not (tmp_path / "stats" / "datasets.csv").exists()


@pytest.mark.parametrize("command", ["score", "collect", "table", "datasets", "report"])
def test_help_shows_one_default_at_most(command, capsys):
    with pytest.raises(SystemExit):
        ev.main([command, "--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    assert all(option.lower().count("default") <= 1 for option in options)
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
