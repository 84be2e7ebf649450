"""MkDocs hook: the pages that must not drift from the code are generated at build time.

A page holds a placeholder line, ``<!-- generated: NAME -->``, that this hook replaces:

- ``commands`` and ``events``: tables of every command and event, their fields, types, whether they are
  required, constraints and enums, read from ``schemas/command.schema.json`` and
  ``schemas/event.schema.json`` (themselves generated from the msgspec types, checked current by CI);
- ``settings``: ``livekit_signaling.app.settings.settings_table()``, the table ``livekit-signaling
  settings`` prints.

The contract files are also published with the site (``contract/asyncapi.yaml`` and the two JSON
Schemas), so pages can link to them. An unknown placeholder fails the build.

mkdocs is imported only inside the hook functions, so ``tests/`` can import this module for its
renderers without the docs lock installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
# Published beside the contract pages: site path -> file in the repository.
PUBLISHED = {
    "contract/asyncapi.yaml": SCHEMAS / "asyncapi.yaml",
    "contract/command.schema.json": SCHEMAS / "command.schema.json",
    "contract/event.schema.json": SCHEMAS / "event.schema.json",
}
PLACEHOLDER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
_RST_LITERAL = re.compile(r"``([^`]+)``")

Schema = dict[str, Any]


# --- renderers (no mkdocs needed) -----------------------------------------------------------------


def settings_markdown() -> str:
    """The settings table, exactly as ``livekit-signaling settings`` prints it."""
    from livekit_signaling.app.settings import settings_table

    return settings_table()


def commands_markdown() -> str:
    return _contract_markdown(
        json.loads((SCHEMAS / "command.schema.json").read_text()),
        envelope="CommandEnvelope",
        tag="action",
        kind="command",
    )


def events_markdown() -> str:
    return _contract_markdown(
        json.loads((SCHEMAS / "event.schema.json").read_text()),
        envelope="EventMessage",
        tag="message",
        kind="event",
    )


GENERATORS = {"commands": commands_markdown, "events": events_markdown, "settings": settings_markdown}


def expand(markdown: str) -> str:
    """``markdown`` with every placeholder replaced by its generated text."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown placeholder <!-- generated: {name} --> (known: {sorted(GENERATORS)})")
        return GENERATORS[name]().rstrip("\n")

    return PLACEHOLDER.sub(replace, markdown)


def _prose(text: str | None) -> str:
    """A schema description as one Markdown table cell (docstrings use reST literals)."""
    if not text:
        return ""
    return " ".join(_RST_LITERAL.sub(r"`\1`", text).split()).replace("|", "\\|")


def _anchor(name: str, tags: dict[str, str]) -> str:
    """The id of a structure's section: its tag value for a payload, ``schema-<name>`` otherwise."""
    return tags[name] if name in tags else f"schema-{name.lower()}"


def _ref_name(schema: Schema) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def _type(schema: Schema, defs: dict[str, Schema], tags: dict[str, str]) -> str:
    """A field's type in words, with a link to the section of a referenced structure."""
    if "$ref" in schema:
        name = _ref_name(schema)
        shown = f"`{tags[name]}`" if name in tags else name
        return f"[{shown}](#{_anchor(name, tags)})"
    if "enum" in schema:
        return " \\| ".join(f'`"{value}"`' for value in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type(option, defs, tags) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), defs, tags)}"
    if kind == "null":
        return "null"
    return f"{kind}" if kind else "any"


def _constraints(schema: Schema) -> list[str]:
    found = []
    if "minLength" in schema or "maxLength" in schema:
        found.append(f"{schema.get('minLength', 0)} to {schema['maxLength']} characters")
    if "pattern" in schema:
        found.append(f"pattern `{schema['pattern']}`")
    if "maxItems" in schema:
        found.append(f"at most {schema['maxItems']:,} items")
    items = schema.get("items")
    if isinstance(items, dict):
        found += [f"each {text}" for text in _constraints(items)]
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'])}`")
    return found


def _fields_table(structure: Schema, defs: dict[str, Schema], tags: dict[str, str]) -> list[str]:
    properties: dict[str, Schema] = structure.get("properties", {})
    if not properties:
        return ["No fields."]
    required = set(structure.get("required", []))
    rows = ["| Field | Type | Required | Notes |", "| --- | --- | --- | --- |"]
    for name, schema in properties.items():
        notes = [_prose(schema.get("description")), *_constraints(schema)]
        rows.append(
            f"| `{name}` | {_type(schema, defs, tags)} | {'yes' if name in required else 'no'} "
            f"| {'; '.join(note for note in notes if note)} |"
        )
    return rows


def _tagged_union(structure: Schema) -> dict[str, str]:
    """The discriminator mapping of ``structure``'s ``payload``: tag value -> definition name."""
    discriminator = structure["properties"]["payload"]["discriminator"]
    return {tag: ref.rsplit("/", 1)[-1] for tag, ref in discriminator["mapping"].items()}


def _contract_markdown(document: Schema, *, envelope: str, tag: str, kind: str) -> str:
    defs: dict[str, Schema] = document["$defs"]
    envelope_schema = defs[envelope]
    # Payload variants in the order the union lists them (the order of the msgspec types).
    order = [_ref_name(option) for option in envelope_schema["properties"]["payload"]["anyOf"]]
    # Definition name -> tag value; a payload's section is named (and anchored) by its tag value.
    tags = {name: value for value, name in _tagged_union(envelope_schema).items()}
    lines = [
        f"## The envelope: `{envelope}` {{ #{_anchor(envelope, tags)} }}",
        "",
        _prose(envelope_schema.get("description")),
        "",
        *_fields_table(envelope_schema, defs, tags),
        "",
        f"`payload` is one of the {kind}s below, told apart by its `{tag}` field.",
        "",
    ]
    for name in order:
        structure = defs[name]
        lines += [f"## `{tags[name]}` {{ #{_anchor(name, tags)} }}", ""]
        if structure.get("description"):
            lines += [_prose(structure["description"]), ""]
        lines += [f"Schema name `{name}`.", "", *_fields_table(structure, defs, tags), ""]
    others = [name for name in sorted(defs) if name != envelope and name not in tags]
    if others:
        lines += ["## Nested structures", ""]
        for name in others:
            structure = defs[name]
            lines += [f"### {name} {{ #{_anchor(name, tags)} }}", ""]
            if structure.get("description"):
                lines += [_prose(structure["description"]), ""]
            lines += [*_fields_table(structure, defs, tags), ""]
    return "\n".join(lines)


# --- MkDocs events ----------------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    from mkdocs.structure.files import File

    for site_path, source in PUBLISHED.items():
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return expand(markdown)
