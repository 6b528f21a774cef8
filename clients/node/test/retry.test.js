// Deadlines, retries and backoff, against an address with nothing listening
// and against a fake PushService in this process. Needs no live node.
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import {
  CancelledError,
  DeadlineExceededError,
  InvalidArgumentError,
  PushClient,
  Status,
  UnavailableError,
  isUnavailable,
  loadPushService,
} from "@pushsvc/client";

const T = { timeout: 20_000 };

/** A loopback port that nothing listens on (bound, then released). */
async function deadPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("nothing listening", () => {
  test("retries N times with backoff, then fails with UNAVAILABLE in bounded time", T, async () => {
    const retries = [];
    const client = new PushClient(`127.0.0.1:${await deadPort()}`, {
      apiKey: "k",
      retries: 3,
      backoffMs: 50,
      maxBackoffMs: 400,
      timeoutMs: 2000,
      onRetry: (info) => retries.push(info),
    });
    try {
      const started = Date.now();
      const err = await client.push({ userIds: ["alice"], payload: { a: 1 } }).catch((e) => e);
      const elapsed = Date.now() - started;
      assert.ok(err instanceof UnavailableError, `expected UnavailableError, got ${err}`);
      assert.equal(err.code, Status.UNAVAILABLE);
      assert.ok(isUnavailable(err) && err.retryable);
      assert.equal(err.attempts, 4);
      assert.deepEqual(
        retries.map((r) => [r.method, r.attempt]),
        [
          ["Push", 1],
          ["Push", 2],
          ["Push", 3],
        ],
      );
      // full jitter: each delay within [0, min(max, base * 2^(n-1))]
      for (const r of retries) {
        assert.ok(r.delayMs >= 0 && r.delayMs <= Math.min(400, 50 * 2 ** (r.attempt - 1)), `delay ${r.delayMs}`);
        assert.ok(r.error instanceof UnavailableError);
      }
      assert.ok(elapsed < 10_000, `took ${elapsed} ms`);
    } finally {
      client.close();
    }
  });

  test("retries: 0 fails on the first UNAVAILABLE", T, async () => {
    const client = new PushClient(`127.0.0.1:${await deadPort()}`, { retries: 0 });
    try {
      const err = await client.listNodes().catch((e) => e);
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.attempts, 1);
    } finally {
      client.close();
    }
  });

  test("an AbortSignal stops the retries", T, async () => {
    const client = new PushClient(`127.0.0.1:${await deadPort()}`, { retries: 50, backoffMs: 1000, maxBackoffMs: 1000 });
    try {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 300);
      const started = Date.now();
      await assert.rejects(client.getPresence("a", { signal: controller.signal }), CancelledError);
      assert.ok(Date.now() - started < 5000);
    } finally {
      client.close();
    }
  });
});

describe("fake PushService", () => {
  const seen = { push: [], presence: 0, publish: 0 };
  let failPushes = 0;
  let server;
  let client;
  let address;

  before(async () => {
    const Service = loadPushService();
    server = new grpc.Server();
    const fail = (callback, code, details) => callback({ code, details });
    server.addService(Service.service, {
      Push(call, callback) {
        seen.push.push({
          key: call.request.idempotencyKey,
          auth: call.metadata.get("authorization")[0],
          ttl: call.request.ttlSeconds,
        });
        if (failPushes > 0) {
          failPushes--;
          return fail(callback, Status.UNAVAILABLE, "the message store is unreachable: fake");
        }
        callback(null, { messageId: "m".repeat(26), seqs: [7], duplicate: false });
      },
      Publish(_call, callback) {
        seen.publish++;
        fail(callback, Status.INVALID_ARGUMENT, "topic is malformed");
      },
      GetPresence() {
        seen.presence++; // never answers: the client's deadline must fire
      },
    });
    const port = await new Promise((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    address = `127.0.0.1:${port}`;
    client = new PushClient(address, { apiKey: "fake-key", backoffMs: 20, maxBackoffMs: 100, timeoutMs: 500 });
  });

  after(() => {
    client.close();
    server.forceShutdown();
  });

  test("a retried push reuses its generated idempotency key, with the API key each time", T, async () => {
    seen.push.length = 0;
    failPushes = 2;
    const result = await client.push({ userIds: ["alice"], payload: { a: 1 } });
    assert.deepEqual(result.seqs, [7]);
    assert.equal(seen.push.length, 3);
    const keys = new Set(seen.push.map((p) => p.key));
    assert.equal(keys.size, 1);
    assert.match([...keys][0], /^pushsvc-node-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(seen.push.every((p) => p.auth === "Bearer fake-key"));
  });

  test("a caller's idempotency key is kept; each push gets a fresh key otherwise", T, async () => {
    seen.push.length = 0;
    failPushes = 1;
    await client.push({ userIds: ["a"], payload: 1, idempotencyKey: "my-key", ttlSeconds: 60 });
    await client.push({ userIds: ["a"], payload: 1 });
    await client.push({ userIds: ["a"], payload: 1 });
    assert.deepEqual(
      seen.push.slice(0, 2).map((p) => [p.key, p.ttl]),
      [
        ["my-key", 60],
        ["my-key", 60],
      ],
    );
    assert.notEqual(seen.push[2].key, seen.push[3].key);
  });

  test("UNAVAILABLE past the retries surfaces with the attempt count", T, async () => {
    seen.push.length = 0;
    failPushes = 10;
    const err = await client.push({ userIds: ["a"], payload: 1 }, { retries: 1 }).catch((e) => e);
    failPushes = 0;
    assert.ok(err instanceof UnavailableError);
    assert.match(err.details, /store is unreachable/);
    assert.equal(err.attempts, 2);
    assert.equal(seen.push.length, 2);
  });

  test("INVALID_ARGUMENT is not retried", T, async () => {
    seen.publish = 0;
    await assert.rejects(client.publish({ topic: "x", payload: 1 }), InvalidArgumentError);
    assert.equal(seen.publish, 1);
  });

  test("every call has a deadline: a silent server gives DEADLINE_EXCEEDED, not retried", T, async () => {
    seen.presence = 0;
    const started = Date.now();
    const err = await client.getPresence("a", { timeoutMs: 300 }).catch((e) => e);
    const elapsed = Date.now() - started;
    assert.ok(err instanceof DeadlineExceededError, `got ${err}`);
    assert.ok(err.isDeadlineExceeded());
    assert.ok(elapsed >= 250 && elapsed < 3000, `took ${elapsed} ms`);
    assert.equal(seen.presence, 1);
  });
});
