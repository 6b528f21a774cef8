// The /demo page served by the node (PUSHSVC_DEMO=1), in headless Chromium.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { readFile } from "node:fs/promises";
import { ARTIFACTS, control, launch, newUser, openPage, waitFor } from "./helpers.js";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const items = (page) => page.$$eval("#messages li", (lis) => lis.map((li) => ({ ...li.dataset, text: li.textContent })));

test("the demo page connects with ?token=, shows the state and the messages", async () => {
  const user = newUser("demo");
  await control("/push", { user, data: { n: 1, text: "before the page" } });
  const { token } = await control("/token", { user, topics: ["news"] });
  const { page, problems, resp } = await openPage(browser, `/demo?token=${token}`);
  assert.match(resp.headers()["content-security-policy"], /script-src 'self'/);
  await waitFor("state open", async () => (await page.textContent("#state")) === "open");
  await waitFor("the replayed message", async () => (await items(page)).length === 1);
  await control("/push", { user, data: { n: 2, text: "live <b>not bold</b>" } });
  await waitFor("the live message", async () => (await items(page)).length === 2);
  const [newest, oldest] = await items(page);
  assert.equal(oldest.seq, "1");
  assert.equal(newest.seq, "2");
  assert.match(newest.text, /live <b>not bold<\/b>/); // shown as text, never as HTML
  assert.match(await page.textContent("#identity"), new RegExp(`user ${user}`));

  await page.fill("#topic", "news");
  await page.click("#subscribe");
  await waitFor("subscribed", async () => (await page.textContent("#events")).includes("subscribed to news"));
  await control("/publish", { topic: "news", data: { title: "x" } });
  await waitFor("the topic message", async () => (await items(page)).some((i) => i.topic === "news"));
  if (ARTIFACTS) await page.screenshot({ path: path.join(ARTIFACTS, "demo.png"), fullPage: true });

  await page.click("#disconnect");
  await waitFor("state closed", async () => (await page.textContent("#state")) === "closed");
  assert.deepEqual(problems, [], "no console errors, page errors or CSP violations");
  await page.close();
});

test("without a token the page does not connect, and says what to do", async () => {
  const { page, problems } = await openPage(browser, "/demo");
  await page.waitForLoadState("networkidle");
  assert.equal(await page.textContent("#state"), "closed");
  await page.click("#connect");
  assert.match(await page.textContent("#notice"), /pushsvc token/);
  assert.equal(await page.textContent("#state"), "closed");
  assert.deepEqual(problems, []);
  await page.close();
});

test("the README example runs as written in the demo page's console", async () => {
  const readme = await readFile(new URL("../../clients/js/README.md", import.meta.url), "utf8");
  const example = readme.match(/## Try it\n[\s\S]*?```js\n([\s\S]*?)```/)[1];
  const user = newUser("readme");
  const { token } = await control("/token", { user, topics: ["news*"] });
  const code = example.replace("paste the token here", token);
  assert.notEqual(code, example);
  const { page, problems } = await openPage(browser, "/demo");
  const logs = [];
  page.on("console", (msg) => logs.push(msg.text()));
  // What the console does with top-level await: run the snippet in an async function.
  await page.evaluate(`(async () => { ${code}\n window.readmeClient = client; })()`);
  await waitFor("open", () => logs.some((l) => l.startsWith("state open")));
  await control("/push", { user, data: { hello: 1 } });
  await control("/publish", { topic: "news", data: { title: "x" } });
  await waitFor("both messages logged", () => logs.some((l) => l.startsWith("message 1")) && logs.some((l) => l.startsWith("message news")));
  await page.evaluate(() => window.readmeClient.close());
  assert.deepEqual(problems, []);
  await page.close();
});
