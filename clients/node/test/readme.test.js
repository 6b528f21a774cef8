// The README's example runs as written against the live node.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { liveNode } from "./helpers.js";

const node = liveNode();
const pkgDir = join(dirname(fileURLToPath(import.meta.url)), "..");

test("README example", { timeout: 20_000 }, async () => {
  const readme = readFileSync(join(pkgDir, "README.md"), "utf8");
  const block = readme.match(/## Example[\s\S]*?```js\n([\s\S]*?)```/)?.[1];
  assert.ok(block, "README has a ```js block under ## Example");
  assert.ok(block.trim().split("\n").length <= 10, "the example is at most ten lines");
  // Inside the package, so that `@pushsvc/client` resolves to itself.
  const file = join(pkgDir, `example-${process.pid}.mjs`);
  writeFileSync(file, block);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      env: { ...process.env, PUSHSVC_GRPC_ADDR: node.grpcAddr, PUSHSVC_API_KEY: node.apiKey },
      timeout: 15_000,
    });
    assert.match(stdout, /^stored [0-9a-f]{26}(?:[0-9a-f]{12})? as alice's seq \d+\nalice online: (true|false) \(\d+ connections\)\n$/);
  } finally {
    rmSync(file, { force: true });
  }
});
