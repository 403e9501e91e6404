"""evaluate.py report: a run folder's page, checked as a file and in a real headless Chromium (from the
distribution's packages; CI installs it, elsewhere the browser test skips without it)."""
import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image, ImageDraw

import evaluate as ev
from conftest import REPO

# The pictures of the fake run folder: path under WORK -> size. No leakage picture: it is "not made".
PICTURES = {"results/datasets.png": (500, 200), "generated/contact_sheet.png": (640, 256),
            "models/green/loss.png": (400, 300), "models/red/loss.png": (400, 300), "proposals/preview/green 0001.png": (256, 256),
            "annotation_channel/filter/filter.png": (300, 300)}
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Added to a copy of the page, never to the page: once every image has loaded or failed, it writes
# each image's src and decoded size into the DOM, which Chromium's --dump-dom prints.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify(Array.from(document.images, image => ({
    src: image.getAttribute("src"), complete: image.complete,
    width: image.naturalWidth, height: image.naturalHeight})));
  document.body.append(out);
});
</script>
<img src="../no_such_picture.png" alt="a missing picture: the probe must report it undecoded">
"""


class PageStructure(HTMLParser):
    """Reads a page strictly: the doctype, every element's nesting (an end tag must close the
    innermost open element), the <img> sources and alt texts, and any <script>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.doctype, self.open, self.problems, self.images, self.scripts = None, [], [], [], 0

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self.scripts += tag == "script"
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()


def parse_page(text):
    """The page's PageStructure, after reading all of it."""
    page = PageStructure()
    page.feed(text)
    page.close()
    return page


def draw_png(path, size, colour):
    """A real PNG of the given size and colour, its file name written on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).text((8, 8), path.name, fill="black")
    image.save(path)


@pytest.fixture
def work(tmp_path):
    """A run folder as run_all.sh leaves it: results/table1.* made by evaluate.py table from a small
    results.csv (one row that found nothing), and the pictures of PICTURES."""
    work = tmp_path / "work & co"                              # a name that needs escaping in HTML and URLs
    for index, (relative, size) in enumerate(PICTURES.items()):
        draw_png(work / relative, size, ("lavender", "lightgreen", "white", "mistyrose", "lightblue", "khaki")[index])
    results = work / "results" / "results.csv"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("dataset,model,seed,ap,ap50,ap75\nbaseline,yolov8n,0,0.40,0.70,0.40\n"
                       "baseline,yolov8n,1,0.42,0.74,0.44\ngenfusion,yolov8n,0,0,0,0\n")
    assert ev.main(["table", "--results", str(results), "--out_dir", str(work / "results"),
                    "--note", "Generated labels: <the proposals> & NOT reviewed."]) == 0
    return work


# What run_all.sh passes report, under WORK: the pictures of a run with the annotation channel.
REPORT_PICTURES = ["results/table1.png", "results/datasets.png", "generated/contact_sheet.png", "models/green/loss.png",
                   "models/red/loss.png", "proposals/preview/*.png", "annotation_channel/filter/filter.png",
                   "annotation_channel/leakage/leakage.png"]


def report_arguments(work):
    """evaluate.py report's arguments for a run folder, as run_all.sh gives them."""
    return ["report", "--out", str(work / "results" / "report.html"), "--table", str(work / "results" / "table1.md"),
            "--pictures", *(str(work / picture) for picture in REPORT_PICTURES)]


def run_report(work):
    """evaluate.py report on a run folder as a command -> its completed process."""
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *report_arguments(work)],
                          capture_output=True, text=True, timeout=120)


def image_file(page_path, src):
    """The file an <img src> of the page at page_path points to."""
    return (page_path.parent / unquote(src)).resolve()


def test_the_page_shows_table_1_and_every_picture_through_relative_links(work):
    result = run_report(work)
    assert result.returncode == 0, result.stderr
    page_path = work / "results" / "report.html"
    assert result.stdout.strip() == (f"wrote {page_path} (not made in this run: "
                                     f"{work / 'annotation_channel/leakage/leakage.png'})")
    assert sorted(p.name for p in page_path.parent.iterdir()) == [
        "datasets.png", "report.html", "results.csv", "table1.csv", "table1.md", "table1.png"]  # no temp file left
    text = page_path.read_text(encoding="utf-8")
    page = parse_page(text)
    assert page.doctype == "DOCTYPE html" and page.problems == [] and page.open == []
    assert page.scripts == 0 and "<script" not in text.lower()
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text and "<title>" in text
    sources = [image["src"] for image in page.images]
    assert sources == ["table1.png", "datasets.png", "../generated/contact_sheet.png", "../models/green/loss.png",
                       "../models/red/loss.png", "../proposals/preview/green%200001.png",
                       "../annotation_channel/filter/filter.png"]
    for image in page.images:
        assert not urlsplit(image["src"]).scheme and not image["src"].startswith("/")
        assert image_file(page_path, image["src"]).is_file() and image["alt"]
    assert "<td>genfusion</td><td>yolov8n</td><td>1</td><td>0.000 ± 0.000 <strong>-0.410</strong></td>" in text
    assert "Generated labels: &lt;the proposals&gt; &amp; NOT reviewed." in text          # escaped
    assert "Found nothing: genfusion yolov8n scored 0 on every seed." in text
    assert re.search(r"<h2>Not made in this run</h2>\s*<ul>\s*<li><code>annotation_channel/leakage/leakage.png"
                     r"</code></li>\s*</ul>", text)
    assert html.escape(str(work.resolve()), quote=False) in text


def chromium():
    """The distribution's Chromium; skips the test without it, or fails when GENFUSION_REQUIRE_DATA=1."""
    for name in ("chromium", "chromium-browser", "chromium-headless-shell"):
        if shutil.which(name):
            return shutil.which(name)
    message = "Chromium is not installed (apt-get install -y chromium, as .ci/run does)"
    if os.environ.get("GENFUSION_REQUIRE_DATA") == "1":
        pytest.fail(message + " and GENFUSION_REQUIRE_DATA=1")
    pytest.skip(message)


def decoded_images(browser, page_path, profile):
    """Load page_path in headless Chromium and return what IMAGE_PROBE (in the page) wrote: one
    {src, complete, width, height} per <img>, the sizes as the browser decoded them."""
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
                             page_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the page did not finish loading: {result.stdout[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_every_picture_on_the_page_loads_and_decodes_in_chromium(work, tmp_path):
    browser = chromium()
    assert run_report(work).returncode == 0
    page_path = work / "results" / "report.html"
    probe_path = page_path.with_name("report_probe.html")       # beside the page: the same relative links
    probe_path.write_text(page_path.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"),
                          encoding="utf-8")
    *images, missing = decoded_images(browser, probe_path, tmp_path / "profile")
    assert missing == {"src": "../no_such_picture.png", "complete": True, "width": 0, "height": 0}
    assert [image["src"] for image in images] == [image["src"] for image in parse_page(page_path.read_text()).images]
    for image in images:
        with Image.open(image_file(page_path, image["src"])) as picture:
            assert (image["complete"], image["width"], image["height"]) == (True, *picture.size), image["src"]
    assert len(images) == len(PICTURES) + 1                      # and table1.png


def test_a_bare_run_folder_makes_a_page_that_lists_everything_as_not_made(tmp_path, capsys):
    assert ev.main(report_arguments(tmp_path)) == 0
    text = (tmp_path / "results" / "report.html").read_text()
    page = parse_page(text)
    assert page.images == [] and page.problems == [] and page.open == [] and "<table>" not in text
    assert re.findall(r"<li><code>(.*?)</code></li>", text) == ["results/table1.md", *REPORT_PICTURES]
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'results' / 'report.html'} (not made in this run: ")


def test_report_refuses_a_page_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "taken").write_text("keep")
    assert ev.main(["report", "--out", str(tmp_path / "taken" / "report.html")]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'taken' / 'report.html'}: {tmp_path / 'taken'} is a file, not a folder\n"
    (tmp_path / "results" / "report.html").mkdir(parents=True)
    assert ev.main(["report", "--out", str(tmp_path / "results" / "report.html")]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'results' / 'report.html'}: is a folder, not a file\n"
