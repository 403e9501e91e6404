#!/usr/bin/env python3
"""annotation_channel.py: the paper's Appendix E, made measurable: labels drawn into the blue channel.

  encode   --images DIR --labels DIR --mode dots|sized_dots|outlines --output_dir OUT
           The blue channel is replaced by the annotations (255 on 0): 'dots' a filled square of
           --dot_size px (5: the paper saw smaller dots vanish through the VAE) at each box centre;
           'sized_dots' an axis-aligned ellipse with semi-axes w/4 and h/4 (at least --dot_size/2),
           so the box size survives; 'outlines' the box outlines, --line_width px.
  decode   --images DIR --mode ... --output_dir OUT
           Threshold blue, find contours (OpenCV), take each contour's centroid from its moments:
           OUT/labels/*.txt (YOLO), OUT/images/ (the RG0 images: blue zeroed, so a detector never
           sees the annotations), OUT/data.yaml (a training set of both) and OUT/decoded.csv
           (file, cx, cy, w, h, size_known, merged).
           'dots' gives a centre only: a box of --box_size px, flagged size_known=no. 'sized_dots'
           gives w = 4 (2 sqrt(mu20/m00) - 0.5), h likewise (an ellipse's second moments, less the
           half pixel cv2 draws beyond it; size_known=at most for a dot at the minimum size).
           'outlines' gives each outer contour's bounding box (a box nested in another's hole is
           found too). Overlaps: touching dots or crossing outlines merge into one contour, decoded
           as one object at the group's centre (or around the group) and flagged merged=yes (dots:
           area over 1.5 dots; sized dots: tilted, or area unlike the ellipse of its moments, so a
           pair overlapping side by side reads as one wider box; outlines: not a rectangle with
           exactly one hole).
  strip    --images DIR --output_dir OUT       the RG0 images (blue set to 0), the channel ablation
  leakage  --images DIR [--labels DIR] [--output_dir OUT]
           The paper's Figure 21 as a number: how much brighter red and green are on each dot
           (decoded from blue, or at the label centres) than in a 2-px ring around it, per image
           and overall; OUT/leakage.csv and OUT/leakage.png (a histogram).
  filter   --images DIR --output_dir OUT [--reference DIR]
           The paper's recipe against off-domain generations: PCA to 50 dimensions, t-SNE to 2,
           KMeans with 3 clusters, keep the largest cluster (it also drops in-domain images that
           happen to form the smaller clusters). With --reference (e.g. the real instance photos)
           the images near the references in PCA space are kept instead. OUT/kept/ and
           OUT/rejected/ (links or copies; the input folder is untouched), OUT/filter.csv (file,
           cluster, kept), OUT/filter.png (the t-SNE map by cluster, rejected images crossed).
"""
import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BLUE = 2  # channel index in RGB arrays
SIZED_DOT_FRACTION = 0.25  # semi-axis / box side of a sized dot
THUMBNAIL_WEIGHT = 0.05
REFERENCE_REACH = 1.5
RING_WIDTH = 2


class InputError(Exception):
    """Bad input; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise InputError(f"{folder}: no images")
    stems = {}
    for image in images:  # outputs and labels go by the name stem: a.jpg and a.png would share them
        if image.stem in stems:
            raise InputError(f"{image} and {stems[image.stem]} share a name stem, so they would share an output "
                             f"and a label file: rename one")
        stems[image.stem] = image
    return images


def prepare_output_dir(out, written, inputs):
    """Create OUT and check it can be written, and that none of the folders this command writes
    (OUT/<sub> for sub in written) is an input folder or lies inside one: its files would be replaced."""
    out = Path(out)
    for folder in inputs:
        for target in (out / sub for sub in written):
            if target.resolve() == Path(folder).resolve() or Path(folder).resolve() in target.resolve().parents:
                raise InputError(f"--output_dir {out}: it would write into the input folder {folder}; give another "
                                 f"folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, prefix=".write_test").close()
    except OSError as error:
        problem = "is a file, not a folder" if out.is_file() else "cannot be created or written"
        raise InputError(f"--output_dir {out}: {problem} ({error.strerror or error})")
    return out


def rgb_image(image, path):
    """A PIL image -> an 8-bit RGB one. 16-bit grey (mode I;16, or I holding values above 255) is
    scaled to 8 bits: PIL's convert("RGB") would clip every value above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{path}: mode {image.mode} with values outside 0..65535: save it as an 8- or 16-bit image")
        if image.mode.startswith("I;16") or values.max() > 255:
            values = np.round(values / 257)
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise InputError(f"{path}: a floating-point image (mode F) has no fixed range: save it as an 8- or "
                      f"16-bit image")
    return image.convert("RGB")


def read_rgb(path):
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image ({error!r})")
    return np.array(rgb_image(image, path))


def write_png(array, path):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_boxes(path, width, height):
    """YOLO label file -> boxes x1 y1 x2 y2 in pixels; a missing file, or a line that is not
    'class cx cy w h' with class 0 and cx cy w h within 0..1, raises naming file:line."""
    if not Path(path).exists():
        raise InputError(f"{path}: no label file for this image (an empty file means no apples)")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable text file ({error})")
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'class cx cy w h' numbers, got {line!r}")
        if len(values) != 5 or not all(0.0 <= v <= 1.0 for v in values[1:]):  # NaN fails this too
            raise InputError(f"{path}:{number}: expected 'class cx cy w h' with cx cy w h normalised to 0..1, "
                             f"got {line!r}")
        if values[0] != 0:
            raise InputError(f"{path}:{number}: class {fields[0]}: this toolkit has one class, 0 = apple")
        _, cx, cy, w, h = values
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# encode / decode / strip
# ---------------------------------------------------------------------------------------------
def draw_annotations(shape, boxes, mode, dot_size=5, line_width=2):
    """A uint8 (H, W) channel with the boxes drawn at 255 on 0."""
    channel = np.zeros(shape[:2], np.uint8)
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if mode == "dots":
            left, top = int(round(cx - dot_size / 2)), int(round(cy - dot_size / 2))
            channel[max(top, 0):max(top + dot_size, 0), max(left, 0):max(left + dot_size, 0)] = 255
        elif mode == "sized_dots":  # pixel i spans [i, i+1): its centre is i + 0.5
            axes = (max(SIZED_DOT_FRACTION * (x2 - x1), dot_size / 2), max(SIZED_DOT_FRACTION * (y2 - y1), dot_size / 2))
            cv2.ellipse(channel, (int(round((cx - 0.5) * 16)), int(round((cy - 0.5) * 16))),
                        (int(round(axes[0] * 16)), int(round(axes[1] * 16))), 0, 0, 360, 255, -1, cv2.LINE_8, 4)
        else:  # the outline lies inside the box, so the outer edge of the ring is the box
            left, top = max(int(round(x1)), 0), max(int(round(y1)), 0)
            right, bottom = int(round(x2)), int(round(y2))
            ring = np.zeros_like(channel)
            ring[top:bottom, left:right] = 255
            ring[top + line_width:bottom - line_width, left + line_width:right - line_width] = 0
            channel |= ring  # never erase the outlines drawn before
    return channel


def encode(image, boxes, mode, dot_size=5, line_width=2):
    """RGB image -> the same image with the blue channel replaced by the annotations."""
    out = image.copy()
    out[:, :, BLUE] = draw_annotations(image.shape, boxes, mode, dot_size, line_width)
    return out


def strip(image):
    out = image.copy()
    out[:, :, BLUE] = 0
    return out


def decode(image, mode, threshold=128, dot_size=5, box_size=20, line_width=2):
    """RGB image with annotations in blue -> list of dicts cx, cy, w, h (pixels), size_known, merged."""
    binary = (image[:, :, BLUE] >= threshold).astype(np.uint8)
    if mode == "outlines":
        return sorted(decode_outlines(binary), key=lambda d: (d["cy"], d["cx"]))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    found = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)  # the contour's window only: images hold many dots
        mask = np.zeros((h, w), np.uint8)
        cv2.drawContours(mask, [contour - (x, y)], -1, 1, -1)
        moments = cv2.moments(mask & binary[y:y + h, x:x + w], binaryImage=True)
        if moments["m00"] == 0:
            continue
        area = moments["m00"]
        cx, cy = x + moments["m10"] / area + 0.5, y + moments["m01"] / area + 0.5  # pixel i's centre is i + 0.5
        if mode == "sized_dots":
            # a filled ellipse with semi-axes a, b has mu20/m00 = a^2/4, mu02/m00 = b^2/4 and area pi a b;
            # cv2 draws it about half a pixel wider on each side
            a = np.sqrt(4 * moments["mu20"] / area) - 0.5
            b = np.sqrt(4 * moments["mu02"] / area) - 0.5
            smallest = min(a, b) <= dot_size / 2 + 0.5  # at the minimum size: the box was that small or smaller
            # merged: tilted (an axis-aligned ellipse has mu11 = 0) or not the area of its own ellipse; a
            # pair overlapping side by side still reads as one wider box
            tilt = abs(moments["mu11"]) / np.sqrt(moments["mu20"] * moments["mu02"] + 1e-12)
            merged = tilt > 0.1 or abs(area - np.pi * (a + 0.5) * (b + 0.5)) > 0.15 * area
            found.append({"cx": cx, "cy": cy, "w": a / SIZED_DOT_FRACTION, "h": b / SIZED_DOT_FRACTION,
                          "size_known": "at most" if smallest else "yes", "merged": "yes" if merged else "no"})
        else:
            found.append({"cx": cx, "cy": cy, "w": float(box_size), "h": float(box_size), "size_known": "no",
                          "merged": "yes" if area > 1.5 * dot_size ** 2 else "no"})
    return sorted(found, key=lambda d: (d["cy"], d["cx"]))


def decode_outlines(binary):
    """Outline rings -> boxes. Each outer contour (also one inside another's hole: a nested box)
    gives the box around it; it is one box when it is a rectangle with exactly one hole, else a
    merged group of crossing or touching outlines."""
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for index, contour in enumerate(contours):
        if hierarchy[0][index][3] != -1:  # a hole, not an outer edge
            continue
        x, y, w, h = cv2.boundingRect(contour)
        holes, child = 0, hierarchy[0][index][2]
        while child != -1:
            holes, child = holes + 1, hierarchy[0][child][0]
        rectangular = cv2.contourArea(contour) >= 0.97 * (w - 1) * (h - 1)
        found.append({"cx": x + w / 2, "cy": y + h / 2, "w": float(w), "h": float(h), "size_known": "yes",
                      "merged": "no" if holes == 1 and rectangular else "yes"})
    return found


# ---------------------------------------------------------------------------------------------
# leakage
# ---------------------------------------------------------------------------------------------
def leakage(image, centres, dot_size=5):
    """Mean over dots of (red and green on the dot) minus (red and green in the ring around it),
    in 0..255 units; None without dots. Freshly encoded images give about 0."""
    height, width = image.shape[:2]
    rg = image[:, :, :2].astype(np.float64).mean(axis=2)
    half, values = dot_size / 2, []
    reach = int(np.ceil(half + 1 + RING_WIDTH)) + 1
    for cx, cy in centres:
        top, left = max(int(cy) - reach, 0), max(int(cx) - reach, 0)
        yy, xx = np.mgrid[top:min(int(cy) + reach, height), left:min(int(cx) + reach, width)]
        dx, dy = np.abs(xx + 0.5 - cx), np.abs(yy + 0.5 - cy)
        inside = (dx <= half) & (dy <= half)
        ring = (np.maximum(dx, dy) > half + 1) & (np.maximum(dx, dy) <= half + 1 + RING_WIDTH)
        window = rg[top:top + yy.shape[0], left:left + yy.shape[1]]
        if inside.any() and ring.any():
            values.append(window[inside].mean() - window[ring].mean())
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------
# filter
# ---------------------------------------------------------------------------------------------
def image_features(paths):
    """What PCA sees of an image: the square root of its RGB colour histogram (8 bins a channel)
    and, weighted down to 0.05, a 16x16 thumbnail. Raw pixels alone let t-SNE mix sky and noise
    images in with orchard photos; the colour distribution keeps them apart."""
    rows = []
    for path in paths:
        image = Image.fromarray(read_rgb(path))
        bins = (np.asarray(image.resize((64, 64), Image.BILINEAR)) // 32).reshape(-1, 3).astype(np.int64)
        histogram = np.bincount(bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2], minlength=512) / len(bins)
        thumbnail = np.asarray(image.resize((16, 16), Image.BILINEAR), np.float64).ravel() / 255
        rows.append(np.concatenate([np.sqrt(histogram), THUMBNAIL_WEIGHT * thumbnail]))
    return np.stack(rows)


def cluster_filter(features, reference_features=None, pca_dims=50, clusters=3, seed=0):
    """The paper's recipe: PCA -> t-SNE(2) -> KMeans, keep the largest cluster.
    -> (2-D map, cluster of every image, kept mask). With reference features an image is kept when
    it sits near the references in PCA space instead: its nearest reference is no farther than
    REFERENCE_REACH times the median distance between a reference and its nearest other reference
    (the median, so one odd reference photo cannot widen the reach)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    pca = PCA(n_components=min(pca_dims, n, features.shape[1]), random_state=seed).fit(features)
    reduced = pca.transform(features)
    embedded = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), random_state=seed, init="pca").fit_transform(reduced)
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(embedded)
    if reference_features is None:
        return embedded, labels, labels == np.bincount(labels).argmax()
    references = pca.transform(reference_features)
    to_reference = np.linalg.norm(reduced[:, None] - references[None], axis=2).min(axis=1)
    between = np.linalg.norm(references[:, None] - references[None], axis=2)
    np.fill_diagonal(between, np.inf)
    return embedded, labels, to_reference <= REFERENCE_REACH * np.median(between.min(axis=1))


def plot_filter(embedded, labels, kept, paths, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    figure, axis = plt.subplots(figsize=(8, 7))
    for cluster in sorted(set(labels.tolist())):
        members = np.where(labels == cluster)[0]
        axis.scatter(embedded[members, 0], embedded[members, 1], s=30, zorder=3, label=f"cluster {cluster} ({len(members)})")
        for index in members[:3]:  # a few thumbnails per cluster
            thumb = np.asarray(Image.fromarray(read_rgb(paths[index])).resize((40, 40)))
            axis.add_artist(AnnotationBbox(OffsetImage(thumb, zoom=1), embedded[index], xybox=(28, 28),
                                           boxcoords="offset points", frameon=True, pad=0.1, zorder=1))
    rejected = np.where(~kept)[0]
    axis.scatter(embedded[rejected, 0], embedded[rejected, 1], marker="x", s=80, c="black", zorder=4, label="rejected")
    axis.legend(fontsize=8)
    axis.set_title("t-SNE of the images, coloured by KMeans cluster")
    figure.tight_layout()
    tmp = Path(path).with_name(".filter.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def link_or_copy(source, target):
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def command_encode(args):
    images = list_images(args.images)
    out = prepare_output_dir(args.output_dir, [""], [args.images, args.labels])
    for path in images:
        image = read_rgb(path)
        boxes = read_boxes(Path(args.labels) / f"{path.stem}.txt", image.shape[1], image.shape[0])
        write_png(encode(image, boxes, args.mode, args.dot_size, args.line_width), out / f"{path.stem}.png")
    print(f"encoded {len(images)} images ({args.mode}) -> {out}")


def command_decode(args):
    images = list_images(args.images)
    out = prepare_output_dir(args.output_dir, ["", "images", "labels"], [args.images])
    (out / "labels").mkdir(exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    rows = []
    for path in images:
        image = read_rgb(path)
        height, width = image.shape[:2]
        found = decode(image, args.mode, args.threshold, args.dot_size, args.box_size, args.line_width)
        write_png(strip(image), out / "images" / f"{path.stem}.png")
        text = "".join(f"0 {d['cx'] / width:.6f} {d['cy'] / height:.6f} {min(d['w'] / width, 1):.6f} "
                       f"{min(d['h'] / height, 1):.6f}\n" for d in found)
        tmp = out / "labels" / f".{path.stem}.txt.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / "labels" / f"{path.stem}.txt")
        rows += [{"file": path.name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}} for d in found]
    write_csv(out / "decoded.csv", ["file", "cx", "cy", "w", "h", "size_known", "merged"], rows)
    data = {"path": str(out.resolve()), "train": "images", "val": "images", "names": {0: "apple"}}
    tmp = out / ".data.yaml.tmp"
    tmp.write_text("# RG0 images (the annotation channel zeroed) with the labels decoded from it\n"
                   + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, out / "data.yaml")
    merged = sum(r["merged"] == "yes" for r in rows)
    print(f"decoded {len(rows)} objects ({merged} merged groups) -> {out}: labels/, images/ (RG0), data.yaml")


def command_strip(args):
    images = list_images(args.images)
    out = prepare_output_dir(args.output_dir, [""], [args.images])
    for path in images:
        write_png(strip(read_rgb(path)), out / f"{path.stem}.png")
    print(f"stripped the blue channel of {len(images)} images -> {out}")


def command_leakage(args):
    images = list_images(args.images)
    out = prepare_output_dir(args.output_dir, [""], [args.images])
    rows = []
    for path in images:
        image = read_rgb(path)
        height, width = image.shape[:2]
        if args.labels:
            boxes = read_boxes(Path(args.labels) / f"{path.stem}.txt", width, height)
            centres = [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in boxes]
        else:
            centres = [(d["cx"], d["cy"]) for d in decode(image, "dots", args.threshold, args.dot_size)]
        value = leakage(image, centres, args.dot_size)
        rows.append({"file": path.name, "dots": len(centres), "leakage": "" if value is None else round(value, 3)})
    values = [r["leakage"] for r in rows if r["leakage"] != ""]
    overall = float(np.mean(values)) if values else float("nan")
    write_csv(out / "leakage.csv", ["file", "dots", "leakage"], rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(values, bins=30)
    axis.set_xlabel("red/green on the dots minus around them (0..255)")
    axis.set_ylabel("images")
    axis.set_title(f"annotation-channel leakage, mean {overall:.2f}")
    figure.tight_layout()
    figure.savefig(out / ".leakage.tmp.png", dpi=100)
    plt.close(figure)
    os.replace(out / ".leakage.tmp.png", out / "leakage.png")
    print(f"leakage over {len(values)} images: mean {overall:.3f} (0..255 units) -> {out / 'leakage.csv'}")
    return overall


def command_filter(args):
    images = list_images(args.images)
    references = list_images(args.reference) if args.reference else []
    if args.clusters < 2 or args.pca_dims < 2:
        raise InputError("--clusters and --pca_dims must be at least 2")
    if len(images) < 4 * args.clusters or (args.reference and len(references) < 2):
        raise InputError(f"{args.images}: too few images ({len(images)}) to cluster into {args.clusters}, "
                         f"or fewer than 2 reference photos")
    out = prepare_output_dir(args.output_dir, ["", "kept", "rejected"],
                             [args.images, *([args.reference] if args.reference else [])])
    embedded, labels, kept = cluster_filter(image_features(images), image_features(references) if references else None,
                                            args.pca_dims, args.clusters, args.seed)
    for folder in ("kept", "rejected"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    rows = []
    for path, cluster, keep in zip(images, labels, kept):
        link_or_copy(path, out / ("kept" if keep else "rejected") / path.name)
        rows.append({"file": path.name, "cluster": int(cluster), "kept": "yes" if keep else "no"})
    write_csv(out / "filter.csv", ["file", "cluster", "kept"], rows)
    plot_filter(embedded, labels, kept, images, out / "filter.png")
    rejected = sum(r["kept"] == "no" for r in rows)
    print(f"kept {len(rows) - rejected}, rejected {rejected} of {len(rows)} images "
          f"({'near the reference photos' if references else 'the largest cluster'}) -> {out}")
    return rows


def write_csv(path, fields, rows):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Annotations in the blue channel (the paper's Appendix E).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter
    modes = ["dots", "sized_dots", "outlines"]

    p = commands.add_parser("encode", help="draw YOLO boxes into the blue channel", formatter_class=formatter)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="YOLO label folder, one <stem>.txt per image")
    p.add_argument("--mode", choices=modes, default="dots", help="how the boxes are drawn")
    p.add_argument("--output_dir", required=True)

    d = commands.add_parser("decode", help="read boxes back from the blue channel", formatter_class=formatter)
    d.add_argument("--images", required=True)
    d.add_argument("--mode", choices=modes, default="dots", help="how the boxes were drawn")
    d.add_argument("--output_dir", required=True)
    d.add_argument("--box_size", type=float, default=20, help="'dots' only: side of the box put around a centre")

    s = commands.add_parser("strip", help="set the blue channel to 0 (RG0)", formatter_class=formatter)
    s.add_argument("--images", required=True)
    s.add_argument("--output_dir", required=True)

    lk = commands.add_parser("leakage", help="how much the dots show in red and green", formatter_class=formatter)
    lk.add_argument("--images", required=True)
    lk.add_argument("--labels", help="take the dot positions from these YOLO labels instead of the blue channel")
    lk.add_argument("--output_dir", default=".", help="where leakage.csv and leakage.png go")

    f = commands.add_parser("filter", help="PCA -> t-SNE -> KMeans: drop off-domain images", formatter_class=formatter)
    f.add_argument("--images", required=True)
    f.add_argument("--output_dir", required=True)
    f.add_argument("--reference", help="photos of the domain (e.g. the instance photos): keep the images near them")
    f.add_argument("--clusters", type=int, default=3, help="KMeans clusters (the paper: 3)")
    f.add_argument("--pca_dims", type=int, default=50, help="PCA dimensions before t-SNE (the paper: 50)")
    f.add_argument("--seed", type=int, default=0, help="seed of PCA, t-SNE and KMeans")

    for sub in (p, d, lk):
        sub.add_argument("--dot_size", type=int, default=5, help="side of a dot in px")
    for sub in (p, d):
        sub.add_argument("--line_width", type=int, default=2, help="'outlines': width of a box outline in px")
    for sub in (d, lk):
        sub.add_argument("--threshold", type=int, default=128, help="blue at or above this is annotation")
    args = parser.parse_args(argv)
    try:
        {"encode": command_encode, "decode": command_decode, "strip": command_strip,
         "leakage": command_leakage, "filter": command_filter}[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
