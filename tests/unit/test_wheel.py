"""The installed distribution puts one top-level package into site-packages, ``livekit_signaling``:
never a generic ``service`` (the source folder's name) that would collide with anything else so named,
and no tests, testkit or bench."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_the_livekit_signaling_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            ROOT,
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("livekit_signaling-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"livekit_signaling", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "livekit_signaling/__main__.py" in names
    assert any(name.startswith("livekit_signaling/console/static/") for name in names), "console page missing"
