// The admin console (PUSHSVC_ADMIN_UI=1) of a real two-node fleet, in headless Chromium.
// Run by tests/test_admin_console.py, which starts FerretDB, node A (the console under
// test, at PUSHSVC_ADMIN_URL) and node B (the /demo page: a browser WebSocket client,
// at PUSHSVC_HTTP_URL), and the control server (tokens and gRPC pushes through node A).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ARTIFACTS, control, launch, newUser, openPage, waitFor } from "./helpers.js";

const ADMIN_URL = need("PUSHSVC_ADMIN_URL");
const ADMIN_TOKEN = need("PUSHSVC_ADMIN_TOKEN");
const NODE_A = need("PUSHSVC_NODE_A");
const NODE_B = need("PUSHSVC_NODE_B");
const LONG = 60000; // ms: generous, for a loaded machine

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run through pytest tests/test_admin_console.py`);
  return value;
}

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** The console page, with a list of console errors, page errors and CSP violations. */
async function openConsole() {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
  });
  page.on("pageerror", (err) => problems.push(`pageerror: ${err.message}`));
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (ev) => {
      console.error(`CSP violation: ${ev.violatedDirective} ${ev.blockedURI}`);
    });
  });
  const resp = await page.goto(`${ADMIN_URL}/admin`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()["content-security-policy"], /default-src 'none'/);
  return { page, problems };
}

async function signIn(page, token = ADMIN_TOKEN) {
  await page.waitForSelector("#token-form", { state: "visible", timeout: LONG });
  await page.fill("#token", token);
  await page.click("#sign-in-button");
}

const rowIds = (page) => page.$$eval("#nodes-body tr", (trs) => trs.map((tr) => tr.dataset.nodeId).sort());
const pushedOf = (page, nodeId) =>
  page.$eval(`#nodes-body tr[data-node-id="${nodeId}"]`, (tr) => Number(tr.children[8].dataset.value || -1));
const text = (page, sel) => page.textContent(sel);

/**
 * A screenshot, checked for content: the node ids are in the DOM when it is taken, and
 * the PNG, decoded by Chromium in a blank page, is a page-sized picture with many colours
 * and dark (text) pixels, not a blank or single-colour image.
 */
async function screenshot(page, name) {
  const domText = await page.textContent("body");
  const file = ARTIFACTS ? path.join(ARTIFACTS, name) : undefined;
  const png = await page.screenshot({ path: file, fullPage: true });
  for (const id of [NODE_A, NODE_B]) assert.ok(domText.includes(id), `${id} on the page when ${name} was taken`);
  const viewer = await browser.newPage();
  try {
    const stats = await viewer.evaluate(async (b64) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, img.width, img.height).data;
      const colours = new Set();
      let dark = 0;
      for (let i = 0; i < data.length; i += 4) {
        colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
        if (data[i] + data[i + 1] + data[i + 2] < 200) dark++;
      }
      return { width: img.width, height: img.height, colours: colours.size, dark };
    }, png.toString("base64"));
    assert.ok(stats.width >= 1000 && stats.height >= 600, `${name} size ${JSON.stringify(stats)}`);
    assert.ok(stats.colours >= 32, `${name} has few colours: ${JSON.stringify(stats)}`);
    assert.ok(stats.dark >= 2000, `${name} has little text: ${JSON.stringify(stats)}`);
  } finally {
    await viewer.close();
  }
}

test("asks for the token once, shows both nodes, and the push counter moves", async () => {
  const { page, problems } = await openConsole();
  assert.equal(await text(page, "#status"), "not signed in");

  await signIn(page, "not-the-admin-token");
  await waitFor("the wrong token refused", async () => /not valid/.test(await text(page, "#sign-in-error")), LONG);
  assert.equal(await page.isVisible("#console"), false);

  await signIn(page);
  await page.waitForSelector("#console", { state: "visible", timeout: LONG });
  await waitFor("both nodes listed", async () => JSON.stringify(await rowIds(page)) === JSON.stringify([NODE_A, NODE_B].sort()), LONG);
  assert.match(await text(page, `#nodes-body tr[data-node-id="${NODE_A}"]`), /ok/);
  await waitFor("the status live", async () => (await text(page, "#status")) === "live", LONG);
  assert.match(await text(page, "#this-node"), new RegExp(NODE_A));

  // Pushes through node A's gRPC API: the counter of node A in the fleet table moves.
  await waitFor("node A's figures", async () => (await pushedOf(page, NODE_A)) >= 0, LONG);
  const before = await pushedOf(page, NODE_A);
  const user = newUser("counted");
  for (let n = 0; n < 3; n++) await control("/push", { user, data: { n } });
  await waitFor("the push counter to move", async () => (await pushedOf(page, NODE_A)) >= before + 3, LONG);

  // The charts fill from the node's own samples (one every 2 s).
  await waitFor("charts with points", async () => Number(await page.getAttribute('.chart[data-metric="push_rate"]', "data-points")) >= 2, LONG);
  assert.ok((await page.getAttribute('.chart[data-metric="push_rate"] polyline', "points")).includes(","));
  await screenshot(page, "admin-fleet.png");

  // The token is kept for the tab: a reload does not ask again.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("pushsvc-admin-token")), ADMIN_TOKEN);
  await page.reload();
  await page.waitForSelector("#console", { state: "visible", timeout: LONG });
  assert.equal(await page.isVisible("#sign-in"), false);
  await page.click("#sign-out");
  await page.waitForSelector("#token-form", { state: "visible", timeout: LONG });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("pushsvc-admin-token")), null);

  // The one expected error: the browser reports the 401 of the wrong token.
  const unexpected = problems.filter((p) => !/status of 401/.test(p));
  assert.deepEqual(unexpected, [], "no other console errors, page errors or CSP violations");
  await page.close();
});

test("pushes, publishes and disconnects by hand, reaching a WebSocket client on the other node", async () => {
  const user = newUser("by-hand");
  const topic = `console.${user}`;
  const { token } = await control("/token", { user, topics: ["console.*"] });
  // The WebSocket client: node B's /demo page, in the same browser.
  const demo = await openPage(browser, `/demo?token=${token}`);
  await waitFor("the client connected to node B", async () => (await text(demo.page, "#state")) === "open", LONG);
  assert.match(await text(demo.page, "#identity"), new RegExp(NODE_B));

  const { page, problems } = await openConsole();
  await signIn(page);
  await page.waitForSelector("#console", { state: "visible", timeout: LONG });

  // Presence and inbox position, as node A sees the fleet.
  await page.fill("#user-id", user);
  // A lookup waits a bounded time for the store; on a loaded machine it may answer
  // "store unavailable" (503, shown in #user-error): look up again, as an operator would.
  let lookupsRefused = 0;
  const lookUp = async () => {
    await waitFor("a user lookup answered with the user", async () => {
      await page.click("#user-form button");
      const outcome = await waitFor("the lookup to finish", async () => {
        const o = await page.getAttribute("#user-form", "data-outcome");
        return o !== "pending" && o;
      }, LONG);
      if (outcome === "shown") return true;
      lookupsRefused++;
      assert.notEqual(await text(page, "#user-error"), "", "a failed lookup says why");
      return false;
    }, LONG, 500);
    assert.equal(await page.isVisible("#user-result"), true);
  };
  await waitFor("the user online on node B", async () => {
    await lookUp();
    return (await text(page, '[data-fact="online"]')) === "yes";
  }, LONG, 500);
  assert.equal(await text(page, '[data-fact="nodes"]'), NODE_B);
  assert.equal(await text(page, '[data-fact="latest-seq"]'), "0");

  // Push by hand: stored, forwarded by node A to node B, shown by the client.
  await page.fill("#push-users", user);
  await page.fill("#push-payload", '{"by": "hand", "n": 1}');
  await page.click("#push-form button[type=submit]");
  await waitFor("the push answered", async () => /^pushed /.test(await text(page, "#push-result")), LONG);
  assert.match(await text(page, "#push-result"), new RegExp(`${user} seq 1$`));
  const shown = () => demo.page.$$eval("#messages li", (lis) => lis.map((li) => ({ ...li.dataset, text: li.textContent })));
  await waitFor("the message at the client", async () => (await shown()).length === 1, LONG);
  const [got] = await shown();
  assert.equal(got.seq, "1");
  assert.match(got.text, /"by":\s*"hand"/);
  await lookUp();
  await waitFor("latest seq 1", async () => (await text(page, '[data-fact="latest-seq"]')) === "1", LONG);

  // A bad payload is refused with the API's message, and nothing is sent.
  await page.fill("#push-payload", "{not json");
  await page.click("#push-form button[type=submit]");
  await waitFor("the refusal shown", async () => /not valid JSON/.test(await text(page, "#push-result")), LONG);
  assert.equal(await page.getAttribute("#push-result", "class"), "result failed");

  // Publish by hand to a topic the client subscribed to on node B.
  await demo.page.fill("#topic", topic);
  await demo.page.click("#subscribe");
  await waitFor("subscribed", async () => (await text(demo.page, "#events")).includes(`subscribed to ${topic}`), LONG);
  await page.fill("#publish-topic", topic);
  await page.fill("#publish-payload", '{"headline": "by hand"}');
  await page.click("#publish-form button[type=submit]");
  await waitFor("the publish answered", async () => /^published /.test(await text(page, "#publish-result")), LONG);
  await waitFor("the topic message at the client", async () => (await shown()).some((m) => m.topic === topic), LONG);
  await screenshot(page, "admin-actions.png");

  // Disconnect by hand: the client on node B is closed with 4000 and the reason.
  await page.fill("#disconnect-user", user);
  await page.fill("#disconnect-reason", "kicked by hand");
  await page.click("#disconnect-form button[type=submit]");
  await waitFor("the disconnect answered", async () => /1 connection closed/.test(await text(page, "#disconnect-result")), LONG);
  await waitFor("the client closed", async () => (await text(demo.page, "#state")) === "closed", LONG);
  assert.match(await text(demo.page, "#events"), /close 4000 kicked by hand/);

  // The one expected error: the browser reports the 400 of the bad payload (and
  // the 503 of a lookup refused above, if any).
  const unexpected = problems.filter((p) => !/status of 400/.test(p) && !(lookupsRefused && /status of 503/.test(p)));
  assert.deepEqual(unexpected, [], "no other console errors, page errors or CSP violations");
  assert.deepEqual(demo.problems, [], "none in the demo page");
  await demo.page.close();
  await page.close();
});
