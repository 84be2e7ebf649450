#!/usr/bin/env bash
# Checks that schemas/asyncapi.yaml is current (generated from the msgspec types) and valid against the
# official AsyncAPI 3.0.0 JSON Schema from the AsyncAPI Initiative's `@asyncapi/specs` npm package.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SPECS_VERSION=6.11.1
specs_dir=build/asyncapi-specs-$SPECS_VERSION
"$PYTHON" -m livekit_signaling.schemas.asyncapi --check
if [ ! -f "$specs_dir/package/schemas/3.0.0-without-\$id.json" ]; then
  mkdir -p "$specs_dir"
  (cd "$specs_dir" && npm pack "@asyncapi/specs@$SPECS_VERSION" --silent >/dev/null && tar xzf ./*.tgz)
fi
"$PYTHON" scripts/validate_asyncapi.py schemas/asyncapi.yaml "$specs_dir/package/schemas/3.0.0-without-\$id.json"
