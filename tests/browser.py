"""Pages opened in a real browser: Debian's chromium, headless, driven over the DevTools protocol on a pipe (no
driver, no Python dependency). A page opens from the file system, waits until every image has loaded or failed,
reports the broken ones and writes a screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from system_packages import missing_reason

PROGRAMS = {"chromium": "chromium"}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
# Resolves once every <img> has loaded or failed; lists each one with whether it decoded to a non-empty image.
IMAGES = """new Promise(resolve => {
  const check = () => {
    const imgs = [...document.images];
    if (document.readyState === "complete" && imgs.every(i => i.complete)) {
      resolve(JSON.stringify(imgs.map(i => ({src: i.currentSrc.slice(0, 200), ok: i.naturalWidth > 0}))));
    } else setTimeout(check, 50);
  };
  check();
})"""


def unavailable() -> str | None:
    return missing_reason(PROGRAMS)


class Browser:
    """``with Browser(folder) as b: b.open(page, screenshot)``; ``folder`` holds a fresh profile."""

    def __init__(self, folder: Path, timeout: float = 60.0) -> None:
        self.folder, self.timeout, self._id = Path(folder), timeout, 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        profile = self.folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        # The DevTools pipe: the browser reads commands on its fd 3 and answers on its fd 4. The pipe ends are
        # moved above fd 9 first, so the redirections cannot clobber one with the other.
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        self._log = open(self.folder / "chromium.log", "w")  # written until __exit__
        try:
            command = ["chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"]
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', "bash", *command],
                pass_fds=(r, w),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        finally:
            os.close(r)
            os.close(w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._log.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"no answer from chromium within {self.timeout:.0f} s (see {self._log.name})")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise OSError(f"chromium closed its DevTools pipe (see {self._log.name})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self._events.append(answer)

    def _wait_event(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method and event.get("sessionId") == session:
                    del self._events[i]
                    return
            self._events.append(self._read(deadline))

    def open(
        self, page: Path, screenshot: Path, script: str | None = None, width: int = 1280, height: int = 900
    ) -> dict[str, Any]:
        """Opens ``page`` from the file system, optionally runs ``script`` (JavaScript; its value or the value of
        the promise it returns is kept), waits for every image, writes a PNG screenshot of the viewport and returns
        ``{"images": [{"src", "ok"}], "script": value, "title": document title}``."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            self.send("Page.enable", session)
            self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)  # fmt: skip
            self.send("Page.navigate", session, url=Path(page).resolve().as_uri())
            self._wait_event("Page.loadEventFired", session)
            value = self._evaluate(session, script) if script else None
            images = json.loads(self._evaluate(session, IMAGES))
            title = self._evaluate(session, "document.title")
            shot = self.send("Page.captureScreenshot", session, format="png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            self.send("Target.closeTarget", targetId=target)
        return {"images": images, "script": value, "title": title}

    def _evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def broken_images(result: dict[str, Any]) -> list[str]:
    return [image["src"] for image in result["images"] if not image["ok"]]


# In a Snakemake HTML report (`snakemake --report x.html`): every result as the page embeds it, with its category,
# whether an image result decodes, and for an HTML result (a gallery page) the images it holds that do not load
# from inside the report (anything but an embedded data: URI that decodes).
REPORT_RESULTS = """(async () => {
  const loads = src => new Promise(done => {
    const img = new Image();
    img.onload = () => done(img.naturalWidth > 0);
    img.onerror = () => done(false);
    img.src = src;
  });
  const where = {};
  for (const [cat, subcats] of Object.entries(categories))
    for (const [subcat, paths] of Object.entries(subcats)) for (const p of paths) where[p] = [cat, subcat];
  const rows = [];
  for (const [path, r] of Object.entries(results)) {
    const row = {path, mime: r.mime_type, category: where[path], caption: r.caption, loads: null, broken: []};
    if (r.mime_type.startsWith("image/")) row.loads = await loads(r.data_uri);
    if (r.mime_type === "text/html") {
      const page = await (await fetch(r.data_uri)).text();
      const srcs = [...new DOMParser().parseFromString(page, "text/html").images].map(i => i.getAttribute("src"));
      row.images = srcs.length;
      for (const s of srcs) if (!(s.startsWith("data:") && await loads(s))) row.broken.push(s.slice(0, 100));
    }
    rows.push(row);
  }
  return JSON.stringify(rows);
})()"""


def report_results(browser: Browser, report: Path, screenshot: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Opens a Snakemake HTML report from the file system (screenshot of its first page); returns its results as
    REPORT_RESULTS lists them and the images on the first page that did not load."""
    opened = browser.open(report, screenshot, script=REPORT_RESULTS)
    return json.loads(opened["script"]), broken_images(opened)
