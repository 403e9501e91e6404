import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

import annotation_channel as ac


@pytest.fixture(scope="module")
def orchard_train(orchard_real):
    images = sorted((orchard_real / "train" / "images").glob("*.jpg"))
    return [(path, orchard_real / "train" / "labels" / f"{path.stem}.txt") for path in images]


def centres_of(boxes):
    return np.array([((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in boxes]).reshape(-1, 2)


def isolated(centres, gap):
    """Which centres have no other centre within `gap` px on both axes (their dots cannot touch)."""
    if len(centres) < 2:
        return np.ones(len(centres), bool)
    d = np.abs(centres[:, None] - centres[None]).max(axis=2)
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1) > gap


def recall_within(truth, found, tolerance):
    if len(truth) == 0:
        return np.zeros(0, bool)
    if len(found) == 0:
        return np.zeros(len(truth), bool)
    return np.linalg.norm(truth[:, None] - found[None], axis=2).min(axis=1) <= tolerance


def test_dots_round_trip_on_real_boxes(orchard_train):
    hits, isolated_hits = [], []
    for image_path, label_path in orchard_train:
        image = ac.read_rgb(image_path)
        boxes = ac.read_boxes(label_path, image.shape[1], image.shape[0])
        decoded = ac.decode(ac.encode(image, boxes, "dots", dot_size=5), "dots", dot_size=5)
        truth = centres_of(boxes)
        found = np.array([(d["cx"], d["cy"]) for d in decoded]).reshape(-1, 2)
        within = recall_within(truth, found, 1.0)
        hits += within.tolist()
        isolated_hits += within[isolated(truth, 5 + 1)].tolist()
    assert all(isolated_hits) and len(isolated_hits) > 400      # every non-overlapping centre, within 1 px
    assert np.mean(hits) >= 0.95


def apart(boxes, margin):
    """Which boxes neither overlap nor come within `margin` px of another box."""
    grown = boxes + [-margin, -margin, margin, margin]
    overlap = ((grown[:, None, 0] < boxes[None, :, 2]) & (boxes[None, :, 0] < grown[:, None, 2]) &
               (grown[:, None, 1] < boxes[None, :, 3]) & (boxes[None, :, 1] < grown[:, None, 3]))
    np.fill_diagonal(overlap, False)
    return ~overlap.any(axis=1)


def test_sized_dots_and_outlines_keep_the_box_size(orchard_train):
    size_errors, outline_hits = [], []
    for image_path, label_path in orchard_train[:12]:
        image = ac.read_rgb(image_path)
        boxes = ac.read_boxes(label_path, image.shape[1], image.shape[0])
        truth, sizes = centres_of(boxes), np.c_[boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]
        for d in ac.decode(ac.encode(image, boxes, "sized_dots"), "sized_dots"):
            distance = np.linalg.norm(truth - [d["cx"], d["cy"]], axis=1)
            if distance.min() <= 1:
                size_errors.append(np.abs([d["w"], d["h"]] - sizes[distance.argmin()]) / sizes[distance.argmin()])
        decoded = ac.decode(ac.encode(image, boxes, "outlines"), "outlines")
        found = np.array([(d["cx"] - d["w"] / 2, d["cy"] - d["h"] / 2, d["cx"] + d["w"] / 2, d["cy"] + d["h"] / 2)
                          for d in decoded]).reshape(-1, 4)
        for box in boxes[apart(boxes, 2)]:
            outline_hits.append(len(found) > 0 and np.abs(found - box).max(axis=1).min() <= 1.0)
    assert len(size_errors) > 100 and np.median(np.concatenate(size_errors)) < 0.02
    assert len(outline_hits) > 50 and np.mean(outline_hits) >= 0.95


def test_overlapping_outlines_and_dots_are_flagged_merged():
    canvas = np.zeros((200, 200, 3), np.uint8)
    crossing = ac.encode(canvas, np.array([[10, 10, 50, 50], [30, 30, 70, 70]], float), "outlines")
    assert int((crossing[:, :, 2] > 0).sum()) == 2 * (40 * 40 - 36 * 36) - 8  # both rings whole (2 corners of 4 px shared)
    assert [d["merged"] for d in ac.decode(crossing, "outlines")] == ["yes"]
    nested = ac.decode(ac.encode(canvas, np.array([[10, 10, 110, 110], [40, 40, 60, 60]], float), "outlines"), "outlines")
    assert sorted((d["w"], d["merged"]) for d in nested) == [(20, "no"), (100, "no")]
    touching = ac.decode(ac.encode(canvas, np.array([[10, 10, 60, 60], [60, 10, 110, 60]], float), "outlines"), "outlines")
    assert [d["merged"] for d in touching] == ["yes"]
    dots = ac.decode(ac.encode(canvas, np.array([[20, 20, 30, 30], [22, 22, 32, 32]], float), "dots"), "dots")
    assert [d["merged"] for d in dots] == ["yes"]
    sized = ac.decode(ac.encode(canvas, np.array([[20, 20, 60, 60], [32, 32, 72, 72]], float), "sized_dots"), "sized_dots")
    assert [d["merged"] for d in sized] == ["yes"]


def test_five_pixel_dots_survive_blur_and_noise_one_pixel_dots_do_not(orchard_train):
    rng = np.random.default_rng(0)
    recalls = {}
    for size in (5, 1):
        hits = []
        for image_path, label_path in orchard_train[:10]:
            image = ac.read_rgb(image_path)
            boxes = ac.read_boxes(label_path, image.shape[1], image.shape[0])
            encoded = ac.encode(image, boxes, "dots", dot_size=size)
            blue = cv2.GaussianBlur(encoded[:, :, 2].astype(np.float32), (0, 0), 1.0)  # stands in for the VAE
            encoded[:, :, 2] = np.clip(blue + rng.normal(0, 8, blue.shape), 0, 255).astype(np.uint8)
            truth = centres_of(boxes)
            found = np.array([(d["cx"], d["cy"]) for d in ac.decode(encoded, "dots", dot_size=size)]).reshape(-1, 2)
            hits += recall_within(truth[isolated(truth, 6)], found, 1.5).tolist()
        recalls[size] = np.mean(hits)
    assert recalls[5] >= 0.95 and recalls[1] <= 0.05


def test_strip_zeroes_blue_only(orchard_train):
    image = ac.read_rgb(orchard_train[0][0])
    stripped = ac.strip(image)
    assert (stripped[:, :, 2] == 0).all() and np.array_equal(stripped[:, :, :2], image[:, :, :2])
    assert image[:, :, 2].any()


def test_leakage_is_zero_when_fresh_and_grows_when_dots_leak(orchard_train, tmp_path):
    fresh, leaked = tmp_path / "fresh", tmp_path / "leaked"
    fresh.mkdir(), leaked.mkdir()
    for image_path, label_path in orchard_train[:8]:
        image = ac.read_rgb(image_path)
        encoded = ac.encode(image, ac.read_boxes(label_path, image.shape[1], image.shape[0]), "dots")
        Image.fromarray(encoded).save(fresh / f"{image_path.stem}.png")
        dots = encoded[:, :, 2] == 255
        encoded[dots, 0] = encoded[dots, 1] = 255                     # the dots show in red and green
        Image.fromarray(encoded).save(leaked / f"{image_path.stem}.png")
    assert ac.main(["leakage", "--images", str(fresh), "--output_dir", str(tmp_path / "a")]) == 0
    with open(tmp_path / "a" / "leakage.csv", newline="") as handle:
        fresh_values = [float(r["leakage"]) for r in csv.DictReader(handle)]
    assert ac.main(["leakage", "--images", str(leaked), "--output_dir", str(tmp_path / "b")]) == 0
    with open(tmp_path / "b" / "leakage.csv", newline="") as handle:
        leaked_values = [float(r["leakage"]) for r in csv.DictReader(handle)]
    assert abs(np.mean(fresh_values)) < 3 and min(leaked_values) > 50
    assert Image.open(tmp_path / "b" / "leakage.png").size == (800, 450)
    axis = ac.leakage_figure(leaked_values).axes[0]
    assert axis.get_xlabel() == ac.LEAKAGE_AXIS and "the ring around them" in axis.get_xlabel()
    assert axis.get_ylabel() == "images" and f"mean {np.mean(leaked_values):.2f}" in axis.get_title()
    assert sum(patch.get_height() for patch in axis.patches) == len(leaked_values)  # one count per image


def plant_outliers(orchard_real, folder):
    """30 real orchard photos and 6 off-domain images (plain sky, noise)."""
    folder.mkdir()
    photos = sorted((orchard_real / "train" / "images").glob("*.jpg"))[:30]
    for path in photos:
        Image.open(path).resize((256, 256)).save(folder / f"{path.stem}.png")
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 1, 256)[:, None, None]
    for k in range(3):
        sky = (np.array([120, 170, 230]) * (1 - 0.4 * gradient) + rng.normal(0, 2, (256, 256, 3))).clip(0, 255)
        Image.fromarray(np.broadcast_to(sky, (256, 256, 3)).astype(np.uint8)).save(folder / f"zz_sky_{k}.png")
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"zz_noise_{k}.png")
    return photos


def test_filter_rejects_planted_off_domain_images(orchard_real, tmp_path):
    plant_outliers(orchard_real, tmp_path / "mixed")
    assert ac.main(["filter", "--images", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "plain")]) == 0
    with open(tmp_path / "plain" / "filter.csv", newline="") as handle:
        rows = {r["file"]: r["kept"] for r in csv.DictReader(handle)}
    assert all(rows[name] == "no" for name in rows if name.startswith("zz_"))
    kept_plain = sum(v == "yes" for k, v in rows.items() if not k.startswith("zz_"))
    assert sorted(p.name for p in (tmp_path / "plain" / "rejected").iterdir()) == sorted(k for k, v in rows.items() if v == "no")
    assert (tmp_path / "plain" / "filter.png").exists() and len(list((tmp_path / "mixed").iterdir())) == 36

    reference = tmp_path / "reference"
    reference.mkdir()
    for path in sorted((orchard_real / "val" / "images").glob("*.jpg"))[:10]:
        Image.open(path).resize((256, 256)).save(reference / f"{path.stem}.png")
    assert ac.main(["filter", "--images", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "ref"),
                    "--reference", str(reference)]) == 0
    with open(tmp_path / "ref" / "filter.csv", newline="") as handle:
        rows = {r["file"]: r["kept"] for r in csv.DictReader(handle)}
    kept_real = sum(v == "yes" for k, v in rows.items() if not k.startswith("zz_"))
    print(f"real photos kept: largest cluster {kept_plain}/30, with --reference {kept_real}/30")
    assert kept_real >= 25 and kept_real > kept_plain
    assert all(rows[name] == "no" for name in rows if name.startswith("zz_"))

    # one odd reference photo (a dark one) must not widen what counts as near
    dark = np.asarray(Image.open(sorted((orchard_real / "val" / "images").glob("*.jpg"))[11]).resize((256, 256)))
    Image.fromarray((dark * 0.3).astype(np.uint8)).save(reference / "odd_dark.png")
    assert ac.main(["filter", "--images", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "odd"),
                    "--reference", str(reference)]) == 0
    with open(tmp_path / "odd" / "filter.csv", newline="") as handle:
        odd = {r["file"]: r["kept"] for r in csv.DictReader(handle)}
    assert all(odd[name] == "no" for name in odd if name.startswith("zz_"))

    # seeded and deterministic
    assert ac.main(["filter", "--images", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "filter.csv").read_text() == (tmp_path / "plain" / "filter.csv").read_text()


def test_cluster_filter_maps_the_references_beside_the_images_they_resemble():
    rng = np.random.default_rng(0)
    orchard, sky = rng.normal(0, 0.01, (20, 30)), rng.normal(0.08, 0.01, (10, 30))  # two kinds of image
    references = rng.normal(0, 0.01, (5, 30))                                          # photos of the first kind
    with threadpool_limits(1, user_api="openmp"):  # t-SNE's 1000 tiny steps would wait on a second thread
        image_map, reference_map, labels, kept = ac.cluster_filter(np.vstack([orchard, sky]), references, clusters=2)
    assert image_map.shape == (30, 2) and reference_map.shape == (5, 2) and len(labels) == 30
    assert kept.tolist() == [True] * 20 + [False] * 10
    nearest = np.linalg.norm(reference_map[:, None] - image_map[None], axis=2).argmin(axis=1)
    assert (nearest < 20).all()                                  # each reference lies among the orchard images


def test_filter_map_keeps_thumbnails_off_the_title_and_legend_and_marks_decisions(tmp_path):
    from matplotlib.colors import to_hex
    from matplotlib.offsetbox import AnnotationBbox
    paths = []
    for i in range(24):
        paths.append(tmp_path / f"p{i:02d}.png")
        Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(paths[-1])
    corners = np.array([[0, 0], [0, 100], [100, 0], [100, 100]], float)   # clusters at the map's corners
    labels = np.repeat([0, 1, 2, 3], 6)
    image_map = corners[labels] + np.random.default_rng(0).normal(0, 3, (24, 2))
    kept = np.arange(24) % 3 != 0                                         # kept and rejected in every cluster
    reference_map = np.array([[50, 50], [5, 95]], float)
    figure = ac.filter_figure(image_map, reference_map, labels, kept, paths)
    figure.canvas.draw()
    renderer, axis = figure.canvas.get_renderer(), figure.axes[0]
    inside, legend, title = axis.get_window_extent(renderer), axis.get_legend(), axis.title.get_window_extent(renderer)
    thumbnails = [a for a in axis.get_children() if isinstance(a, AnnotationBbox)]
    assert len(thumbnails) == 4 * 2 * ac.THUMBNAILS_PER_GROUP
    for thumbnail in thumbnails:
        extent = thumbnail.get_window_extent(renderer)
        assert (inside.x0 - 0.5 <= extent.x0 and extent.x1 <= inside.x1 + 0.5 and inside.y0 - 0.5 <= extent.y0
                and extent.y1 <= inside.y1 + 0.5), (extent, inside)
        index = int(np.linalg.norm(image_map - thumbnail.xy, axis=1).argmin())
        frame = ac.KEPT_COLOUR if kept[index] else ac.REJECTED_COLOUR
        assert to_hex(thumbnail.patch.get_edgecolor()) == frame
    legend_extent = legend.get_window_extent(renderer)
    assert not legend_extent.overlaps(inside) and not title.overlaps(inside)
    assert legend_extent.x1 <= figure.bbox.x1 and legend_extent.y0 >= 0 and title.y1 <= figure.bbox.y1
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[-3:] == ["kept: 16", "rejected: 8", "reference photos: 2"]
    assert "16 of 24 images kept (near the 2 reference photos), 8 rejected" in axis.get_title()


@pytest.mark.parametrize("command", ["encode", "decode", "strip", "leakage", "filter"])
def test_help_gives_every_flag_a_text_one_default_at_most_and_examples(command, capsys):
    parser = ac.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    formatter = ac.HelpFormatter(command)
    for action in sub._actions:
        assert action.help, action.option_strings
        assert formatter._get_help_string(action).count("(default:") <= 1, action.option_strings
    with pytest.raises(SystemExit) as leaving:
        ac.main([command, "--help"])
    text = capsys.readouterr().out
    assert leaving.value.code == 0 and "(default: None)" not in text
    assert f"examples:\n  python annotation_channel.py {command} --images" in text


def small_folder(folder, count=2, size=16):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((size, size, 3), 40 * (i + 1), np.uint8)).save(folder / f"p{i}.png")
    return folder


def run_cli(capsys, *argv):
    code = ac.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def test_an_output_folder_in_an_input_folder_is_refused_and_the_input_kept(tmp_path, capsys):
    images = small_folder(tmp_path / "images")
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(2):
        (labels / f"p{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    for argv in (["strip", "--images", images, "--output_dir", images],
                 ["encode", "--images", images, "--labels", labels, "--output_dir", images / "encoded"],
                 ["encode", "--images", images, "--labels", labels, "--output_dir", labels],
                 ["decode", "--images", images, "--output_dir", tmp_path],  # its images/ would be the input
                 ["leakage", "--images", images, "--output_dir", images]):
        code, err = run_cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and "overlaps the input folder" in err[0], argv
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_two_images_with_one_name_stem_are_refused(tmp_path, capsys):
    images = small_folder(tmp_path / "photos")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "p0.jpg")
    code, err = run_cli(capsys, "strip", "--images", images, "--output_dir", tmp_path / "out")
    assert code == 2 and "p0.png and" in err[0] and "p0.jpg share a name stem" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, problem", [
    ("0 nan 0.5 0.2 0.2\n", "normalised to 0..1"), ("0 0.5 inf 0.2 0.2\n", "normalised to 0..1"),
    ("0 0.5 0.5 1.2 0.2\n", "normalised to 0..1"), ("0 0.5 0.5 0.2\n", "normalised to 0..1"),
    ("0 0.5 0.5 0.2 0.2 0.9\n", "normalised to 0..1"), ("3 0.5 0.5 0.2 0.2\n", "class 3"),
    ("0 0.5 0.5 0.2 0.2\n0 a b c d\n", "numbers"), (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "unreadable text file")])
def test_bad_label_lines_are_named_by_file_and_line(tmp_path, capsys, text, problem):
    images = small_folder(tmp_path / "photos", count=1)
    (tmp_path / "labels").mkdir()
    label = tmp_path / "labels" / "p0.txt"
    label.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = run_cli(capsys, "encode", "--images", images, "--labels", tmp_path / "labels",
                        "--output_dir", tmp_path / "out")
    assert code == 2 and len(err) == 1 and problem in err[0]
    line = "" if isinstance(text, bytes) else f":{len(text.splitlines())}"
    assert err[0].startswith(f"error: {label}{line}: ")


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    images = small_folder(tmp_path / "photos")
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "below"):
        code, err = run_cli(capsys, "strip", "--images", images, "--output_dir", out)
        assert code == 2 and len(err) == 1 and f"--output_dir {out}:" in err[0]
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_16_bit_photo_is_stripped_with_its_real_content(tmp_path, capsys):
    (tmp_path / "deep").mkdir()
    grey16 = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(grey16).save(tmp_path / "deep" / "p0.png")
    code, _ = run_cli(capsys, "strip", "--images", tmp_path / "deep", "--output_dir", tmp_path / "out")
    stripped = np.asarray(Image.open(tmp_path / "out" / "p0.png"))
    expected = np.round(grey16 / 257).astype(np.uint8)
    assert code == 0 and np.array_equal(stripped[:, :, 0], expected) and np.array_equal(stripped[:, :, 1], expected)
    assert (stripped[:, :, 2] == 0).all() and stripped.max() == 254


def read_filter(folder):
    with open(folder / "filter.csv", newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    return rows, json.loads((folder / "filter.json").read_text())


def clip_inputs(orchard_real, tmp_path):
    """6 reference photos (val) and 8 images to filter (train), one of them a copy of a reference."""
    references, images = tmp_path / "reference", tmp_path / "images"
    references.mkdir(), images.mkdir()
    for path in sorted((orchard_real / "val" / "images").glob("*.jpg"))[:6]:
        Image.open(path).resize((96, 96)).save(references / f"{path.stem}.png")
    for path in sorted((orchard_real / "train" / "images").glob("*.jpg"))[:7]:
        Image.open(path).resize((96, 96)).save(images / f"{path.stem}.png")
    shutil.copyfile(sorted(references.iterdir())[0], images / "copy_of_a_reference.png")
    return references, images


def test_clip_filter_threshold_is_the_quantile_of_the_references_leave_one_out_scores(orchard_real, tmp_path, capsys):
    references, images = clip_inputs(orchard_real, tmp_path)
    out = tmp_path / "out"
    with threadpool_limits(1, user_api="openmp"):  # t-SNE's steps on 14 points would wait on a second thread
        assert ac.main(["filter", "--method", "clip", "--clip_model", "tiny-random-clip", "--images", str(images),
                        "--reference", str(references), "--keep_quantile", "0.25", "--prompt", "a tree with apples",
                        "--prompt_weight", "0.5", "--output_dir", str(out)]) == 0
    assert "untrained" in capsys.readouterr().out
    rows, summary = read_filter(out)

    model, processor = ac.build_tiny_random_clip()
    reference_embeddings = ac.clip_embeddings(model, processor, sorted(references.iterdir()), "cpu")
    image_embeddings = ac.clip_embeddings(model, processor, sorted(images.iterdir()), "cpu")
    text = ac.clip_text_embedding(model, processor, "a tree with apples", "cpu")
    cosine = reference_embeddings @ reference_embeddings.T
    by_hand = [np.sort(np.delete(cosine[i], i))[::-1][:3].mean() + 0.5 * reference_embeddings[i] @ text
               for i in range(6)]
    assert summary["threshold"] == pytest.approx(np.quantile(by_hand, 0.25), abs=2e-6)
    assert list(summary["reference_scores"].values()) == pytest.approx(by_hand, abs=2e-6)
    loo = ac.similarity_scores(reference_embeddings, reference_embeddings, 3, leave_one_out=True)
    assert ac.reference_threshold(loo + 0.5 * reference_embeddings @ text, 0.25) == pytest.approx(
        np.quantile(by_hand, 0.25), abs=1e-9)
    image_scores = np.sort(image_embeddings @ reference_embeddings.T, axis=1)[:, ::-1][:, :3].mean(axis=1)
    assert [float(r["score"]) for r in rows.values()] == pytest.approx(image_scores + 0.5 * image_embeddings @ text,
                                                                       abs=2e-6)

    kept = sorted(p.name for p in (out / "kept").iterdir())
    rejected = sorted(p.name for p in (out / "rejected").iterdir())
    assert sorted(kept + rejected) == sorted(rows) == sorted(p.name for p in images.iterdir()) and len(rows) == 8
    assert kept == sorted(name for name, r in rows.items() if r["kept"] == "yes")
    assert all(float(rows[name]["score"]) >= summary["threshold"] for name in kept)
    assert all(float(rows[name]["score"]) < summary["threshold"] for name in rejected)
    assert kept and rejected
    assert (summary["kept"], summary["rejected"], summary["top_k"]) == (len(kept), len(rejected), 3)
    assert "0.25 quantile" in summary["threshold_rule"] and Image.open(out / "filter.png").size == (1100, 750)


def test_clip_filter_keeps_the_references_themselves_and_a_copy_scores_one(orchard_real, tmp_path):
    references, images = clip_inputs(orchard_real, tmp_path)
    with threadpool_limits(1, user_api="openmp"):
        assert ac.main(["filter", "--method", "clip", "--clip_model", "tiny-random-clip", "--images", str(references),
                        "--reference", str(references), "--output_dir", str(tmp_path / "self")]) == 0
        rows, summary = read_filter(tmp_path / "self")
        assert len(rows) == 6 and all(r["kept"] == "yes" for r in rows.values())   # the threshold is the minimum
        assert summary["threshold"] == min(summary["reference_scores"].values())

        model, processor = ac.build_tiny_random_clip()  # saved and loaded back the real way, from a local folder
        model.save_pretrained(tmp_path / "clip")
        processor.save_pretrained(tmp_path / "clip")
        assert ac.main(["filter", "--method", "clip", "--clip_model", str(tmp_path / "clip"), "--images", str(images),
                        "--reference", str(references), "--top_k", "1", "--output_dir", str(tmp_path / "copy")]) == 0
    rows, _ = read_filter(tmp_path / "copy")
    assert float(rows["copy_of_a_reference.png"]["score"]) == pytest.approx(1, abs=1e-6)
    assert max(float(r["score"]) for name, r in rows.items() if name != "copy_of_a_reference.png") < 0.999


def test_clip_filter_without_reference_or_with_the_other_methods_flags_is_one_line(tmp_path, capsys):
    images = small_folder(tmp_path / "photos", count=4)
    for argv, problem in ((["--method", "clip"], "--method clip needs --reference DIR"),
                          (["--method", "clip", "--reference", images, "--clusters", 4],
                           "--clusters: only --method tsne"),
                          (["--prompt", "a tree"], "--prompt: only --method clip"),
                          (["--method", "clip", "--reference", images, "--keep_quantile", 1.5], "--keep_quantile 1.5"),
                          (["--method", "clip", "--reference", images, "--clip_model", tmp_path / "absent"],
                           "no such folder")):
        code, err = run_cli(capsys, "filter", "--images", images, "--output_dir", tmp_path / "out", *argv)
        assert code == 2 and len(err) == 1 and problem in err[0], (argv, err)
    assert not (tmp_path / "out").exists()


def test_clip_filter_adds_the_weighted_prompt_similarity_and_keeps_at_the_threshold():
    references = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0]])
    images = np.array([[2, 0, 0], [0, 0, 1], [0.8, 0.6, 0]])             # lengths need not be 1
    scores, reference_scores, threshold, kept = ac.clip_filter(images, references, top_k=1)
    assert scores == pytest.approx([1, 0, 1]) and reference_scores == pytest.approx([0.8, 0.96, 0.96])
    assert threshold == pytest.approx(0.8) and kept.tolist() == [True, False, True]
    text = np.array([0, 0, 3.0])
    scores, reference_scores, threshold, kept = ac.clip_filter(images, references, top_k=5, text_embedding=text,
                                                               prompt_weight=0.5)
    # top_k 5 is cut to the 2 other references; the prompt adds 0.5 x cosine to the text, 0 but for the second image
    assert reference_scores == pytest.approx([0.7, 0.88, 0.78]) and scores == pytest.approx([0.9, 0.5, 0.98])
    assert threshold == pytest.approx(0.7) and kept.tolist() == [True, False, True]
    assert ac.clip_filter(images, references, top_k=2, threshold=0.95)[3].tolist() == [False, False, True]
