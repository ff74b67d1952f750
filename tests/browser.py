"""A real headless Chromium (Debian's `chromium`, scripts/install_stack_deps.sh browser) driven over the DevTools protocol.

One browser per session of use; each page opens in its own tab: console messages, uncaught exceptions and failed
resource loads are collected, every <img> is checked as decoded, and a full-page screenshot is taken.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--hide-scrollbars",
)


def chromium_binary() -> str:
    found = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    if not found:
        raise FileNotFoundError(
            "chromium not found: run scripts/install_stack_deps.sh browser (make test does)"
        )
    return found


@dataclass
class PageVisit:
    url: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    screenshot: bytes = b""


class Chromium:
    def __init__(self, width: int = 1200, timeout_s: float = 60.0) -> None:
        self.width = width
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")  # a fresh --user-data-dir
        self.proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.ws = connect(self._endpoint(), max_size=None, open_timeout=timeout_s)
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _endpoint(self) -> str:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} at start")
            if port_file.is_file():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=self.timeout_s))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                del self.events[i]
                return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            ev = json.loads(self.ws.recv(timeout=self.timeout_s))
            if ev.get("method") == method and ev.get("sessionId") == session:
                return
            self.events.append(ev)
        raise TimeoutError(f"no {method} within {self.timeout_s}s")

    def visit(self, url: str) -> PageVisit:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        conn: ClientConnection = self.ws
        assert conn is not None
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        visit = PageVisit(url=url)
        state = self.send(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify({title: document.title, images: Array.from(document.images).map("
                "i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))})",
                "returnByValue": True,
            },
            session,
        )
        data = json.loads(state["result"]["value"])
        visit.title, visit.images = data["title"], data["images"]
        metrics = self.send("Page.getLayoutMetrics", session=session)
        height = int(metrics["cssContentSize"]["height"])
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        visit.screenshot = base64.b64decode(shot["data"])
        for ev in [e for e in self.events if e.get("sessionId") == session]:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                visit.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                visit.errors.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                visit.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                visit.errors.append(f"load failed: {p.get('errorText')}")
        self.events = [e for e in self.events if e.get("sessionId") != session]
        self.send("Target.closeTarget", {"targetId": target})
        return visit

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
