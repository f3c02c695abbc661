"""A headless Chromium driven over the DevTools protocol, with the standard library only.

Chromium's `--remote-debugging-pipe` reads protocol messages (JSON, each ended by a NUL byte) on its file
descriptor 3 and writes its answers and events on 4: two pipes, no port, no websocket library. The page's
console errors, uncaught exceptions and failed loads are collected as they come (`errors`).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# a tiny launcher: the two pipe ends become the browser's fds 3 and 4 (copied above 10 first, so that neither
# overwrites the other), then it becomes the browser
WIRE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
for fd in ends + [int(fd) for fd in sys.argv[1:3] if int(fd) not in (3, 4)]:
    os.close(fd)
os.execvp(sys.argv[3], sys.argv[3:])
"""
BINARIES = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')


def find_chromium() -> Optional[str]:
    return next((path for path in map(shutil.which, BINARIES) if path), None)


class Chromium:
    """One headless browser with one page. Use as a context manager; `errors` lists what went wrong on the page."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        self.errors: List[str] = []
        self._next_id = 0
        self._buffer = b''
        self._events: List[Dict[str, Any]] = []
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        cmd = [binary, '--headless', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu',
               '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check', '--disable-extensions',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               f'--user-data-dir={profile}', f'--window-size={width},{height}', 'about:blank']
        self.proc = subprocess.Popen([sys.executable, '-c', WIRE, str(to_child_r), str(from_child_w), *cmd],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        target = self.call('Target.createTarget', url='about:blank')['targetId']
        self.session = self.call('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        for domain in ('Page', 'Runtime', 'Log'):
            self.call(f'{domain}.enable', session=True)
        self.call('Emulation.setDeviceMetricsOverride', session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ---------------------------------------------------------------------------- protocol

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b'\0' not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError(f'chromium did not answer within {self.timeout} s')
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f'chromium exited (status {self.proc.poll()})')
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b'\0', 1)
        message = json.loads(raw)
        if 'method' in message:
            self._on_event(message)
        return message

    def _on_event(self, message: Dict[str, Any]) -> None:
        method, params = message['method'], message.get('params', {})
        if method == 'Runtime.exceptionThrown':
            details = params['exceptionDetails']
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == 'Runtime.consoleAPICalled' and params['type'] in ('error', 'assert'):
            self.errors.append('console.error: ' + ' '.join(str(a.get('value', a.get('description')))
                                                           for a in params['args']))
        elif method == 'Log.entryAdded' and params['entry']['level'] == 'error':
            self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}".strip())
        self._events.append(message)

    def call(self, method: str, session: bool = False, **params: Any) -> Dict[str, Any]:
        self._next_id += 1
        message: Dict[str, Any] = {'id': self._next_id, 'method': method, 'params': params}
        if session:
            message['sessionId'] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b'\0')
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._read_message(deadline)
            if got.get('id') == self._next_id:
                if 'error' in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get('result', {})

    def wait_event(self, method: str) -> Dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self._events):
                if event['method'] == method:
                    return self._events.pop(i)
            self._read_message(deadline)

    # ---------------------------------------------------------------------------- page

    def open(self, url: str) -> None:
        self._events.clear()
        self.call('Page.navigate', session=True, url=url)
        self.wait_event('Page.loadEventFired')

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page; an exception in it fails the caller."""
        got = self.call('Runtime.evaluate', session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if 'exceptionDetails' in got:
            raise RuntimeError(f'{expression!r} threw: {got["exceptionDetails"]}')
        return got['result'].get('value')

    def screenshot(self, path: Path) -> Path:
        data = self.call('Page.captureScreenshot', session=True, format='png')['data']
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call('Browser.close')
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)

    def __enter__(self) -> 'Chromium':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
