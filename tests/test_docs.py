"""The docs stay true: diagrams match the machines, the alert rules name exported metrics."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from quiesce.supervisor import Supervisor, render_diagrams
from tests.harness import http_get

DOCS = Path(__file__).resolve().parent.parent / "docs"
# PromQL words that look like metric names in an expression but are not.
PROMQL_WORDS = {"increase", "rate", "sum", "clamp_min", "or", "and", "by", "without"}


def test_docs_diagrams_match_what_quiesce_diagrams_writes_now(tmp_path: Path) -> None:
    """docs/diagrams holds exactly what `quiesce diagrams` renders from the machines today."""
    written = render_diagrams(tmp_path)
    assert written, "no diagram rendered"
    for path in written:
        committed = DOCS / "diagrams" / path.name
        assert committed.exists(), f"{committed} missing: run `quiesce diagrams`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `quiesce diagrams`"
        )
    assert {p.name for p in (DOCS / "diagrams").iterdir()} == {p.name for p in written}


def test_every_page_embeds_existing_diagrams() -> None:
    """Every diagram a docs page links to exists, and every machine's SVG is linked somewhere."""
    pages = "".join(p.read_text() for p in DOCS.glob("*.md"))
    linked = set(re.findall(r"diagrams/([a-z_]+\.svg)", pages))
    svgs = {p.name for p in (DOCS / "diagrams").glob("*.svg")}
    assert linked == svgs


def alert_metric_names(text: str) -> set[str]:
    """Metric names used in the ``expr:`` of each rule in an alerts file."""
    names: set[str] = set()
    exprs = re.findall(r"expr:\s*(\|[^\n]*\n(?:\s{10,}[^\n]*\n)+|[^\n]+)", text)
    for expr in exprs:
        for word in re.findall(r"\b[a-z][a-z0-9_]*\b", expr.lstrip("|")):
            if "_" in word and word not in PROMQL_WORDS:
                names.add(word)
    return names


async def exported_families(port: int) -> set[str]:
    """The metric families a gateway's /metrics declares (its ``# TYPE`` lines)."""
    status, text = await http_get(port, "/metrics")
    assert status == 200
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


async def test_every_metric_in_the_alert_rules_is_exported(
    nursery: trio.Nursery, gateway: Supervisor
) -> None:
    """Each metric docs/alerts.yml names is a metric family the gateway exposes on /metrics."""
    names = alert_metric_names((DOCS / "alerts.yml").read_text())
    assert len(names) >= 6, names
    families = await exported_families(gateway.port)
    for name in names:
        # prometheus-client names a counter's family with or without _total by version.
        assert {name, name.removesuffix("_total")} & families, f"{name} is not exported"


def dashboard_metric_names(dashboard: dict[str, object]) -> set[str]:
    """Metric names used in the ``expr`` of every panel target of a Grafana dashboard."""
    names: set[str] = set()
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel["targets"]:
            for word in re.findall(r"\b[a-z][a-z0-9_]*\b", target["expr"]):
                if "_" in word and word not in PROMQL_WORDS | {"histogram_quantile"}:
                    names.add(word.removesuffix("_bucket").removesuffix("_count")
                              .removesuffix("_sum"))
    return names


async def test_every_metric_the_grafana_dashboard_queries_is_exported(
    nursery: trio.Nursery, gateway: Supervisor
) -> None:
    """Each metric docs/grafana-dashboard.json queries is a family the gateway exposes."""
    import json

    names = dashboard_metric_names(json.loads((DOCS / "grafana-dashboard.json").read_text()))
    assert len(names) >= 12, names
    families = await exported_families(gateway.port)
    missing = [n for n in names if not {n, n.removesuffix("_total")} & families]
    assert missing == [], f"queried but not exported: {missing}"


def test_the_cli_reference_names_every_option_of_import_and_export() -> None:
    """docs/cli.md documents every flag `quiesce import` and `quiesce export` accept."""
    from quiesce.supervisor import _parser

    page = (DOCS / "cli.md").read_text()
    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    for name in ("import", "export"):
        command = subparsers.choices[name]  # type: ignore[attr-defined]
        flags = {f for a in command._actions for f in a.option_strings if f.startswith("--")}
        missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in page)
        assert not missing, f"docs/cli.md does not name {name} {missing}"
        help_text = command.format_help()
        if name == "export":
            assert "whole graph is serialised when the export ends" in help_text


def test_the_settings_reference_in_operations_is_what_the_settings_model_renders() -> None:
    """docs/operations.md's settings table is `quiesce config --reference`, so it cannot drift."""
    from quiesce.core.config import render_reference

    text = (DOCS / "operations.md").read_text()
    begin = text.index("<!-- settings:begin")
    table = text[text.index("\n", begin) + 1:text.index("<!-- settings:end -->")]
    assert table == render_reference()
