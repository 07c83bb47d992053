"""Settings for quiesce: defaults, a TOML config file, ``QUIESCE_*`` variables and CLI flags.

Why TOML and :mod:`tomllib`: the file holds a flat list of settings plus a few ``[flows.NAME]``
tables of topics, which TOML expresses without indentation rules or quoting surprises, and
:mod:`tomllib` has been in the standard library since Python 3.11, so reading it adds no
dependency. TOML values are already typed (a port is an integer, ``producer_batching`` a
boolean), so the file is checked strictly; only environment variables and flags, which arrive
as text, are converted from strings.

Why flag > env > file > default, decided per key: the closer a value is to the single
invocation, the more deliberate it is. A file describes a deployment, an environment variable
overrides it for one container or shell, and a flag for one command; deciding per key lets a
flag change the port while the file still supplies everything else. :class:`LoadedSettings`
records which of the four supplied each key, so ``quiesce config`` can show where a value came
from and every error message names its origin (``(from env QUIESCE_PORT)``).

Flows (``[flows.NAME]`` tables mapping kinds to topics, and optionally naming the flow's
``profile``) come only from the file: when any is present, only those flows and kinds exist;
otherwise every valid flow name is routed to its profile's TrustGraph topics, or through
``topic_template`` when one is set.

Profiles (CONTRACT §8): ``profile`` names the TrustGraph generation a deployment runs, ``tg1``
(the default) or ``tg2``; a flow's table may name its own. The profile fixes the Pulsar
payload encoding, the default topics (``quiesce.core.profiles``) and the export wire format.
"""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from quiesce.core.errors import ConfigError, RouteError
from quiesce.core.memory import MMAP_THRESHOLD_MAX, MMAP_THRESHOLD_MIN
from quiesce.core.profiles import (
    COMMON_KINDS,
    DEFAULT_WORKSPACE,
    INTERFACES,
    Profile,
    default_topic,
    interface,
)

__all__ = [
    "BACKPRESSURE",
    "KINDS",
    "LoadedSettings",
    "Settings",
    "load_settings",
    "render_settings",
]

# The kinds every profile has; ``objects`` (tg1) and ``rows`` (tg2) come with their profile.
KINDS = COMMON_KINDS
PROFILES = tuple(p.value for p in Profile)
BACKPRESSURE = ("block", "drop_oldest", "drop_new")
# The fields a topic_template may use.
TEMPLATE_FIELDS = frozenset({"kind", "interface", "flow", "workspace"})
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

ENV_PREFIX = "QUIESCE_"
CONFIG_ENV = "QUIESCE_CONFIG"
FLOW_PATTERN = "[A-Za-z0-9_.-]{1,64}"
_FLOW_RE = re.compile(FLOW_PATTERN)
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_PULSAR_SCHEMES = ("pulsar://", "pulsar+ssl://")


@dataclass(frozen=True)
class Settings:
    """Every setting quiesce reads, validated on construction.

    Build one with :func:`load_settings` to merge flags, environment and file; constructing it
    directly checks the same rules (without string conversion) and raises
    :class:`~core.errors.ConfigError` on a bad value.
    """

    host: str = "127.0.0.1"
    port: int = 8088
    pulsar_url: str | None = None
    data_dir: str = ".quiesce"
    shutdown_timeout: float = 30.0
    workers: int = 1
    secret: str | None = field(default=None, repr=False)
    tokens_file: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    max_message_bytes: int = 50 * 1024 * 1024
    profile: str = "tg1"
    topic_template: str | None = None
    publisher_max_queue_size: int = 1000
    publisher_max_queue_bytes: int = 2 * 1024 * 1024
    import_buffer_bytes: int = 512 * 1024
    publisher_drain_timeout: float = 5.0
    producer_flush_timeout: float = 5.0
    producer_batching: bool = True
    producer_batch_delay_ms: int = 10
    subscriber_max_queue_size: int = 100
    subscriber_max_queue_bytes: int = 1024 * 1024
    subscriber_prefetch_bytes: int = 2 * 1024 * 1024
    subscriber_drain_timeout: float = 5.0
    default_backpressure: str = "block"
    nack_redelivery_delay_ms: int = 1000
    export_window: int = 1000
    export_window_bytes: int = 1024 * 1024
    export_stall_timeout: float = 60.0
    socket_grace_period: float = 2.0
    import_drain_grace: float = 5.0
    max_consecutive_errors: int = 10
    malloc_mmap_threshold: int = 256 * 1024
    malloc_trim_interval: float = 2.0
    metrics_enabled: bool = True
    queue_stats_on_shutdown: bool = True
    broker_metrics_port: int = 0
    broker_probe_interval: float = 2.0
    broker_unready_after: float = 10.0
    flows: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _RULES:
            object.__setattr__(self, name, _coerce(name, getattr(self, name), None))
        object.__setattr__(self, "flows", _parse_flows(self.flows, None))

    def profile_for(self, flow: str) -> Profile:
        """The profile of ``flow``: its ``[flows.NAME]`` table's, else the gateway's."""
        table = self.flows.get(flow)
        if table is not None and "profile" in table:
            return Profile(table["profile"])
        return Profile(self.profile)

    def topic_for(self, flow: str, kind: str, workspace: str = DEFAULT_WORKSPACE) -> str:
        """Return the Pulsar topic that carries ``kind`` messages of ``flow``.

        Args:
            flow: the flow name from the request path.
            kind: one of the flow's profile's kinds.
            workspace: the 2.x workspace (``?workspace=``); ignored by ``tg1`` flows.

        Returns:
            The topic from the flow's ``[flows.NAME]`` table when flows are configured,
            otherwise ``topic_template`` filled in when one is set, otherwise TrustGraph's own
            topic for the flow's profile (``persistent://tg/flow/triples-store:FLOW`` for
            ``tg1``, ``persistent://tg/flow/triples-store:WORKSPACE:FLOW`` for ``tg2``).

        Raises:
            RouteError: ``invalid flow name 'x': must match [A-Za-z0-9_.-]{1,64}``, ``unknown
                flow 'x'`` (flows are configured and ``x`` is not one of them), ``unknown kind
                'x'`` (not a kind of the flow's profile), ``unknown kind 'x' for flow 'y'``
                (the flow's table does not list that kind), or an invalid workspace.
        """
        if not isinstance(flow, str) or not _FLOW_RE.fullmatch(flow):
            raise RouteError(f"invalid flow name '{_one_line(flow)}': must match {FLOW_PATTERN}")
        if self.flows and flow not in self.flows:
            raise RouteError(f"unknown flow '{flow}'")
        profile = self.profile_for(flow)
        if kind not in profile.kinds:
            raise RouteError(
                f"unknown kind '{_one_line(kind)}' (profile {profile.value} has "
                f"{', '.join(profile.kinds)})"
            )
        if self.flows:
            topic = self.flows[flow].get(kind)
            if topic is None:
                raise RouteError(f"unknown kind '{kind}' for flow '{flow}'")
            return topic
        if not profile.has_workspaces:
            workspace = DEFAULT_WORKSPACE
        if self.topic_template is None:
            return default_topic(profile, flow, kind, workspace)
        default_topic(profile, flow, kind, workspace)  # checks the workspace
        return self.topic_template.format(kind=kind, interface=interface(profile, kind),
                                          flow=flow, workspace=workspace)


@dataclass(frozen=True)
class LoadedSettings:
    """Settings together with where each value came from.

    Attributes:
        settings: the merged, validated settings.
        sources: field name -> ``"default"``, ``"file <path>"``, ``"env QUIESCE_X"`` or
            ``"flag --x"``, for every field of :class:`Settings` (``flows`` is ``"default"``
            or ``"file <path>"``).
    """

    settings: Settings
    sources: Mapping[str, str]


@dataclass(frozen=True)
class _Rule:
    """How one scalar setting is typed and checked.

    Attributes:
        type: ``int``, ``float``, ``bool`` or ``str``.
        expected: completes "``<key> must be ...``" in error messages.
        valid: extra check on the converted value.
        optional: whether ``None`` is allowed (only when constructing :class:`Settings`).
    """

    type: type
    expected: str
    valid: Callable[[Any], bool] = lambda value: True
    optional: bool = False


def _int_rule(low: int, high: int | None = None) -> _Rule:
    if high is None:
        return _Rule(int, f"an integer >= {low}", lambda v: v >= low)
    return _Rule(int, f"an integer between {low} and {high}", lambda v: low <= v <= high)


def _float_rule(low: float, strict: bool) -> _Rule:
    op = ">" if strict else ">="
    bound = f"{low:g}"
    if strict:
        return _Rule(float, f"a number {op} {bound}", lambda v: math.isfinite(v) and v > low)
    return _Rule(float, f"a number {op} {bound}", lambda v: math.isfinite(v) and v >= low)


def _choice_rule(choices: tuple[str, ...]) -> _Rule:
    return _Rule(str, "one of " + ", ".join(choices), lambda v: v in choices)


def _valid_template(template: str) -> bool:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return False
    names: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            return False
        names.add(name)
    return "flow" in names and bool(names & {"kind", "interface"}) and names <= TEMPLATE_FIELDS


_NON_EMPTY = _Rule(str, "a non-empty string", lambda v: v != "")
_BOOL = _Rule(bool, "a boolean")

_RULES: dict[str, _Rule] = {
    "host": _NON_EMPTY,
    "port": _int_rule(0, 65535),
    "pulsar_url": _Rule(
        str,
        "a URL starting with pulsar:// or pulsar+ssl://",
        lambda v: any(v.startswith(s) and len(v) > len(s) for s in _PULSAR_SCHEMES),
        optional=True,
    ),
    "data_dir": _NON_EMPTY,
    "shutdown_timeout": _float_rule(0, strict=True),
    # One process (1), or a parent and this many worker processes (actors/pool.py).
    "workers": _int_rule(1, 64),
    "secret": _Rule(str, "a non-empty string", lambda v: v != "", optional=True),
    # Scoped tokens (core/tokens.py), read at start-up and on SIGHUP.
    "tokens_file": _Rule(str, "a non-empty string (a path)", lambda v: v != "", optional=True),
    "log_format": _choice_rule(LOG_FORMATS),
    "log_level": _choice_rule(LOG_LEVELS),
    "max_message_bytes": _int_rule(1024),
    "profile": _choice_rule(PROFILES),
    "topic_template": _Rule(
        str,
        "a string containing {flow} and {kind} or {interface}, and no fields but those and "
        "{workspace}",
        _valid_template,
        optional=True,
    ),
    "publisher_max_queue_size": _int_rule(1),
    "publisher_max_queue_bytes": _int_rule(1024),
    "import_buffer_bytes": _int_rule(0),
    "publisher_drain_timeout": _float_rule(0, strict=True),
    "producer_flush_timeout": _float_rule(0, strict=True),
    "producer_batching": _BOOL,
    "producer_batch_delay_ms": _int_rule(0, 10_000),
    "subscriber_max_queue_size": _int_rule(1),
    "subscriber_max_queue_bytes": _int_rule(1024),
    "subscriber_prefetch_bytes": _int_rule(1024),
    "subscriber_drain_timeout": _float_rule(0, strict=True),
    "default_backpressure": _choice_rule(BACKPRESSURE),
    "nack_redelivery_delay_ms": _int_rule(0),
    "export_window": _int_rule(1),
    "export_window_bytes": _int_rule(1024),
    "export_stall_timeout": _float_rule(0, strict=True),
    "socket_grace_period": _float_rule(0, strict=False),
    "import_drain_grace": _float_rule(0, strict=False),
    "max_consecutive_errors": _int_rule(1),
    # glibc's mallopt accepts thresholds up to 32 MiB (core/memory.py); 0 leaves glibc alone.
    "malloc_mmap_threshold": _Rule(
        int, f"0 or an integer between {MMAP_THRESHOLD_MIN} and {MMAP_THRESHOLD_MAX}",
        lambda v: v == 0 or MMAP_THRESHOLD_MIN <= v <= MMAP_THRESHOLD_MAX),
    "malloc_trim_interval": _float_rule(0, strict=False),
    "metrics_enabled": _BOOL,
    "queue_stats_on_shutdown": _BOOL,
    "broker_metrics_port": _int_rule(0, 65535),
    "broker_probe_interval": _float_rule(0, strict=True),
    "broker_unready_after": _float_rule(0, strict=False),
}

# What each setting does: the reference in docs/operations.md is rendered from this
# (`quiesce config --reference`), and a test keeps the two the same.
SETTING_DOCS: dict[str, str] = {
    "host": (
        "listen address"
    ),
    "port": (
        "listen port; 0 for any"
    ),
    "pulsar_url": (
        "external broker; unset starts the embedded one"
    ),
    "data_dir": (
        "embedded broker storage"
    ),
    "shutdown_timeout": (
        "bound of the whole drain after SIGTERM/SIGINT, seconds"
    ),
    "workers": (
        "worker processes sharing the port (SO_REUSEPORT) under one parent that forwards "
        "signals and restarts a crashed worker; 1 runs the gateway in one process (see "
        "[Workers](#workers-several-processes-on-one-port))"
    ),
    "secret": (
        "token required by WebSockets and `/metrics`"
    ),
    "tokens_file": (
        "TOML file of scoped tokens (see Auth); reloaded on SIGHUP"
    ),
    "log_format": (
        "`text` or `json` (one object per line)"
    ),
    "log_level": (
        "`debug`, `info`, `warning`, `error`"
    ),
    "max_message_bytes": (
        "largest frame; a bigger one closes the socket with 1009"
    ),
    "profile": (
        "TrustGraph generation: `tg1` (1.x) or `tg2` (2.x); fixes the Pulsar payload, the "
        "default topics and the export format ([contract](contract.md#profiles-which-"
        "trustgraph))"
    ),
    "topic_template": (
        "topic of (flow, kind) with `{kind}`, `{interface}`, `{flow}`, `{workspace}`; unset: "
        "TrustGraph's own topics for the profile (`persistent://tg/flow/triples-store:{flow}`…)"
    ),
    "publisher_max_queue_size": (
        "frames in flight (unconfirmed) per import connection; past it frames read wait in "
        "the connection's buffer (`import_buffer_bytes`)"
    ),
    "publisher_max_queue_bytes": (
        "bytes of payloads in flight (unconfirmed) per import connection (one frame bigger "
        "than this still goes, alone); past it, as past `publisher_max_queue_size`, frames "
        "read wait in the connection's buffer"
    ),
    "import_buffer_bytes": (
        "bytes of client frames a connection reads ahead of its worker (each frame counts "
        "200 bytes more); while they wait — e.g. for the broker — the socket is still read, "
        "so a close, ping or pong is seen; past this the gateway stops reading the socket "
        "([operations](operations.md#memory-per-connection))"
    ),
    "publisher_drain_timeout": (
        "how long an ending import connection waits for the broker's next confirmation; "
        "each one that comes renews the wait (a shutdown's deadline still caps it)"
    ),
    "producer_flush_timeout": (
        "bound on closing (flushing) a producer"
    ),
    "producer_batching": (
        "batch messages in the producer; confirmations stay per message"
    ),
    "producer_batch_delay_ms": (
        "longest a frame waits for its batch (Pulsar's default); receipts come up to this much "
        "later"
    ),
    "subscriber_max_queue_size": (
        "messages taken from Pulsar and not yet written, per export connection"
    ),
    "subscriber_max_queue_bytes": (
        "bytes of those messages at most (at least one message): with `block` receiving "
        "pauses past either bound, with the drop strategies the oldest/newest is dropped"
    ),
    "subscriber_prefetch_bytes": (
        "bytes an export connection's consumer may prefetch: its receiver queue is this over "
        "the topic's expected message size, between 1 and 1000 messages (1000 connections: at "
        "most ~2 GB prefetched while sizes are as expected; see "
        "[performance](performance.md#prefetch-by-bytes))"
    ),
    "subscriber_drain_timeout": (
        "how long a server drain waits for an `ack=client` export to ack"
    ),
    "default_backpressure": (
        "`block`, `drop_oldest` or `drop_new`, when `backpressure=` is not given"
    ),
    "nack_redelivery_delay_ms": (
        "delay before a nacked message comes again"
    ),
    "export_window": (
        "default `window=` for `ack=client`"
    ),
    "export_window_bytes": (
        "`ack=client`: bytes of unacked messages in flight at most, whatever `window=` says "
        "(at least one message): clients should ack as they go, not wait for `window` frames"
    ),
    "export_stall_timeout": (
        "an export whose client took nothing for this long (no socket write went through; with "
        "`ack=client` and frames in flight, no ack came) is closed with 1008 and what it held "
        "is nacked"
    ),
    "socket_grace_period": (
        "time allowed for the close handshake; then the TCP connection is dropped"
    ),
    "import_drain_grace": (
        "on SIGTERM, how long an import whose client is still sending keeps taking frames (it "
        "stops as soon as the client closes or is quiet for 0.5 s)"
    ),
    "max_consecutive_errors": (
        "consecutive broker refusals after which an import connection closes with 1011"
    ),
    "malloc_mmap_threshold": (
        "glibc: a block of at least this many bytes (a large frame) gets a mapping of its own, "
        "returned to the system when freed; 0 leaves glibc's dynamic threshold, which keeps "
        "large frames' memory after a storm ([operations](operations.md#memory))"
    ),
    "malloc_trim_interval": (
        "glibc: seconds after a connection closes until free heap pages are returned to the "
        "system (`malloc_trim`), at most once per interval; 0 never trims"
    ),
    "metrics_enabled": (
        "serve `/metrics`"
    ),
    "queue_stats_on_shutdown": (
        "log connection and queue counts when the process stops"
    ),
    "broker_metrics_port": (
        "embedded broker's own metrics on loopback; 0 disables them"
    ),
    "broker_probe_interval": (
        "how often the gateway asks the broker a question (a lookup), seconds"
    ),
    "broker_unready_after": (
        "`/readyz` answers 503 once the broker has not answered for this long"
    ),
}


_INVALID = object()


def render_reference() -> str:
    """The settings reference as a Markdown table: setting, default, meaning.

    ``docs/operations.md`` holds this table between ``<!-- settings:begin -->`` and
    ``<!-- settings:end -->``; ``quiesce config --reference`` prints it.
    """
    defaults = Settings()
    lines = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name in _RULES:
        value = getattr(defaults, name)
        if value is None:
            shown = "unset"
        elif isinstance(value, bool):
            shown = f"`{str(value).lower()}`"
        else:
            shown = f"`{value}`"
        lines.append(f"| `{name}` | {shown} | {SETTING_DOCS[name]} |")
    return "\n".join(lines) + "\n"


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _one_line(value: object, limit: int = 80) -> str:
    """Make ``value`` safe to echo in a one-line message: printable and at most ``limit``."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: object) -> str:
    """Render a rejected value the way the user wrote it: strings quoted, booleans in TOML."""
    if isinstance(value, str):
        return "'" + _one_line(value) + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _one_line(value)


def _suffix(origin: str | None) -> str:
    return f" (from {origin})" if origin else ""


def _convert(rule: _Rule, raw: object, lenient: bool) -> object:
    """Convert ``raw`` to ``rule.type``; strings are parsed only when ``lenient``."""
    if rule.type is bool:
        if isinstance(raw, bool):
            return raw
        if lenient and isinstance(raw, str):
            word = raw.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        return _INVALID
    if isinstance(raw, bool):  # a bool is an int to Python, never to a config file
        return _INVALID
    if rule.type is int:
        if isinstance(raw, int):
            return raw
        if lenient and isinstance(raw, str) and _INT_RE.fullmatch(raw):
            return int(raw)
        return _INVALID
    if rule.type is float:
        if isinstance(raw, int | float):
            return float(raw)
        if lenient and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                return _INVALID
        return _INVALID
    return raw if isinstance(raw, str) else _INVALID


def _coerce(name: str, raw: object, origin: str | None) -> Any:
    """Convert and check one setting.

    Args:
        name: the field name.
        raw: the value as given.
        origin: ``"env QUIESCE_X"``, ``"flag --x"``, ``"file <path>"`` or ``None`` for a
            direct :class:`Settings` construction. Env and flag values may be strings.

    Returns:
        The value converted to the field's type.

    Raises:
        ConfigError: the value has the wrong type or is out of range.
    """
    rule = _RULES[name]
    if raw is None and rule.optional:
        return None
    if name == "secret" and raw == "":
        raise ConfigError(f"secret must not be empty{_suffix(origin)}")
    lenient = origin is not None and not origin.startswith("file ")
    value = _convert(rule, raw, lenient)
    if value is _INVALID or not rule.valid(value):
        expected = rule.expected
        if rule.type is bool:
            expected += " (true, false, yes, no, 1 or 0)" if lenient else " (true or false)"
        raise ConfigError(f"{name} must be {expected}, got {_show(raw)}{_suffix(origin)}")
    return value


def _parse_flows(raw: object, origin: str | None) -> dict[str, dict[str, str]]:
    """Check a ``flows`` value (``{flow: {kind: topic}}``) and copy it into plain dicts.

    Raises:
        ConfigError: a flow name breaks the pattern, a key is not a kind, or a topic is not a
            non-empty string.
    """
    where = _suffix(origin)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"flows must be a table of [flows.NAME] tables, got {_show(raw)}{where}")
    flows: dict[str, dict[str, str]] = {}
    for flow, table in raw.items():
        if not isinstance(flow, str) or not _FLOW_RE.fullmatch(flow):
            raise ConfigError(
                f"flows: invalid flow name {_show(flow)}: must match {FLOW_PATTERN}{where}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"flows.{flow} must be a table of kind = topic, got {_show(table)}{where}"
            )
        topics: dict[str, str] = {}
        profile = table.get("profile", None)
        if profile is not None:
            if profile not in PROFILES:
                raise ConfigError(
                    f"flows.{flow}.profile must be one of {', '.join(PROFILES)}, "
                    f"got {_show(profile)}{where}"
                )
            topics["profile"] = profile
        kinds = Profile(profile).kinds if profile is not None else tuple(INTERFACES)
        for kind, topic in table.items():
            if kind == "profile":
                continue
            if kind not in kinds:
                raise ConfigError(f"flows.{flow}: unknown kind {_show(kind)}{where}")
            if not isinstance(topic, str) or topic == "":
                raise ConfigError(
                    f"flows.{flow}.{kind} must be a non-empty string, got {_show(topic)}{where}"
                )
            topics[kind] = topic
        flows[flow] = topics
    return flows


def _read_file(path: str) -> dict[str, Any]:
    """Parse the TOML config file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError:
        raise ConfigError(f"config file '{path}': not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}': not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{path}': {exc}") from None


def load_settings(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> LoadedSettings:
    """Merge flags, environment and config file over the defaults, per key.

    Args:
        flags: the flags the user actually gave, keyed by field name (``{"port": 0}``), typed
            or as strings. A ``None`` value counts as not given.
        environ: the environment (pass ``os.environ``); only ``QUIESCE_<FIELD>`` and
            ``QUIESCE_CONFIG`` are read, and an empty value counts as unset.
        config_file: path of the TOML file; defaults to ``environ["QUIESCE_CONFIG"]``, and
            without either no file is read.

    Returns:
        The validated settings and, per field, which source supplied it.

    Raises:
        ConfigError: an unknown flag or file key, an unreadable or malformed file, or a value
            of the wrong type or out of range; the message names the key and its origin.
    """
    for key in flags:
        if key not in _RULES:
            raise ConfigError(f"unknown setting '{_one_line(key)}' (from flag {_flag_name(key)})")

    path = os.fspath(config_file) if config_file is not None else environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_file(path)
        for key in data:
            if key not in _RULES and key != "flows":
                raise ConfigError(f"unknown setting '{_one_line(key)}' in config file '{path}'")
    file_origin = f"file {path}"

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in _RULES:
        env = _env_name(name)
        if flags.get(name) is not None:
            raw, origin = flags[name], f"flag {_flag_name(name)}"
        elif environ.get(env, "") != "":
            raw, origin = environ[env], f"env {env}"
        elif name in data:
            raw, origin = data[name], file_origin
        else:
            sources[name] = "default"
            continue
        values[name] = _coerce(name, raw, origin)
        sources[name] = origin

    if "flows" in data:
        values["flows"] = _parse_flows(data["flows"], file_origin)
        sources["flows"] = file_origin
    else:
        sources["flows"] = "default"

    return LoadedSettings(settings=Settings(**values), sources=sources)


def _toml_string(text: str) -> str:
    """Quote ``text`` as a TOML basic string."""
    escapes = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\t": "\\t",
        "\n": "\\n",
        "\f": "\\f",
        "\r": "\\r",
    }
    out = []
    for c in text:
        if c in escapes:
            out.append(escapes[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(str(value))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _comment(source: str) -> str:
    return "   # " + _one_line(source, limit=1000)


def render_settings(loaded: LoadedSettings) -> str:
    """Render the effective settings as TOML for ``quiesce config``.

    One line per key, ``key = value   # source``; the secret is shown as ``"***"``; a setting
    that is unset (``pulsar_url``, ``secret``) becomes a commented line, since TOML has no null;
    ``[flows.NAME]`` tables come last. The output parses as TOML.

    Args:
        loaded: the result of :func:`load_settings`.

    Returns:
        The text, ending with a newline.
    """
    settings, sources = loaded.settings, loaded.sources
    lines: list[str] = []
    for f in fields(Settings):
        if f.name == "flows":
            continue
        value = getattr(settings, f.name)
        source = _comment(sources.get(f.name, "default"))
        if value is None:
            lines.append(f"# {f.name} = (unset){source}")
        elif f.name == "secret":
            lines.append(f'{f.name} = "***"{source}')
        else:
            lines.append(f"{f.name} = {_toml_value(value)}{source}")
    flows_source = _comment(sources.get("flows", "default"))
    if not settings.flows:
        lines.append("# flows: none, every valid flow name is routed to its profile's topics "
                     f"(or topic_template when set){flows_source}")
    for flow, topics in settings.flows.items():
        lines.append("")
        lines.append(f"[flows.{_toml_key(flow)}]{flows_source}")
        for kind, topic in topics.items():
            lines.append(f"{kind} = {_toml_string(topic)}")
    return "\n".join(lines) + "\n"
