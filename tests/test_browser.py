"""In a real browser: headless Chromium renders the report and a running `hpo dashboard` with data.

Skipped when /usr/bin/chromium is absent (`.ci/run` installs the Debian package). Each check looks for
JavaScript errors in Chromium's console log, for rendered plots in the DOM, and at a screenshot that must
not be blank.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dash_fixtures import sqlite_study_file

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install chromium)"),
    pytest.mark.slow,
]
HPO = [sys.executable, "-m", "hpo.cli"]
# Console lines of the page that mean a script failed (not Chromium's own WebGL/GPU chatter).
JS_ERROR = re.compile(r"CONSOLE.*(Uncaught|TypeError|ReferenceError|SyntaxError|RangeError|Failed to load)")


def chromium(url: str, out: Path, *, dom: bool = False, size: str = "1400,2200") -> tuple[str, str]:
    """Render a URL headless: a screenshot into ``out`` (or the DOM as stdout), and the console log."""
    profile = tempfile.mkdtemp(prefix="hpo-chromium-")
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-unsafe-swiftshader",  # software WebGL for plotly's parallel coordinates
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        "--virtual-time-budget=8000",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom" if dom else f"--screenshot={out}",
        url,
    ]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return proc.stdout, proc.stderr


def js_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if JS_ERROR.search(line)]


COUNT_COLORS = """<!DOCTYPE html><html><body><img id="shot" src="data:image/png;base64,{b64}">
<script>
window.addEventListener("load", () => {{
  const img = document.getElementById("shot");
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < px.length; i += 4) seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
  document.body.setAttribute("data-colors", String(seen.size));
}});
</script></body></html>"""


def png_colors(path: Path) -> int:
    """Distinct colours of a screenshot, counted by Chromium itself (a blank page has one or two)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = path.with_suffix(".colors.html")
    page.write_text(COUNT_COLORS.format(b64=base64.b64encode(path.read_bytes()).decode()))
    dom, _ = chromium(page.as_uri(), path, dom=True)
    found = re.search(r'data-colors="(\d+)"', dom)
    assert found, dom[:500]
    return int(found.group(1))


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    a = sqlite_study_file(tmp_path, "alpha")
    b = sqlite_study_file(tmp_path, "beta", sampler="random")
    html = tmp_path / "report.html"
    subprocess.run([*HPO, "report", str(a), str(b), "-o", str(html)], check=True, capture_output=True)
    dom, log = chromium(html.as_uri(), tmp_path / "unused.png", dom=True)
    assert not js_errors(log), js_errors(log)
    n_figs = len(re.findall(r'id="fig-', html.read_text()))
    # Every figure was drawn by plotly.js: one plot container each, with its SVG.
    assert dom.count('class="plot-container plotly"') == n_figs == 20
    assert dom.count("main-svg") >= n_figs
    shot = tmp_path / "report.png"
    _, log = chromium(html.as_uri(), shot)
    assert not js_errors(log), js_errors(log)
    assert shot.exists() and png_colors(shot) > 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`hpo dashboard` in a subprocess on a free port; yields (base URL, study id)."""
    path = sqlite_study_file(tmp_path, "alpha")
    port = _free_port()
    proc = subprocess.Popen(
        [*HPO, "dashboard", str(path), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        studies: list[dict[str, object]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
                if studies:
                    break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert [s["study_name"] for s in studies] == ["alpha"]
        yield base, int(studies[0]["study_id"])  # type: ignore[call-overload]
    finally:
        proc.terminate()
        proc.wait(10)
    out = proc.stdout.read() if proc.stdout else ""
    assert f"{base}/dashboard/studies/" in out


def test_dashboard_renders_in_chromium(dashboard: tuple[str, int], tmp_path: Path) -> None:
    base, sid = dashboard
    dom, log = chromium(f"{base}/dashboard/studies/{sid}/trials", tmp_path / "unused.png", dom=True)
    assert not js_errors(log), js_errors(log)
    # The trial list and the first trial's note (written by `hpo dashboard`) are on the page.
    assert "Trial 4" in dom and "Trial 0: complete, perplexity = 10" in dom
    shot = tmp_path / "dashboard.png"
    _, log = chromium(f"{base}/dashboard/studies/{sid}", shot, size="1400,1000")
    assert not js_errors(log), js_errors(log)
    assert shot.exists() and png_colors(shot) > 200


def test_png_export_with_kaleido(tmp_path: Path) -> None:
    pytest.importorskip("kaleido")
    path = sqlite_study_file(tmp_path, "alpha")
    png = tmp_path / "png"
    proc = subprocess.run(
        [*HPO, "report", str(path), "-o", str(tmp_path / "r.html"), "--png", str(png)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in png.iterdir())
    assert len(files) == 9 and "alpha-curves.png" in files and "alpha-timeline.png" in files
    assert png_colors(png / "alpha-curves.png") > 50
