"""The report as a person sees it: rendered by headless Chromium (Debian package ``chromium``) to a screenshot that
must show a page, not a blank or broken one. Skipped, with the reason, where no Chromium binary is installed.

The same check by hand (docs/report.md)::

    chromium --headless --no-sandbox --disable-gpu --screenshot=shot.png --window-size=1280,12000 file://$PWD/report.html
"""

import shutil
import subprocess

import numpy as np
import pytest

from neurojepa.report.build import build_report

from test_report import make_run_dir, prepared  # noqa: F401  (the fixture and the fabricated run)

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")


def screenshot(page, out, tmp, width=1280, height=12000, timeout=120):
    """Render ``page`` headless to the PNG ``out``; no network, a throwaway profile."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp}", f"--screenshot={out}", f"--window-size={width},{height}", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    import matplotlib.image as mpimg

    return mpimg.imread(out)[..., :3]  # (height, width, 3) float in [0, 1]


def test_report_renders_in_chromium(prepared, tmp_path):  # noqa: F811
    report = build_report(make_run_dir(tmp_path, prepared))
    img = screenshot(report, tmp_path / "shot.png", tmp_path / "profile")
    assert img.shape[:2] == (12000, 1280)
    assert ((img < 0.95).any(axis=-1).any(axis=-1)).nonzero()[0].max() < img.shape[0] - 200, \
        "the page is taller than the screenshot: raise height"
    assert img.std() > 0.05, "a blank page"
    # distinct colours: text, purple headings, red/blue rasters and weights, green bands, not one flat grey
    q = (img * 15).round().astype(int)
    colours = np.unique(q[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 160  # measured: 239 for this page, 98 with every image broken
    # the images were decoded and drawn: rows of the page carry figure ink (non-white pixels), not just text lines
    ink_rows = (img < 0.85).any(axis=-1).mean(axis=1)  # per row: fraction of non-white pixels
    assert (ink_rows > 0.05).sum() > 2000, "too few rows of figure content: images not decoded?"  # 3166 vs 885
    # saturated reds and blues: student E (red) / I (blue) rasters and the weight matrix must be on screen
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    # (measured 117k red and 55k blue pixels; with the images broken 0 and 3k, the blue of the links)
    assert ((r > 0.7) & (g < 0.4) & (b < 0.4)).sum() > 20_000 and ((b > 0.6) & (r < 0.4)).sum() > 20_000
