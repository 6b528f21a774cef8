// Copies the contract (../../protos/**/*.proto) into this package, so that a
// packed tarball (npm pack / publish) carries the .proto files it loads at run
// time. Runs as `prepare` (npm ci, npm install) and `prepack`. The copy is
// ignored by git: the repository's protos/ stay the only source.
import { cpSync, existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const source = resolve(pkgDir, "../../protos");
const target = join(pkgDir, "protos");

if (!existsSync(join(source, "pushsvc", "v1", "push.proto"))) {
  if (existsSync(join(target, "pushsvc", "v1", "push.proto"))) {
    console.log("copy-protos: no repository protos/ here; keeping the packaged copy");
    process.exit(0);
  }
  console.error(`copy-protos: ${source}/pushsvc/v1/push.proto not found`);
  process.exit(1);
}

rmSync(target, { recursive: true, force: true });
cpSync(source, target, {
  recursive: true,
  filter: (path) => statSync(path).isDirectory() || path.endsWith(".proto"),
});
const count = (dir) =>
  readdirSync(dir, { withFileTypes: true }).reduce(
    (n, e) => n + (e.isDirectory() ? count(join(dir, e.name)) : 1),
    0,
  );
console.log(`copy-protos: ${count(target)} .proto files copied to ${target}`);
