"""Tests of the ``quiesce`` command line (CONTRACT §1, §2, §6) as real processes.

Each test runs ``python -m supervisor`` in a subprocess. Waits are bounded and event-driven:
stderr is read line by line by a thread into a queue, and the test waits on that queue (or on
the process) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

QUIESCE = [sys.executable, "-m", "quiesce.supervisor"]
READY_TIMEOUT = 25.0
EXIT_TIMEOUT = 30.0
FAIL_FAST = 15.0


def _env() -> dict[str, str]:
    """The environment without any QUIESCE_* setting that could leak into the process."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QUIESCE_")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Running:
    """A ``quiesce`` process whose stderr lines are collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [*QUIESCE, *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first stderr line matching ``pattern``; fails at ``timeout`` or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stderr ended without {pattern!r}: {self.lines}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=EXIT_TIMEOUT)


def http_status(port: int, path: str) -> int:
    """Status code of a plain GET of ``path`` on loopback ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status_line = sock.makefile("rb").readline().decode()
    match = re.match(r"HTTP/1\.1 (\d{3}) ", status_line)
    assert match, status_line
    return int(match.group(1))


def run_to_exit(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``quiesce args`` to completion within ``timeout`` seconds."""
    return subprocess.run([*QUIESCE, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_serve_with_the_embedded_broker_says_ready_answers_readyz_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    """An embedded-broker gateway logs its ready URL, answers /readyz 200, and SIGTERM exits 0."""
    running = Running(["serve", "--port", "0", "--data-dir", str(tmp_path / "data")], tmp_path)
    try:
        match = running.wait_for_line(r"ready on http://127\.0\.0\.1:(\d+)", READY_TIMEOUT)
        port = int(match.group(1))
        assert port != 0
        assert http_status(port, "/readyz") == 200
        assert http_status(port, "/healthz") == 200
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=EXIT_TIMEOUT) == 0
        assert (tmp_path / "data").is_dir(), "the embedded broker keeps its data in --data-dir"
    finally:
        running.kill()


def test_serve_with_an_unreachable_pulsar_url_fails_fast_naming_the_url(tmp_path: Path) -> None:
    """A broker URL with nothing listening makes serve exit non-zero quickly, naming the URL."""
    url = f"pulsar://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = run_to_exit(["serve", "--port", "0", "--pulsar-url", url], tmp_path, FAIL_FAST)
    assert time.monotonic() - started < FAIL_FAST
    assert result.returncode != 0
    assert url in result.stderr


def test_serve_on_a_port_in_use_fails_naming_the_port(tmp_path: Path, broker_url: str) -> None:
    """A port another socket listens on makes serve exit non-zero, naming that port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(["serve", "--port", str(port), "--pulsar-url", broker_url],
                             tmp_path, FAIL_FAST)
    assert result.returncode != 0
    assert str(port) in result.stderr
    assert "ready on" not in result.stderr


def test_serve_on_a_port_in_use_reports_one_clean_error_line_and_exits_1(
    tmp_path: Path, broker_url: str
) -> None:
    """A port in use is a start-up failure: exit 1 and a `quiesce: error:` line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(["serve", "--port", str(port), "--pulsar-url", broker_url],
                             tmp_path, FAIL_FAST)
    assert "Traceback" not in result.stderr, result.stderr
    assert f"quiesce: error: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("value", ["abc", "70000", "-1"])
def test_a_bad_port_value_is_a_usage_error_naming_port(tmp_path: Path, value: str) -> None:
    """A --port that is not a port number exits 2 with a message naming port."""
    result = run_to_exit(["serve", "--port", value], tmp_path, FAIL_FAST)
    assert result.returncode == 2, result.stderr
    assert "port" in result.stderr
    assert value in result.stderr


def test_config_shows_a_flag_value_and_its_source(tmp_path: Path) -> None:
    """`quiesce config --port 9999` prints port = 9999 with the source flag --port."""
    result = run_to_exit(["config", "--port", "9999"], tmp_path, FAIL_FAST)
    assert result.returncode == 0, result.stderr
    port_lines = [line for line in result.stdout.splitlines() if line.startswith("port ")]
    assert len(port_lines) == 1, result.stdout
    assert re.fullmatch(r"port = 9999\s+# flag --port", port_lines[0]), port_lines[0]


def test_json_logs_have_one_structured_line_per_lifecycle_transition(
    tmp_path: Path, broker_url: str
) -> None:
    """With --log-format json every line is JSON, and each transition names machine and states."""
    import json

    from websockets.sync.client import connect

    running = Running(["serve", "--port", "0", "--pulsar-url", broker_url,
                       "--log-format", "json"], tmp_path)
    try:
        match = running.wait_for_line(r"ready on http://127\.0\.0\.1:(\d+)", READY_TIMEOUT)
        port = int(match.group(1))
        with connect(f"ws://127.0.0.1:{port}/api/v1/flow/logs/import/triples?receipts=true",
                     open_timeout=10, close_timeout=10) as ws:
            ws.send('{"not": "a triples message"}')
            assert json.loads(ws.recv(timeout=10))["error"]["seq"] == 1
        running.process.send_signal(signal.SIGTERM)
        running.wait_for_line(r"stopped -> exited", EXIT_TIMEOUT)
        assert running.process.wait(timeout=EXIT_TIMEOUT) == 0
    finally:
        running.kill()
    running._thread.join(timeout=EXIT_TIMEOUT)
    while not running._queue.empty():
        line = running._queue.get()
        if line is not None:
            running.lines.append(line)
    records = [json.loads(line) for line in running.lines if line.startswith("{")]
    assert len(records) == len([line for line in running.lines if line.strip()]), running.lines
    transitions = {(r["machine"], r["source"], r["target"], r["event"])
                   for r in records if "machine" in r}
    for expected in [
        ("supervisor", "starting", "serving", "ready"),
        ("supervisor", "stopped", "exited", "exit"),
        ("connection", "opening", "running", "opened"),
        ("connection", "running", "draining", "client_closed"),
        ("connection", "draining", "closing", "drained"),
        ("connection", "closing", "closed", "socket_closed"),
        ("publisher", "running", "draining", "drain"),
        ("publisher", "draining", "stopped", "conclude"),
    ]:
        assert expected in transitions, (expected, transitions)
    # The connection may or may not have closed before SIGTERM: the drain either waited for
    # it (serving -> draining -> stopped) or found none (serving -> stopped).
    drains = {(s, t) for m, s, t, e in transitions if m == "supervisor" and e == "drain"}
    assert drains in ({("serving", "draining")}, {("serving", "stopped")}), transitions
    assert all(r["actor"] for r in records if "machine" in r)


def test_an_embedded_broker_that_cannot_start_is_reported_with_its_reason(tmp_path: Path) -> None:
    """A second gateway on a busy --data-dir exits 1 naming the broker's own error (the lock)."""
    data = tmp_path / "data"
    first = Running(["serve", "--port", "0", "--data-dir", str(data)], tmp_path)
    try:
        first.wait_for_line(r"ready on http://127\.0\.0\.1:(\d+)", READY_TIMEOUT)
        result = run_to_exit(["serve", "--port", "0", "--data-dir", str(data)], tmp_path,
                             READY_TIMEOUT)
        assert result.returncode == 1, result.stderr
        assert "quiesce: error: embedded broker exited" in result.stderr
        assert "LOCK" in result.stderr and "--data-dir" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=EXIT_TIMEOUT) == 0
        first.kill()
