"""Validate schemas/asyncapi.yaml against the official AsyncAPI 3.0.0 JSON Schema.

The schema comes from the `@asyncapi/specs` npm package (the AsyncAPI Initiative's own), fetched by
`scripts/check-asyncapi.sh`; usage: validate_asyncapi.py <asyncapi.yaml> <3.0.0-without-$id.json>.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml


def main(document_path: str, schema_path: str) -> int:
    document = yaml.safe_load(Path(document_path).read_text())
    schema = json.loads(Path(schema_path).read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    for error in errors[:20]:
        where = "/".join(str(part) for part in error.absolute_path)
        sys.stderr.write(f"{document_path}: {where}: {error.message[:300]}\n")
    if errors:
        return 1
    sys.stdout.write(f"{document_path}: valid AsyncAPI {document['asyncapi']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
