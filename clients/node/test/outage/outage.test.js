// Retries through a REAL store outage. tests/test_node_client.py starts a
// fleet node on a FerretDB of its own, stops the FerretDB, and runs
//
//   PUSHSVC_TEST_OUTAGE=1 node --test test/outage/outage.test.js
//
// with the PUSHSVC_TEST_* variables of the live tests. The node is up, its
// store is not: Push answers UNAVAILABLE. Once every push this test keeps in
// flight has been refused at least once, it prints OUTAGE_MARK; the wrapper
// then checks the node's pushsvc_store_errors_total and starts the FerretDB
// again, and the pushes must succeed on a retry, exactly once.
//
// `npm test` (test/*.test.js) does not include this file. Run without
// PUSHSVC_TEST_OUTAGE=1 it FAILS: it cannot pass without an outage.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import WebSocket from "ws";
import { InvalidArgumentError, PushClient, Status, UnavailableError } from "@pushsvc/client";
import { WsClient, liveNode, mintToken, uniqueUser } from "../helpers.js";

/** Tells the wrapper it may bring the store back (see tests/outage.py). */
const OUTAGE_MARK = "PUSHSVC_OUTAGE_SEEN";

if (process.env.PUSHSVC_TEST_OUTAGE !== "1") {
  throw new Error(
    "PUSHSVC_TEST_OUTAGE=1 is not set: this test needs a node whose store is down now and comes " +
      `back once it prints ${OUTAGE_MARK} (\`.venv/bin/pytest tests/test_node_client.py\` arranges that).`,
  );
}
const node = liveNode(); // throws (fails this file) without the PUSHSVC_TEST_* variables

/**
 * A real grpc-js client interceptor (channelOptions.interceptors): it sees
 * every attempt a PushClient makes, retries included, with the request as sent
 * and the status that came back.
 */
class Recorder {
  constructor() {
    /** One entry per finished attempt, in the order they ended. */
    this.calls = [];
    this.interceptor = (options, nextCall) => {
      const call = { method: options.method_definition.path, userIds: [], key: undefined, start: Date.now() };
      return new grpc.InterceptingCall(nextCall(options), {
        sendMessage: (message, next) => {
          // A copy: what this attempt sent, whatever happens to the object later.
          call.userIds = [...(message.userIds ?? [])];
          call.key = message.idempotencyKey;
          next(message);
        },
        start: (metadata, _listener, next) => {
          next(metadata, {
            onReceiveStatus: (status, nextStatus) => {
              Object.assign(call, { end: Date.now(), code: status.code, details: status.details });
              this.calls.push(call);
              nextStatus(status);
            },
          });
        },
      });
    };
  }

  /** The finished Push attempts whose first recipient is `user`. */
  pushesTo(user) {
    return this.calls.filter((c) => c.method.endsWith("/Push") && c.userIds[0] === user);
  }
}

const storeUnavailable = (call) => call.code === Status.UNAVAILABLE && /store/.test(call.details);

const rec = new Recorder();
const clients = [];
const sockets = [];

function newClient(options) {
  const client = new PushClient(node.grpcAddr, {
    apiKey: node.apiKey,
    channelOptions: { interceptors: [rec.interceptor] },
    ...options,
  });
  clients.push(client);
  return client;
}

after(() => {
  for (const ws of sockets) ws.close();
  for (const client of clients) client.close();
});

/** A connection replaying the user's inbox from the start (since=0). */
async function replay(user) {
  const token = mintToken(node.jwtSecret, user);
  const ws = new WsClient(new WebSocket(`${node.wsUrl}?token=${encodeURIComponent(token)}&since=0`));
  sockets.push(ws);
  await new Promise((resolve, reject) => {
    ws.ws.once("open", resolve);
    ws.ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.ws.once("error", reject);
  });
  ws.welcome = await ws.next((f) => f.type === "welcome");
  return ws;
}

/** The push to `user` was tried more than once, always with one key; returns it. */
function checkRetried(user, wantKey) {
  const calls = rec.pushesTo(user);
  assert.ok(calls.length >= 2, `push to ${user}: ${calls.length} attempt(s), want a retry after the outage`);
  const key = calls[0].key;
  if (wantKey) assert.equal(key, wantKey);
  else assert.match(key, /^pushsvc-node-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  calls.forEach((call, i) => {
    assert.equal(call.key, key, `attempt ${i} of the push to ${user}`);
    if (i < calls.length - 1) assert.ok(storeUnavailable(call), `attempt ${i}: ${call.code} ${call.details}`);
    else assert.equal(call.code, Status.OK, `last attempt: ${call.details}`);
  });
  console.log(`push to ${user}: ${calls.length} attempts (${calls.map((c) => c.end - c.start).join(", ")} ms)`);
  return key;
}

test("pushes retried through a store outage are stored and delivered exactly once", { timeout: 120_000 }, async () => {
  const retried = [];
  // Enough to outlast the outage: the store returns within a few seconds of the
  // mark; the backoffs alone add up to about 9 s on average.
  const client = newClient({
    retries: 8,
    backoffMs: 500,
    maxBackoffMs: 3000,
    timeoutMs: 10_000,
    onRetry: (info) => retried.push(info),
  });
  const [userGen, userKey, userOut, userBad] = ["gen", "key", "out", "bad"].map((p) => uniqueUser(`outage-${p}`));

  // With the store down, a malformed push is still refused at once: not retried.
  const bad = await client.push({ userIds: [userBad, ""], payload: {} }).catch((e) => e);
  assert.ok(bad instanceof InvalidArgumentError, `got ${bad}`);
  assert.equal(bad.attempts, 1);
  assert.equal(rec.pushesTo(userBad).length, 1);

  // In flight through the outage: a push with a generated key, one with the
  // caller's key, and one whose single retry runs out while the store is down.
  const explicitKey = `outage-explicit-${uniqueUser()}`;
  const payloadGen = { outage: "generated key" };
  const payloadKey = { outage: "explicit key", n: 2 };
  const settled = new Set();
  const track = (name, promise) => {
    promise.then(
      () => settled.add(name),
      () => settled.add(name),
    );
    return promise;
  };
  const gen = track(userGen, client.push({ userIds: [userGen], payload: payloadGen }));
  const keyed = track(userKey, client.push({ userIds: [userKey], payload: payloadKey, idempotencyKey: explicitKey }));
  const short = newClient({ retries: 1, backoffMs: 100, maxBackoffMs: 100, timeoutMs: 10_000 });
  const runsOut = await short.push({ userIds: [userOut], payload: {} }).catch((e) => e);
  assert.ok(runsOut instanceof UnavailableError, `push with 1 retry: ${runsOut}`);
  assert.match(runsOut.details, /store/);
  assert.equal(runsOut.attempts, 2);
  assert.equal(rec.pushesTo(userOut).length, 2);

  for (const user of [userGen, userKey]) {
    while (!rec.pushesTo(user).some(storeUnavailable)) {
      assert.ok(!settled.has(user), `push to ${user} ended without a store failure: is the store really down?`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  // Every push in flight has been refused: the store may come back.
  console.log(`${OUTAGE_MARK}: every push got UNAVAILABLE; start the store again`);

  const results = { [userGen]: await gen, [userKey]: await keyed };
  for (const [user, result] of Object.entries(results)) {
    assert.equal(result.duplicate, false, user);
    assert.deepEqual(result.seqs, [1], user);
  }
  const keys = { [userGen]: checkRetried(userGen), [userKey]: checkRetried(userKey, explicitKey) };
  assert.ok(retried.filter((r) => r.method === "Push").length >= 2, "onRetry saw the retries");

  // The node knows the key each push kept through its retries: pushing it
  // again is a duplicate of the same message, and nothing is stored twice.
  for (const [user, key] of Object.entries(keys)) {
    const again = await client.push({ userIds: [user], payload: {}, idempotencyKey: key });
    assert.equal(again.duplicate, true, user);
    assert.equal(again.messageId, results[user].messageId, user);
  }
  for (const [user, payload] of [
    [userGen, payloadGen],
    [userKey, payloadKey],
  ]) {
    const ws = await replay(user);
    const frame = await ws.next((f) => f.type === "message");
    assert.equal(frame.id, results[user].messageId);
    assert.equal(frame.seq, 1);
    assert.deepEqual(frame.data, payload);
    // Frames are written in order: nothing else came before the pong.
    ws.send({ type: "ping" });
    await ws.next((f) => f.type === "pong");
    assert.deepEqual(
      ws.frames.filter((f) => f.type === "message"),
      [],
      `${user} got the message more than once`,
    );
  }
});
