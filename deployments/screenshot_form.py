"""A picture of a deployment's run form as the Prefect UI renders it, to check that the
parameter models (flows/parameters.py) give a readable form.

Drives headless Chromium from Debian (``apt-get install chromium-headless-shell``)
over the DevTools protocol: it opens the deployment's Run page, waits until the form
shows every expected field label and the page has settled (the UI fades content in),
and saves a PNG.  Needs a running server with the deployments (infra/prefect/start.sh,
``prefect deploy --all`` in deployments/).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/screenshot_form.py \\
        [--deployment register-brain/register-brain] [--out deployments/register-brain-form.png]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

HERE = Path(__file__).resolve().parent
# Labels the register-brain form must show before the picture is taken.
EXPECTED = ["Parameters", "URI", "Spacing (Optional)", "Orientation (Optional)", "Schedule (Optional)", "Interpolation (Optional)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", default="register-brain/register-brain")
    parser.add_argument("--out", default=str(HERE / "register-brain-form.png"))
    parser.add_argument("--size", default="1400x2600", help="window WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    api = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/")
    with urllib.request.urlopen(f"{api}/deployments/name/{args.deployment}") as response:
        deployment_id = json.load(response)["id"]
    url = f"{api.removesuffix('/api')}/deployments/deployment/{deployment_id}/run"
    width, height = (int(v) for v in args.size.split("x"))
    png = screenshot(url, width, height, args.timeout)
    Path(args.out).write_bytes(png)
    print(f"{url} -> {args.out} ({len(png)} bytes)")


def screenshot(url: str, width: int, height: int, timeout: float) -> bytes:
    chromium = shutil.which(os.environ.get("CHROMIUM", "chromium-headless-shell"))
    if chromium is None:
        raise FileNotFoundError("chromium-headless-shell not found: apt-get install chromium-headless-shell")
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: Chromium refuses to sandbox as root; port 0: it picks a free one.
        # Its own session: Debian's launcher is a shell script that does not exec, so the
        # browser is stopped as a process group, not by the launcher's pid.
        browser = subprocess.Popen(
            [chromium, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            page = _page_socket(Path(profile) / "DevToolsActivePort", timeout)
            with connect(page, max_size=None) as socket:
                devtools = _DevTools(socket)
                devtools.call("Page.enable")
                devtools.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
                devtools.call("Page.navigate", url=url)
                check = f"{json.dumps(EXPECTED)}.every(label => document.body && document.body.innerText.includes(label))"
                deadline = time.monotonic() + timeout
                while not devtools.call("Runtime.evaluate", expression=check, returnByValue=True)["result"].get("value"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the form did not render within {timeout} s: {url}")
                    time.sleep(0.5)
                time.sleep(2)  # the UI fades content in
                return base64.b64decode(devtools.call("Page.captureScreenshot", format="png")["data"])
        finally:
            _stop_group(browser)


def _stop_group(browser: subprocess.Popen) -> None:
    """Stop the browser's process group and wait until every process of it is gone (its
    profile directory is removed next, which fails while Chromium still writes there)."""
    os.killpg(browser.pid, signal.SIGTERM)
    browser.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(browser.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _page_socket(port_file: Path, timeout: float) -> str:
    """The DevTools websocket of the browser's open page."""
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium did not start its DevTools endpoint")
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
        return next(t["webSocketDebuggerUrl"] for t in json.load(response) if t["type"] == "page")


class _DevTools:
    """Numbered DevTools calls on one websocket; events in between are ignored."""

    def __init__(self, socket) -> None:
        self.socket, self.next_id = socket, 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


if __name__ == "__main__":
    main()
