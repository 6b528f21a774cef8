// Deadlines, retries and backoff against an address with nothing listening:
// needs no server at all. Retries against a real node whose store goes away
// are in outage/outage.test.js (run by tests/test_node_client.py).
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { describe, test } from "node:test";
import {
  CancelledError,
  DeadlineExceededError,
  PushClient,
  Status,
  UnavailableError,
  buildPushRequest,
  isUnavailable,
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

  test("every call has a deadline: past it, DEADLINE_EXCEEDED, which is not retried", T, async () => {
    const retries = [];
    // The deadline is over before anything can answer.
    const client = new PushClient(`127.0.0.1:${await deadPort()}`, {
      timeoutMs: 0.001,
      retries: 3,
      onRetry: (info) => retries.push(info),
    });
    try {
      const err = await client.push({ userIds: ["a"], payload: 1 }).catch((e) => e);
      assert.ok(err instanceof DeadlineExceededError, `got ${err}`);
      assert.ok(err.isDeadlineExceeded() && !err.retryable);
      assert.equal(err.attempts, 1);
      assert.deepEqual(retries, []);
    } finally {
      client.close();
    }
  });
});

describe("requests as sent", () => {
  test("ttlSeconds and the caller's idempotency key are passed on; 0 is online-only", () => {
    const request = buildPushRequest({ userIds: "a", payload: { n: 1 }, idempotencyKey: "my-key", ttlSeconds: 60 });
    assert.deepEqual(
      [request.userIds, request.idempotencyKey, request.ttlSeconds, request.contentType],
      [["a"], "my-key", 60, "application/json"],
    );
    assert.deepEqual(JSON.parse(request.payload.toString()), { n: 1 });
    assert.equal(buildPushRequest({ userIds: ["a"], ttlSeconds: 0 }).ttlSeconds, 0);
    assert.equal("ttlSeconds" in buildPushRequest({ userIds: ["a"] }), false); // the server's default
    assert.throws(() => buildPushRequest({ userIds: ["a"], ttlSeconds: -1 }), RangeError);
    assert.throws(() => buildPushRequest({ userIds: ["a"], ttlSeconds: 1.5 }), RangeError);
  });

  test("options are checked", () => {
    assert.throws(() => new PushClient("127.0.0.1:1", { timeoutMs: 0 }), RangeError);
    assert.throws(() => new PushClient("127.0.0.1:1", { retries: -1 }), RangeError);
    assert.throws(() => new PushClient("127.0.0.1:1", { retries: 1.5 }), RangeError);
    assert.throws(() => new PushClient("127.0.0.1:1", { backoffMs: -1 }), RangeError);
    assert.throws(() => new PushClient(""), TypeError);
  });
});
