"""JSON Schema files of the wire contract, generated from the msgspec types.

``python -m livekit_signaling.schemas.jsonschema`` rewrites ``schemas/*.schema.json``; with ``--check``
it fails when a checked-in file differs from what the types say (CI runs that).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from livekit_signaling.schemas.commands import Command, Id, Kind, Role
from livekit_signaling.schemas.events import Event


class CommandEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """A command as upstream controllers publish it to ``room.<room>`` on the command exchange.

    (The service decodes ``payload`` in a second step so that a bad payload can still be answered.)
    """

    room: Id
    participant: Id
    role: Role
    payload: Command
    kind: Kind = "user"


class EventMessage(msgspec.Struct):
    """An event as the service publishes it to ``room.<room>.participant.<participant>``."""

    room: Id
    participant: Id
    payload: Event


#: Schema keys whose text comes from docstrings.
_PROSE_KEYS = frozenset({"description", "summary"})


def normalise_prose(node: Any) -> Any:
    """The same types give the same files whatever formats their docstrings: every description is
    ``inspect.cleandoc``-ed. msgspec 0.22 kept a docstring's indentation and 0.23 strips it, and Python
    3.13 dedents docstrings itself, so the raw text depends on versions that have nothing to do with the
    contract."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key in _PROSE_KEYS and isinstance(value, str)
            else normalise_prose(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [normalise_prose(item) for item in node]
    return node


def schemas() -> dict[str, dict[str, Any]]:
    return {
        "command.schema.json": normalise_prose(msgspec.json.schema(CommandEnvelope)),
        "event.schema.json": normalise_prose(msgspec.json.schema(EventMessage)),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("schemas"))
    parser.add_argument("--check", action="store_true", help="fail if a file is stale instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, schema in schemas().items():
        path: Path = args.dir / name
        text = render(schema)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        sys.stderr.write(
            f"stale: {', '.join(stale)}; run `python -m livekit_signaling.schemas.jsonschema` and commit\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
