// The browser client over TLS, in headless Chromium: the page comes from the node over
// https:// and the client connects with wss://. Chromium trusts the test CA through
// --ignore-certificate-errors-spki-list with the CA's key (PUSHSVC_TLS_SPKI; the node's
// certificate file carries the CA after its own certificate, as a full chain does):
// tests/test_browser.py::test_browser_over_tls starts the node.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { HTTP_URL, WS_URL, clientPage, control, launch, newUser, waitFor } from "./helpers.js";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test("the page over https:// receives a push over wss://", async () => {
  assert.match(HTTP_URL, /^https:\/\//);
  assert.match(WS_URL, /^wss:\/\//);
  const user = newUser("tls");
  const tokens = async () => (await control("/token", { user })).token;
  const { page, problems, rec } = await clientPage(browser, { tokens });
  await waitFor("open", async () => (await rec()).states.some((s) => s.state === "open"));
  const pushed = await control("/push", { user, data: { n: 1 } });
  await waitFor("the message", async () => (await rec()).got.length === 1);
  const [msg] = (await rec()).got;
  assert.equal(msg.id, pushed.id);
  assert.deepEqual(msg.data, { n: 1 });
  const security = await page.evaluate(() => ({ protocol: location.protocol, secure: window.isSecureContext }));
  assert.deepEqual(security, { protocol: "https:", secure: true });
  assert.deepEqual(problems, []);
  await page.close();
});
