"""Debian's headless ``chromium`` driven over the DevTools protocol (aiohttp's WebSocket client,
already a dependency): load a page, evaluate JavaScript, click with real mouse events, screenshot.

    async with Chromium(tmp_path) as browser:
        await browser.navigate(url)
        await browser.wait_for("document.body.dataset.loaded === 'true'", 30)
        await browser.click('button[data-outcome="accepted"]')

``python -m harness.chromium URL OUT.png [--wait JS]`` saves a screenshot (the README's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp


class Chromium:
    def __init__(self, directory: Path, width: int = 1280, height: int = 900) -> None:
        self.directory = directory
        self.size = (width, height)
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        assert binary, "Debian's chromium is not installed (apt-get install chromium)"
        profile = self.directory / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._log = open(self.directory / "chromium.log", "ab")  # noqa: SIM115 - closed in __aexit__
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--window-size={self.size[0]},{self.size[1]}", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {(self.directory / 'chromium.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(10)
        self._log.close()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._ws is not None
        message_id = next(self._ids)
        await self._ws.send_json({"id": message_id, "method": method, "params": params or {}})
        while True:
            reply = await self._ws.receive_json(timeout=60)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str | None = None) -> Any:
        """Poll ``expression`` until truthy (throwing counts as not yet: the page may still be loading)."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = await self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                status = await self.evaluate("document.getElementById('status') && document.getElementById('status').textContent")
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression} (page status: {status!r})")
            await asyncio.sleep(0.2)

    async def click(self, selector: str) -> None:
        """A real left click (mouse pressed and released) in the middle of the element."""
        quoted = selector.replace("\\", "\\\\").replace("'", "\\'")
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector('{quoted}'); if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        assert box, f"no element matches {selector}"
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(data["data"]))
        return path


async def _screenshot(url: str, out: Path, wait: str, height: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with Chromium(Path(directory), height=height) as browser:
            await browser.navigate(url)
            await browser.wait_for(wait, 60)
            await asyncio.sleep(0.5)  # let the plots draw
            await browser.screenshot(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--wait", default="document.body.dataset.loaded === 'true'")
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    asyncio.run(_screenshot(args.url, args.out, args.wait, args.height))


if __name__ == "__main__":
    main()
