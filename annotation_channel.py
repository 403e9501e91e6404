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
  filter   --images DIR --output_dir OUT [--method tsne|clip] [--reference DIR [DIR ...]]
           Against off-domain generations. OUT/kept/ and OUT/rejected/ (links or copies; the input
           folder is untouched), OUT/filter.csv and OUT/filter.png (a t-SNE map: kept images circled
           in green, rejected ones crossed in red, thumbnails framed likewise, reference photos as
           black stars).
           --method tsne (the default), the paper's recipe: PCA to 50 dimensions, t-SNE to 2, KMeans
           with 3 clusters, keep the largest cluster (it also drops in-domain images that happen to
           form the smaller clusters). With --reference (e.g. the real instance photos) the images
           near the references in PCA space are kept instead. filter.csv: file, cluster, kept; the
           map's dots are coloured by cluster.
           --method clip --reference DIR...: CLIP (--clip_model, a hub id or local folder; fp32) scores
           each image by the mean cosine similarity of its image embedding to its --top_k (3) most
           similar reference photos, plus --prompt_weight times its similarity to --prompt when
           given. The threshold comes from the references themselves: each is scored the same way
           against the others (leave-one-out, so none meets itself), and the --keep_quantile (0: the
           lowest) of those scores is the threshold; --threshold sets it instead. An image is kept
           when its score is at least the threshold. filter.csv: file, score, kept; OUT/filter.json:
           the threshold, how it was chosen and each reference's leave-one-out score; the map is a
           t-SNE of the CLIP embeddings, dots coloured by score, the threshold on the colour bar.
           '--clip_model tiny-random-clip' builds a tiny untrained CLIP (plumbing and tests only).
Progress bars appear on stderr when it is a terminal.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BLUE = 2  # channel index in RGB arrays
SIZED_DOT_FRACTION = 0.25  # semi-axis / box side of a sized dot
THUMBNAIL_WEIGHT = 0.05
REFERENCE_REACH = 1.5
RING_WIDTH = 2
KEPT_COLOUR, REJECTED_COLOUR = "#1a9850", "#d73027"  # green and red frames on the filter map
CLUSTER_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]  # not green, red
THUMBNAILS_PER_GROUP = 2  # on the filter map, per cluster and decision (kept or rejected)
THUMBNAIL_PX = 64
THUMBNAIL_OFFSET = 18  # points between a dot and its thumbnail, towards the middle of the map
CLIP_MODEL = "openai/clip-vit-base-patch32"
TINY_RANDOM_CLIP = "tiny-random-clip"
SCORE_COLOURS = "cividis"  # the clip map's dots, coloured by score: blue to yellow, no green or red
CLIP_THUMBNAILS = 4  # on the clip map, per decision
METHOD_FLAGS = {"tsne": ("clusters", "pca_dims"),  # filter's flags that only one --method reads
                "clip": ("clip_model", "prompt", "prompt_weight", "top_k", "keep_quantile", "threshold", "device",
                         "batch_size")}
LEAKAGE_AXIS = "leakage per image: mean red/green on the dots minus the ring around them (pixel values 0..255)"


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


# ---------------------------------------------------------------------------------------------
# encode: boxes drawn into the blue channel
# ---------------------------------------------------------------------------------------------
def run_encode(args):
    """encode: each image of --images with its --labels drawn into blue -> OUT/<stem>.png."""
    images = checked_images(args.images)
    out = check_output_folder(args.output_dir, "--output_dir", inputs=[args.images, args.labels])
    for path in progress(images, "encoding"):
        image = read_rgb(path)
        boxes = read_boxes(Path(args.labels) / f"{path.stem}.txt", image.shape[1], image.shape[0])
        write_png(encode(image, boxes, args.mode, args.dot_size, args.line_width), out / f"{path.stem}.png")
    print(f"encoded {len(images)} images ({args.mode}) -> {out}")


def encode(image, boxes, mode, dot_size=5, line_width=2):
    """RGB image -> the same image with the blue channel replaced by the annotations."""
    out = image.copy()
    out[:, :, BLUE] = draw_annotations(image.shape, boxes, mode, dot_size, line_width)
    return out


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


# ---------------------------------------------------------------------------------------------
# decode: boxes read back from the blue channel
# ---------------------------------------------------------------------------------------------
def run_decode(args):
    """decode: boxes from the blue channel -> OUT/labels/, OUT/images/ (RG0), OUT/data.yaml, OUT/decoded.csv."""
    images = checked_images(args.images)
    out = check_output_folder(args.output_dir, "--output_dir", inputs=[args.images], written=("images", "labels"))
    (out / "labels").mkdir(exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    rows = []
    for path in progress(images, "decoding"):
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
    data = {"train": "images", "val": "images", "names": {0: "apple"}}  # from the YAML's folder, wherever it moves
    tmp = out / ".data.yaml.tmp"
    tmp.write_text("# RG0 images (the annotation channel zeroed) with the labels decoded from it\n"
                   + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, out / "data.yaml")
    merged = sum(r["merged"] == "yes" for r in rows)
    print(f"decoded {len(rows)} objects ({merged} merged groups) -> {out}: labels/, images/ (RG0), data.yaml")


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
# strip: the blue channel set to 0 (RG0)
# ---------------------------------------------------------------------------------------------
def run_strip(args):
    """strip: each image with its blue channel set to 0 -> OUT/<stem>.png."""
    images = checked_images(args.images)
    out = check_output_folder(args.output_dir, "--output_dir", inputs=[args.images])
    for path in progress(images, "stripping"):
        write_png(strip(read_rgb(path)), out / f"{path.stem}.png")
    print(f"stripped the blue channel of {len(images)} images -> {out}")


def strip(image):
    """RGB image -> the same image with the blue channel set to 0."""
    out = image.copy()
    out[:, :, BLUE] = 0
    return out


# ---------------------------------------------------------------------------------------------
# leakage: how much the dots show in red and green
# ---------------------------------------------------------------------------------------------
def run_leakage(args):
    """leakage: OUT/leakage.csv and OUT/leakage.png -> the mean leakage over the images with dots."""
    images = checked_images(args.images)
    out = check_output_folder(args.output_dir, "--output_dir", inputs=[args.images])
    rows = []
    for path in progress(images, "measuring leakage"):
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
    save_figure(leakage_figure(values), out / "leakage.png")
    print(f"leakage over {len(values)} images: mean {overall:.3f} (0..255 units) -> {out / 'leakage.csv'}")
    return overall


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


def leakage_figure(values):
    """leakage.png: a histogram of the per-image leakage, its mean in the title and as a dashed line.
    -> the matplotlib figure."""
    figure, axis = pyplot().subplots(figsize=(8, 4.5), layout="constrained")
    mean = float(np.mean(values)) if len(values) else float("nan")
    axis.hist(values, bins=30, color="#4575b4")
    axis.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
    axis.legend()
    axis.set_xlabel(LEAKAGE_AXIS)
    axis.set_ylabel("images")
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(f"annotation-channel leakage of {len(values)} images with dots: mean {mean:.2f}")
    return figure


# ---------------------------------------------------------------------------------------------
# filter: PCA -> t-SNE -> KMeans against off-domain images
# ---------------------------------------------------------------------------------------------
def run_filter(args):
    """filter: OUT/kept/, OUT/rejected/, OUT/filter.csv and OUT/filter.png (--method clip: also
    OUT/filter.json) -> the filter.csv rows."""
    check_method_flags(args)
    if args.method == "clip":
        return run_clip_filter(args)
    images = checked_images(args.images)
    references = reference_photos(args.reference)
    if args.clusters < 2 or args.pca_dims < 2:
        raise InputError("--clusters and --pca_dims must be at least 2")
    if len(images) < 4 * args.clusters or (args.reference and len(references) < 2):
        raise InputError(f"{args.images}: too few images ({len(images)}) to cluster into {args.clusters}, "
                         f"or fewer than 2 reference photos")
    inputs = [args.images, *(args.reference or [])]
    out = check_output_folder(args.output_dir, "--output_dir", inputs=inputs, written=("kept", "rejected"))
    features = image_features(progress(images, "reading images"))
    reference_features = image_features(progress(references, "reading reference photos")) if references else None
    image_map, reference_map, labels, kept = cluster_filter(features, reference_features, args.pca_dims,
                                                            args.clusters, args.seed)
    sort_into_folders(out, images, kept)
    rows = [{"file": path.name, "cluster": int(cluster), "kept": "yes" if keep else "no"}
            for path, cluster, keep in zip(images, labels, kept)]
    write_csv(out / "filter.csv", ["file", "cluster", "kept"], rows)
    save_figure(filter_figure(image_map, reference_map, labels, kept, images), out / "filter.png")
    rejected = sum(r["kept"] == "no" for r in rows)
    print(f"kept {len(rows) - rejected}, rejected {rejected} of {len(rows)} images "
          f"({'near the reference photos' if references else 'the largest cluster'}) -> {out}")
    return rows


def reference_photos(folders):
    """--reference DIR... -> the photos of every folder, in order (none without the flag)."""
    return [photo for folder in folders or () for photo in checked_images(folder)]


def check_method_flags(args):
    """InputError when a flag that only the other --method reads is given a value of its own: it
    would do nothing."""
    other = "clip" if args.method == "tsne" else "tsne"
    given = [f"--{flag}" for flag in METHOD_FLAGS[other] if getattr(args, flag) != args.method_defaults[flag]]
    if given:
        raise InputError(f"{', '.join(given)}: only --method {other} reads {'it' if len(given) == 1 else 'them'}, "
                         f"and this is --method {args.method}")


def sort_into_folders(out, images, kept):
    """OUT/kept/ and OUT/rejected/ made afresh, each image linked (or copied) into one of them."""
    for folder in ("kept", "rejected"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    for path, keep in zip(images, kept):
        link_or_copy(path, out / ("kept" if keep else "rejected") / path.name)


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
    -> (2-D map of the images, 2-D map of the reference photos (no rows without them), cluster of
    every image, kept mask). With reference features an image is kept when it sits near the
    references in PCA space instead: its nearest reference is no farther than REFERENCE_REACH times
    the median distance between a reference and its nearest other reference (the median, so one
    odd reference photo cannot widen the reach). The references go through the same PCA and t-SNE
    as the images (t-SNE cannot place points on a finished map), so the map shows where they lie;
    KMeans sees the images only."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    pca = PCA(n_components=min(pca_dims, n, features.shape[1]), random_state=seed).fit(features)
    reduced = pca.transform(features)
    references = reduced[:0] if reference_features is None else pca.transform(reference_features)
    both = np.vstack([reduced, references])
    embedded = TSNE(n_components=2, perplexity=min(30.0, (len(both) - 1) / 3), random_state=seed,
                    init="pca").fit_transform(both)
    image_map, reference_map = embedded[:n], embedded[n:]
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(image_map)
    if reference_features is None:
        return image_map, reference_map, labels, labels == np.bincount(labels).argmax()
    to_reference = np.linalg.norm(reduced[:, None] - references[None], axis=2).min(axis=1)
    between = np.linalg.norm(references[:, None] - references[None], axis=2)
    np.fill_diagonal(between, np.inf)
    return image_map, reference_map, labels, to_reference <= REFERENCE_REACH * np.median(between.min(axis=1))


def filter_figure(image_map, reference_map, labels, kept, paths):
    """filter.png: the t-SNE map, a dot per image coloured by cluster (kept: a circle with a green
    edge; rejected: a cross with a red edge), a few thumbnails framed green or red beside their dot
    inside the axes, the reference photos as black stars, and the legend outside the axes, so that
    nothing covers the title or the legend. -> the matplotlib figure."""
    from matplotlib.lines import Line2D

    figure, axis = pyplot().subplots(figsize=(11, 7), layout="constrained")
    handles = []
    for cluster in np.unique(labels):
        colour = CLUSTER_COLOURS[cluster % len(CLUSTER_COLOURS)]
        for decision, marker, edge in ((True, "o", KEPT_COLOUR), (False, "X", REJECTED_COLOUR)):
            members = (labels == cluster) & (kept == decision)
            axis.scatter(image_map[members, 0], image_map[members, 1], s=70, marker=marker, color=colour,
                         edgecolors=edge, linewidths=1.8, zorder=3)
        handles.append(Line2D([], [], linestyle="", marker="s", markersize=10, color=colour,
                              label=f"cluster {cluster}: {np.sum(labels == cluster)} images"))
    handles += decision_handles(kept) + reference_stars(axis, reference_map)
    add_thumbnails(axis, image_map, kept, paths, thumbnail_choice(image_map, labels, kept))
    rule = (f"near the {len(reference_map)} reference photos" if len(reference_map)
            else f"the largest of {len(np.unique(labels))} KMeans clusters")
    finish_map(axis, handles, "dot colour: cluster\nedge: decision",
               "t-SNE map: images that look alike lie close together (the axes have no units)",
               f"filter: {kept.sum()} of {len(kept)} images kept ({rule}), {(~kept).sum()} rejected")
    return figure


def clip_filter_figure(image_map, reference_map, scores, reference_scores, threshold, rule, kept, paths, title):
    """filter.png for --method clip: the t-SNE map of the CLIP embeddings, a dot per image coloured
    by its score (kept: a circle with a green edge; rejected: a cross with a red edge), thumbnails
    with their score framed likewise, the reference photos as black stars; below it the colour bar
    with the threshold as a black line and the references' leave-one-out scores as stars on it.
    -> the matplotlib figure."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    figure, axis = pyplot().subplots(figsize=(11, 7.5), layout="constrained")
    every = np.concatenate([scores, reference_scores, [threshold]])
    pad = 0.02 * (every.max() - every.min()) + 1e-6  # so that no star is cut at the bar's ends
    norm = Normalize(every.min() - pad, every.max() + pad)
    for decision, marker, edge in ((True, "o", KEPT_COLOUR), (False, "X", REJECTED_COLOUR)):
        members = kept == decision
        axis.scatter(image_map[members, 0], image_map[members, 1], c=scores[members], cmap=SCORE_COLOURS, norm=norm,
                     s=70, marker=marker, edgecolors=edge, linewidths=1.8, zorder=3)
    bar = figure.colorbar(ScalarMappable(norm, SCORE_COLOURS), ax=axis, location="bottom", shrink=0.7, aspect=45,
                          label=f"CLIP score (dot colour). Black line: the threshold, {threshold:.3f}, {rule}.\n"
                                f"Stars: each reference photo's score against the other references (leave-one-out).")
    bar.ax.scatter(reference_scores, np.full(len(reference_scores), 0.5), s=60, marker="*", color="black",
                   edgecolors="white", linewidths=0.5, zorder=3)
    bar.ax.axvline(threshold, ymin=-0.35, ymax=1.35, color="black", linewidth=3, zorder=4, clip_on=False)
    handles = decision_handles(kept) + reference_stars(axis, reference_map)
    chosen = clip_thumbnail_choice(image_map, kept)
    add_thumbnails(axis, image_map, kept, paths, chosen, [f"{scores[i]:.3f}" for i in chosen])
    finish_map(axis, handles, "dot colour: score\nedge: decision",
               "t-SNE map of the CLIP image embeddings: images that look alike lie close together (the axes "
               "have no units)", title)
    return figure


def decision_handles(kept):
    """The legend's two entries for the decision: kept (a green circle) and rejected (a red cross)."""
    from matplotlib.lines import Line2D
    return [Line2D([], [], linestyle="", marker="o", markersize=10, markerfacecolor="white",
                   markeredgecolor=KEPT_COLOUR, markeredgewidth=2, label=f"kept: {kept.sum()}"),
            Line2D([], [], linestyle="", marker="X", markersize=10, markerfacecolor="white",
                   markeredgecolor=REJECTED_COLOUR, markeredgewidth=2, label=f"rejected: {(~kept).sum()}")]


def reference_stars(axis, reference_map):
    """The reference photos as black stars on the map -> their legend entry (none without them)."""
    from matplotlib.lines import Line2D
    if not len(reference_map):
        return []
    axis.scatter(reference_map[:, 0], reference_map[:, 1], s=220, marker="*", color="black",
                 edgecolors="white", linewidths=0.8, zorder=4)
    return [Line2D([], [], linestyle="", marker="*", markersize=15, color="black",
                   label=f"reference photos: {len(reference_map)}")]


def add_thumbnails(axis, image_map, kept, paths, chosen, captions=None):
    """The chosen images as thumbnails beside their dot, towards the middle of the map (so they stay
    inside the axes), framed green (kept) or red (rejected), each with its caption below when given."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage, TextArea, VPacker

    axis.margins(0.06)
    middle = (np.mean(axis.get_xlim()), np.mean(axis.get_ylim()))
    for n, index in enumerate(chosen):
        offset, alignment = towards_middle(image_map[index], middle)
        frame = KEPT_COLOUR if kept[index] else REJECTED_COLOUR
        thumbnail = Image.fromarray(read_rgb(paths[index]))
        thumbnail.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        box = OffsetImage(np.asarray(thumbnail))
        if captions:
            box = VPacker(children=[box, TextArea(captions[n], textprops={"fontsize": 8})], align="center", pad=0,
                          sep=1)
        axis.add_artist(AnnotationBbox(box, image_map[index], xybox=offset, boxcoords="offset points",
                                       box_alignment=alignment, pad=0.15, zorder=2,
                                       bboxprops={"edgecolor": frame, "linewidth": 2.5},
                                       arrowprops={"arrowstyle": "-", "color": frame}))


def finish_map(axis, handles, legend_title, xlabel, title):
    """The map's legend outside the axes (so no thumbnail covers it), no ticks, its labels."""
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, title=legend_title)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_xlabel(xlabel)
    axis.set_title(title)


def thumbnail_choice(image_map, labels, kept):
    """The images the filter map shows as thumbnails: THUMBNAILS_PER_GROUP spread-out ones among
    each cluster's kept images, and as many among its rejected ones."""
    chosen = []
    for cluster in np.unique(labels):
        for decision in (True, False):
            members = np.where((labels == cluster) & (kept == decision))[0]
            if len(members):
                chosen += members[spread_out(image_map[members], THUMBNAILS_PER_GROUP)].tolist()
    return chosen


def clip_thumbnail_choice(image_map, kept, count=CLIP_THUMBNAILS):
    """The images the clip map shows as thumbnails: `count` spread-out rejected ones, then as many
    kept ones, each far from those chosen before (a map has no clusters to spread them over)."""
    chosen = []
    for decision in (False, True):
        members = np.where(kept == decision)[0]
        if len(members):
            chosen += members[spread_out(image_map[members], count, image_map[chosen])].tolist()
    return chosen


def spread_out(points, count, away_from=None):
    """Indices of up to `count` of the points, far apart: the one nearest their middle first (given
    away_from, points shown already, the one farthest from those), then each time the one farthest
    from those taken (so that thumbnails overlap less)."""
    away_from = points[:0] if away_from is None else np.asarray(away_from).reshape(-1, points.shape[1])
    chosen = [] if len(away_from) else [int(np.linalg.norm(points - points.mean(axis=0), axis=1).argmin())]
    while len(chosen) < min(count, len(points)):
        shown = np.vstack([points[chosen], away_from])
        distance = np.linalg.norm(points[:, None] - shown[None], axis=2).min(axis=1)
        distance[chosen] = -1
        chosen.append(int(distance.argmax()))
    return chosen


def towards_middle(point, middle):
    """Where a thumbnail goes beside its dot: (offset in points, box alignment), on the side of the
    map's middle in both x and y, so that it stays inside the axes."""
    right, up = point[0] <= middle[0], point[1] <= middle[1]
    offset = (THUMBNAIL_OFFSET if right else -THUMBNAIL_OFFSET, THUMBNAIL_OFFSET if up else -THUMBNAIL_OFFSET)
    return offset, (0 if right else 1, 0 if up else 1)


# ---------------------------------------------------------------------------------------------
# filter --method clip: CLIP similarity to the reference photos
# ---------------------------------------------------------------------------------------------
def run_clip_filter(args):
    """filter --method clip: OUT/kept/, OUT/rejected/, OUT/filter.csv (file, score, kept),
    OUT/filter.json (the threshold and its rule) and OUT/filter.png -> the filter.csv rows."""
    references = check_clip_arguments(args)
    images = checked_images(args.images)
    device = torch_device(args.device)
    out = check_output_folder(args.output_dir, "--output_dir", inputs=[args.images, *args.reference],
                              written=("kept", "rejected"))
    model, processor = load_clip(args.clip_model, device)
    embeddings = clip_embeddings(model, processor, images, device, args.batch_size, "CLIP: images")
    reference_embeddings = clip_embeddings(model, processor, references, device, args.batch_size,
                                           "CLIP: reference photos")
    text = clip_text_embedding(model, processor, args.prompt, device) if args.prompt is not None else None
    scores, reference_scores, threshold, kept = clip_filter(embeddings, reference_embeddings, args.top_k,
                                                            args.keep_quantile, args.threshold, text,
                                                            args.prompt_weight)
    rule = threshold_rule(args.threshold, args.keep_quantile, len(references))
    sort_into_folders(out, images, kept)
    rows = [{"file": path.name, "score": round(float(score), 6), "kept": "yes" if keep else "no"}
            for path, score, keep in zip(images, scores, kept)]
    write_csv(out / "filter.csv", ["file", "score", "kept"], rows)
    write_json(out / "filter.json", {
        "method": "clip", "clip_model": args.clip_model, "prompt": args.prompt,
        "prompt_weight": args.prompt_weight if args.prompt is not None else None,
        "top_k": min(args.top_k, len(references) - 1), "threshold": round(float(threshold), 6),
        "threshold_rule": rule, "images": len(images), "kept": int(kept.sum()), "rejected": int((~kept).sum()),
        "reference_scores": {p.name: round(float(s), 6) for p, s in zip(references, reference_scores)}})
    image_map, reference_map = embedding_map(embeddings, reference_embeddings, args.seed)
    title = (f"CLIP filter ({args.clip_model}): {kept.sum()} of {len(kept)} images kept (score at least "
             f"{threshold:.3f}), {(~kept).sum()} rejected\nscore: mean similarity to the "
             f"{min(args.top_k, len(references) - 1)} most similar of the {len(references)} reference photos"
             + (f"\n+ {args.prompt_weight:g} x similarity to the prompt {args.prompt!r}" if args.prompt is not None
                else ""))
    save_figure(clip_filter_figure(image_map, reference_map, scores, reference_scores, threshold, rule, kept,
                                   images, title), out / "filter.png")
    print(f"kept {int(kept.sum())}, rejected {int((~kept).sum())} of {len(kept)} images (CLIP score at least "
          f"{threshold:.4f}: {rule}) -> {out}")
    return rows


def check_clip_arguments(args):
    """filter --method clip's flags, checked before any work -> the reference photos."""
    if not args.reference:
        raise InputError("--method clip needs --reference DIR, photos of the domain (e.g. prepare_data's "
                         "instances/<group>/): it scores the images, and sets its threshold, against them")
    references = reference_photos(args.reference)
    if len(references) < 2:
        raise InputError(f"--reference {' '.join(args.reference)}: 1 photo; the threshold needs at least 2 (each "
                         f"reference is scored against the others)")
    if args.top_k < 1 or args.batch_size < 1:
        raise InputError(f"--top_k {args.top_k}, --batch_size {args.batch_size}: each must be at least 1")
    if not 0 <= args.keep_quantile <= 1:
        raise InputError(f"--keep_quantile {args.keep_quantile}: must lie within 0..1")
    if not np.isfinite(args.prompt_weight) or (args.threshold is not None and not np.isfinite(args.threshold)):
        raise InputError("--prompt_weight and --threshold must be finite numbers")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt: empty text; leave the flag out to score by the reference photos alone")
    if args.clip_model.startswith(("/", ".", "~")) and not Path(args.clip_model).expanduser().is_dir():
        raise InputError(f"--clip_model {args.clip_model}: no such folder (give a hub id, a local folder or "
                         f"{TINY_RANDOM_CLIP})")
    return references


def similarity_scores(image_embeddings, reference_embeddings, top_k=3, leave_one_out=False):
    """Each image's mean cosine similarity to its top_k most similar references. leave_one_out: the
    images are the references themselves, each scored against the others only."""
    similarity = unit_rows(image_embeddings) @ unit_rows(reference_embeddings).T
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    return -np.sort(-similarity, axis=1)[:, :top_k].mean(axis=1)


def reference_threshold(reference_scores, keep_quantile=0.0):
    """The threshold: the keep_quantile of the references' leave-one-out scores (0: the lowest)."""
    return float(np.quantile(reference_scores, keep_quantile))


def clip_filter(image_embeddings, reference_embeddings, top_k=3, keep_quantile=0.0, threshold=None,
                text_embedding=None, prompt_weight=1.0):
    """The CLIP filter -> (score of each image, leave-one-out score of each reference, threshold, kept).
    An image's score is its mean cosine similarity to its top_k most similar references: the mean
    over all of them would mark down an image that looks like one kind of reference photo (close-ups,
    say) and not the others, and the single most similar one would let one odd reference carry an
    image alone. With a text embedding, prompt_weight times the image-text cosine is added.
    The threshold, unless given: each reference is scored like an image against the other references
    (with top_k at most their number, for images too, so both scores mean the same), and the
    keep_quantile of those scores is taken; 0, the lowest, keeps every image as like the references
    as the least typical reference is to the rest. Kept: score >= threshold."""
    top_k = min(top_k, len(reference_embeddings) - 1)
    scores = similarity_scores(image_embeddings, reference_embeddings, top_k)
    reference_scores = similarity_scores(reference_embeddings, reference_embeddings, top_k, leave_one_out=True)
    if text_embedding is not None:
        scores = scores + prompt_weight * (unit_rows(image_embeddings) @ unit_rows(text_embedding[None])[0])
        reference_scores = reference_scores + prompt_weight * (unit_rows(reference_embeddings)
                                                               @ unit_rows(text_embedding[None])[0])
    if threshold is None:
        threshold = reference_threshold(reference_scores, keep_quantile)
    return scores, reference_scores, threshold, scores >= threshold


def threshold_rule(threshold, keep_quantile, references):
    """How the threshold was chosen, in words (for filter.json and the map's title)."""
    if threshold is not None:
        return "given by --threshold"
    if keep_quantile == 0:
        return f"the lowest leave-one-out score of the {references} reference photos"
    return f"the {keep_quantile:g} quantile of the {references} reference photos' leave-one-out scores"


def unit_rows(rows):
    """Rows scaled to length 1, so that their dot products are cosines."""
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def embedding_map(image_embeddings, reference_embeddings, seed=0):
    """The clip map: a t-SNE of the images' and the references' CLIP embeddings together (t-SNE
    cannot place points on a finished map) -> (2-D map of the images, of the references)."""
    from sklearn.manifold import TSNE
    both = np.vstack([unit_rows(image_embeddings), unit_rows(reference_embeddings)])
    embedded = TSNE(n_components=2, perplexity=min(30.0, (len(both) - 1) / 3), random_state=seed,
                    init="pca").fit_transform(both)
    return embedded[:len(image_embeddings)], embedded[len(image_embeddings):]


def clip_embeddings(model, processor, paths, device, batch_size=16, description="CLIP"):
    """The CLIP image embeddings of the images at paths, batch by batch -> (n, d) float64 rows of
    length 1."""
    import torch
    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    rows = []
    with torch.inference_mode():
        for batch in progress(batches, description, unit="batch"):
            pixels = processor(images=[Image.fromarray(read_rgb(path)) for path in batch], return_tensors="pt")
            features = model.get_image_features(pixel_values=pixels["pixel_values"].to(device, torch.float32))
            rows.append(features.pooler_output.double().cpu().numpy())
    return unit_rows(np.concatenate(rows))


def clip_text_embedding(model, processor, prompt, device):
    """The CLIP text embedding of the prompt -> a float64 vector of length 1."""
    import torch
    with torch.inference_mode():
        tokens = processor(text=[prompt], padding=True, truncation=True, return_tensors="pt").to(device)
        features = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return unit_rows(features.pooler_output.double().cpu().numpy())[0]


def torch_device(device):
    """--device for a transformers model: none -> cpu, 0 -> cuda:0 (as ultralytics reads it), else as given."""
    import torch
    name = "cpu" if device is None else f"cuda:{device}" if str(device).isdigit() else device
    try:
        torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device torch knows (e.g. cpu, 0, cuda, cuda:1)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here; leave --device out to run on the CPU")
    if name.startswith("cuda:") and torch.device(name).index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine's CUDA devices are 0..{torch.cuda.device_count() - 1}")
    return name


def load_clip(name, device):
    """(CLIPModel in fp32 on device, eval mode; CLIPProcessor): 'tiny-random-clip', built here, or a hub
    id or local folder loaded with from_pretrained."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    if name == TINY_RANDOM_CLIP:
        print(f"{TINY_RANDOM_CLIP}: a tiny untrained CLIP; its scores mean nothing (plumbing and tests only)")
        model, processor = build_tiny_random_clip()
    else:
        try:  # dtype: transformers 5's name for torch_dtype; fp32, whatever the checkpoint was saved in
            model = CLIPModel.from_pretrained(name, dtype=torch.float32)
            processor = CLIPProcessor.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise InputError(f"--clip_model {name}: could not load it ({' '.join(str(error).split())})")
    return model.to(device).eval(), processor


def build_tiny_random_clip(seed=0):
    """A tiny CLIP with random weights (2-layer text and vision towers, 32-wide, 32 px images, the
    byte-level CLIP tokenizer) and its processor -> (CLIPModel, CLIPProcessor). Plumbing only."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = clip_byte_vocab()
    folder = Path(tempfile.mkdtemp(prefix="genfusion_tokenizer_"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    shutil.rmtree(folder)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
                                     "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]},
                        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=32)
    with torch.random.fork_rng():  # fixed weights for a seed, whatever the caller's random state
        torch.manual_seed(seed)
        model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def clip_byte_vocab():
    """A CLIP BPE vocabulary with one token per byte (and per byte ending a word), no merges:
    enough for a tokenizer that accepts any text, with no download."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


# ---------------------------------------------------------------------------------------------
# Helpers: files and figures
# ---------------------------------------------------------------------------------------------
def checked_images(folder):
    """The images in a folder (by extension), sorted by name; InputError for a missing folder, no
    images, or two images with one name stem (they would share an output and a label file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise InputError(f"{folder}: no images")
    stems = {}
    for image in images:
        if image.stem in stems:
            raise InputError(f"{image} and {stems[image.stem]} share a name stem, so they would share an output "
                             f"and a label file: rename one")
        stems[image.stem] = image
    return images


def read_rgb(path):
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image ({error!r})")
    return np.array(rgb_image(image, path))


def rgb_image(image, path):
    """A PIL image -> an 8-bit RGB one. 16-bit grey (mode I;16 or I) is scaled to 8 bits: PIL's
    convert("RGB") would clip every value above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":  # Pillow reads 16-bit grey as I;16 or I
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{path}: mode {image.mode} with values outside 0..65535: save it as an 8- or 16-bit image")
        return Image.fromarray(np.round(values / 257).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise InputError(f"{path}: a floating-point image (mode F) has no fixed range: save it as an 8- or "
                         f"16-bit image")
    return image.convert("RGB")


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
            raise InputError(f"{path}:{number}: class {fields[0]}: the annotation channel draws one class, 0 = apple "
                             f"(its dots carry no class): give it one-class labels")
        _, cx, cy, w, h = values
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def write_png(array, path):
    create_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_csv(path, fields, rows):
    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    create_atomic(path, write)


def create_atomic(path, write):
    """Make path through write(temp path) and a rename, so path is either as before or complete;
    the temp file (beside path, with its suffix) is removed when anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, text):
    """Write text to path through create_atomic."""
    create_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path, document):
    write_atomic(path, json.dumps(document, indent=1))


def link_or_copy(source, target):
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path):
    """Write a matplotlib figure as a PNG at path, whole or not at all, and close it."""
    try:
        create_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    finally:
        pyplot().close(figure)


def progress(items, description, total=None, unit="image"):
    """items, with a progress bar on stderr while it is a terminal (where a person waits; logs and
    pipes get no bar, and an error stays one line)."""
    return tqdm(items, total=total, desc=description, unit=unit, leave=False, disable=None)


def check_output_folder(path, flag, inputs=(), written=()):
    """Create the output folder FLAG names and write a probe file in it, before any work. InputError,
    in one line, when a file is in the way, the folder cannot be written, or it would replace or mix
    with an input: the folder or a subfolder it writes (PATH/<w> for w in written) is an input folder
    or lies inside one, or an input lies inside a subfolder it writes."""
    path = Path(path)
    targets = [path.resolve()] + [(path / sub).resolve() for sub in written]
    for source in (Path(folder).resolve() for folder in inputs):
        in_a_written = any(source == target or target in source.parents for target in targets[1:])
        if in_a_written or any(target == source or source in target.parents for target in targets):
            raise InputError(f"{flag} {path}: it overlaps the input folder {source}, whose files it would "
                             f"replace or mix with its own; give another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        problem = "is a file, not a folder" if path.is_file() else "cannot be created or written"
        raise InputError(f"{flag} {path}: {problem} ({error.strerror or error})")
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with descriptions and examples kept as written, and '(default: X)' only where X is a
    value one could type: not for None (the help says what happens), an empty text or list, or a switch."""

    def _get_help_string(self, action):
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if switch or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The command line: encode, decode, strip, leakage and filter."""
    parser = argparse.ArgumentParser(
        description="Annotations in the blue channel (the paper's Appendix E), and the filter of "
                    "off-domain images (t-SNE or CLIP).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python annotation_channel.py encode --images REAL/images --labels REAL/labels --output_dir ENC\n"
               "  python annotation_channel.py filter --images GEN/images --output_dir FILTERED\n"
               "'python annotation_channel.py COMMAND --help' tells more.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modes = ["dots", "sized_dots", "outlines"]

    def command(name, summary, description, examples):
        return commands.add_parser(name, help=summary, description=description, formatter_class=HelpFormatter,
                                   epilog="examples:\n" + "".join(f"  python annotation_channel.py {name} {e}\n"
                                                                  for e in examples))

    p = command("encode", "draw YOLO boxes into the blue channel",
                "Replace the blue channel of each image by its boxes (255 on 0): OUT/<stem>.png.",
                ["--images REAL/images --labels REAL/labels --output_dir ENC",
                 "--images REAL/images --labels REAL/labels --mode sized_dots \\\n      --output_dir ENC"])
    p.add_argument("--images", metavar="DIR", required=True, help="the photos (their blue channel is replaced)")
    p.add_argument("--labels", metavar="DIR", required=True, help="YOLO label folder, one <stem>.txt per image")
    p.add_argument("--mode", choices=modes, default="dots", help="how the boxes are drawn")
    p.add_argument("--output_dir", required=True, metavar="OUT", help="where the encoded PNGs go")

    d = command("decode", "read boxes back from the blue channel",
                "Threshold blue, find contours, take their centroids: OUT/labels/ (YOLO), OUT/images/ (RG0),\n"
                "OUT/data.yaml and OUT/decoded.csv.",
                ["--images GEN/images --output_dir DEC",
                 "--images GEN/images --mode sized_dots --output_dir DEC"])
    d.add_argument("--images", metavar="DIR", required=True,
                   help="images with annotations in blue (e.g. generated ones)")
    d.add_argument("--mode", choices=modes, default="dots", help="how the boxes were drawn")
    d.add_argument("--output_dir", required=True, metavar="OUT",
                   help="where labels/, images/, data.yaml and decoded.csv go")
    d.add_argument("--box_size", type=float, default=20, help="'dots' only: side of the box put around a centre, px")

    s = command("strip", "set the blue channel to 0 (RG0)",
                "Write each image with its blue channel set to 0 (the paper's channel ablation): OUT/<stem>.png.",
                ["--images REAL/test/images --output_dir TEST_RG0"])
    s.add_argument("--images", metavar="DIR", required=True, help="the images to strip")
    s.add_argument("--output_dir", required=True, metavar="OUT", help="where the RG0 PNGs go")

    lk = command("leakage", "how much the dots show in red and green",
                 "The paper's Figure 21 as a number: red/green on each dot minus in a 2 px ring around it,\n"
                 "per image (OUT/leakage.csv) and as a histogram (OUT/leakage.png).",
                 ["--images GEN/images --output_dir LEAK",
                  "--images ENC --labels REAL/labels --output_dir LEAK"])
    lk.add_argument("--images", metavar="DIR", required=True, help="images with dots in blue")
    lk.add_argument("--labels", metavar="DIR",
                    help="take the dot positions from these YOLO labels instead of the blue channel")
    lk.add_argument("--output_dir", default=".", metavar="OUT", help="where leakage.csv and leakage.png go")

    f = command("filter", "drop off-domain images: PCA -> t-SNE -> KMeans, or CLIP",
                "Against off-domain generations. --method tsne, the paper's recipe: keep the largest KMeans\n"
                "cluster of the t-SNE map, or with --reference the images near the reference photos.\n"
                "--method clip --reference DIR: keep the images whose CLIP similarity to their --top_k most similar\n"
                "reference photos (+ --prompt_weight x their similarity to --prompt) reaches a threshold: the\n"
                "--keep_quantile of the references' own scores, each scored against the other references\n"
                "(leave-one-out), or --threshold. OUT/kept/, OUT/rejected/ (links or copies), OUT/filter.csv,\n"
                "OUT/filter.png (the t-SNE map, kept green, rejected red) and for clip OUT/filter.json (the\n"
                "threshold and how it was chosen). '--clip_model tiny-random-clip': a tiny untrained CLIP\n"
                "(plumbing only).",
                ["--images GEN/images --output_dir FILTERED",
                 "--images GEN/images --reference INSTANCES/green \\\n      --output_dir FILTERED",
                 "--images GEN/images --method clip --reference INSTANCES/green INSTANCES/red \\\n"
                 "      --prompt 'a tree with apples' --output_dir FILTERED"])
    add_filter_arguments(f)

    for sub in (p, d, lk):
        sub.add_argument("--dot_size", type=int, default=5, help="side of a dot in px")
    for sub in (p, d):
        sub.add_argument("--line_width", type=int, default=2, help="'outlines': width of a box outline in px")
    for sub in (d, lk):
        sub.add_argument("--threshold", type=int, default=128, help="blue at or above this is annotation")
    return parser


def add_filter_arguments(parser):
    """The filter subcommand's flags; those that one --method reads alone (METHOD_FLAGS) say which."""
    parser.add_argument("--images", metavar="DIR", required=True, help="the images to filter (left untouched)")
    parser.add_argument("--output_dir", required=True, metavar="OUT",
                        help="where kept/, rejected/, filter.csv, filter.png (and filter.json) go")
    parser.add_argument("--method", choices=["tsne", "clip"], default="tsne",
                        help="tsne: the paper's PCA -> t-SNE -> KMeans; clip: CLIP similarity to --reference")
    parser.add_argument("--reference", metavar="DIR", nargs="+",
                        help="folders of photos of the domain (e.g. the instance photos of every group); tsne: keep "
                             "the images near them instead of the largest cluster; clip: required, the images are "
                             "scored against them")
    parser.add_argument("--seed", type=int, default=0, help="seed of PCA, t-SNE and KMeans; clip: of its t-SNE map")
    parser.add_argument("--clusters", type=int, default=3, help="tsne: KMeans clusters, as in the paper")
    parser.add_argument("--pca_dims", type=int, default=50, help="tsne: PCA dimensions before t-SNE, as in the paper")
    parser.add_argument("--clip_model", default=CLIP_MODEL, metavar="ID_OR_DIR",
                        help=f"clip: hub id or local folder of a CLIP model (loaded in fp32), or {TINY_RANDOM_CLIP} "
                             f"(untrained, for plumbing only)")
    parser.add_argument("--top_k", type=int, default=3,
                        help="clip: an image's score is its mean similarity to this many most similar reference "
                             "photos (at most their number less one)")
    parser.add_argument("--prompt", help="clip: also score each image by its CLIP similarity to this text, e.g. "
                                         "'a tree with apples' (default: no text)")
    parser.add_argument("--prompt_weight", type=float, default=1.0,
                        help="clip, with --prompt: the image-text similarity's weight in the score")
    parser.add_argument("--keep_quantile", type=float, default=0.0,
                        help="clip: the threshold is this quantile of the reference photos' leave-one-out scores; "
                             "0: the lowest, so that an image as like the references as the least typical of them "
                             "is kept")
    parser.add_argument("--threshold", type=float,
                        help="clip: keep the images scoring at least this (default: from --keep_quantile)")
    parser.add_argument("--device", default="cpu", help="clip: where CLIP runs: cpu, cuda, cuda:N or N (GPU N)")
    parser.add_argument("--batch_size", type=int, default=16, help="clip: images per CLIP batch")
    parser.set_defaults(method_defaults={flag: parser.get_default(flag) for flags in METHOD_FLAGS.values()
                                         for flag in flags})


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        {"encode": run_encode, "decode": run_decode, "strip": run_strip, "leakage": run_leakage,
         "filter": run_filter}[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
