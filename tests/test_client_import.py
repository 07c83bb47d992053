"""Integration tests of ``quiesce import`` (CONTRACT §3, §9): real gateways, a real broker.

The client runs either inside the test's Trio loop (`import_files`, with a `Watch` telling
how far it got) or as the real command in a child process (`command_process`), which a test
may SIGKILL. What reached Pulsar is read back with the harness's topic reader, and duplicates
(frames sent again after a crash) are counted and printed. Nothing sleeps: every wait is on a
count, a line of output, or a process, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import collections
import json
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pulsar
import trio

from quiesce.core.config import Settings
from quiesce.supervisor import Supervisor
from tests.data import id_of, sample_message
from tests.harness import (
    LONG,
    Watch,
    command_process,
    free_port,
    import_files,
    open_gateway_process,
    persisted,
    read_topic_counted,
    start_gateway,
    topic_of,
    wait_count,
)

SHORT = 10.0


def write_jsonl(path: Path, count: int, start: int = 0) -> list[str]:
    """Write ``count`` sample triples messages, one per line; return their ids in order."""
    messages = [sample_message("triples", i) for i in range(start, start + count)]
    path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    return [id_of(m) for m in messages]


def stored_ids(client: pulsar.Client, flow: str, expected: int) -> collections.Counter[str]:
    """How many times each message id is stored in the flow's triples topic."""
    read = read_topic_counted(client, topic_of("triples", flow), expected)
    return collections.Counter(id_of(m) for m in read.messages())


def summary_counts(lines: list[str]) -> dict[str, int]:
    """The numbers of the ``summary:`` line of an import's output."""
    line = next(line for line in lines if line.startswith("summary:"))
    return {name: int(n) for n, name in (
        (m.group(2), m.group(1)) for m in re.finditer(r"(sent|receipted|rejected|resent|"
                                                     r"skipped|not receipted) (\d+)", line))}


# ---------------------------------------------------------------- bad input


async def test_bad_lines_are_reported_with_file_line_and_detail_and_the_good_ones_land(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """Each bad line is reported as file:line with the gateway's detail; the 7 good lines land."""
    good = [sample_message("triples", i) for i in range(7)]
    missing_user = sample_message("triples", 100)
    del missing_user["metadata"]["user"]
    wrong_type = sample_message("triples", 101)
    wrong_type["triples"][0]["s"]["e"] = "true"
    lines = [json.dumps(good[0]), "not json at all", json.dumps(good[1]), "",
             json.dumps(missing_user), json.dumps(good[2]), json.dumps(good[3]), "[1, 2]",
             json.dumps(wrong_type), json.dumps(good[4]), json.dumps(good[5]),
             json.dumps(good[6])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")

    report = await import_files(gateway, flow, [path])

    rejected = {r.where: (r.code, r.detail) for r in report.rejections}
    assert rejected == {
        f"{path}:2": ("invalid-message", rejected[f"{path}:2"][1]),
        f"{path}:5": ("invalid-message", "metadata.user: missing"),
        f"{path}:8": ("invalid-message", "expected a JSON object, got array"),
        f"{path}:9": ("invalid-message", "triples[0].s.e: expected boolean, got string"),
    }
    assert rejected[f"{path}:2"][1].startswith("not JSON")
    assert report.receipted == 7
    assert report.unsettled == 0
    assert report.exit_code == 1
    text = "\n".join(report.lines())
    assert f"rejected {path}:9: invalid-message: triples[0].s.e: expected boolean" in text
    assert "summary: sent 11, receipted 7, rejected 4" in text
    stored = await persisted(pulsar_client, topic_of("triples", flow), 7)
    assert [id_of(m) for m in stored] == [id_of(m) for m in good]


async def test_rdf_a_tg1_gateway_cannot_carry_is_rejected_naming_the_message_and_triple(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """2.x RDF into a tg1 flow: the message with a language tag is refused, the plain one lands."""
    path = tmp_path / "mixed.ttl"
    path.write_text('@prefix ex: <http://example.org/> .\n'
                    'ex:a ex:name "A" .\nex:a ex:knows ex:b .\n'
                    'ex:b ex:name "B" .\nex:b ex:name "Bé"@fr .\n')
    report = await import_files(gateway, flow, [path], batch=2)
    assert (report.frames_sent, report.receipted) == (2, 1)
    (rejection,) = report.rejections
    assert rejection.where == f"{path}: message 2 (triples 3-4), triple 4"
    assert (rejection.code, rejection.detail) == (
        "invalid-message", "triples[1].o.ln: tg1 cannot carry a literal language tag")
    assert report.exit_code == 1
    (stored,) = await persisted(pulsar_client, topic_of("triples", flow), 1)
    assert stored["triples"] == [
        {"s": {"v": "http://example.org/a", "e": True},
         "p": {"v": "http://example.org/name", "e": True}, "o": {"v": "A", "e": False}},
        {"s": {"v": "http://example.org/a", "e": True},
         "p": {"v": "http://example.org/knows", "e": True},
         "o": {"v": "http://example.org/b", "e": True}},
    ]


async def test_a_bad_token_exits_non_zero_at_once_naming_401(
    nursery: trio.Nursery, settings: Settings, flow: str, tmp_path: Path
) -> None:
    """A wrong --token gets HTTP 401 at the handshake: exit 3 within seconds, no retry."""
    gateway = await start_gateway(nursery, settings, secret="right-secret")
    path = tmp_path / "data.jsonl"
    write_jsonl(path, 3)
    command = ["import", "--url", f"ws://127.0.0.1:{gateway.port}", "--flow", flow,
               "--token", "wrong-secret", "--retry-for", "60", str(path)]
    started = trio.current_time()
    process = command_process(*command)
    try:
        with trio.fail_after(SHORT):
            code = await process.wait_exit_async(SHORT)
    finally:
        process.stop(0)
    elapsed = trio.current_time() - started
    print(f"\nbad token: exit {code} after {elapsed:.2f}s: {process.log(3)}")
    assert code == 3
    assert elapsed < SHORT
    assert process.find(r"error: HTTP 401 unauthorized at 127\.0\.0\.1:\d+/api/v1/flow/"
                        rf"{flow}/import/triples: the gateway refused the token given")
    assert process.find(r"summary: sent 0, receipted 0, rejected 0, resent 0, skipped 0, "
                        r"not receipted 3")
    gateway.request_shutdown()


async def test_an_unknown_kind_is_refused_with_the_gateways_404_reason(
    gateway: Supervisor, flow: str, tmp_path: Path
) -> None:
    """An unknown kind gets HTTP 404 with the gateway's one-line reason, and no retry."""
    path = tmp_path / "data.jsonl"
    write_jsonl(path, 2)
    report = await import_files(gateway, flow, [path], kind="no-such-kind")
    assert report.failure is not None
    assert re.fullmatch(r"HTTP 404 at 127\.0\.0\.1:\d+/api/v1/flow/\w+/import/no-such-kind: "
                        r".*no-such-kind.*", str(report.failure)), str(report.failure)
    assert report.exit_code == 3
    assert report.connections == 0
    assert report.unsettled == 2


# ---------------------------------------------------------------- crashes and restarts


async def test_a_client_killed_half_way_then_rerun_delivers_everything_and_says_what_it_skipped(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGKILL mid-import, same command again: every message stored; the rerun skips and resends."""
    total = 20_000
    path = tmp_path / "big.jsonl"
    ids = write_jsonl(path, total)
    command = ["import", "--url", f"ws://127.0.0.1:{gateway.port}", "--flow", flow,
               "--window", "100", "--progress", "lines", str(path)]

    first = command_process(*command)
    try:
        with trio.fail_after(LONG):
            at_kill = await wait_count(first, r"progress: (\d+)/20000", total // 5)
    finally:
        first.stop(0)  # SIGKILL: no state written on the way out
    assert first.process.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "big.jsonl.quiesce-state").read_text())
    (entry,) = state["entries"].values()
    # The state is written 20 times a second, so it may lag the last progress line.
    assert at_kill < total and 0 < entry["done"] < total, "not killed half-way"

    second = command_process(*command)
    try:
        with trio.fail_after(LONG):
            code = await second.wait_exit_async(LONG)
    finally:
        second.stop(0)
    counts = summary_counts(second.lines)
    resume = second.find(r"resuming after message \d+ of 20000")
    print(f"\nkilled at {at_kill} receipted ({entry['done']} in the state); rerun: "
          f"{resume[0]}\n{second.find('summary:')[0]}")
    assert code == 0, second.log()
    assert counts["skipped"] == entry["done"]
    assert counts["sent"] == total - entry["done"]
    assert counts["receipted"] == total - entry["done"]
    assert counts["resent"] == max(0, entry["sent"] - entry["done"])
    assert counts["rejected"] == counts["not receipted"] == 0

    stored = await trio.to_thread.run_sync(stored_ids, pulsar_client, flow, total)
    duplicates = sum(stored.values()) - len(stored)
    print(f"stored {sum(stored.values())} messages for {len(stored)} ids: {duplicates} "
          "duplicates (receipts the kill lost)")
    assert set(stored) == set(ids)
    # Nothing the state file records as settled is sent again, and nothing comes three times.
    position = {message_id: n for n, message_id in enumerate(ids, 1)}
    assert all(position[i] > entry["done"] for i, c in stored.items() if c > 1)
    assert max(stored.values()) <= 2


async def test_a_gateway_restarted_mid_import_is_reconnected_and_nothing_is_lost(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGTERM the gateway mid-import and start another on its port: the import completes."""
    total = 10_000
    path = tmp_path / "data.jsonl"
    ids = write_jsonl(path, total)
    port = free_port()
    watch = Watch()
    done = trio.Event()
    reports = []

    async def run_import() -> None:
        reports.append(await import_files(SimpleNamespace(port=port), flow, [path],
                                          watch=watch, window=200, retry_for=LONG))
        done.set()

    async with trio.open_nursery() as nursery:
        async with open_gateway_process("--port", str(port), pulsar_url=broker_url,
                                        data_dir=tmp_path / "gw1") as first:
            nursery.start_soon(run_import)
            with trio.fail_after(LONG):
                await watch.reached(total // 4)
            at_restart = watch.completed
            first.signal(signal.SIGTERM)
            assert await first.wait_exit_async(LONG) == 0, first.log()
        async with open_gateway_process("--port", str(port), pulsar_url=broker_url,
                                        data_dir=tmp_path / "gw2") as second:
            with trio.fail_after(LONG):
                await done.wait()
            second.signal(signal.SIGTERM)
            assert await second.wait_exit_async(LONG) == 0, second.log()

    (report,) = reports
    print(f"\nrestarted at {at_restart} receipted; {report.connections} connections, "
          f"{report.resent} resent; notes: {watch.notes}")
    assert 0 < at_restart < total
    assert report.exit_code == 0, report.lines()
    assert report.receipted == total
    assert report.connections >= 2
    assert any("draining" in note or "connection ended" in note for note in watch.notes)
    stored = await trio.to_thread.run_sync(stored_ids, pulsar_client, flow, total)
    duplicates = sum(stored.values()) - len(stored)
    print(f"stored {sum(stored.values())} messages for {len(stored)} ids: {duplicates} "
          "duplicates")
    assert set(stored) == set(ids)
    assert duplicates <= report.resent
