"""One virtual environment per released TrustGraph version, built from the registry and cached.

TrustGraph ships its command-line tools (``tg-load-turtle``, ``tg-load-knowledge``,
``tg-load-doc-embeds``, ``tg-save-doc-embeds``, ``tg-load-structured-data``…) in
``trustgraph-cli`` and the ``Api(url).bulk()`` client in ``trustgraph-base``; both are
published as sdists only, pinned here to the exact version under test. Their other
dependencies (rdflib, websockets, aiohttp, msgpack, pulsar-client…) are unpinned upstream and
resolve to whatever the registry has; the marker file records the resolved set (``pip
freeze``) so a run can say what it used.

The cache lives in ``$QUIESCE_INTEROP_CACHE`` (default ``~/.cache/quiesce/interop/``), one
directory per (TrustGraph version, Python minor version): a venv is tied to the interpreter
that made it. A directory is reused only when its marker file exists; the marker is written
last (through a rename), so a build interrupted at any point is detected and redone. Builds
of the same key are serialised by an ``fcntl`` lock on a file beside the directory, so
parallel test sessions (or ``pytest-xdist`` workers) never build into the same place at once.

Run ``python -m tests.interop.envs [VERSION ...]`` to build (or find) the environments and
print how long each took and how big it is.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGES", "VERSIONS", "TgEnv", "cache_root", "ensure_env"]

# The registry packages that provide the tools and the bulk client, per TrustGraph version.
PACKAGES: dict[str, tuple[str, ...]] = {
    "1.4.22": ("trustgraph-cli==1.4.22", "trustgraph-base==1.4.22"),
    "1.9.4": ("trustgraph-cli==1.9.4", "trustgraph-base==1.9.4"),
    "2.11.1": ("trustgraph-cli==2.11.1", "trustgraph-base==2.11.1"),
}
VERSIONS = tuple(PACKAGES)

CACHE_ENV = "QUIESCE_INTEROP_CACHE"
MARKER = "quiesce-interop-complete.json"
# Bounds: waiting for another process's build of the same key, and one build's pip install.
LOCK_TIMEOUT = 1800.0
INSTALL_TIMEOUT = 1800.0
# Scripts every environment must have for the suite; checked before the marker is written.
REQUIRED_SCRIPTS = ("tg-load-turtle", "tg-load-knowledge", "tg-load-doc-embeds",
                    "tg-save-doc-embeds", "tg-load-structured-data")


@dataclass(frozen=True)
class TgEnv:
    """A ready TrustGraph environment.

    Attributes:
        version: the TrustGraph version (``"1.9.4"``).
        path: the venv directory.
        packages: the pinned requirements it was built from.
        built_seconds: how long its build took (when it was built, perhaps in an earlier run).
        seconds: how long ``ensure_env`` took this time (lock wait + check, or the build).
        cached: True when an existing complete build was reused.
        size_bytes: bytes on disk under ``path``.
        freeze: ``pip freeze`` of the venv, as recorded at build time.
    """

    version: str
    path: Path
    packages: tuple[str, ...]
    built_seconds: float
    seconds: float
    cached: bool
    size_bytes: int
    freeze: tuple[str, ...]

    @property
    def bin(self) -> Path:
        """The venv's script directory."""
        return self.path / "bin"

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.bin / "python"

    def script(self, name: str) -> Path:
        """Path of console script ``name`` (``tg-load-turtle``) in this venv."""
        return self.bin / name


def cache_root() -> Path:
    """The cache directory: ``$QUIESCE_INTEROP_CACHE`` or ``~/.cache/quiesce/interop``."""
    configured = os.environ.get(CACHE_ENV)
    root = Path(configured) if configured else Path.home() / ".cache" / "quiesce" / "interop"
    return root.expanduser().resolve()


def _key(version: str) -> str:
    return f"tg-{version}-py{sys.version_info.major}.{sys.version_info.minor}"


@contextmanager
def _locked(lock_path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``lock_path``, waiting at most ``timeout`` s."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock_path} held by another build for {timeout} s"
                                       ) from None
                # Another process is building this key; flock has no timed wait to block on.
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _read_marker(path: Path, packages: tuple[str, ...]) -> dict[str, object] | None:
    """The marker of a complete build of ``packages`` at ``path``, or None."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if tuple(marker.get("packages", ())) != packages:
        return None
    if not (path / "bin" / "python").exists():
        return None
    if not all((path / "bin" / s).exists() for s in REQUIRED_SCRIPTS):
        return None
    return dict(marker)


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{cmd[0]} exited {result.returncode}; log {log}:\n{tail}")


def _build(path: Path, packages: tuple[str, ...]) -> tuple[str, ...]:
    """Build a fresh venv at ``path`` with ``packages``; return its ``pip freeze``."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.parent / f"{path.name}.build.log"
    log.write_bytes(b"")
    _run([sys.executable, "-m", "venv", str(path)], log, 300)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
           "--no-input"]
    _run([*pip, "install", *packages], log, INSTALL_TIMEOUT)
    missing = [s for s in REQUIRED_SCRIPTS if not (path / "bin" / s).exists()]
    if missing:
        raise RuntimeError(f"{path}: the install provides no {', '.join(missing)}")
    freeze = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True,
                            timeout=120).stdout.split()
    return tuple(freeze)


def ensure_env(version: str, root: Path | None = None) -> TgEnv:
    """Return the environment of TrustGraph ``version``, building it if it is not cached.

    Args:
        version: one of :data:`VERSIONS`.
        root: cache directory (default :func:`cache_root`).

    Raises:
        KeyError: ``version`` is not one of :data:`VERSIONS`.
        RuntimeError: the build failed (the message ends with the build log's tail).
        TimeoutError: another process held the build lock for longer than the bound.
    """
    packages = PACKAGES[version]
    root = root or cache_root()
    path = root / _key(version)
    started = time.monotonic()
    with _locked(root / f"{_key(version)}.lock", LOCK_TIMEOUT):
        marker = _read_marker(path, packages)
        cached = marker is not None
        if marker is None:
            freeze = _build(path, packages)
            marker = {
                "version": version,
                "packages": list(packages),
                "python": sys.version.split()[0],
                "built_seconds": round(time.monotonic() - started, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "freeze": list(freeze),
            }
            # Written last and atomically: its presence means the venv is complete.
            tmp = path / f"{MARKER}.tmp"
            tmp.write_text(json.dumps(marker, indent=1))
            tmp.replace(path / MARKER)
    return TgEnv(
        version=version,
        path=path,
        packages=packages,
        built_seconds=float(marker["built_seconds"]),  # type: ignore[arg-type]
        seconds=time.monotonic() - started,
        cached=cached,
        size_bytes=_size(path),
        freeze=tuple(marker["freeze"]),  # type: ignore[arg-type]
    )


def main(argv: list[str] | None = None) -> int:
    """Build or find the environments named on the command line and report on them."""
    parser = argparse.ArgumentParser(prog="python -m tests.interop.envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", default=list(VERSIONS),
                        help=f"TrustGraph versions (default: all of {', '.join(VERSIONS)})")
    args = parser.parse_args(argv)
    for version in args.versions:
        env = ensure_env(version)
        state = "cached" if env.cached else "built"
        print(f"{version}: {state} in {env.seconds:.1f} s (first build {env.built_seconds:.1f} s)"
              f", {env.size_bytes / 2**20:.0f} MiB at {env.path}; {' '.join(env.packages)}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
