"""Tests of core.tokens: the tokens file's format, its error messages, and matching."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from quiesce.core.config import load_settings
from quiesce.core.errors import ConfigError
from quiesce.core.protocol import Direction
from quiesce.core.tokens import Token, TokenSet, load_tokens, parse_tokens

IMPORT, EXPORT = Direction.IMPORT, Direction.EXPORT

FILE = """
[tokens.loader-a]
token = "tok-a"
flows = ["team-a-*", "shared"]
directions = ["import"]

[tokens.reader]
token_sha256 = "{reader_hash}"
directions = ["export"]
workspaces = ["default", "ws-?"]
metrics = true

[tokens.admin]
token = "tok-admin"
""".replace("{reader_hash}", hashlib.sha256(b"tok-reader").hexdigest())


def exact(detail: str) -> str:
    """A `pytest.raises` match pattern for exactly ``detail``."""
    return f"^{re.escape(detail)}$"


def parse(text: str) -> TokenSet:
    """The token set of a tokens file's text."""
    return parse_tokens(tomllib.loads(text), "tokens file 't.toml'")


def test_a_tokens_file_parses_with_its_defaults() -> None:
    """Each table is a token; omitted limits allow everything, metrics defaults to false."""
    tokens = parse(FILE)
    names = [t.name for t in tokens.tokens]
    admin = tokens.tokens[2]
    assert names == ["loader-a", "reader", "admin"]
    assert admin.flows == ("*",) and admin.workspaces == ("*",)
    assert admin.directions == {IMPORT, EXPORT} and admin.metrics is False
    assert tokens.tokens[1].metrics is True


@pytest.mark.parametrize(
    ("candidate", "name"),
    [("tok-a", "loader-a"), ("tok-reader", "reader"), ("tok-admin", "admin"), ("s3", "secret"),
     ("nope", None), ("", None), ("tok-a ", None)],
)
def test_identify_finds_the_token_or_the_secret(candidate: str, name: str | None) -> None:
    """A presented token is identified by its value (or its SHA-256), the secret as secret."""
    access = parse(FILE).with_secret("s3").identify([candidate])
    assert (access.name if access is not None else None) == name


def test_the_first_matching_candidate_wins() -> None:
    """With several candidates (bearer, then ?token=), the first that matches is used."""
    tokens = parse(FILE)
    access = tokens.identify(["nope", "tok-reader", "tok-a"])
    assert access is not None and access.name == "reader"


@pytest.mark.parametrize(
    ("name", "flow", "direction", "workspace", "reason"),
    [
        ("loader-a", "team-a-1", IMPORT, "default", None),
        ("loader-a", "shared", IMPORT, "anything", None),
        ("loader-a", "team-b-1", IMPORT, "default", "token 'loader-a' may not use flow 'team-b-1'"),
        ("loader-a", "team-a-1", EXPORT, "default", "token 'loader-a' may not export"),
        ("reader", "x", EXPORT, "ws-1", None),
        ("reader", "x", EXPORT, "ws-10", "token 'reader' may not use workspace 'ws-10'"),
        ("reader", "x", IMPORT, "default", "token 'reader' may not import"),
        ("admin", "Team-A-1", IMPORT, "w", None),
    ],
)
def test_a_token_is_limited_to_its_flows_directions_and_workspaces(
    name: str, flow: str, direction: Direction, workspace: str, reason: str | None
) -> None:
    """Flow and workspace globs (case-sensitive) and directions decide; the reason names one."""
    token = {t.name: t for t in parse(FILE).tokens}[name]
    assert token.refusal(flow, direction, workspace) == reason


def test_a_flow_glob_is_case_sensitive() -> None:
    """``team-a-*`` does not match ``Team-A-1``: flow names are case-sensitive topics."""
    token = parse(FILE).tokens[0]
    assert token.refusal("Team-A-1", IMPORT, "default") is not None


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("x = 1", "unknown key 'x'; expected [tokens.NAME] tables"),
        ("tokens = 1", "tokens must be a table of [tokens.NAME] tables"),
        ("[tokens.a]\nflows = ['x']", "tokens.a: give exactly one of token and token_sha256"),
        ("[tokens.a]\ntoken = 't'\ntoken_sha256 = '" + "0" * 64 + "'",
         "tokens.a: give exactly one of token and token_sha256"),
        ("[tokens.a]\ntoken = ''", "tokens.a.token must be a non-empty string"),
        ("[tokens.a]\ntoken = 5", "tokens.a.token must be a non-empty string"),
        ("[tokens.a]\ntoken_sha256 = 'abc'", "tokens.a.token_sha256 must be 64 hexadecimal digits"),
        ("[tokens.a]\ntoken = 't'\nflow = ['x']",
         "tokens.a: unknown key 'flow'; expected one of directions, flows, metrics, token, "
         "token_sha256, workspaces"),
        ("[tokens.a]\ntoken = 't'\nflows = []",
         "tokens.a.flows must be a non-empty list of non-empty strings"),
        ("[tokens.a]\ntoken = 't'\nflows = 'x'",
         "tokens.a.flows must be a non-empty list of non-empty strings"),
        ("[tokens.a]\ntoken = 't'\ndirections = ['upload']",
         "tokens.a.directions: unknown direction 'upload'; expected import or export"),
        ("[tokens.a]\ntoken = 't'\nworkspaces = ['']",
         "tokens.a.workspaces must be a non-empty list of non-empty strings"),
        ("[tokens.a]\ntoken = 't'\nmetrics = 'yes'", "tokens.a.metrics must be true or false"),
        ("[tokens.a]\ntoken = 't'\n[tokens.b]\ntoken = 't'",
         "tokens.a and tokens.b have the same token"),
        ('[tokens."a b"]\ntoken = "t"',
         "token name 'a b' must match [A-Za-z0-9_.@-]{1,64}"),
    ],
)
def test_a_malformed_tokens_file_is_refused_naming_the_key(text: str, detail: str) -> None:
    """Every mistake is a ConfigError naming the file and the key, never the token."""
    with pytest.raises(ConfigError, match=exact(f"tokens file 't.toml': {detail}")) as info:
        parse(text)
    assert "'t'\n" not in str(info.value)


def test_load_tokens_names_an_unreadable_or_broken_file(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are refused with the path."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=exact(f"tokens file '{missing}': "
                                                "No such file or directory")):
        load_tokens(str(missing))
    broken = tmp_path / "broken.toml"
    broken.write_text("[tokens.a\n")
    with pytest.raises(ConfigError, match=rf"^tokens file '{re.escape(str(broken))}': "):
        load_tokens(str(broken))


def test_an_empty_tokens_file_requires_a_credential_nobody_has() -> None:
    """A tokens file with no tokens still makes a credential required."""
    tokens = parse("")
    assert tokens.required and tokens.identify(["anything"]) is None
    assert not TokenSet().required
    assert TokenSet().with_secret("s").required


def test_a_token_is_never_in_its_repr() -> None:
    """Neither the token nor a hint of it appears when a token is printed."""
    token = parse(FILE).tokens[0]
    assert isinstance(token, Token)
    assert "tok-a" not in repr(token) and "tok-a" not in str(parse(FILE))


@pytest.mark.parametrize(
    ("flags", "environ", "file", "expected", "source"),
    [
        ({"tokens_file": "/f"}, {"QUIESCE_TOKENS_FILE": "/e"}, 'tokens_file = "/c"', "/f",
         "flag --tokens-file"),
        ({}, {"QUIESCE_TOKENS_FILE": "/e"}, 'tokens_file = "/c"', "/e", "env QUIESCE_TOKENS_FILE"),
        ({}, {}, 'tokens_file = "/c"', "/c", "file"),
        ({}, {}, "", None, "default"),
    ],
)
def test_tokens_file_is_a_setting_with_flag_env_file_precedence(
    tmp_path: Path, flags: dict[str, str], environ: dict[str, str], file: str,
    expected: str | None, source: str,
) -> None:
    """tokens_file comes from a flag, then QUIESCE_TOKENS_FILE, then the config file."""
    config = tmp_path / "quiesce.toml"
    config.write_text(file)
    loaded = load_settings(flags, environ, str(config))
    assert loaded.settings.tokens_file == expected
    assert loaded.sources["tokens_file"].startswith(source)


def test_an_empty_or_mistyped_tokens_file_setting_is_refused(tmp_path: Path) -> None:
    """tokens_file must be a non-empty string wherever it comes from."""
    config = tmp_path / "quiesce.toml"
    config.write_text("tokens_file = 3")
    with pytest.raises(ConfigError, match=exact(
            f"tokens_file must be a non-empty string (a path), got 3 (from file {config})")):
        load_settings({}, {}, str(config))
    with pytest.raises(ConfigError, match=exact(
            "tokens_file must be a non-empty string (a path), got '' (from flag --tokens-file)")):
        load_settings({"tokens_file": ""}, {}, None)
