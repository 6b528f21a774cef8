// clients/js/pushsvc.js in headless Chromium against a real node.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { clientPage, control, launch, newUser, ns, seqs, sleep, waitFor } from "./helpers.js";

// Short backoff: the tests restart nodes and must not wait 30 s caps.
const FAST = { reconnectBaseMs: 200, reconnectMaxMs: 1000, connectTimeoutMs: 3000 };

const tokenFor = (user, extra = {}) => async () => (await control("/token", { user, ...extra })).token;
const push = (user, n) => control("/push", { user, data: { n } });
const acked = async (id) => (await control("/status", { id })).recipients[0];

describe("PushClient in Chromium", () => {
  let browser;
  before(async () => {
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
  });

  test("connects, receives in order, acks only after the handler resolves", async () => {
    const user = newUser("ack");
    const first = [await push(user, 1), await push(user, 2)]; // replayed on connect
    const { page, rec } = await clientPage(browser, { tokens: tokenFor(user), connect: false });
    await page.evaluate(() => {
      window.gate = new Promise((resolve) => (window.release = resolve));
      window.client.connect();
    });
    await waitFor("open", async () => (await rec()).states.some((s) => s.state === "open"));
    const third = await push(user, 3); // live
    await sleep(600); // many ack intervals: nothing may be acked while the handler waits
    for (const m of [...first, third]) {
      const status = await acked(m.id);
      assert.equal(status.delivered, true, `message ${m.seq} delivered`);
      assert.equal(status.acked, false, `message ${m.seq} acked before its handler finished`);
    }
    await page.evaluate(() => window.release());
    await waitFor("3 messages", async () => (await rec()).got.length === 3);
    await waitFor("every message acked", async () => {
      for (const m of [...first, third]) if (!(await acked(m.id)).acked) return false;
      return true;
    });
    const r = await rec();
    assert.deepEqual(seqs(r), [1, 2, 3]);
    assert.deepEqual(ns(r), [1, 2, 3]);
    assert.equal(r.welcomes.length, 1);
    assert.equal(r.welcomes[0].user, user);
    assert.equal(r.tokenCalls, 1);
    assert.deepEqual(
      r.states.map((s) => s.state),
      ["connecting", "open"],
    );
    assert.equal(await page.evaluate(() => window.client.lastSeq), 3);
    await page.close();
  });

  test("subscribes to a topic, receives a Publish, unsubscribes", async () => {
    const user = newUser("topic");
    const { page, rec } = await clientPage(browser, {
      tokens: tokenFor(user, { topics: ["news*"] }),
      connect: false,
    });
    await page.evaluate(() => {
      window.client.subscribe("news.eu"); // before connecting: sent after the welcome
      window.client.connect();
    });
    await waitFor("subscribed", async () => (await rec()).subscribed.includes("news.eu"));
    const pub = await control("/publish", { topic: "news.eu", data: { title: "hello" } });
    assert.ok(pub.local_subscribers >= 1);
    await waitFor("the topic message", async () => (await rec()).got.some((m) => m.topic === "news.eu"));
    const msg = (await rec()).got.find((m) => m.topic === "news.eu");
    assert.equal(msg.id, pub.id);
    assert.deepEqual(msg.data, { title: "hello" });
    assert.equal(msg.seq, undefined);

    await page.evaluate(() => window.client.subscribe("sports")); // the token does not allow it
    await waitFor("forbidden", async () => (await rec()).errors.some((e) => e.code === "forbidden"));

    await page.evaluate(() => window.client.unsubscribe("news.eu"));
    await waitFor("unsubscribed", async () => (await rec()).unsubscribed.includes("news.eu"));
    await control("/publish", { topic: "news.eu", data: { title: "not for us" } });
    await push(user, 1); // after the publish on the same node: arrives after it would have
    await waitFor("the user message", async () => ns(await rec()).length === 1);
    assert.equal((await rec()).got.filter((m) => m.topic).length, 1);
    await page.close();
  });

  test("node restart under the page: every message exactly once, in order", async (t) => {
    const user = newUser("restart");
    const { page, rec } = await clientPage(browser, {
      tokens: tokenFor(user, { topics: ["news"] }),
      options: FAST,
      slowHandler: true,
    });
    await page.evaluate(() => window.client.subscribe("news"));
    await waitFor("subscribed", async () => (await rec()).subscribed.length === 1);
    let n = 0;
    const pushed = [];
    for (let i = 0; i < 10; i++) pushed.push(await push(user, ++n)); // before
    await waitFor("10 messages before the restart", async () => ns(await rec()).length === 10);

    // Five more that the page receives but has not processed when the node goes
    // away (its handler waits): the new connection (since=10) sends them again.
    await page.evaluate(() => {
      window.gate = new Promise((resolve) => (window.release = resolve));
    });
    for (let i = 0; i < 5; i++) pushed.push(await push(user, ++n));
    await waitFor("the held messages delivered", async () => (await acked(pushed.at(-1).id)).delivered);

    let restarted = false;
    const restart = control("/restart").then((r) => {
      restarted = true;
      return r;
    });
    // During: while the node drains, is down and starts, a push every 20 ms, not
    // waiting for the previous one; those the node cannot take yet wait and retry
    // with the same idempotency key, and land while the page reconnects and replays.
    const during = [];
    do {
      during.push(push(user, ++n));
      await sleep(20);
    } while (!restarted);
    assert.equal((await restart).code, 0, "the node exits cleanly on SIGTERM");
    pushed.push(...(await Promise.all(during)));
    await waitFor("the page back", async () => (await rec()).welcomes.length >= 2, 15000);
    await page.evaluate(() => window.release());
    for (let i = 0; i < 10; i++) pushed.push(await push(user, ++n)); // after
    t.diagnostic(`pushed 15 before, ${during.length} during, 10 after the restart`);

    await waitFor(`${n} messages`, async () => ns(await rec()).length >= n, 30000);
    await sleep(500); // duplicates, if any, would arrive now
    const r = await rec();
    // Concurrent pushes take seqs in any order among themselves: the order is the seq order.
    const bySeq = [...pushed].sort((a, b) => a.seq - b.seq);
    assert.deepEqual(
      bySeq.map((p) => p.seq),
      Array.from({ length: n }, (_, i) => i + 1),
      "one seq per push, no gap",
    );
    assert.ok(pushed.every((p) => !p.duplicate));
    const got = r.got.filter((m) => m.topic === undefined);
    assert.deepEqual(
      got.map((m) => m.id),
      bySeq.map((p) => p.id),
      "every message exactly once, in seq order",
    );
    assert.deepEqual(ns(r).slice(0, 10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(ns(r).slice(-10), Array.from({ length: 10 }, (_, i) => n - 9 + i));
    assert.ok(
      r.closes.some((c) => c.code === 1012 && c.wasOpen),
      `the page saw the 1012 close: ${JSON.stringify(r.closes)}`,
    );
    assert.ok(r.welcomes.length >= 2, "reconnected");
    assert.ok(r.tokenCalls >= 2, "asked for a token again");
    const states = r.states.map((s) => s.state);
    assert.deepEqual(states.slice(0, 3), ["connecting", "open", "reconnecting"]);
    assert.equal(states.at(-1), "open");

    // Resubscribed after the reconnect, without being asked.
    await waitFor("resubscribed", async () => (await rec()).subscribed.length >= 2);
    const pub = await control("/publish", { topic: "news", data: { after: "restart" } });
    await waitFor("the topic message", async () => (await rec()).got.some((m) => m.id === pub.id));
    // Acked up to the last message, on the new connection.
    await waitFor("the last message acked", async () => (await acked(bySeq.at(-1).id)).acked);
    await page.close();
  });

  test("an expired token: the provider is asked again and the fresh token connects", async () => {
    const user = newUser("expiry");
    const short = (await control("/token", { user, ttl: 1 })).token;
    let fresh = null; // the test hands out a fresh token only after seeing the refusal
    const handed = [];
    const { page, rec } = await clientPage(browser, {
      tokens: async () => {
        const token = fresh ?? short;
        handed.push(token === short ? "short" : "fresh");
        return token;
      },
      options: { ...FAST, maxHandshakeFailures: 50 },
    });
    await waitFor("open with the short token", async () => (await rec()).welcomes.length === 1);
    // Expired for the node: exp plus its clock-skew tolerance has passed.
    await waitFor(
      "the node to refuse the short token",
      async () => (await control("/handshake", { token: short })).status === 401,
      20000,
      250,
    );
    await control("/restart"); // the connection drops; the page must reconnect
    await waitFor(
      "a refused handshake",
      async () => (await rec()).errors.some((e) => e.code === "handshake_failed"),
      20000,
    );
    assert.equal((await rec()).welcomes.length, 1, "the expired token must not connect");
    fresh = (await control("/token", { user })).token;
    await waitFor("open with the fresh token", async () => (await rec()).welcomes.length === 2, 15000);
    const r = await rec();
    assert.equal(r.tokens.at(-1), fresh, "the last connection used the fresh token");
    assert.ok(r.tokenCalls >= 3, `token provider calls: ${r.tokenCalls}`);
    assert.equal(handed.at(-1), "fresh");
    assert.equal(r.states.at(-1).state, "open");
    const m = await push(user, 1);
    await waitFor("a message on the new connection", async () => (await rec()).got.some((g) => g.id === m.id));
    await page.close();
  });

  test("gives up after N refused handshakes, with state closed", async () => {
    const user = newUser("refused");
    const { page, rec } = await clientPage(browser, {
      tokens: async () => "not-a-jwt",
      options: { reconnectBaseMs: 50, reconnectMaxMs: 200, maxHandshakeFailures: 3 },
    });
    await waitFor("closed", async () => (await rec()).states.some((s) => s.state === "closed"), 15000);
    await sleep(500);
    const r = await rec();
    assert.equal(r.tokenCalls, 3, "one token per attempt, then no more attempts");
    assert.equal(r.errors.filter((e) => e.code === "handshake_failed").length, 3);
    assert.match(r.states.at(-1).reason, /gave up after 3/);
    assert.equal(r.welcomes.length, 0);
    assert.equal((await control("/presence", { user })).online, false);
    await page.close();
  });

  test("4000 from the Disconnect API: closed, no reconnect", async () => {
    const user = newUser("kicked");
    const { page, rec } = await clientPage(browser, { tokens: tokenFor(user), options: FAST });
    await waitFor("open", async () => (await rec()).welcomes.length === 1);
    await control("/disconnect", { user, reason: "account suspended" });
    await waitFor("closed", async () => (await rec()).states.at(-1).state === "closed");
    await sleep(1500); // longer than the backoff: a reconnect would show now
    const r = await rec();
    assert.deepEqual(r.states.at(-1), { state: "closed", code: 4000, reason: "account suspended" });
    assert.equal(r.tokenCalls, 1);
    assert.equal((await control("/presence", { user })).online, false);
    await page.close();
  });

  test("no pong from a frozen node: the page closes and reconnects", async () => {
    const user = newUser("frozen");
    // The node's ping_interval is 1 s (tests/test_browser.py): the page pings every second.
    const { page, rec } = await clientPage(browser, {
      tokens: tokenFor(user),
      options: { ...FAST, pongTimeoutMs: 1000, connectTimeoutMs: 1500 },
    });
    await waitFor("open", async () => (await rec()).welcomes.length === 1);
    assert.equal((await rec()).welcomes[0].ping_interval, 1);
    await control("/pause"); // SIGSTOP: TCP stays up, nothing answers
    let resumed = false;
    try {
      await waitFor("the pong timeout", async () => (await rec()).closes.some((c) => c.reason === "pong timeout"), 8000);
      assert.equal((await rec()).states.at(-1).state, "reconnecting");
    } finally {
      await control("/resume");
      resumed = true;
    }
    assert.ok(resumed);
    await waitFor("open again", async () => (await rec()).states.at(-1).state === "open", 15000);
    const m = await push(user, 1);
    await waitFor("a message after the freeze", async () => (await rec()).got.some((g) => g.id === m.id));
    await page.close();
  });
});
