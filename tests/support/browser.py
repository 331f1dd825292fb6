"""Headless Chromium driven over the DevTools protocol (CDP), for pages a person clicks.

    with Browser(tmp_path) as page:
        page.goto("http://127.0.0.1:8000/review")
        page.type_into("#key", "tq_...")
        page.click("#signin")                       # a real mouse press and release
        page.wait_for("document.querySelector('tr.approval') !== null")
        png = page.screenshot(tmp_path / "review.png")

The Debian ``chromium`` package with the flags this machine needs (no sandbox as root, no
background networking: the closed network refuses it), a fresh profile per browser, and
one WebSocket to the page's target (``websockets``, already an Agents SDK dependency).
``chromium()`` fails under ``CI=true`` when Chromium is missing and skips elsewhere.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.tools import missing

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    missing(f"Chromium is not installed; the project setup installs it: {CHROMIUM_INSTALL}")


class Browser:
    """One Chromium process with one page; every call waits for its answer."""

    def __init__(self, folder: Path, width: int = 1400, height: int = 900) -> None:
        self.folder = folder
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self.ids = itertools.count(1)
        self.console: list[str] = []  # console messages and uncaught exceptions

    def __enter__(self) -> Browser:
        profile = self.folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None)
            for domain in ("Page", "Runtime"):
                self.send(f"{domain}.enable")
            self.send(  # the viewport itself, whatever the window's frame takes
                "Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def _devtools_port(self, path: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.folder / "chromium.log").read_text(errors="replace")
                raise AssertionError(f"Chromium exited ({self.proc.returncode}): {log[-2000:]}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.05)
        raise AssertionError("Chromium did not open its DevTools port")

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile are recorded)."""
        assert self.ws is not None
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            texts = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
            self.console.append(f"{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console.append(f"exception: {details.get('exception', {}).get('description')}")

    def evaluate(self, expression: str) -> Any:
        """The expression's value (JSON-able; promises awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # ------------------------------------------------------------------ what a person does
    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}\nconsole: {self.console}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real left click (press and release) in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width}; })()"
        )
        assert box and box["w"] > 0, f"nothing visible to click at {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                button="left" if kind != "mouseMoved" else "none", clickCount=1,
            )  # fmt: skip

    def type_into(self, selector: str, text: str) -> None:
        """Click into the field and type, as a keyboard would."""
        self.click(selector)
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data
