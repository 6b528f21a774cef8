// Shared by the tests: the live node's addresses, JWTs, a WebSocket client.
import { createHmac, randomUUID } from "node:crypto";
import WebSocket from "ws";

const VARS = ["PUSHSVC_TEST_GRPC_ADDR", "PUSHSVC_TEST_WS_URL", "PUSHSVC_TEST_API_KEY", "PUSHSVC_TEST_JWT_SECRET"];

/**
 * The live node the tests talk to. Throws (so the test file FAILS, it is not
 * skipped) when the environment does not name one.
 */
export function liveNode() {
  const missing = VARS.filter((name) => !process.env[name]);
  if (missing.length) {
    throw new Error(
      `${missing.join(", ")} not set: these tests need a live pushsvc node. ` +
        "Run them through `pytest tests/test_node_client.py` (it starts one), or start a node " +
        "and set PUSHSVC_TEST_GRPC_ADDR (host:port), PUSHSVC_TEST_WS_URL (ws://host:port/ws), " +
        "PUSHSVC_TEST_API_KEY and PUSHSVC_TEST_JWT_SECRET.",
    );
  }
  return {
    grpcAddr: process.env.PUSHSVC_TEST_GRPC_ADDR,
    wsUrl: process.env.PUSHSVC_TEST_WS_URL,
    apiKey: process.env.PUSHSVC_TEST_API_KEY,
    jwtSecret: process.env.PUSHSVC_TEST_JWT_SECRET,
  };
}

export function uniqueUser(prefix = "node") {
  return `${prefix}-${randomUUID()}`;
}

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT for `sub`, as the node accepts (sub, exp, optional topics). */
export function mintToken(secret, sub, { ttlSeconds = 3600, topics, jti } = {}) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds };
  if (topics) claims.topics = topics;
  if (jti) claims.jti = jti;
  const signingInput = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  const signature = createHmac("sha256", secret).update(signingInput).digest("base64url");
  return `${signingInput}.${signature}`;
}

/** A WebSocket connection that buffers the JSON frames it receives. */
export class WsClient {
  static async connect(wsUrl, token, { timeoutMs = 5000 } = {}) {
    const client = new WsClient(new WebSocket(`${wsUrl}?token=${encodeURIComponent(token)}`));
    await new Promise((resolve, reject) => {
      client.ws.once("open", resolve);
      client.ws.once("error", reject);
      client.ws.once("unexpected-response", (req, res) => {
        req.destroy(); // ws leaves a refused request open once this event is handled
        reject(new Error(`WebSocket upgrade refused: HTTP ${res.statusCode}`));
      });
    });
    client.welcome = await client.next((f) => f.type === "welcome", timeoutMs);
    return client;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      this.frames.push(JSON.parse(data.toString()));
      this._wake();
    });
    ws.on("error", () => {});
  }

  _wake() {
    for (const waiter of [...this.waiters]) {
      const index = this.frames.findIndex(waiter.predicate);
      if (index >= 0) {
        const [frame] = this.frames.splice(index, 1);
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        clearTimeout(waiter.timer);
        waiter.resolve(frame);
      }
    }
  }

  /** The first received frame matching `predicate` (removed from the buffer). */
  next(predicate, timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      const waiter = { predicate, resolve };
      waiter.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no matching frame within ${timeoutMs} ms; received: ${JSON.stringify(this.frames)}`));
      }, timeoutMs);
      this.waiters.push(waiter);
      this._wake();
    });
  }

  /** The message frame with this id. */
  message(id, timeoutMs) {
    return this.next((f) => f.type === "message" && f.id === id, timeoutMs);
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  close() {
    this.ws.close();
  }
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually(fn, { timeoutMs = 5000, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
