// Shared helpers for the browser tests. Run by tests/test_browser.py, which
// starts the node and the control server and passes their URLs in the environment.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

export const HTTP_URL = need("PUSHSVC_HTTP_URL"); // the node's WebSocket listener, as http://
export const WS_URL = HTTP_URL.replace(/^http/, "ws") + "/ws";
export const CONTROL_URL = need("PUSHSVC_CONTROL_URL");
export const ARTIFACTS = process.env.PUSHSVC_ARTIFACTS || "";

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through pytest tests/test_browser.py`);
  return value;
}

export function launch() {
  // A TLS node's test CA, trusted by the hash of its public key (tls.test.js).
  const spki = process.env.PUSHSVC_TLS_SPKI;
  return chromium.launch({
    executablePath: process.env.PUSHSVC_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      ...(spki ? [`--ignore-certificate-errors-spki-list=${spki}`] : []),
    ],
    timeout: 30000,
  });
}

/** POST to the control server (tests/test_browser.py). */
export async function control(path, body = {}) {
  const resp = await fetch(CONTROL_URL + path, { method: "POST", body: JSON.stringify(body) });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(`control ${path}: ${answer.error}`);
  return answer;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `fn` until it returns something truthy; fail with `what` after `timeout` ms. */
export async function waitFor(what, fn, timeout = 10000, interval = 50) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(interval);
  }
}

let userCounter = 0;
export function newUser(prefix) {
  userCounter++;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${userCounter}`;
}

/**
 * A page on the node's origin (/demo, which also serves the client module) with a
 * problems list: console errors, page errors and CSP violations.
 */
export async function openPage(browser, path = "/demo") {
  const page = await browser.newPage();
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
  const resp = await page.goto(HTTP_URL + path);
  return { page, problems, resp };
}

/**
 * A PushClient in the page, with everything it does recorded in window.rec.
 * `tokens` is a Node-side function the page's token provider calls (via
 * exposeFunction), so a test decides what every connection attempt gets.
 */
export async function clientPage(browser, { tokens, options = {}, slowHandler = false, connect = true }) {
  const { page, problems } = await openPage(browser, "/demo");
  await page.exposeFunction("nodeToken", async () => tokens());
  await page.evaluate(
    async ({ url, options, slowHandler, connect }) => {
      const { PushClient } = await import("/demo/pushsvc.js");
      const rec = (window.rec = {
        got: [],
        states: [],
        closes: [],
        errors: [],
        welcomes: [],
        subscribed: [],
        unsubscribed: [],
        tokenCalls: 0,
        tokens: [],
      });
      window.gate = null; // a promise the handler waits on, when a test sets one
      window.client = new PushClient({
        url,
        ...options,
        token: async () => {
          rec.tokenCalls++;
          const token = await window.nodeToken();
          rec.tokens.push(token);
          return token;
        },
        onMessage: async (msg) => {
          if (window.gate) await window.gate;
          if (slowHandler) await new Promise((r) => setTimeout(r, Math.random() * 5));
          rec.got.push(msg);
        },
        onState: (ev) => rec.states.push(ev),
        onWelcome: (w) => rec.welcomes.push(w),
        onError: (e) => rec.errors.push({ code: e.code, message: e.message }),
        onClose: (c) => rec.closes.push(c),
      });
      window.client.on("subscribed", (ev) => rec.subscribed.push(ev.topic));
      window.client.on("unsubscribed", (ev) => rec.unsubscribed.push(ev.topic));
      if (connect) window.client.connect();
    },
    { url: WS_URL, options, slowHandler, connect },
  );
  return { page, problems, rec: () => page.evaluate(() => window.rec) };
}

/** Seqs and payloads of what the page's handler processed. */
export const ns = (rec) => rec.got.filter((m) => m.topic === undefined).map((m) => m.data.n);
export const seqs = (rec) => rec.got.filter((m) => m.topic === undefined).map((m) => m.seq);
