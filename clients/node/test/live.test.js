// Against a LIVE node (addresses from PUSHSVC_TEST_*): every message sent over
// gRPC must arrive on a real WebSocket connection.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  InvalidArgumentError,
  NotFoundError,
  PushClient,
  PushsvcError,
  Status,
  UnauthenticatedError,
  isInvalidArgument,
  isUnauthenticated,
} from "@pushsvc/client";
import { WsClient, eventually, liveNode, mintToken, uniqueUser } from "./helpers.js";

const node = liveNode(); // throws (fails this file) without the PUSHSVC_TEST_* variables
const T = { timeout: 20_000 };

let client;
const sockets = [];

async function connect(user, options) {
  const ws = await WsClient.connect(node.wsUrl, mintToken(node.jwtSecret, user, options));
  sockets.push(ws);
  return ws;
}

before(() => {
  client = new PushClient(node.grpcAddr, { apiKey: node.apiKey });
});

after(() => {
  for (const ws of sockets) ws.close();
  client.close();
});

describe("Push", () => {
  test("a stored push arrives on the user's WebSocket with its seq", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const result = await client.push({ userIds: [user], payload: { hello: "node", n: 1 } });
    assert.match(result.messageId, /^[0-9a-f]{26}([0-9a-f]{12})?$/);
    assert.deepEqual(result.seqs, [1]);
    assert.equal(result.duplicate, false);
    assert.equal(result.error, null);
    const frame = await ws.message(result.messageId);
    assert.equal(frame.seq, 1);
    assert.equal(frame.content_type, "application/json");
    assert.deepEqual(frame.data, { hello: "node", n: 1 });
  });

  test("an online-only push (ttlSeconds 0) arrives without a seq", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const result = await client.push({ userIds: user, payload: "hi there", contentType: "text/plain", ttlSeconds: 0 });
    assert.deepEqual(result.seqs, []);
    const frame = await ws.message(result.messageId);
    assert.equal(frame.seq, undefined);
    assert.equal(frame.data, "hi there");
  });

  test("binary payloads travel as data_b64", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const bytes = Uint8Array.from([0, 1, 2, 250]);
    const result = await client.push({ userIds: [user], payload: bytes, contentType: "application/octet-stream" });
    const frame = await ws.message(result.messageId);
    assert.equal(frame.data_b64, Buffer.from(bytes).toString("base64"));
  });

  test("repeating an idempotency key returns the first message and sends nothing", T, async () => {
    const user = uniqueUser();
    const key = `node-test-${user}`;
    const first = await client.push({ userIds: [user], payload: { n: 1 }, idempotencyKey: key });
    const second = await client.push({ userIds: [user], payload: { n: 2 }, idempotencyKey: key });
    assert.equal(second.duplicate, true);
    assert.equal(second.messageId, first.messageId);
    assert.deepEqual(second.seqs, first.seqs);
    // The stored message is replayed once, on a connection opened afterwards.
    const ws = await connect(user);
    const frame = await ws.message(first.messageId);
    assert.deepEqual(frame.data, { n: 1 });
  });
});

describe("PushStream", () => {
  test("async iterable: one result per request, in order; failures do not end the stream", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    async function* requests() {
      yield { userIds: [user], payload: { i: 1 } };
      yield { userIds: [], payload: { i: 2 } };
      yield { userIds: [user], payload: "not json" };
      yield { userIds: [user], payload: { i: 4 } };
    }
    const results = [];
    for await (const result of client.pushStream(requests())) results.push(result);
    assert.equal(results.length, 4);
    assert.equal(results[0].error, null);
    assert.deepEqual(results[0].seqs, [1]);
    assert.equal(results[1].error.code, Status.INVALID_ARGUMENT);
    assert.match(results[1].error.message, /user_ids is empty/);
    assert.equal(results[1].messageId, "");
    assert.equal(results[2].error.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(results[3].seqs, [2]);
    const first = await ws.message(results[0].messageId);
    const last = await ws.message(results[3].messageId);
    assert.deepEqual([first.seq, first.data], [1, { i: 1 }]);
    assert.deepEqual([last.seq, last.data], [2, { i: 4 }]);
  });

  test("duplex session: each push resolves with its own response", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const stream = client.openPushStream();
    const pushes = [1, 2, 3].map((i) => stream.push({ userIds: [user], payload: { i } }));
    assert.equal(stream.pending, 3);
    const results = await Promise.all(pushes);
    await stream.end();
    assert.deepEqual(
      results.map((r) => r.seqs),
      [[1], [2], [3]],
    );
    for (const [i, result] of results.entries()) {
      const frame = await ws.message(result.messageId);
      assert.deepEqual(frame.data, { i: i + 1 });
    }
  });

  test("a wrong key ends the stream with UNAUTHENTICATED", T, async () => {
    const bad = new PushClient(node.grpcAddr, { apiKey: "not-the-key" });
    try {
      await assert.rejects(async () => {
        for await (const _ of bad.pushStream([{ userIds: ["x"], payload: 1 }]));
      }, UnauthenticatedError);
      const stream = bad.openPushStream();
      await assert.rejects(stream.push({ userIds: ["x"], payload: 1 }), UnauthenticatedError);
      await assert.rejects(stream.end(), UnauthenticatedError);
    } finally {
      bad.close();
    }
  });
});

describe("Publish", () => {
  test("a topic message reaches the subscribed connection only", T, async () => {
    const topic = `news.${uniqueUser("t")}`;
    const subscriber = await connect(uniqueUser(), { topics: ["news.*"] });
    const bystander = await connect(uniqueUser(), { topics: ["news.*"] });
    subscriber.send({ type: "subscribe", topic });
    await subscriber.next((f) => f.type === "subscribed" && f.topic === topic);
    const result = await client.publish({ topic, payload: { title: "x" } });
    assert.equal(result.localSubscribers, 1);
    const frame = await subscriber.message(result.messageId);
    assert.equal(frame.topic, topic);
    assert.deepEqual(frame.data, { title: "x" });
    // The bystander answers a ping after the publish, and has seen no topic message.
    bystander.send({ type: "ping" });
    await bystander.next((f) => f.type === "pong");
    assert.equal(bystander.frames.filter((f) => f.type === "message").length, 0);
  });

  test("a malformed topic is INVALID_ARGUMENT", T, async () => {
    await assert.rejects(client.publish({ topic: "bad topic!", payload: {} }), InvalidArgumentError);
  });
});

describe("GetPresence", () => {
  test("a connected user is online on this node, in request order", T, async () => {
    const user = uniqueUser();
    const absent = uniqueUser();
    const ws = await connect(user);
    const presence = await eventually(async () => {
      const p = await client.getPresence([absent, user]);
      return p[1].online ? p : null;
    });
    assert.deepEqual(presence[0], { userId: absent, online: false, connections: 0, nodeIds: [] });
    assert.deepEqual(presence[1], { userId: user, online: true, connections: 1, nodeIds: [ws.welcome.node] });
    // and a push to that user arrives on that connection
    const result = await client.push({ userIds: [user], payload: { p: 1 } });
    assert.equal((await ws.message(result.messageId)).seq, 1);
    ws.close();
    await ws.closed;
    await eventually(async () => !(await client.getPresence(user))[0].online);
  });
});

describe("Disconnect, GetMessageStatus, ListNodes", () => {
  test("disconnect closes the user's connections with 4000 and the reason", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const result = await client.disconnect(user, "bye from node");
    assert.equal(result.connectionsClosed, 1);
    assert.deepEqual(await ws.closed, { code: 4000, reason: "bye from node" });
  });

  test("message status turns delivered, then acked", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const { messageId } = await client.push({ userIds: [user], payload: { s: 1 } });
    const frame = await ws.message(messageId);
    await eventually(async () => (await client.getMessageStatus(messageId))[0].delivered);
    ws.send({ type: "ack", seq: frame.seq });
    const [status] = await eventually(async () => {
      const s = await client.getMessageStatus(messageId);
      return s[0].acked ? s : null;
    });
    assert.deepEqual(status, { userId: user, seq: 1, delivered: true, acked: true });
    await assert.rejects(client.getMessageStatus("0".repeat(26)), NotFoundError);
  });

  test("listNodes names this node", T, async () => {
    const nodes = await client.listNodes();
    assert.ok(nodes.some((n) => n.grpcAddr === node.grpcAddr));
    assert.ok(nodes.every((n) => n.startedAt > 1.6e9 && n.nodeId));
  });
});

describe("StreamReceipts", () => {
  async function take(iterator, n) {
    const out = [];
    while (out.length < n) {
      const { value, done } = await iterator.next();
      assert.equal(done, false, "the receipt stream ended early");
      out.push(value);
    }
    return out;
  }

  test("delivered and acked receipts arrive, and a stream resumes from its cursor", T, async () => {
    const user = uniqueUser();
    const ws = await connect(user);
    const stream = client.streamReceipts(); // this API key's messages, from now
    const start = await stream.started();
    assert.match(start, /^r1\./);
    const first = await client.push({ userIds: [user], payload: { n: 1 } });
    const frame = await ws.message(first.messageId);
    ws.send({ type: "ack", seq: frame.seq });
    const iterator = stream[Symbol.asyncIterator]();
    const got = await take(iterator, 2);
    assert.deepEqual(
      got.map((r) => [r.kind, r.messageId, r.userId, r.seq]),
      [
        ["delivered", first.messageId, user, 1],
        ["acked", first.messageId, user, 1],
      ],
    );
    assert.ok(got[0].nodeId && got[0].recordedAt instanceof Date);
    assert.equal(stream.cursor, got[1].cursor);
    const cursor = stream.cursor;
    stream.cancel();
    assert.equal((await iterator.next()).done, true);

    const second = await client.push({ userIds: [user], payload: { n: 2 } });
    const frame2 = await ws.message(second.messageId);
    ws.send({ type: "ack", seq: frame2.seq });
    const resumed = client.streamReceipts({ userIds: [user], cursor });
    try {
      const again = await take(resumed[Symbol.asyncIterator](), 2);
      assert.deepEqual(
        again.map((r) => [r.kind, r.messageId, r.seq]),
        [
          ["delivered", second.messageId, 2],
          ["acked", second.messageId, 2],
        ],
      );
    } finally {
      resumed.cancel();
    }
    await assert.rejects(client.streamReceipts({ cursor: "nope" }).started(), InvalidArgumentError);
  });

  test("revokeToken closes the token's connections with 4001", T, async () => {
    const user = uniqueUser();
    const jti = `jti-${user}`;
    const ws = await WsClient.connect(node.wsUrl, mintToken(node.jwtSecret, user, { jti }));
    sockets.push(ws);
    const { connectionsClosed } = await client.revokeToken({ jti, expiresAt: new Date(Date.now() + 3600_000), reason: "bye" });
    assert.equal(connectionsClosed, 1);
    assert.deepEqual(await ws.closed, { code: 4001, reason: "token revoked: bye" });
    await assert.rejects(WsClient.connect(node.wsUrl, mintToken(node.jwtSecret, user, { jti })), /HTTP 401/);
    await assert.rejects(client.revokeToken({ jti, expiresAt: 1 }), InvalidArgumentError);
  });
});

describe("typed errors", () => {
  test("a wrong API key is UNAUTHENTICATED and is not retried", T, async () => {
    let retried = 0;
    const bad = new PushClient(node.grpcAddr, { apiKey: "not-the-key", onRetry: () => retried++ });
    try {
      const err = await bad.push({ userIds: ["x"], payload: 1 }).catch((e) => e);
      assert.ok(err instanceof UnauthenticatedError);
      assert.ok(err instanceof PushsvcError);
      assert.equal(err.code, Status.UNAUTHENTICATED);
      assert.equal(err.codeName, "UNAUTHENTICATED");
      assert.ok(err.isUnauthenticated());
      assert.ok(isUnauthenticated(err));
      assert.match(err.details, /API key is not valid/);
      assert.equal(err.attempts, 1);
      assert.equal(retried, 0);
    } finally {
      bad.close();
    }
  });

  test("no API key at all is UNAUTHENTICATED", T, async () => {
    const anonymous = new PushClient(node.grpcAddr);
    try {
      await assert.rejects(anonymous.getPresence("x"), (err) => isUnauthenticated(err) && /missing API key/.test(err.details));
    } finally {
      anonymous.close();
    }
  });

  test("empty userIds is INVALID_ARGUMENT", T, async () => {
    const err = await client.push({ userIds: [], payload: { a: 1 } }).catch((e) => e);
    assert.ok(err instanceof InvalidArgumentError);
    assert.equal(err.code, Status.INVALID_ARGUMENT);
    assert.ok(isInvalidArgument(err));
    assert.match(err.details, /user_ids is empty/);
    await assert.rejects(client.getPresence([]), InvalidArgumentError);
  });
});
