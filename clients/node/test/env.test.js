// PushClient.fromEnv reads the names the node and the `pushsvc` command read.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DEFAULT_ADDRESS,
  NO_API_KEY_MESSAGE,
  PushClient,
  addressFromEnv,
  apiKeyFromEnv,
  tlsFromEnv,
} from "@pushsvc/client";

test("the key is PUSHSVC_API_KEY, else the first of PUSHSVC_API_KEYS", () => {
  assert.equal(apiKeyFromEnv({ PUSHSVC_API_KEY: " own ", PUSHSVC_API_KEYS: "a,b" }), "own");
  assert.equal(apiKeyFromEnv({ PUSHSVC_API_KEYS: " , first , second" }), "first");
  assert.equal(apiKeyFromEnv({ PUSHSVC_API_KEY: "", PUSHSVC_API_KEYS: " , " }), undefined);
  assert.equal(addressFromEnv({}), DEFAULT_ADDRESS);
  assert.equal(addressFromEnv({ PUSHSVC_GRPC_ADDR: "10.0.0.1:7" }), "10.0.0.1:7");
});

test("no key anywhere: one clear error; an apiKey option is enough", () => {
  assert.throws(() => PushClient.fromEnv({}, {}), { message: NO_API_KEY_MESSAGE });
  const client = PushClient.fromEnv({ apiKey: "given" }, { PUSHSVC_GRPC_ADDR: "127.0.0.1:1" });
  assert.equal(client.address, "127.0.0.1:1");
  client.close();
});

test("TLS: PUSHSVC_TLS_CA (a CA file), else PUSHSVC_TLS=1 (the system's roots), else plaintext", () => {
  assert.deepEqual(tlsFromEnv({}), {});
  assert.deepEqual(tlsFromEnv({ PUSHSVC_TLS: "0" }), {});
  assert.deepEqual(tlsFromEnv({ PUSHSVC_TLS: " TRUE " }), { tls: true });
  assert.deepEqual(tlsFromEnv({ PUSHSVC_TLS_CA: " /etc/pushsvc/ca.pem ", PUSHSVC_TLS: "0" }), {
    tls: true,
    tlsCa: "/etc/pushsvc/ca.pem",
  });
  assert.throws(() => PushClient.fromEnv({ apiKey: "k" }, { PUSHSVC_TLS_CA: "/nonexistent/ca.pem" }), {
    message: /^pushsvc: cannot read the TLS CA file \/nonexistent\/ca.pem: /,
  });
});
