// Loads pushsvc.v1.PushService from the .proto contract at run time.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PUSH_PROTO = join("pushsvc", "v1", "push.proto");

/** proto-loader options: camelCase fields, uint64 as numbers, bytes as Buffer. */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});

/**
 * Where the .proto files are: `protoDir` if given, else $PUSHSVC_PROTO_DIR,
 * else the repository's protos/ when this package sits in a pushsvc checkout
 * (clients/node), else the copy packed into the package (protos/, made by the
 * `prepare` script).
 */
export function protoRoot(protoDir) {
  const candidates = [];
  if (protoDir) candidates.push(resolve(protoDir));
  else if (process.env.PUSHSVC_PROTO_DIR) candidates.push(resolve(process.env.PUSHSVC_PROTO_DIR));
  else {
    const repoRoot = resolve(pkgDir, "../..");
    if (resolve(repoRoot, "clients", "node") === pkgDir) candidates.push(join(repoRoot, "protos"));
    candidates.push(join(pkgDir, "protos"));
  }
  for (const dir of candidates) {
    if (existsSync(join(dir, PUSH_PROTO))) return dir;
  }
  throw new Error(
    `@pushsvc/client: ${PUSH_PROTO} not found in ${candidates.join(" or ")}; ` +
      "run `npm run prepare` in the package to copy the protos, or pass protoDir",
  );
}

const cache = new Map();

/** The grpc-js service constructor of pushsvc.v1.PushService. */
export function loadPushService(protoDir) {
  const root = protoRoot(protoDir);
  let service = cache.get(root);
  if (!service) {
    const definition = protoLoader.loadSync(PUSH_PROTO, { ...LOADER_OPTIONS, includeDirs: [root] });
    service = grpc.loadPackageDefinition(definition).pushsvc.v1.PushService;
    cache.set(root, service);
  }
  return service;
}
