"""Every kind of report opened in a real browser (headless Chromium): every image decodes, no request fails or leaves
the machine, no console error, the main sections are there. A screenshot of each is kept under the test's tmp folder
(and under ``test-artifacts/reports/`` when that folder exists).

The browser is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL
bytes on file descriptors 3 and 4), with the standard library only."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from foveal.cli import main

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]

# What the page itself reports once loaded: images that did not decode, the sections, the number of images.
_PROBE = """JSON.stringify({
  images: document.images.length,
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  title: document.title,
})"""


@dataclass
class PageCheck:
    """What loading one page showed."""

    images: int
    broken: list[str]
    sections: list[str]
    title: str
    failed_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


class _Pipe:
    def __init__(self, process: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.process, self.write_fd, self.read_fd = process, write_fd, read_fd
        self.buffer, self.next_id, self.events = b"", 0, list[dict[str, Any]]()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 60
    ) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))


def check_page(html: Path, screenshot: Path, profile: Path, timeout: float = 90) -> PageCheck:
    """Open ``html`` in headless Chromium, wait for the load event, probe it and save a full-page screenshot."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    # the protocol's fixed descriptors: chromium reads 3 and writes 4; the shell puts the pipes there
    command = " ".join([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"])
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command} 3<&{to_chrome_r} 4>&{from_chrome_w}"],
        pass_fds=(to_chrome_r, from_chrome_w),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(process, to_chrome_w, from_chrome_r)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        pipe.call("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        pipe.wait_for("Page.loadEventFired", timeout)
        probe = pipe.call("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session)
        result = PageCheck(**json.loads(probe["result"]["value"]))
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        _collect(pipe.events, result)
        with contextlib.suppress(RuntimeError, TimeoutError):
            pipe.call("Browser.close", timeout=10)
        return result
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _collect(events: list[dict[str, Any]], result: PageCheck) -> None:
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Network.loadingFailed":
            result.failed_requests.append(str(params.get("errorText")))
        elif method == "Network.requestWillBeSent":
            result.urls.append(str(params.get("request", {}).get("url", ""))[:80])
        elif method == "Runtime.exceptionThrown":
            result.errors.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.errors.append(json.dumps(params.get("args"))[:200])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            result.errors.append(str(params["entry"].get("text")))


pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reports"

# kind: (sections the report must have, fewest images it must show)
EXPECTED = {
    "classify-run": ({"result", "curves", "provenance"}, 1),
    "classify-eval": ({"accuracy", "per-class", "mistakes", "provenance"}, 2),
    "segment-run": ({"result", "curves", "provenance"}, 1),
    "segment-eval": ({"summary", "metrics", "per-image", "predictions", "weight-maps", "provenance"}, 2),
    "detect-run": ({"result", "curves", "provenance"}, 1),
    "detect-eval": ({"coco", "per-class", "per-image", "detections", "provenance"}, 3),
    "explain": ({"provenance"}, 4),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_report_opens_in_chromium_without_errors(kind, results, tmp_path):
    folder = results[kind]
    assert main(["report", str(folder)]) == 0
    shot = tmp_path / f"{kind}.png"
    page = check_page(folder / "report.html", shot, tmp_path / "profile")
    sections, images = EXPECTED[kind]
    assert page.images >= images, page
    assert page.broken == [], f"images that did not decode: {page.broken}"
    assert page.failed_requests == [] and page.errors == [], (page.failed_requests, page.errors)
    assert all(u.startswith(("file:", "data:", "about:")) for u in page.urls), page.urls  # offline
    assert sections <= set(page.sections), page.sections
    assert shot.stat().st_size > 10_000  # a real page, not a blank one
    if ARTIFACTS.parent.is_dir():
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / shot.name)


def test_a_broken_image_is_caught(results, tmp_path):
    """The probe itself: a report whose image bytes are damaged shows up as a broken image."""
    html = (results["classify-eval"] / "report.html").read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    damaged = tmp_path / "report.html"
    damaged.write_text(html[:start] + "AAAA" + html[start + 200 :])
    page = check_page(damaged, tmp_path / "damaged.png", tmp_path / "profile")
    assert len(page.broken) == 1
