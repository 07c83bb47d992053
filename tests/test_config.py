"""Tests for core.config: defaults, precedence, conversion, errors, flows and rendering."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.core.config import (
    BACKPRESSURE,
    KINDS,
    LoadedSettings,
    Settings,
    load_settings,
    render_settings,
)
from quiesce.core.errors import ConfigError, RouteError

FIELD_NAMES = [f.name for f in fields(Settings)]


def write(tmp_path: Path, text: str, name: str = "q.toml") -> str:
    """Write ``text`` to a TOML file under ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def exact(message: str) -> str:
    """Return a regex that matches exactly ``message``."""
    return "^" + re.escape(message) + "$"


# --- defaults ------------------------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    """With no flags, environment or file every field has its default and source "default"."""
    loaded = load_settings({}, {})
    assert loaded.settings == Settings()
    assert set(loaded.sources) == set(FIELD_NAMES)
    assert set(loaded.sources.values()) == {"default"}


def test_default_values_match_the_contract() -> None:
    """The documented default values are the ones Settings() carries."""
    s = Settings()
    assert (s.host, s.port, s.pulsar_url, s.data_dir) == ("127.0.0.1", 8088, None, ".quiesce")
    assert (s.shutdown_timeout, s.secret, s.log_format, s.log_level) == (30.0, None, "text", "info")
    assert s.max_message_bytes == 50 * 1024 * 1024
    assert (s.profile, s.topic_template, s.import_drain_grace) == ("tg1", None, 5.0)
    assert (s.publisher_max_queue_size, s.publisher_drain_timeout) == (1000, 5.0)
    assert (s.producer_flush_timeout, s.producer_batching) == (5.0, True)
    assert (s.subscriber_max_queue_size, s.subscriber_drain_timeout) == (100, 5.0)
    assert (s.default_backpressure, s.nack_redelivery_delay_ms, s.export_window) == (
        "block",
        1000,
        1000,
    )
    assert (s.socket_grace_period, s.max_consecutive_errors) == (2.0, 10)
    assert (s.metrics_enabled, s.queue_stats_on_shutdown, s.broker_metrics_port) == (True, True, 0)
    assert s.flows == {}
    assert KINDS == ("triples", "graph-embeddings", "document-embeddings", "entity-contexts")
    assert BACKPRESSURE == ("block", "drop_oldest", "drop_new")


# --- precedence ----------------------------------------------------------------------------


def test_precedence_is_decided_per_key(tmp_path: Path) -> None:
    """Flag beats env beats file beats default, each key on its own, and sources say which."""
    path = write(
        tmp_path,
        'port = 1111\nhost = "file-host"\ndata_dir = "file-dir"\nexport_window = 7\n',
    )
    environ = {"QUIESCE_PORT": "2222", "QUIESCE_HOST": "env-host", "QUIESCE_LOG_LEVEL": "debug"}
    loaded = load_settings({"port": 3333, "secret": "s3"}, environ, path)
    s = loaded.settings
    assert s.port == 3333
    assert s.host == "env-host"
    assert s.data_dir == "file-dir"
    assert s.export_window == 7
    assert s.log_level == "debug"
    assert s.secret == "s3"
    assert s.shutdown_timeout == 30.0
    assert loaded.sources["port"] == "flag --port"
    assert loaded.sources["secret"] == "flag --secret"
    assert loaded.sources["host"] == "env QUIESCE_HOST"
    assert loaded.sources["log_level"] == "env QUIESCE_LOG_LEVEL"
    assert loaded.sources["data_dir"] == f"file {path}"
    assert loaded.sources["export_window"] == f"file {path}"
    assert loaded.sources["shutdown_timeout"] == "default"


def test_flag_source_uses_dashed_flag_name() -> None:
    """A flag's source is written as the command-line flag, with dashes."""
    loaded = load_settings({"shutdown_timeout": "2.5", "pulsar_url": "pulsar://b:6650"}, {})
    assert loaded.settings.shutdown_timeout == 2.5
    assert loaded.sources["shutdown_timeout"] == "flag --shutdown-timeout"
    assert loaded.sources["pulsar_url"] == "flag --pulsar-url"


def test_none_flag_counts_as_not_given() -> None:
    """A flag whose value is None falls through to the environment."""
    loaded = load_settings({"port": None}, {"QUIESCE_PORT": "9"})
    assert loaded.settings.port == 9
    assert loaded.sources["port"] == "env QUIESCE_PORT"


def test_empty_env_value_is_unset(tmp_path: Path) -> None:
    """An empty QUIESCE_* value is ignored, so the file or default applies."""
    path = write(tmp_path, "port = 1234\n")
    loaded = load_settings(
        {}, {"QUIESCE_PORT": "", "QUIESCE_SECRET": "", "QUIESCE_PULSAR_URL": ""}, path
    )
    assert loaded.settings.port == 1234
    assert loaded.settings.secret is None
    assert loaded.settings.pulsar_url is None
    assert loaded.sources["secret"] == "default"


def test_unknown_quiesce_env_vars_are_ignored() -> None:
    """QUIESCE_* variables that name no setting, and QUIESCE_FLOWS, are ignored."""
    loaded = load_settings({}, {"QUIESCE_NOPE": "x", "QUIESCE_FLOWS": "x", "PORT": "1"})
    assert loaded.settings == Settings()


# --- type conversion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("port", "0", 0),
        ("port", " 65535 ", 65535),
        ("port", "+80", 80),
        ("max_message_bytes", "1024", 1024),
        ("nack_redelivery_delay_ms", "0", 0),
        ("broker_metrics_port", "9100", 9100),
        ("shutdown_timeout", "1", 1.0),
        ("shutdown_timeout", "0.25", 0.25),
        ("publisher_drain_timeout", "1e-3", 0.001),
        ("socket_grace_period", "0", 0.0),
        ("producer_batching", "false", False),
        ("producer_batching", "TRUE", True),
        ("metrics_enabled", "0", False),
        ("metrics_enabled", "1", True),
        ("queue_stats_on_shutdown", "No", False),
        ("queue_stats_on_shutdown", "yes", True),
        ("host", "0.0.0.0", "0.0.0.0"),
        ("data_dir", "/var/lib/quiesce", "/var/lib/quiesce"),
        ("pulsar_url", "pulsar+ssl://broker:6651", "pulsar+ssl://broker:6651"),
        ("secret", "tok", "tok"),
        ("log_format", "json", "json"),
        ("log_level", "warning", "warning"),
        ("default_backpressure", "drop_oldest", "drop_oldest"),
        ("topic_template", "persistent://t/{flow}/{kind}", "persistent://t/{flow}/{kind}"),
    ],
)
def test_env_and_flag_strings_are_converted(name: str, text: str, expected: object) -> None:
    """Env and flag strings become the field's type, the same way from either source."""
    from_env = getattr(load_settings({}, {f"QUIESCE_{name.upper()}": text}).settings, name)
    from_flag = getattr(load_settings({name: text}, {}).settings, name)
    assert from_env == expected
    assert from_flag == expected
    assert type(from_env) is type(expected)
    assert type(from_flag) is type(expected)


def test_typed_flags_are_accepted() -> None:
    """Flags may also arrive already typed; an int for a float field becomes a float."""
    s = load_settings(
        {"port": 0, "shutdown_timeout": 3, "producer_batching": False, "host": "h"}, {}
    ).settings
    assert (s.port, s.shutdown_timeout, s.producer_batching, s.host) == (0, 3.0, False, "h")
    assert type(s.shutdown_timeout) is float


def test_file_values_use_toml_types(tmp_path: Path) -> None:
    """TOML ints, floats, bools and strings load as-is; an int for a float field is fine."""
    path = write(
        tmp_path,
        "port = 9000\n"
        "shutdown_timeout = 12\n"
        "socket_grace_period = 0.5\n"
        "producer_batching = false\n"
        'log_format = "json"\n'
        'pulsar_url = "pulsar://pulsar:6650"\n'
        "subscriber_max_queue_size = 2\n",
    )
    s = load_settings({}, {}, path).settings
    assert s.port == 9000
    assert s.shutdown_timeout == 12.0
    assert type(s.shutdown_timeout) is float
    assert s.socket_grace_period == 0.5
    assert s.producer_batching is False
    assert s.log_format == "json"
    assert s.pulsar_url == "pulsar://pulsar:6650"
    assert s.subscriber_max_queue_size == 2


def test_settings_construction_normalises_ints_for_floats() -> None:
    """Constructing Settings directly turns an int for a float field into a float."""
    s = Settings(shutdown_timeout=4)
    assert s.shutdown_timeout == 4.0
    assert type(s.shutdown_timeout) is float


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"QUIESCE_PORT": "abc"},
            "port must be an integer between 0 and 65535, got 'abc' (from env QUIESCE_PORT)",
        ),
        (
            {"QUIESCE_PORT": "65536"},
            "port must be an integer between 0 and 65535, got '65536' (from env QUIESCE_PORT)",
        ),
        (
            {"QUIESCE_PORT": "80.0"},
            "port must be an integer between 0 and 65535, got '80.0' (from env QUIESCE_PORT)",
        ),
        (
            {"QUIESCE_MAX_MESSAGE_BYTES": "1023"},
            "max_message_bytes must be an integer >= 1024, got '1023' "
            "(from env QUIESCE_MAX_MESSAGE_BYTES)",
        ),
        (
            {"QUIESCE_EXPORT_WINDOW": "0"},
            "export_window must be an integer >= 1, got '0' (from env QUIESCE_EXPORT_WINDOW)",
        ),
        (
            {"QUIESCE_NACK_REDELIVERY_DELAY_MS": "-1"},
            "nack_redelivery_delay_ms must be an integer >= 0, got '-1' "
            "(from env QUIESCE_NACK_REDELIVERY_DELAY_MS)",
        ),
        (
            {"QUIESCE_SHUTDOWN_TIMEOUT": "0"},
            "shutdown_timeout must be a number > 0, got '0' (from env QUIESCE_SHUTDOWN_TIMEOUT)",
        ),
        (
            {"QUIESCE_SHUTDOWN_TIMEOUT": "soon"},
            "shutdown_timeout must be a number > 0, got 'soon' (from env QUIESCE_SHUTDOWN_TIMEOUT)",
        ),
        (
            {"QUIESCE_SHUTDOWN_TIMEOUT": "nan"},
            "shutdown_timeout must be a number > 0, got 'nan' (from env QUIESCE_SHUTDOWN_TIMEOUT)",
        ),
        (
            {"QUIESCE_SOCKET_GRACE_PERIOD": "-0.5"},
            "socket_grace_period must be a number >= 0, got '-0.5' "
            "(from env QUIESCE_SOCKET_GRACE_PERIOD)",
        ),
        (
            {"QUIESCE_METRICS_ENABLED": "maybe"},
            "metrics_enabled must be a boolean (true, false, yes, no, 1 or 0), got 'maybe' "
            "(from env QUIESCE_METRICS_ENABLED)",
        ),
        (
            {"QUIESCE_LOG_FORMAT": "xml"},
            "log_format must be one of text, json, got 'xml' (from env QUIESCE_LOG_FORMAT)",
        ),
        (
            {"QUIESCE_LOG_LEVEL": "INFO"},
            "log_level must be one of debug, info, warning, error, got 'INFO' "
            "(from env QUIESCE_LOG_LEVEL)",
        ),
        (
            {"QUIESCE_PULSAR_URL": "http://broker:8080"},
            "pulsar_url must be a URL starting with pulsar:// or pulsar+ssl://, "
            "got 'http://broker:8080' (from env QUIESCE_PULSAR_URL)",
        ),
        (
            {"QUIESCE_PULSAR_URL": "pulsar://"},
            "pulsar_url must be a URL starting with pulsar:// or pulsar+ssl://, "
            "got 'pulsar://' (from env QUIESCE_PULSAR_URL)",
        ),
        (
            {"QUIESCE_TOPIC_TEMPLATE": "persistent://t/{kind}"},
            "topic_template must be a string containing {flow} and {kind} or {interface}, and no "
            "fields but those and {workspace}, "
            "got 'persistent://t/{kind}' (from env QUIESCE_TOPIC_TEMPLATE)",
        ),
        (
            {"QUIESCE_TOPIC_TEMPLATE": "{kind}/{flow}/{tenant}"},
            "topic_template must be a string containing {flow} and {kind} or {interface}, and no "
            "fields but those and {workspace}, "
            "got '{kind}/{flow}/{tenant}' (from env QUIESCE_TOPIC_TEMPLATE)",
        ),
        (
            {"QUIESCE_TOPIC_TEMPLATE": "{kind}/{flow!r}"},
            "topic_template must be a string containing {flow} and {kind} or {interface}, and no "
            "fields but those and {workspace}, "
            "got '{kind}/{flow!r}' (from env QUIESCE_TOPIC_TEMPLATE)",
        ),
        (
            {"QUIESCE_TOPIC_TEMPLATE": "{kind}/{flow"},
            "topic_template must be a string containing {flow} and {kind} or {interface}, and no "
            "fields but those and {workspace}, "
            "got '{kind}/{flow' (from env QUIESCE_TOPIC_TEMPLATE)",
        ),
    ],
)
def test_env_errors_name_key_rule_and_origin(environ: dict[str, str], message: str) -> None:
    """A bad environment value is rejected with the key, the rule, the value and the variable."""
    with pytest.raises(ConfigError, match=exact(message)):
        load_settings({}, environ)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"shutdown_timeout": -1},
            "shutdown_timeout must be a number > 0, got -1 (from flag --shutdown-timeout)",
        ),
        (
            {"port": True},
            "port must be an integer between 0 and 65535, got true (from flag --port)",
        ),
        (
            {"port": 80.0},
            "port must be an integer between 0 and 65535, got 80.0 (from flag --port)",
        ),
        ({"secret": ""}, "secret must not be empty (from flag --secret)"),
        ({"host": ""}, "host must be a non-empty string, got '' (from flag --host)"),
        ({"data_dir": 5}, "data_dir must be a non-empty string, got 5 (from flag --data-dir)"),
        (
            {"producer_batching": 1},
            "producer_batching must be a boolean (true, false, yes, no, 1 or 0), got 1 "
            "(from flag --producer-batching)",
        ),
        ({"flows": {}}, "unknown setting 'flows' (from flag --flows)"),
        ({"config": "q.toml"}, "unknown setting 'config' (from flag --config)"),
    ],
)
def test_flag_errors_name_key_rule_and_origin(flags: dict[str, object], message: str) -> None:
    """A bad or unknown flag is rejected with the key, the rule and the flag."""
    with pytest.raises(ConfigError, match=exact(message)):
        load_settings(flags, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'default_backpressure = "fast"',
            "default_backpressure must be one of block, drop_oldest, drop_new, got 'fast'",
        ),
        ("port = true", "port must be an integer between 0 and 65535, got true"),
        ('port = "8088"', "port must be an integer between 0 and 65535, got '8088'"),
        ("port = 8088.0", "port must be an integer between 0 and 65535, got 8088.0"),
        ("producer_batching = 1", "producer_batching must be a boolean (true or false), got 1"),
        (
            'metrics_enabled = "true"',
            "metrics_enabled must be a boolean (true or false), got 'true'",
        ),
        ("shutdown_timeout = false", "shutdown_timeout must be a number > 0, got false"),
        ("shutdown_timeout = inf", "shutdown_timeout must be a number > 0, got inf"),
        ('shutdown_timeout = "5"', "shutdown_timeout must be a number > 0, got '5'"),
        ('secret = ""', "secret must not be empty"),
        ("secret = 42", "secret must be a non-empty string, got 42"),
        ("host = [1, 2]", "host must be a non-empty string, got [1, 2]"),
        ("flows = 3", "flows must be a table of [flows.NAME] tables, got 3"),
        ("[flows]\nx = 3", "flows.x must be a table of kind = topic, got 3"),
        ('[flows.x]\nfoo = "persistent://a/b/c"', "flows.x: unknown kind 'foo'"),
        ("[flows.x]\ntriples = 1", "flows.x.triples must be a non-empty string, got 1"),
        ('[flows.x]\ntriples = ""', "flows.x.triples must be a non-empty string, got ''"),
        (
            '[flows."a b"]\ntriples = "t"',
            "flows: invalid flow name 'a b': must match [A-Za-z0-9_.-]{1,64}",
        ),
        (
            f'[flows.{"f" * 65}]\ntriples = "t"',
            f"flows: invalid flow name '{'f' * 65}': must match [A-Za-z0-9_.-]{{1,64}}",
        ),
    ],
)
def test_file_errors_name_key_rule_and_file(tmp_path: Path, text: str, message: str) -> None:
    """A bad file value is rejected with the key, the rule, the value and the file path."""
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=exact(f"{message} (from file {path})")):
        load_settings({}, {}, path)


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    """A top-level key that names no setting is an error naming the key and the file."""
    path = write(tmp_path, "prot = 80\n")
    with pytest.raises(ConfigError, match=exact(f"unknown setting 'prot' in config file '{path}'")):
        load_settings({}, {}, path)


def test_missing_config_file() -> None:
    """A config file that does not exist is reported as not found."""
    with pytest.raises(ConfigError, match=exact("config file 'nope/q.toml': not found")):
        load_settings({}, {}, "nope/q.toml")


def test_unreadable_config_file(tmp_path: Path) -> None:
    """A config path that cannot be read as a file (a directory) is reported as not found."""
    with pytest.raises(ConfigError, match=exact(f"config file '{tmp_path}': not found")):
        load_settings({}, {}, str(tmp_path))


def test_toml_syntax_error_carries_tomllib_message(tmp_path: Path) -> None:
    """A TOML syntax error is reported with the path and tomllib's own message."""
    text = "port = = 1\n"
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as info:
        tomllib.loads(text)
    with pytest.raises(ConfigError, match=exact(f"config file '{path}': {info.value}")):
        load_settings({}, {}, path)


def test_non_utf8_config_file(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is reported as such."""
    path = tmp_path / "q.toml"
    path.write_bytes(b'host = "\xff"\n')
    with pytest.raises(ConfigError, match=exact(f"config file '{path}': not valid UTF-8")):
        load_settings({}, {}, str(path))


def test_settings_construction_validates() -> None:
    """Constructing Settings directly applies the same rules, without an origin."""
    with pytest.raises(
        ConfigError, match=exact("port must be an integer between 0 and 65535, got 70000")
    ):
        Settings(port=70000)
    with pytest.raises(ConfigError, match=exact("secret must not be empty")):
        Settings(secret="")
    with pytest.raises(ConfigError, match=exact("flows.x: unknown kind 'foo'")):
        Settings(flows={"x": {"foo": "t"}})


# --- config file location ------------------------------------------------------------------


def test_quiesce_config_env_names_the_file(tmp_path: Path) -> None:
    """Without a config_file argument, QUIESCE_CONFIG names the file."""
    path = write(tmp_path, "port = 4321\n")
    loaded = load_settings({}, {"QUIESCE_CONFIG": path})
    assert loaded.settings.port == 4321
    assert loaded.sources["port"] == f"file {path}"


def test_config_file_argument_beats_quiesce_config(tmp_path: Path) -> None:
    """An explicit config_file wins over QUIESCE_CONFIG."""
    mine = write(tmp_path, "port = 1\n", "mine.toml")
    other = write(tmp_path, "port = 2\n", "other.toml")
    assert load_settings({}, {"QUIESCE_CONFIG": other}, mine).settings.port == 1


def test_empty_quiesce_config_reads_no_file() -> None:
    """An empty QUIESCE_CONFIG is treated as unset."""
    assert load_settings({}, {"QUIESCE_CONFIG": ""}).settings == Settings()


def test_missing_file_from_quiesce_config() -> None:
    """A QUIESCE_CONFIG that names a missing file is an error, not silently ignored."""
    with pytest.raises(ConfigError, match=exact("config file 'gone.toml': not found")):
        load_settings({}, {"QUIESCE_CONFIG": "gone.toml"})


# --- flows and topic_for -------------------------------------------------------------------


def test_flows_tables_load_from_file(tmp_path: Path) -> None:
    """[flows.NAME] tables become flows mapping kinds to topics, sourced from the file."""
    path = write(
        tmp_path,
        "subscriber_max_queue_size = 2\n"
        "[flows.default]\n"
        'triples = "persistent://a/b/c"\n'
        '"graph-embeddings" = "persistent://a/b/ge"\n'
        '[flows."v1.2"]\n'
        'entity-contexts = "persistent://a/b/ec"\n',
    )
    loaded = load_settings({}, {}, path)
    assert loaded.settings.flows == {
        "default": {"triples": "persistent://a/b/c", "graph-embeddings": "persistent://a/b/ge"},
        "v1.2": {"entity-contexts": "persistent://a/b/ec"},
    }
    assert loaded.sources["flows"] == f"file {path}"
    assert loaded.settings.subscriber_max_queue_size == 2


def test_empty_flows_table_keeps_template_routing(tmp_path: Path) -> None:
    """A [flows] table with no sub-tables configures no flows, so any flow name is routed."""
    path = write(tmp_path, "[flows]\n")
    s = load_settings({}, {}, path).settings
    assert s.flows == {}
    assert s.topic_for("anything", "triples") == "persistent://tg/flow/triples-store:anything"


@pytest.mark.parametrize(
    ("kind", "interface"),
    [("triples", "triples-store"), ("graph-embeddings", "graph-embeddings-store"),
     ("document-embeddings", "document-embeddings-store"),
     ("entity-contexts", "entity-contexts-load"), ("objects", "objects-store")],
)
def test_topic_for_defaults_to_trustgraph_1x_flow_interfaces(kind: str, interface: str) -> None:
    """Without flows or a template, tg1 flows use TrustGraph 1.x's flow interface topics."""
    assert Settings().topic_for("my-flow_1.x", kind) == (
        f"persistent://tg/flow/{interface}:my-flow_1.x")


def test_topic_for_tg2_puts_the_workspace_in_the_topic() -> None:
    """tg2 flows use TrustGraph 2.x's topics, workspace included; tg1 ignores a workspace."""
    s = Settings(profile="tg2")
    assert s.topic_for("f", "rows", "w1") == "persistent://tg/flow/rows-store:w1:f"
    assert s.topic_for("f", "triples") == "persistent://tg/flow/triples-store:default:f"
    assert Settings().topic_for("f", "triples", "w1") == "persistent://tg/flow/triples-store:f"
    with pytest.raises(RouteError, match=r"^invalid workspace "):
        s.topic_for("f", "triples", "a/b")


def test_a_flow_table_may_name_its_own_profile(tmp_path: Path) -> None:
    """``profile`` in [flows.NAME] sets that flow's profile and the kinds it may list."""
    path = write(tmp_path, '[flows.a]\nprofile = "tg2"\nrows = "persistent://x/y/r"\n'
                           '[flows.b]\nobjects = "persistent://x/y/o"\n')
    s = load_settings({}, {}, path).settings
    assert (s.profile_for("a"), s.profile_for("b")) == ("tg2", "tg1")
    assert s.topic_for("a", "rows") == "persistent://x/y/r"
    bad = write(tmp_path, '[flows.a]\nprofile = "tg2"\nobjects = "persistent://x/y/o"\n')
    with pytest.raises(ConfigError, match=r"^flows\.a: unknown kind 'objects'"):
        load_settings({}, {}, bad)


def test_topic_for_custom_template() -> None:
    """A custom topic_template is filled with kind and flow, possibly more than once."""
    s = load_settings({}, {"QUIESCE_TOPIC_TEMPLATE": "non-persistent://t/{flow}/{kind}-{flow}"})
    assert s.settings.topic_for("f", "triples") == "non-persistent://t/f/triples-f"


def test_topic_for_flows_only_mode() -> None:
    """With flows configured, only listed flows and kinds exist and the template is unused."""
    s = Settings(flows={"a": {"triples": "persistent://x/y/t"}})
    assert s.topic_for("a", "triples") == "persistent://x/y/t"
    with pytest.raises(RouteError, match=exact("unknown flow 'b'")):
        s.topic_for("b", "triples")
    with pytest.raises(RouteError, match=exact("unknown kind 'graph-embeddings' for flow 'a'")):
        s.topic_for("a", "graph-embeddings")


def test_topic_for_unknown_kind() -> None:
    """A kind outside the flow's profile is an unknown kind, with or without flows."""
    tg1_kinds = "(profile tg1 has triples, graph-embeddings, document-embeddings, " \
        "entity-contexts, objects)"
    with pytest.raises(RouteError, match=exact(f"unknown kind 'quads' {tg1_kinds}")):
        Settings().topic_for("a", "quads")
    with pytest.raises(RouteError, match=exact(f"unknown kind 'rows' {tg1_kinds}")):
        Settings(flows={"a": {"triples": "t"}}).topic_for("a", "rows")


@pytest.mark.parametrize("flow", ["", "a b", "a/b", "x" * 65, "a\n"])
def test_topic_for_bad_flow_name(flow: str) -> None:
    """A flow name outside [A-Za-z0-9_.-]{1,64} is rejected with a one-line reason."""
    with pytest.raises(RouteError, match=r"^invalid flow name '.*': must match ") as info:
        Settings().topic_for(flow, "triples")
    assert "\n" not in str(info.value)
    assert info.value.status == 404


def test_topic_for_flow_name_at_limit() -> None:
    """A 64-character flow name is still valid."""
    assert Settings().topic_for("x" * 64, "triples").endswith(":" + "x" * 64)


# --- render_settings -----------------------------------------------------------------------


def test_render_contains_every_field_with_sources(tmp_path: Path) -> None:
    """Every field appears once, as key = value followed by its source."""
    path = write(tmp_path, 'data_dir = "d"\n[flows.a]\ntriples = "persistent://a/b/c"\n')
    loaded = load_settings({"port": "0"}, {"QUIESCE_HOST": "h"}, path)
    text = render_settings(loaded)
    for name in FIELD_NAMES:
        assert re.search(rf"\b{name}\b", text), name
    lines = text.splitlines()
    assert "port = 0   # flag --port" in lines
    assert 'host = "h"   # env QUIESCE_HOST' in lines
    assert f'data_dir = "d"   # file {path}' in lines
    assert "shutdown_timeout = 30.0   # default" in lines
    assert "producer_batching = true   # default" in lines
    assert "# pulsar_url = (unset)   # default" in lines
    assert lines[-2:] == [f"[flows.a]   # file {path}", 'triples = "persistent://a/b/c"']


def test_render_masks_the_secret() -> None:
    """The secret is shown as "***" and its value never appears."""
    loaded = load_settings({}, {"QUIESCE_SECRET": "hunter2-token"})
    text = render_settings(loaded)
    assert 'secret = "***"   # env QUIESCE_SECRET' in text.splitlines()
    assert "hunter2-token" not in text
    assert "hunter2-token" not in repr(loaded)


def test_render_output_is_toml_that_loads_back(tmp_path: Path) -> None:
    """The rendered text parses as TOML and, read back as a config file, gives the same settings."""
    path = write(
        tmp_path,
        'host = "we\\"ird\\\\host\\u0001"\n'
        "socket_grace_period = 1e-5\n"
        'pulsar_url = "pulsar://p:6650"\n'
        '[flows."v1.0"]\n'
        'document-embeddings = "persistent://a/b/\\"q\\""\n',
    )
    loaded = load_settings({}, {}, path)
    text = render_settings(loaded)
    tomllib.loads(text)
    again = load_settings({}, {}, write(tmp_path, text, "rendered.toml"))
    assert again.settings == loaded.settings


def test_render_without_flows_says_so() -> None:
    """With no flows the output still mentions flows, after every setting."""
    lines = render_settings(load_settings({}, {})).splitlines()
    assert lines[-1].startswith("# flows: none")
    assert len(lines) == len(FIELD_NAMES)


def test_loaded_settings_is_frozen() -> None:
    """LoadedSettings and Settings cannot be modified after loading."""
    loaded = load_settings({}, {})
    assert isinstance(loaded, LoadedSettings)
    with pytest.raises(AttributeError):
        loaded.settings.port = 1  # type: ignore[misc]


# --- property ------------------------------------------------------------------------------

_INT_FIELD = st.sampled_from(["port", "broker_metrics_port", "export_window"])
_FLOAT_FIELD = st.sampled_from(["shutdown_timeout", "subscriber_drain_timeout"])
_VALID_INT = st.integers(min_value=1, max_value=65535)
_VALID_FLOAT = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.tuples(_INT_FIELD, _VALID_INT, _VALID_INT, _VALID_INT),
        st.tuples(_FLOAT_FIELD, _VALID_FLOAT, _VALID_FLOAT, _VALID_FLOAT),
    ),
    present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    flag_as_text=st.booleans(),
)
def test_flag_env_file_resolution_property(
    tmp_path: Path,
    data: tuple[str, float, float, float],
    present: tuple[bool, bool, bool],
    flag_as_text: bool,
) -> None:
    """For random valid numbers the flag wins when given, else the env value, else the file."""
    name, flag_value, env_value, file_value = data
    has_flag, has_env, has_file = present
    flags = {name: str(flag_value) if flag_as_text else flag_value} if has_flag else {}
    environ = {f"QUIESCE_{name.upper()}": str(env_value)} if has_env else {}
    path = write(tmp_path, f"{name} = {file_value!r}\n" if has_file else "")
    loaded = load_settings(flags, environ, path)
    value = getattr(loaded.settings, name)
    if has_flag:
        assert value == flag_value
        assert loaded.sources[name] == "flag --" + name.replace("_", "-")
    elif has_env:
        assert value == env_value
        assert loaded.sources[name] == f"env QUIESCE_{name.upper()}"
    elif has_file:
        assert value == file_value
        assert loaded.sources[name] == f"file {path}"
    else:
        assert value == getattr(Settings(), name)
        assert loaded.sources[name] == "default"
