"""Installed, quiesce is one package: nothing generic lands in site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Building a wheel (in pip's isolated build environment) takes a few seconds.
BUILD_TIMEOUT = 300


def test_the_wheel_holds_one_top_level_package_and_the_console_script(tmp_path: Path) -> None:
    """``pip wheel .`` gives ``quiesce/…`` and its dist-info only, with the ``quiesce`` script."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        check=True, timeout=BUILD_TIMEOUT, capture_output=True,
    )
    (wheel,) = tmp_path.glob("quiesce-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    tops = {name.split("/")[0] for name in names}
    print(f"\n{wheel.name}: {len(names)} files, top level {sorted(tops)}")
    assert {top for top in tops if not top.endswith(".dist-info")} == {"quiesce"}
    for module in ("quiesce/supervisor.py", "quiesce/actors/connection.py",
                   "quiesce/machines/connection.py", "quiesce/core/protocol.py",
                   "quiesce/client/cli.py"):
        assert module in names
    assert not any(name.startswith(("quiesce/tests/", "quiesce/bench/")) for name in names)
    assert "quiesce = quiesce.supervisor:main" in scripts
