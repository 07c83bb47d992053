"""Scoped API tokens: a TOML file of named tokens, each limited to flows, directions, workspaces.

The file (setting ``tokens_file``) holds one table per token, named by the table::

    [tokens.loader-a]
    token = "…"                      # or token_sha256 = "<64 hex digits>" (the file then
                                     # holds no secret)
    flows = ["team-a-*", "shared"]   # glob patterns (fnmatch, case-sensitive); default ["*"]
    directions = ["import"]          # import and/or export; default both
    workspaces = ["default"]         # glob patterns for ?workspace= (tg2); default ["*"]
    metrics = false                  # may read /metrics; default false

Matching (``TokenSet.identify``) hashes the presented token once with SHA-256 and compares
the digest with ``hmac.compare_digest`` against *every* token's digest, with no early exit:
how long it takes says neither whether nor which token matched, and comparing digests of one
length hides the tokens' lengths too. A token is never logged or shown; its *name* is.

Pure: parsing and matching, no I/O but reading the file in ``load_tokens``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quiesce.core.errors import ConfigError
from quiesce.core.protocol import Direction

__all__ = ["Access", "Token", "TokenSet", "load_tokens", "parse_tokens"]

# The keys a token's table may hold.
_KEYS = frozenset({"token", "token_sha256", "flows", "directions", "workspaces", "metrics"})
_HEX64 = re.compile("[0-9a-fA-F]{64}")
# A token's name: it appears in logs and in 403 answers, so nothing that needs escaping.
_NAME = re.compile("[A-Za-z0-9_.@-]{1,64}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Token:
    """One named token and what it may do.

    Attributes:
        name: the table's name (logged and shown instead of the token).
        digest: SHA-256 of the token.
        flows: glob patterns of the flows it may use.
        directions: the directions it may use.
        workspaces: glob patterns of the workspaces it may name (``?workspace=``).
        metrics: whether it may read ``/metrics``.
    """

    name: str
    digest: bytes
    flows: tuple[str, ...] = ("*",)
    directions: frozenset[Direction] = frozenset(Direction)
    workspaces: tuple[str, ...] = ("*",)
    metrics: bool = False

    def refusal(self, flow: str, direction: Direction, workspace: str) -> str | None:
        """Why this token may not use (``flow``, ``direction``, ``workspace``), or None.

        Returns:
            A one-line reason naming the token and the dimension that refused, e.g.
            ``token 'loader-a' may not export``; None when allowed.
        """
        if direction not in self.directions:
            return f"token '{self.name}' may not {direction}"
        if not any(fnmatch.fnmatchcase(flow, p) for p in self.flows):
            return f"token '{self.name}' may not use flow '{flow}'"
        if not any(fnmatch.fnmatchcase(workspace, p) for p in self.workspaces):
            return f"token '{self.name}' may not use workspace '{workspace[:64]}'"
        return None


@dataclass(frozen=True)
class Access:
    """Who a request's credential identifies.

    Attributes:
        token: the matching token, or None for the shared secret (which may do anything).
    """

    token: Token | None

    @property
    def name(self) -> str:
        """What logs call the credential: the token's name, or ``secret``."""
        return "secret" if self.token is None else self.token.name


@dataclass(frozen=True)
class TokenSet:
    """The shared secret (if any) and the scoped tokens, matched in constant time.

    Attributes:
        tokens: every scoped token.
        secret_digest: SHA-256 of the shared secret, or None.
        source: where the tokens came from (``tokens file 'path'``), for logs.
    """

    tokens: tuple[Token, ...] = ()
    secret_digest: bytes | None = None
    source: str = ""

    @property
    def required(self) -> bool:
        """Whether a credential is needed at all (a secret or a tokens file is configured)."""
        return self.secret_digest is not None or bool(self.source)

    def with_secret(self, secret: str | None) -> TokenSet:
        """This set with ``secret`` as the shared secret (None: no secret)."""
        digest = None if secret is None else _digest(secret)
        return TokenSet(self.tokens, digest, self.source)

    def identify(self, candidates: Sequence[str]) -> Access | None:
        """The access the first matching candidate gives, or None if none matches.

        Every candidate is compared with the secret and with every token, whatever matched
        before (see the module docstring).
        """
        found: Access | None = None
        for candidate in candidates:
            digest = _digest(candidate)
            access: Access | None = None
            if self.secret_digest is not None and hmac.compare_digest(digest,
                                                                      self.secret_digest):
                access = Access(None)
            for token in self.tokens:
                if hmac.compare_digest(digest, token.digest):
                    access = Access(token)
            if found is None:
                found = access
        return found


def _strings(value: object, where: str) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ConfigError(f"{where} must be a non-empty list of non-empty strings")
    return tuple(value)


def _token(name: str, table: object, where: str) -> Token:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: token name '{name[:64]}' must match {_NAME.pattern}")
    at = f"{where}: tokens.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{at} must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown key '{unknown[0][:64]}'; expected one of "
                          + ", ".join(sorted(_KEYS)))
    if ("token" in table) == ("token_sha256" in table):
        raise ConfigError(f"{at}: give exactly one of token and token_sha256")
    if "token" in table:
        secret = table["token"]
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{at}.token must be a non-empty string")
        digest = _digest(secret)
    else:
        hexdigest = table["token_sha256"]
        if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest):
            raise ConfigError(f"{at}.token_sha256 must be 64 hexadecimal digits")
        digest = bytes.fromhex(hexdigest)
    directions = frozenset(Direction)
    if "directions" in table:
        words = _strings(table["directions"], f"{at}.directions")
        bad = [w for w in words if w not in set(Direction)]
        if bad:
            raise ConfigError(f"{at}.directions: unknown direction '{bad[0][:64]}'; "
                              "expected import or export")
        directions = frozenset(Direction(w) for w in words)
    metrics = table.get("metrics", False)
    if not isinstance(metrics, bool):
        raise ConfigError(f"{at}.metrics must be true or false")
    return Token(
        name=name,
        digest=digest,
        flows=_strings(table["flows"], f"{at}.flows") if "flows" in table else ("*",),
        directions=directions,
        workspaces=(_strings(table["workspaces"], f"{at}.workspaces")
                    if "workspaces" in table else ("*",)),
        metrics=metrics,
    )


def parse_tokens(data: Mapping[str, object], source: str) -> TokenSet:
    """Check a parsed tokens file and build its ``TokenSet`` (without a secret).

    Args:
        data: the TOML document.
        source: names the file in messages (``tokens file 'path'``).

    Raises:
        ConfigError: an unknown key, a malformed value, or two tables with the same token;
            the message names the file and the key.
    """
    unknown = sorted(set(data) - {"tokens"})
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0][:64]}'; "
                          "expected [tokens.NAME] tables")
    tables = data.get("tokens", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{source}: tokens must be a table of [tokens.NAME] tables")
    tokens = tuple(_token(str(name), table, source) for name, table in tables.items())
    seen: dict[bytes, str] = {}
    for token in tokens:
        if token.digest in seen:
            raise ConfigError(f"{source}: tokens.{seen[token.digest]} and tokens.{token.name} "
                              "have the same token")
        seen[token.digest] = token.name
    return TokenSet(tokens, None, source)


def load_tokens(path: str) -> TokenSet:
    """Read and check the tokens file at ``path`` (see the module docstring for its format).

    Raises:
        ConfigError: the file cannot be read, is not TOML, or breaks the format.
    """
    source = f"tokens file '{path}'"
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or 'cannot be read'}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return parse_tokens(data, source)
