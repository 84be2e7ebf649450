// Writes src/contract/{command,event}.ts from the service's JSON Schemas (schemas/*.schema.json, themselves
// generated from the msgspec types). With --check it writes nothing and fails when a file is stale: CI runs
// that, as it checks the JSON Schemas against the types.
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const out = fileURLToPath(new URL("../src/contract/", import.meta.url));
const check = process.argv.includes("--check");

const files = {
  "command.ts": "schemas/command.schema.json",
  "event.ts": "schemas/event.schema.json",
};

let stale = [];
for (const [target, source] of Object.entries(files)) {
  const schema = JSON.parse(await readFile(root + source, "utf8"));
  const text = await compile(schema, schema.$ref.split("/").pop(), {
    bannerComment: `/* Generated from ${source} by clients/typescript/scripts/generate.mjs (npm run generate); do not edit. */`,
    // The types say what the contract holds; no index signature that would let a misspelt field through.
    additionalProperties: false,
    unreachableDefinitions: false,
    style: { singleQuote: false, printWidth: 110 },
  });
  if (check) {
    const current = await readFile(out + target, "utf8").catch(() => "");
    if (current !== text) stale.push(`clients/typescript/src/contract/${target}`);
  } else {
    await writeFile(out + target, text);
  }
}
if (stale.length) {
  process.stderr.write(`stale: ${stale.join(", ")}; run \`npm run generate\` in clients/typescript and commit\n`);
  process.exit(1);
}
