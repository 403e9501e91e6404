#!/usr/bin/env python3
"""bench_detectors_cpu.py: time train_detectors.py on the CPU against plain ultralytics.

In:  --data YAML (default: the demo's photos, made here with prepare_data.py --source synthetic),
     --model, --epochs, --imgsz.
Out: wall seconds of three trainings on the same photos with the same settings, each in a fresh
     process after one warm-up run: train_detectors.py (fp32, every core), train_detectors.py --threads 1, and plain
     ultralytics `YOLO(model).train(amp=False, ...)` (which picks min(8, cores - 1) threads);
     printed as a Markdown table with the ratio to plain ultralytics, appended to --results when
     given (bench/RESULTS.md). train_detectors.py's time includes its test-set predictions.
"""
import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train_detectors  # noqa: E402  (the bench times the script itself)

PLAIN_ULTRALYTICS = """
import json, sys
import train_detectors
arguments = json.loads(sys.argv[1])
train_detectors.offline_safe_environment(arguments["project"])  # a local font; nothing else changes
from ultralytics import YOLO
YOLO(arguments.pop("model")).train(**arguments)
"""


def demo_data(folder):
    """The demo's photos: 48 synthetic trees, apples 2.5 x, prepared at 256 px -> real.yaml."""
    subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--source", "synthetic", "--num_images", "48",
                    "--apple_scale", "2.5", "--resolution", "256", "--num_instances", "3",
                    "--output_dir", str(folder)], check=True, stdout=subprocess.DEVNULL)
    return folder / "real.yaml"


def timed(command):
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def plain_arguments(data_yaml, model, epochs, imgsz, project):
    """train_detectors.py's own ultralytics arguments for one run, with AMP off as a CPU user sets it."""
    run_dir = Path(project) / "plain" / "run"
    arguments = train_detectors.train_arguments(data_yaml, run_dir, 0, epochs, imgsz, 8, "cpu", 0, False, 8)
    return {**arguments, "amp": False, "model": f"{model}.yaml"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="an ultralytics data YAML (default: the demo's photos)")
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--results", help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_detectors_") as tmp:
        tmp = Path(tmp)
        data_yaml = Path(args.data) if args.data else demo_data(tmp / "data")
        test_images = Path(train_detectors.split_folders(data_yaml, train_detectors.read_data_yaml(data_yaml),
                                                         "test")[0])
        ours = [sys.executable, str(REPO / "train_detectors.py"), "--data", f"bench={data_yaml}", "--models",
                args.model, "--seeds", "0", "--epochs", str(args.epochs), "--imgsz", str(args.imgsz), "--nbs", "8",
                "--init", "scratch", "--workers", "0", "--test_images", str(test_images), "--devices", "cpu"]
        timed(ours + ["--project", str(tmp / "warmup"), "--epochs", "1"])  # first imports, label caches
        rows = [("train_detectors.py", timed(ours + ["--project", str(tmp / "ours")]))]
        rows.append(("train_detectors.py --threads 1", timed(ours + ["--project", str(tmp / "one"), "--threads", "1"])))
        plain = plain_arguments(data_yaml, args.model, args.epochs, args.imgsz, tmp)
        rows.append(("ultralytics train(amp=False)", timed([sys.executable, "-c", PLAIN_ULTRALYTICS, json.dumps(plain)])))
        amp = json.loads(next((tmp / "ours").glob("*/*/seed0/run.json")).read_text())["amp"]
    plain_seconds = rows[-1][1]
    where = f"{platform.processor() or platform.machine()}, {train_detectors.available_cores()} cores"
    table = [f"\n### Detectors on the CPU, {datetime.date.today()}: {args.model}, {args.epochs} epochs at "
             f"{args.imgsz} px, {where}, train_detectors.py amp={amp}\n",
             "| command | seconds | x plain ultralytics |", "|---|---|---|"]
    table += [f"| {name} | {seconds:.1f} | {seconds / plain_seconds:.2f}x |" for name, seconds in rows]
    print("\n".join(table))
    if args.results:
        with open(args.results, "a") as handle:
            handle.write("\n".join(table) + "\n")
    return rows


if __name__ == "__main__":
    main()
