"""Open an HTML file in headless Chromium, check how it rendered and take a screenshot.

Used by the report's browser test and to make ``docs/report.png``. It speaks the Chrome
DevTools protocol over ``--remote-debugging-pipe`` (NUL-separated JSON on file descriptors
3 and 4), so it needs only the standard library and a Chromium/Chrome binary: no selenium,
no driver, no network port.

    python -m convnp.report.browser runs/latest/report.html --screenshot report.png --height 2400
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvnpError

__all__ = ["BrowserError", "PageCheck", "check_page", "find_browser"]

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-pipe")

# Runs in the page after the load event: waits until every <img> is decoded (decode() rejects
# for a broken image) and reports each one's natural and rendered size.
_IMAGES_JS = """(async () => {
  const imgs = Array.from(document.images);
  const ok = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  return {
    images: imgs.map((im, k) => {
      const r = im.getBoundingClientRect();
      return {decoded: ok[k], complete: im.complete, naturalWidth: im.naturalWidth,
              naturalHeight: im.naturalHeight, width: r.width, height: r.height,
              src: (im.getAttribute('src') || '').slice(0, 30), alt: im.alt};
    }),
    height: Math.ceil(document.documentElement.scrollHeight),
    scripts: document.scripts.length,
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  };
})()"""


class BrowserError(ConvnpError):
    """The browser could not be started or did not answer as expected."""


@dataclass
class PageCheck:
    """What the page did: its images (dicts from the DOM), console/log errors, the URLs it requested."""

    url: str
    images: list
    errors: list
    requests: list
    height: int
    scripts: int
    sections: list
    screenshot: Path | None = None
    log: list = field(default_factory=list, repr=False)

    @property
    def broken_images(self) -> list:
        return [im for im in self.images if not (im["decoded"] and im["complete"] and im["naturalWidth"] > 0
                                                 and im["naturalHeight"] > 0 and im["width"] > 0
                                                 and im["height"] > 0)]

    @property
    def external_requests(self) -> list:
        return [u for u in self.requests if not u.startswith(("data:", "file:", "about:"))]


def find_browser() -> str | None:
    """Path of a Chromium/Chrome binary: $CONVNP_BROWSER, else the first of BROWSER_NAMES on PATH."""
    env = os.environ.get("CONVNP_BROWSER")
    if env:
        return env if shutil.which(env) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """A DevTools session over the two pipes: ``call`` waits for its answer, events are kept."""

    def __init__(self, proc, to_browser: int, from_browser: int, stderr_path: Path):
        self.proc, self.wfd, self.rfd, self.stderr_path = proc, to_browser, from_browser, stderr_path
        self.buf, self.events, self.next_id = b"", [], 0

    def _fail(self, what: str):
        tail = ""
        try:
            tail = self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            pass
        raise BrowserError(f"headless browser: {what}" + (f"; its stderr ends:\n{tail}" if tail else ""))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            try:
                n = os.write(self.wfd, data)
            except BrokenPipeError:
                self._fail(f"the browser closed its pipe while sending {method}")
            data = data[n:]
        return self.next_id

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail("timed out waiting for the browser")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                self._fail("the browser exited")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        msg_id = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"headless browser: {method} failed: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.events[seen:]:
                if msg.get("method") == method:
                    return msg
            seen = len(self.events)
            self.events.append(self._read(deadline))


class _Process:
    """The spawned browser: ``wait`` with a timeout, ``kill``."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                return None
            else:
                time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)


def _launch(browser: str, profile: str, stderr_path: Path):
    """Start the browser with fd 3 (commands in) and fd 4 (answers out) wired to two pipes."""
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()
    # move the child's ends above fd 10 first, so the dup2s onto 3 and 4 cannot clobber them
    high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, out_w))
    os.close(cmd_r)
    os.close(out_w)
    args = [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, str(stderr_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
               (os.POSIX_SPAWN_DUP2, high_r, 3), (os.POSIX_SPAWN_DUP2, high_w, 4)]
    try:
        pid = os.posix_spawn(browser, args, os.environ, file_actions=actions)
    except OSError as err:
        for fd in (cmd_w, out_r):
            os.close(fd)
        raise BrowserError(f"cannot start {browser}: {err}") from None
    finally:
        os.close(high_r)
        os.close(high_w)
    return _Process(pid), cmd_w, out_r


def check_page(path, screenshot=None, width: int = 1280, max_height: int | None = None,
               browser: str | None = None, timeout: float = 60.0) -> PageCheck:
    """Load ``path`` (an HTML file) in headless Chromium and report on it; optionally save a PNG.

    The page is loaded at ``width`` CSS pixels; once every image has decoded, the screenshot
    covers the whole page, or its top ``max_height`` pixels. ``errors`` collects console errors,
    uncaught exceptions, log entries of level error and failed loads.
    """
    if not hasattr(os, "posix_spawn"):
        raise BrowserError("check_page needs a POSIX system (os.posix_spawn)")
    browser = browser or find_browser()
    if not browser:
        raise BrowserError("no Chromium/Chrome found (install chromium or set CONVNP_BROWSER)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="convnp-browser-") as profile:
        stderr_path = Path(profile) / "stderr.txt"
        proc, wfd, rfd = _launch(browser, os.path.join(profile, "profile"), stderr_path)
        pipe = _Pipe(proc, wfd, rfd, stderr_path)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
            nav = pipe.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
            if nav.get("errorText"):
                raise BrowserError(f"headless browser could not open {url}: {nav['errorText']}")
            pipe.wait_event("Page.loadEventFired", timeout=timeout)
            result = pipe.call("Runtime.evaluate", {"expression": _IMAGES_JS, "awaitPromise": True,
                                                    "returnByValue": True}, session=session, timeout=timeout)
            if "exceptionDetails" in result:
                raise BrowserError(f"headless browser: the page check failed: {result['exceptionDetails']}")
            info = result["result"]["value"]
            shot = None
            if screenshot is not None:
                height = min(info["height"], max_height) if max_height else info["height"]
                pipe.call("Emulation.setDeviceMetricsOverride",
                          {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                          session=session)
                png = pipe.call("Page.captureScreenshot",
                                {"format": "png", "captureBeyondViewport": True,
                                 "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
                                session=session, timeout=timeout)["data"]
                shot = Path(screenshot)
                shot.parent.mkdir(parents=True, exist_ok=True)
                shot.write_bytes(base64.b64decode(png))
            try:
                pipe.call("Browser.close", timeout=10)
            except BrowserError:
                pass
        finally:
            for fd in (wfd, rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if proc.wait(timeout=10) is None:
                proc.kill()
    return PageCheck(url=url, images=info["images"], errors=_errors(pipe.events),
                     requests=[m["params"]["request"]["url"] for m in pipe.events
                               if m.get("method") == "Network.requestWillBeSent"],
                     height=info["height"], scripts=info["scripts"], sections=info["sections"],
                     screenshot=shot, log=pipe.events)


def _errors(events: list) -> list:
    out = []
    for m in events:
        method, p = m.get("method"), m.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                  for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return out


def main(argv=None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m convnp.report.browser",
                                     description="Check an HTML file in headless Chromium; optionally screenshot it.")
    parser.add_argument("html")
    parser.add_argument("--screenshot", help="write a PNG of the page here")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, help="crop the screenshot to this many pixels from the top")
    args = parser.parse_args(argv)
    check = check_page(args.html, screenshot=args.screenshot, width=args.width, max_height=args.height)
    broken = check.broken_images
    print(f"{check.url}: {len(check.images)} images ({len(broken)} broken), {len(check.errors)} errors, "
          f"{len(check.external_requests)} external requests, page height {check.height}px")
    for line in check.errors + [f"broken image: {b}" for b in broken] + check.external_requests:
        print("  " + str(line))
    if check.screenshot:
        print(f"screenshot: {check.screenshot}")
    return 1 if (broken or check.errors or check.external_requests) else 0


if __name__ == "__main__":
    raise SystemExit(main())
