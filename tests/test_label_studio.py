"""The review loop against the real Label Studio (pinned in tests/label_studio_requirements.txt,
installed by tests/run.sh into .label_studio/, a virtualenv of its own): the server command of
docs/review-with-label-studio.md on 127.0.0.1, a project with propose's label_studio_config.xml of two
classes, the tasks imported, one image served, a person's edits (a class changed among them) made
through the HTTP API, every export format imported back and compared with the edits, classes and all."""
import copy
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

import propose_boxes as pb
from conftest import REPO

REQUIREMENTS = REPO / "tests" / "label_studio_requirements.txt"
VENV = REPO / ".label_studio"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
# two classes, not in sorted order, so that Label Studio's YOLO export (its ids by sorted name) must be remapped
CLASSES = ["red_apple", "green_apple"]
# three apples per image, as YOLO labels: the proposals the person reviews
PROPOSED = [(0, 0.25, 0.25, 0.10, 0.10), (1, 0.60, 0.50, 0.20, 0.15), (0, 0.80, 0.80, 0.10, 0.10)]
WIDTH, HEIGHT = 160, 120


def label_studio_executable():
    """.label_studio/bin/label-studio, which tests/run.sh installs from the pinned requirements."""
    executable = VENV / "bin" / "label-studio"
    if not executable.exists():
        pytest.skip(f"{executable} is absent: tests/run.sh installs it from {REQUIREMENTS.relative_to(REPO)}")
    return executable


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A Label Studio server started as docs/review-with-label-studio.md says, talked to with the user's token."""

    def __init__(self, data_dir):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/"}
        self.log = open(data_dir / "server.log", "w")
        self.process = subprocess.Popen(
            [str(label_studio_executable()), "start", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--no-browser", "--username", "reviewer@example.com", "--password",
             "genfusion-review", "--user-token", TOKEN, "--enable-legacy-api-token"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.process.poll() is None, (data_dir / "server.log").read_text()[-3000:]
            try:
                if self.call("GET", "/health", auth=False)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        self.stop()
        pytest.fail("Label Studio did not answer within 300 s")

    def call(self, method, path, body=None, auth=True, raw=False):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Token {TOKEN}"
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                content = response.read()
                return response.status, content if raw else (json.loads(content) if content else None)
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("label_studio"))
    yield started
    started.stop()
    assert started.process.poll() is not None


def yolo_rows(path):
    return [tuple(map(float, line.split())) for line in path.read_text().splitlines() if line.strip()]


def test_the_review_loop_through_label_studio(server, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(tmp_path / "images" / f"tree_{i}.png")
        (tmp_path / "labels" / f"tree_{i}.txt").write_text("".join(f"{' '.join(map(str, row))}\n" for row in PROPOSED))
    prop = tmp_path / "proposals"
    assert pb.main(["propose", "--labels", str(tmp_path / "labels"), "--images", str(tmp_path / "images"),
                    "--output_dir", str(prop), "--classes", ",".join(CLASSES)]) == 0
    assert (prop / "label_studio_config.xml").read_text().count("<Label ") == 2

    status, project = server.call("POST", "/api/projects", {"title": "genfusion review",
                                                            "label_config": (prop / "label_studio_config.xml").read_text()})
    assert status == 201, project
    pid = project["id"]
    status, storage = server.call("POST", "/api/storages/localfiles", {"project": pid, "title": "generated images",
                                  "path": str((tmp_path / "images").resolve()), "use_blob_urls": True})
    assert status == 201, storage
    status, imported = server.call("POST", f"/api/projects/{pid}/import",
                                   json.loads((prop / "label_studio_tasks.json").read_text()))
    assert status == 201 and imported["task_count"] == 4 and imported["prediction_count"] == 4, imported
    tasks = sorted(server.call("GET", f"/api/tasks?project={pid}&fields=all")[1]["tasks"], key=lambda t: t["id"])
    assert len(tasks) == 4  # no storage sync: it would add every image again, without predictions
    status, png = server.call("GET", tasks[0]["data"]["image"], raw=True)
    assert status == 200 and png == (tmp_path / "images" / "tree_0.png").read_bytes()

    # the person: accepts tree_0 as proposed but calls its first red apple green, accepts tree_1 but moves
    # one box, deletes a box of tree_2 and draws a new one there, and skips tree_3
    edits = {}
    for task in tasks[:3]:
        name = pb.review_name(task["data"]["image"], {f"tree_{i}.png" for i in range(4)})
        result = copy.deepcopy(task["predictions"][0]["result"])
        assert [r["value"]["x"] for r in result] == pytest.approx([100 * (cx - w / 2) for _, cx, _, w, _ in PROPOSED],
                                                                  abs=1e-6)
        assert [r["value"]["rectanglelabels"] for r in result] == [[CLASSES[k]] for k, *_ in PROPOSED]
        if name == "tree_0.png":
            result[0]["value"]["rectanglelabels"] = ["green_apple"]
        if name == "tree_1.png":
            result[1]["value"]["x"] += 5.0
        if name == "tree_2.png":
            drawn = copy.deepcopy(result[0])
            drawn["id"] = "drawn"
            drawn["value"].update(x=5.0, y=60.0, width=12.5, height=10.0)
            result = result[1:] + [drawn]
        edits[name] = [(CLASSES.index(v["rectanglelabels"][0]), (v["x"] + v["width"] / 2) / 100,
                        (v["y"] + v["height"] / 2) / 100, v["width"] / 100, v["height"] / 100)
                       for v in (r["value"] for r in result)]
        status, _ = server.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": result})
        assert status == 201
    assert server.call("POST", f"/api/tasks/{tasks[3]['id']}/annotations", {"result": [], "was_cancelled": True})[0] == 201

    # the class change on tree_0 counts as a box deleted and one added
    expected_report = {"proposals": 9, "reviewed": 9, "unchanged": 6, "adjusted": 1, "deleted": 2, "added": 2}
    for kind in ("JSON", "JSON_MIN", "COCO", "YOLO"):
        status, body = server.call("GET", f"/api/projects/{pid}/export?exportType={kind}", raw=True)
        assert status == 200
        export = tmp_path / f"export_{kind}{'.zip' if body[:2] == b'PK' else '.json'}"
        export.write_bytes(body)
        forms = [export]
        if zipfile.is_zipfile(export):  # the zip as handed out, and unpacked
            with zipfile.ZipFile(export) as archive:
                archive.extractall(tmp_path / f"unpacked_{kind}")
            forms.append(tmp_path / f"unpacked_{kind}")
        if kind == "YOLO":  # ids of the sorted names: ours must come back through it
            assert (tmp_path / "unpacked_YOLO" / "classes.txt").read_text().split() == sorted(CLASSES) != CLASSES
        for form in forms:
            out = tmp_path / f"reviewed_{form.name}"
            assert pb.main(["import", "--reviewed", str(form), "--images", str(tmp_path / "images"),
                            "--output_dir", str(out), "--proposals", str(prop)]) == 0, capsys.readouterr().err
            assert (out / "unreviewed.txt").read_text() == "tree_3.png\n", form
            assert sorted(p.name for p in (out / "labels").iterdir()) == ["tree_0.txt", "tree_1.txt", "tree_2.txt"]
            assert (out / "data.yaml").read_text().endswith("names:\n  0: red_apple\n  1: green_apple\n"), form
            for name, rows in edits.items():
                got = yolo_rows(out / "labels" / f"{name[:-4]}.txt")
                assert np.allclose(sorted(got), sorted(rows), atol=1e-4), (form, name, got, rows)
            report = json.loads((out / "review_report.json").read_text())
            assert report["totals"] == expected_report and report["reviewed_images"] == 3, form
            for name in ("tree_0.png", "tree_2.png"):
                assert report["images"][name] == {"proposals": 3, "reviewed": 3, "unchanged": 2, "adjusted": 0,
                                                  "deleted": 1, "added": 1}, (form, name)

    # a reviewer who deletes every box of an image: Label Studio's COCO export lists it with width and
    # height null (measured with 1.23.2), and import takes the size from --images
    assert server.call("POST", f"/api/tasks/{tasks[3]['id']}/annotations", {"result": []})[0] == 201
    status, body = server.call("GET", f"/api/projects/{pid}/export?exportType=COCO", raw=True)
    assert status == 200
    export = tmp_path / f"export_all_deleted{'.zip' if body[:2] == b'PK' else '.json'}"
    export.write_bytes(body)
    if zipfile.is_zipfile(export):
        with zipfile.ZipFile(export) as archive:
            coco = json.loads(archive.read("result.json"))
    else:
        coco = json.loads(body)
    emptied = next(image for image in coco["images"] if image["file_name"].endswith("tree_3.png"))
    assert emptied["width"] is None and emptied["height"] is None, emptied
    out = tmp_path / "reviewed_all_deleted"
    assert pb.main(["import", "--reviewed", str(export), "--images", str(tmp_path / "images"), "--output_dir",
                    str(out), "--proposals", str(prop)]) == 0, capsys.readouterr().err
    assert (out / "labels" / "tree_3.txt").read_text() == "" and (out / "unreviewed.txt").read_text() == ""
