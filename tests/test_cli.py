"""Tests of the ``quiesce`` command line (CONTRACT §1, §2, §6) as real processes.

Each test runs ``python -m quiesce.supervisor`` in a subprocess (a serving one through
``gateway_process`` in tests/harness.py). Waits are bounded and event-driven: stderr is read
line by line by a thread, and the test waits on its lines (or on the process) with a timeout;
nothing sleeps.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.harness import clean_env, free_port, gateway_process, import_path

QUIESCE = [sys.executable, "-m", "quiesce.supervisor"]
READY_TIMEOUT = 25.0
EXIT_TIMEOUT = 30.0
FAIL_FAST = 15.0


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
    return subprocess.run([*QUIESCE, *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def serve_on_a_taken_port(tmp_path: Path, broker_url: str
                          ) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``quiesce serve`` on a port another socket listens on: (that port, the run)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(["serve", "--port", str(port), "--pulsar-url", broker_url],
                             tmp_path, FAIL_FAST)
    return port, result


def test_serve_with_the_embedded_broker_says_ready_answers_readyz_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    """An embedded-broker gateway logs its ready URL, answers /readyz 200, and SIGTERM exits 0."""
    with gateway_process(data_dir=tmp_path / "data", cwd=tmp_path) as gateway:
        assert gateway.port != 0
        assert http_status(gateway.port, "/readyz") == 200
        assert http_status(gateway.port, "/healthz") == 200
        gateway.signal(signal.SIGTERM)
        assert gateway.wait_exit(EXIT_TIMEOUT) == 0
        assert (tmp_path / "data").is_dir(), "the embedded broker keeps its data in --data-dir"


def test_serve_with_an_unreachable_pulsar_url_fails_fast_naming_the_url(tmp_path: Path) -> None:
    """A broker URL with nothing listening makes serve exit non-zero quickly, naming the URL."""
    url = f"pulsar://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_to_exit(["serve", "--port", "0", "--pulsar-url", url], tmp_path, FAIL_FAST)
    assert time.monotonic() - started < FAIL_FAST
    assert result.returncode != 0
    assert url in result.stderr


def test_serve_on_a_port_in_use_fails_naming_the_port(tmp_path: Path, broker_url: str) -> None:
    """A port another socket listens on makes serve exit non-zero, naming that port."""
    port, result = serve_on_a_taken_port(tmp_path, broker_url)
    assert result.returncode != 0
    assert str(port) in result.stderr
    assert "ready on" not in result.stderr


def test_serve_on_a_port_in_use_reports_one_clean_error_line_and_exits_1(
    tmp_path: Path, broker_url: str
) -> None:
    """A port in use is a start-up failure: exit 1 and a `quiesce: error:` line, no traceback."""
    port, result = serve_on_a_taken_port(tmp_path, broker_url)
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
    with gateway_process("--log-format", "json", pulsar_url=broker_url, cwd=tmp_path) as gateway:
        with connect(f"ws://127.0.0.1:{gateway.port}{import_path('logs')}",
                     open_timeout=10, close_timeout=10) as ws:
            ws.send('{"not": "a triples message"}')
            assert json.loads(ws.recv(timeout=10))["error"]["seq"] == 1
        gateway.signal(signal.SIGTERM)
        gateway.wait_line(r"stopped -> exited", timeout=EXIT_TIMEOUT)
        assert gateway.wait_exit(EXIT_TIMEOUT) == 0  # and its stderr read to the end
    lines = gateway.lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()]), lines
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
    with gateway_process(data_dir=data, cwd=tmp_path) as first:
        try:
            result = run_to_exit(["serve", "--port", "0", "--data-dir", str(data)], tmp_path,
                                 READY_TIMEOUT)
            assert result.returncode == 1, result.stderr
            assert "quiesce: error: embedded broker exited" in result.stderr
            assert "LOCK" in result.stderr and "--data-dir" in result.stderr
            assert "Traceback" not in result.stderr
        finally:
            first.signal(signal.SIGTERM)
            assert first.wait_exit(EXIT_TIMEOUT) == 0
