"""The report as a browser sees it: its structure, not its pixels.

Without a browser: every ``<img>`` of the page resolves to a non-empty image (an embedded data URI or a file beside
the page) that decodes to a real picture. In headless Chromium (Debian package ``chromium``; offline, a throwaway
profile): the page loads with every expected section and heading, every image is decoded by the browser with a
size on screen, and the page writes nothing to the console (it has no script of its own, so any message is a
problem: a resource that failed to load, a parse error). The browser half is skipped, with the reason, where no
Chromium binary is installed.

The same look by hand (docs/report.md)::

    chromium --headless --no-sandbox --disable-gpu --screenshot=shot.png --window-size=1280,12000 file://$PWD/report.html
"""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from neurojepa.report.build import build_report

from test_report import make_run_dir, prepared  # noqa: F401  (the fixture and the fabricated run)

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")

# (id, heading) of every section, in page order (report/build.py: build_report)
SECTIONS = [("data", "Data"), ("teacher", "Teacher (LeJEPA)"), ("student", "Student (spiking E/I network)"),
            ("cross-state", "Within vs cross-state"), ("targets", "Targets"),
            ("config", "Configuration and code version")]
MIN_FIGURES = 12  # with every input present: qc and state rasters, curves, collapse, trajectories, decoding, rasters...

# Appended to a copy of the page: after `load` (every image decoded or failed), writes what the browser built
# into an attribute of <body>, which `--dump-dom` prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const out = {
    title: document.title,
    sections: [...document.querySelectorAll("body > section")].map(s => ({
      id: s.id, heading: (s.querySelector(":scope > h2") || {}).textContent || null,
      images: s.querySelectorAll("img").length, size: box(s)})),
    images: [...document.images].map(i => ({
      complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], shown: box(i), alt: i.alt})),
    links: [...document.querySelectorAll("nav a")].map(a => a.getAttribute("href")),
  };
  document.body.setAttribute("data-probe", JSON.stringify(out));
});
</script>"""


@pytest.fixture(scope="module")
def report(prepared, tmp_path_factory):  # noqa: F811
    return build_report(make_run_dir(tmp_path_factory.mktemp("render"), prepared))


def _img_sources(text: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r'<img\b[^>]*?\bsrc="([^"]*)"', text)]


def _image_bytes(src: str, page: Path) -> bytes:
    """The bytes an <img src> points to: a base64 data URI, or a file relative to the page (or a file:// URI)."""
    if src.startswith("data:"):
        head, _, payload = src.partition(",")
        assert head.startswith("data:image/") and head.endswith(";base64"), f"not a base64 image data URI: {head}"
        return base64.b64decode(payload, validate=True)
    url = urlparse(src)
    assert url.scheme in ("", "file"), f"an image the page would fetch from outside: {src[:80]}"
    path = Path(unquote(url.path)) if url.scheme == "file" else page.parent / unquote(url.path)
    assert path.is_file(), f"broken image: {src} ({path} does not exist)"
    return path.read_bytes()


def test_every_image_resolves_and_decodes(report):
    """No broken image: each <img> resolves to non-empty bytes that decode to a picture of real size."""
    text = report.read_text()
    srcs = _img_sources(text)
    assert len(srcs) == text.count("<img") and len(srcs) >= MIN_FIGURES, (len(srcs), text.count("<img"))
    for i, src in enumerate(srcs):
        data = _image_bytes(src, report)
        assert data, f"image {i}: empty"
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: a truncated or corrupt file raises here
            assert min(im.size) > 50, f"image {i}: {im.size}"
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 32, f"image {i}: a flat picture (grey levels {lo}..{hi})"


def _render(page: Path, tmp: Path, timeout: int = 120) -> tuple[dict, list[str]]:
    """Load ``page`` (with :data:`PROBE` appended, in a copy beside it) in headless Chromium: (what the probe saw,
    the console messages of the page). No network, a throwaway profile."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1280,2000",
           f"--user-data-dir={tmp}", "--dump-dom", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'data-probe="([^"]*)"', res.stdout)
    assert found, f"chromium did not load the page (exit {res.returncode}): {res.stderr[-2000:]}"
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln and probe.as_uri() in ln]
    return json.loads(html.unescape(found.group(1))), console


@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    seen, console = _render(report, tmp_path / "profile")
    assert console == [], console
    assert seen["title"].startswith("neurojepa run:")
    # every section, in order, with its heading; the table of contents links to each
    assert [(s["id"], s["heading"]) for s in seen["sections"]] == SECTIONS
    assert seen["links"] == [f"#{sid}" for sid, _ in SECTIONS]
    for s in seen["sections"]:
        assert s["size"][0] > 0 and s["size"][1] > 0, f"section {s['id']} has no size on the page"
    # figures in the sections that draw them; all of them decoded by the browser and shown with a size
    per_section = {s["id"]: s["images"] for s in seen["sections"]}
    assert all(per_section[sid] > 0 for sid in ("data", "teacher", "student", "cross-state")), per_section
    images = seen["images"]
    assert len(images) == len(_img_sources(report.read_text())) >= MIN_FIGURES
    broken = [(i, im["alt"]) for i, im in enumerate(images) if not im["complete"] or min(im["natural"]) <= 0]
    assert broken == [], f"images the browser could not decode: {broken}"
    assert all(min(im["shown"]) > 10 for im in images), [im["shown"] for im in images]


@needs_chromium
def test_probe_flags_a_broken_image_and_a_console_error(report, tmp_path):
    """The checks above can fail: a page with one image pointing nowhere and a script error is caught."""
    bad = report.with_name("broken.html")
    text = report.read_text()
    first = _img_sources(text)[0]
    bad.write_text(text.replace(f'src="{first}"', 'src="missing.png"', 1)
                   .replace("</body>", "<script>undefinedFunction()</script></body>"))
    seen, console = _render(bad, tmp_path / "profile")
    assert any("undefinedFunction" in ln for ln in console), console
    assert not seen["images"][0]["complete"] or seen["images"][0]["natural"][0] == 0
    with pytest.raises(AssertionError, match="broken image"):
        _image_bytes("missing.png", bad)
