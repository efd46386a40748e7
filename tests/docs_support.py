"""Support for tests/test_docs.py: running the documentation's code examples, and a headless browser.

The convention, for every page under docs/ (the API reference pages hold no examples):

- A ```python block runs. A page's blocks run in order, in one namespace, in a fresh temporary directory
  (the page's working directory), so a block may use what an earlier block of the page defined.
- A ```console block holds `$ fitloop ...` lines. Each runs through `fitloop.cli.main` in the page's
  directory; the lines after it, up to the next `$` line, are its expected output (stdout and stderr
  together, as a terminal shows them). A command must exit 0, unless it ends with a `# exit N` comment.
- A ```text title="Output" block right after a ```python block is what that block prints (stdout and stderr
  together; Python warnings are left out).
- A block with a file name as its title (```toml title="run.toml"```, ```csv title="new.csv"```) is
  written to that file in the page's directory before the next block runs.
- A block preceded by `<!-- docs-test: skip REASON -->` is not run: REASON says why (a GPU, several
  machines, a server that never returns, a package that is not installed). The tests report each one.
- Any other block (```text without a title, ```bash with no `$`) is illustration, not an example, and
  must not hold a command: the test fails on a ```bash block, so a shell example is a ```console block.

Expected output is compared line by line after normalising what must vary between runs, and only that:
- durations (`0.21s`, `3ms`) become `<t>s`/`<t>ms`: timings differ on every run;
- the page's temporary directory is removed from paths;
- blank lines at the start and the end go, and runs of spaces and of table-rule characters become one:
  a rich table's column widths follow the width of the timings in it, and a tab or two spaces are not what
  a reader checks.
In the expected text, a line that is only `...` stands for any number of lines, and `...` inside a line for
any text on that line (doctest's ELLIPSIS), so a page may show only the part of an output it talks about.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>.*)$")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s+(?P<reason>.+?)\s*-->")
TITLE = re.compile(r'title="(?P<title>[^"]*)"')
EXIT_CODE = re.compile(r"#\s*exit\s+(?P<code>\d+)\s*$")
RUNNABLE = {"python", "console"}
DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(ms|s)\b")
RULES = re.compile(r"[─━═]+")
SPACES = re.compile(r"[ \t]+")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    title: str
    code: str
    skip: str | None = None  # the reason, when marked `docs-test: skip`
    output: Block | None = field(default=None, repr=False)  # the ```text title="Output" block after it

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, with its skip mark; an Output block is attached to the block before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        title = TITLE.search(info)
        block = Block(page, i + 1, info.split()[0] if info else "", title.group("title") if title else "",
                      "\n".join(body) + "\n", _skip_reason(lines, i))
        if block.lang == "text" and block.title == "Output" and blocks and _only_blank(lines, blocks[-1], i):
            blocks[-1].output = block
        else:
            blocks.append(block)
        i = end + 1
    return blocks


def _skip_reason(lines: list[str], fence: int) -> str | None:
    """The reason of a `<!-- docs-test: skip ... -->` line above the fence (blank lines between are allowed)."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = SKIP.search(lines[j]) if j >= 0 else None
    return m.group("reason") if m else None


def _only_blank(lines: list[str], previous: Block, fence: int) -> bool:
    """Whether nothing but blank lines stands between the end of `previous` and the fence at `fence`."""
    closing = previous.line + previous.code.count("\n")  # 0-based index of previous's closing fence
    return all(not line.strip() for line in lines[closing + 1:fence])


def normalise(text: str, workdir: Path | None = None) -> str:
    """The text with what must vary between runs made equal (see the module docstring)."""
    if workdir is not None:
        for spelling in {str(workdir), str(workdir.resolve())}:
            text = text.replace(spelling + "/", "").replace(spelling, ".")
    text = DURATION.sub(r"<t>\1", text)
    text = RULES.sub("─", text)
    lines = [SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip("\n")


def matches(expected: str, actual: str) -> bool:
    """Whether normalised `actual` matches normalised `expected`, with `...` as a wildcard (see above)."""
    parts = []
    for line in expected.split("\n"):
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.fullmatch("".join(parts), actual + "\n") is not None


def mismatch(block: Block, expected: str, actual: str) -> str:
    """The assertion message: where, what the page shows, what the code printed."""
    return (f"{block.where}: the output shown in the docs is not what the code prints (after normalising).\n"
            f"--- docs ---\n{expected}\n--- actual ---\n{actual}\n")


def run_python(block: Block, namespace: dict) -> str:
    """Runs a python block in `namespace`; returns what it printed, stdout and stderr interleaved as a terminal
    shows them. Python warnings are not part of it: the test runner's warning capture would decide."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the docs' own examples
    return out.getvalue()


@dataclass
class Command:
    """One `$ fitloop ...` line of a console block and the output shown under it."""

    argv: list[str]
    expected: str
    exit_code: int


def console_commands(block: Block) -> list[Command]:
    """The commands of a console block; a line before the first `$` is an error in the page."""
    commands: list[Command] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            m = EXIT_CODE.search(line)
            argv = shlex.split(line[2:], comments=True)
            if not argv or argv[0] != "fitloop":
                raise AssertionError(f"{block.where}: only `$ fitloop ...` commands run here; mark the block "
                                     f"`<!-- docs-test: skip REASON -->` if it cannot run: {line!r}")
            commands.append(Command(argv[1:], "", int(m.group("code")) if m else 0))
        elif commands:
            commands[-1].expected += line + "\n"
        elif line.strip():
            raise AssertionError(f"{block.where}: a console block starts with a `$ ` command: {line!r}")
    return commands


def run_fitloop(argv: list[str]) -> tuple[int, str]:
    """`fitloop ARGV` in this process; returns the exit code and stdout and stderr interleaved."""
    from fitloop.cli import main  # the package under test; imported here so collecting the docs tests is cheap

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


def write_file(block: Block, workdir: Path) -> None:
    """A block titled with a file name: its text goes into that file, for the blocks after it."""
    path = workdir / block.title
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.code, encoding="utf-8")


def is_file_title(title: str) -> bool:
    return bool(title) and title != "Output" and " " not in title and "." in title


# --- the built site in headless Chromium, driven over the DevTools protocol (standard library only) ---


class DevTools:
    """A minimal DevTools-protocol client: one websocket to the browser, one page attached in flat mode."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        parsed = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"DevTools refused the websocket: {response[:200]!r}")
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, payload: bytes) -> None:
        header = bytearray([0x81])  # FIN, text frame; a client masks every frame (RFC 6455)
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)
        self.sock.sendall(bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self) -> dict:
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            message += self._read(length)
            if first & 0x80:  # FIN: the last fragment
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        """Sends one command (to the attached page, once there is one) and returns its result."""
        self.next_id += 1
        request: dict = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            request["sessionId"] = self.session
        self._send_frame(json.dumps(request).encode())
        while True:
            message = self._receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        """The first `event` not yet seen (events that arrived meanwhile are kept in `events`)."""
        deadline = time.monotonic() + timeout
        for i, seen in enumerate(self.events):
            if seen.get("method") == event:
                return self.events.pop(i)
        while time.monotonic() < deadline:
            message = self._receive()
            if message.get("method") == event:
                return message
            self.events.append(message)
        raise TimeoutError(f"no {event} within {timeout}s")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open_page(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported since the last navigation."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:500])
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def serve_directory(root: Path):
    """An HTTP server for `root` on 127.0.0.1 and a free port, in a thread; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature; keep pytest's output clean
        pass


@contextlib.contextmanager
def headless_chromium(chromium: str, profile: Path):
    """Headless Chromium with DevTools on a free port; yields a DevTools client with one page open."""
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        ws_url = _devtools_url(proc)
        client = DevTools(ws_url)
        client.open_page()
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _devtools_url(proc: subprocess.Popen) -> str:
    """The browser's websocket address, from the line Chromium prints on stderr when DevTools listens."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:  # keep reading what it prints, so a full pipe never blocks it
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return m.group(1)
    raise RuntimeError("Chromium did not start DevTools:\n" + "".join(seen[-20:]))
