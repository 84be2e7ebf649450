"""The lock files: pinned, hashed, and within the ranges pyproject.toml declares."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_locks_satisfy_the_declared_ranges() -> None:
    assert _check_lock().main() == 0


def test_a_pin_outside_its_range_or_missing_is_reported(tmp_path: Path) -> None:
    lock = ROOT / "requirements" / "runtime.txt"
    check = _check_lock()
    msgspec = check.pins(lock)["msgspec"]
    assert check.problems([f"msgspec=={msgspec}"], lock) == []
    outside = check.problems([f"msgspec>{msgspec}"], lock)
    assert outside and "outside" in outside[0]
    missing = check.problems(["no-such-package>=1"], lock)
    assert missing and "not pinned" in missing[0]


def test_every_pin_carries_a_hash() -> None:
    for lock in (ROOT / "requirements").glob("*.txt"):
        text = lock.read_text()
        pins = _check_lock().pins(lock)
        assert pins, lock
        for name, version in pins.items():
            block = text.split(f"=={version}", 1)[1].split("\n    # via", 1)[0]
            assert "--hash=sha256:" in block, f"{lock.name}: {name} has no hash"
