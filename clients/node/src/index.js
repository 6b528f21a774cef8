// @pushsvc/client — Node.js client of the pushsvc gRPC API.
//
// Every call carries the API key (`authorization: Bearer <key>`, as call
// credentials) and a deadline. Unary calls failing with UNAVAILABLE are retried
// with exponential backoff and full jitter; a retried push reuses its
// idempotency key (one is generated when the caller gives none), so a retry
// never delivers a message twice. Failures reject with a PushsvcError.
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { loadPushService } from "./proto.js";
import { Status, errorFromStatus, toPushsvcError } from "./errors.js";

export * from "./errors.js";
export { loadPushService, protoRoot } from "./proto.js";

const MAX_UINT32 = 0xffffffff;

/** The address `PushClient.fromEnv` uses when PUSHSVC_GRPC_ADDR is unset. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** What every pushsvc client says when the environment holds no API key. */
export const NO_API_KEY_MESSAGE =
  "pushsvc: no API key: set PUSHSVC_API_KEY, or PUSHSVC_API_KEYS as on the node (its first key is used)";

/** $PUSHSVC_GRPC_ADDR, or DEFAULT_ADDRESS when it is unset. */
export function addressFromEnv(env = process.env) {
  return env.PUSHSVC_GRPC_ADDR?.trim() || DEFAULT_ADDRESS;
}

/** $PUSHSVC_API_KEY, else the first key of $PUSHSVC_API_KEYS, else undefined. */
export function apiKeyFromEnv(env = process.env) {
  const own = env.PUSHSVC_API_KEY?.trim();
  if (own) return own;
  return (env.PUSHSVC_API_KEYS ?? "")
    .split(",")
    .map((k) => k.trim())
    .find((k) => k);
}

/**
 * TLS from the environment: `{ tls: true, tlsCa: path }` when $PUSHSVC_TLS_CA names
 * the CA file to verify the node with, `{ tls: true }` when $PUSHSVC_TLS is
 * 1/true/yes/on (the system's trusted roots), else `{}` (plaintext).
 */
export function tlsFromEnv(env = process.env) {
  const tlsCa = env.PUSHSVC_TLS_CA?.trim();
  if (tlsCa) return { tls: true, tlsCa };
  const flag = (env.PUSHSVC_TLS ?? "").trim().toLowerCase();
  return ["1", "true", "yes", "on"].includes(flag) ? { tls: true } : {};
}

function readCa(tlsCa) {
  if (Buffer.isBuffer(tlsCa)) return tlsCa;
  try {
    return readFileSync(tlsCa);
  } catch (err) {
    throw new Error(`pushsvc: cannot read the TLS CA file ${tlsCa}: ${err.message}`, { cause: err });
  }
}

/** bytes as they are, strings as UTF-8, anything else (object, array, number...) as JSON. */
export function encodePayload(payload) {
  if (Buffer.isBuffer(payload)) return payload;
  if (payload instanceof Uint8Array) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (payload instanceof ArrayBuffer) return Buffer.from(payload);
  if (typeof payload === "string") return Buffer.from(payload, "utf8");
  let text;
  try {
    text = JSON.stringify(payload);
  } catch (err) {
    throw new TypeError(`payload is not bytes, a string or JSON-serializable: ${err.message}`);
  }
  if (text === undefined) throw new TypeError(`payload of type ${typeof payload} is not JSON-serializable`);
  return Buffer.from(text, "utf8");
}

function userList(userIds) {
  if (typeof userIds === "string") return [userIds];
  if (userIds == null) return [];
  return Array.from(userIds);
}

/**
 * The PushRequest message for `push` / `pushStream`. No idempotency key is
 * invented here.
 */
export function buildPushRequest({ userIds, payload, contentType, ttlSeconds, idempotencyKey } = {}) {
  const request = {
    userIds: userList(userIds),
    payload: encodePayload(payload ?? Buffer.alloc(0)),
    contentType: contentType ?? "application/json",
    idempotencyKey: idempotencyKey ?? "",
  };
  if (ttlSeconds !== undefined && ttlSeconds !== null) {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 0 || ttlSeconds > MAX_UINT32) {
      throw new RangeError("ttlSeconds must be an integer >= 0 (0 = online-only)");
    }
    request.ttlSeconds = ttlSeconds;
  }
  return request;
}

function pushResult(resp) {
  return {
    messageId: resp.messageId,
    seqs: resp.seqs.map(Number),
    duplicate: resp.duplicate,
    error: resp.error ? { code: resp.error.code, message: resp.error.message } : null,
  };
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function abortError(signal) {
  const reason = signal?.reason instanceof Error ? signal.reason.message : "the call was aborted";
  return errorFromStatus(Status.CANCELLED, reason, { cause: signal?.reason });
}

function deadlineFrom(timeoutMs) {
  return timeoutMs === null || timeoutMs === Infinity ? Infinity : new Date(Date.now() + timeoutMs);
}

/**
 * A connection to one pushsvc node (or a load balancer in front of several).
 */
export class PushClient {
  /**
   * @param {string} address  host:port of the node's gRPC listener
   * @param {object} [options] see index.d.ts (PushClientOptions)
   */
  constructor(address, options = {}) {
    const {
      apiKey,
      timeoutMs = 5000,
      retries = 3,
      backoffMs = 200,
      maxBackoffMs = 5000,
      credentials,
      tls = false,
      tlsCa,
      channelOptions,
      protoDir,
      onRetry,
    } = options;
    if (typeof address !== "string" || !address) throw new TypeError("address must be a host:port string");
    if (!(timeoutMs > 0)) throw new RangeError("timeoutMs must be positive");
    if (!Number.isInteger(retries) || retries < 0) throw new RangeError("retries must be an integer >= 0");
    if (!(backoffMs >= 0) || !(maxBackoffMs >= 0)) throw new RangeError("backoffMs and maxBackoffMs must be >= 0");
    this.address = address;
    this.timeoutMs = timeoutMs;
    this.retries = retries;
    this.backoffMs = backoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.onRetry = onRetry;

    // TLS with tlsCa (a CA file's path, or its PEM bytes) or the system's roots.
    const channelCredentials =
      credentials ??
      (tls || tlsCa ? grpc.credentials.createSsl(tlsCa ? readCa(tlsCa) : null) : grpc.credentials.createInsecure());
    // The API key travels as call credentials. grpc-js refuses to compose call
    // credentials into insecure channel credentials, so on a plaintext channel
    // they go with each call instead.
    this._callCredentials = undefined;
    let composed = channelCredentials;
    if (apiKey) {
      const header = `Bearer ${apiKey}`;
      const callCredentials = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
        const metadata = new grpc.Metadata();
        metadata.set("authorization", header);
        callback(null, metadata);
      });
      if (channelCredentials._isSecure()) composed = channelCredentials.compose(callCredentials);
      else this._callCredentials = callCredentials;
    }
    const Service = loadPushService(protoDir);
    // Reconnect quickly, so that a retry after a short backoff really dials again
    // instead of failing at once on a channel still in its reconnect backoff.
    this._stub = new Service(address, composed, {
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2000,
      ...channelOptions,
    });
  }

  /**
   * A client for $PUSHSVC_GRPC_ADDR (default 127.0.0.1:50051) with $PUSHSVC_API_KEY,
   * else the first key of $PUSHSVC_API_KEYS: the names the node and the `pushsvc`
   * command read; over TLS with $PUSHSVC_TLS_CA or $PUSHSVC_TLS (tlsFromEnv).
   * `options` as for the constructor; they win over the environment. Throws an
   * Error with NO_API_KEY_MESSAGE when there is no key at all.
   */
  static fromEnv(options = {}, env = process.env) {
    const apiKey = options.apiKey || apiKeyFromEnv(env);
    if (!apiKey) throw new Error(NO_API_KEY_MESSAGE);
    return new PushClient(addressFromEnv(env), { ...tlsFromEnv(env), ...options, apiKey });
  }

  /** Closes the channel; calls in flight are cancelled. */
  close() {
    this._stub.close();
  }

  /** The underlying grpc-js client (for waitForReady, getChannel...). */
  get grpcClient() {
    return this._stub;
  }

  // -- calls ---------------------------------------------------------------------

  /**
   * Sends one message to every connection of each user. Without
   * `idempotencyKey`, a random one is used so that retries stay exactly-once.
   */
  async push(request, options) {
    const message = buildPushRequest({
      ...request,
      idempotencyKey: request?.idempotencyKey || `pushsvc-node-${randomUUID()}`,
    });
    return pushResult(await this._unary("Push", message, options));
  }

  /**
   * Push on one stream: `requests` is an iterable or async iterable of push
   * requests; yields one result per request, in order. A request that fails
   * yields a result whose `error` is set; the stream goes on. Not retried.
   * `timeoutMs` bounds the whole stream (default: no deadline).
   */
  async *pushStream(requests, options = {}) {
    const call = this._openStream(options);
    let pumpError;
    const pump = (async () => {
      try {
        for await (const request of requests) {
          if (!call.write(buildPushRequest(request))) await once(call, "drain");
        }
        call.end();
      } catch (err) {
        pumpError = err;
        call.cancel();
      }
    })();
    try {
      for await (const resp of call) yield pushResult(resp);
      await pump;
      if (pumpError) throw pumpError;
    } catch (err) {
      await pump;
      if (pumpError) throw pumpError;
      throw toPushsvcError(err);
    } finally {
      call.on("error", () => {});
      call.cancel();
    }
  }

  /**
   * A PushStream driven request by request: `session.push(req)` resolves with
   * the response to that request; `session.end()` closes the stream once the
   * pending requests are answered.
   */
  openPushStream(options = {}) {
    return new PushStreamSession(this._openStream(options));
  }

  /** Sends one message to every connection subscribed to `topic` (never stored). */
  async publish({ topic, payload, contentType } = {}, options) {
    const message = {
      topic: topic ?? "",
      payload: encodePayload(payload ?? Buffer.alloc(0)),
      contentType: contentType ?? "application/json",
    };
    const resp = await this._unary("Publish", message, options);
    return { messageId: resp.messageId, localSubscribers: resp.localSubscribers };
  }

  /** Per user, in request order: online, connection count, node ids. */
  async getPresence(userIds, options) {
    const resp = await this._unary("GetPresence", { userIds: userList(userIds) }, options);
    return resp.presence.map((p) => ({
      userId: p.userId,
      online: p.online,
      connections: p.connections,
      nodeIds: [...p.nodeIds],
    }));
  }

  /** Closes every connection of a user (close code 4000, `reason` as close reason). */
  async disconnect(userId, reason = "", options) {
    const resp = await this._unary("Disconnect", { userId, reason }, options);
    return { connectionsClosed: resp.connectionsClosed };
  }

  /** Per recipient of a stored message: seq, delivered, acked. */
  async getMessageStatus(messageId, options) {
    const resp = await this._unary("GetMessageStatus", { messageId }, options);
    return resp.recipients.map((r) => ({
      userId: r.userId,
      seq: Number(r.seq),
      delivered: r.delivered,
      acked: r.acked,
    }));
  }

  /** The live nodes of the fleet, ordered by node id. */
  async listNodes(options) {
    const resp = await this._unary("ListNodes", {}, options);
    return resp.nodes.map((n) => ({
      nodeId: n.nodeId,
      grpcAddr: n.grpcAddr,
      wsAddr: n.wsAddr,
      connections: n.connections,
      startedAt: n.startedAt,
    }));
  }

  /**
   * Opens a StreamReceipts call: delivered and acked receipts recorded on any
   * node of the fleet, for `userIds`, or (none given) for the messages pushed
   * with this client's API key; after `cursor` (a `ReceiptStream.cursor` of an
   * earlier stream), else from now on. Iterate it with `for await`. No
   * deadline, no retries: after an error, open a new stream from its `cursor`.
   */
  streamReceipts({ userIds, cursor } = {}, options = {}) {
    const request = { userIds: userList(userIds), cursor: cursor ?? "" };
    const call = this._stub.StreamReceipts(request, this._metadata(options.metadata), this._callOptions(null));
    return new ReceiptStream(call);
  }

  /**
   * Revokes a token id (JWT `jti`, or the jti an AuthService returned) until
   * `expiresAt` (a Date, or unix seconds: the token's own expiry): its
   * connections close with 4001 on every node and it is refused at connect.
   */
  async revokeToken({ jti, expiresAt, reason } = {}, options) {
    const seconds = expiresAt instanceof Date ? Math.floor(expiresAt.getTime() / 1000) : Math.floor(expiresAt ?? 0);
    const resp = await this._unary("RevokeToken", { jti: jti ?? "", expiresAt: seconds, reason: reason ?? "" }, options);
    return { connectionsClosed: resp.connectionsClosed };
  }

  // -- machinery -----------------------------------------------------------------

  _callOptions(timeoutMs) {
    const options = { deadline: deadlineFrom(timeoutMs) };
    if (this._callCredentials) options.credentials = this._callCredentials;
    return options;
  }

  _metadata(extra) {
    const metadata = new grpc.Metadata();
    if (extra) {
      for (const [key, value] of Object.entries(extra)) metadata.set(key, value);
    }
    return metadata;
  }

  _openStream({ timeoutMs = null, metadata } = {}) {
    return this._stub.PushStream(this._metadata(metadata), this._callOptions(timeoutMs));
  }

  _once(method, request, { timeoutMs, signal, metadata }) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      let onAbort;
      const call = this._stub[method](
        request,
        this._metadata(metadata),
        this._callOptions(timeoutMs),
        (err, resp) => {
          signal?.removeEventListener("abort", onAbort);
          if (err) reject(toPushsvcError(err));
          else resolve(resp);
        },
      );
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  /** Backoff before retry number `attempt` (1 = first retry): full jitter. */
  _backoff(attempt) {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
    return Math.random() * ceiling;
  }

  async _unary(method, request, options = {}) {
    const callOptions = { timeoutMs: this.timeoutMs, ...options };
    const retries = options.retries ?? this.retries;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this._once(method, request, callOptions);
      } catch (err) {
        const error = toPushsvcError(err);
        error.attempts = attempt + 1;
        if (error.code !== Status.UNAVAILABLE || attempt >= retries || callOptions.signal?.aborted) throw error;
        const delayMs = this._backoff(attempt + 1);
        this.onRetry?.({ method, attempt: attempt + 1, delayMs, error });
        try {
          await sleep(delayMs, callOptions.signal);
        } catch (abort) {
          abort.attempts = attempt + 1;
          throw abort;
        }
      }
    }
  }
}

/** A PushStream used request by request (see PushClient.openPushStream). */
export class PushStreamSession {
  constructor(call) {
    this._call = call;
    this._pending = [];
    this._error = null; // set once the stream is over: why further pushes fail
    this._failure = null; // set when the stream ended with a non-OK status
    this._ended = false;
    this._closed = new Promise((resolve) => {
      call.on("status", (status) => {
        this._onStatus(status);
        resolve();
      });
    });
    call.on("data", (resp) => this._pending.shift()?.resolve(pushResult(resp)));
    // The "status" event carries the same information as "error".
    call.on("error", () => {});
  }

  _onStatus(status) {
    if (status.code === Status.OK) {
      this._error = errorFromStatus(Status.UNAVAILABLE, "the push stream is closed");
    } else {
      this._error = this._failure = errorFromStatus(status.code, status.details, { metadata: status.metadata });
    }
    for (const p of this._pending.splice(0)) p.reject(this._error);
  }

  /** Number of requests sent and not answered yet. */
  get pending() {
    return this._pending.length;
  }

  /** Sends one request; resolves with its response (whose `error` may be set). */
  push(request) {
    if (this._error) return Promise.reject(this._error);
    if (this._ended) return Promise.reject(new Error("push() after end()"));
    let message;
    try {
      message = buildPushRequest(request);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this._pending.push({ resolve, reject });
      this._call.write(message);
    });
  }

  /**
   * Half-closes the stream; resolves once the server has answered every
   * request and closed it; rejects if the stream failed (e.g. UNAUTHENTICATED).
   */
  async end() {
    if (!this._ended) {
      this._ended = true;
      this._call.end();
    }
    await this._closed;
    if (this._failure && this._failure.code !== Status.CANCELLED) throw this._failure;
  }

  /** Cancels the stream; pending pushes reject with CANCELLED. */
  cancel() {
    this._call.cancel();
  }
}


const RECEIPT_KINDS = { RECEIPT_KIND_DELIVERED: "delivered", RECEIPT_KIND_ACKED: "acked" };
const RECEIPT_BUFFER = 1000; // receipts read ahead of the consumer before the call is paused

/**
 * An open StreamReceipts call (see PushClient.streamReceipts). `cursor` is where
 * to resume after the last receipt the iteration returned (before any, where the
 * stream started). The iteration throws a PushsvcError when the stream ends with
 * one (RESOURCE_EXHAUSTED: the consumer fell too far behind; UNAVAILABLE: the
 * node drains) and stops after `cancel()`.
 */
export class ReceiptStream {
  constructor(call) {
    this._call = call;
    this.cursor = "";
    this._items = []; // receipts, and cursor moves of keep-alives, not consumed yet
    this._wake = null;
    this._done = false;
    this._error = null;
    this._cancelled = false;
    this._paused = false;
    this._started = new Promise((resolve, reject) => {
      this._resolveStart = resolve;
      this._rejectStart = reject;
    });
    this._started.catch(() => {});
    let first = true;
    call.on("data", (resp) => {
      if (first) {
        first = false;
        this.cursor = resp.cursor;
        this._resolveStart(resp.cursor);
      } else if (resp.events.length === 0) {
        this._items.push({ cursorOnly: resp.cursor });
      }
      for (const e of resp.events) this._items.push(receipt(e));
      if (this._items.length >= RECEIPT_BUFFER && !this._paused) {
        this._paused = true;
        call.pause();
      }
      this._notify();
    });
    call.on("error", (err) => {
      if (!this._cancelled) this._error = toPushsvcError(err);
      this._rejectStart(this._error ?? toPushsvcError(err));
      this._finish();
    });
    call.on("end", () => this._finish());
  }

  _finish() {
    this._done = true;
    this._rejectStart(this._error ?? errorFromStatus(Status.CANCELLED, "the receipt stream ended"));
    this._notify();
  }

  _notify() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }

  /** Resolves with the start cursor once the node accepted the stream; rejects with its error. */
  started() {
    return this._started;
  }

  async *[Symbol.asyncIterator]() {
    while (true) {
      if (this._items.length > 0) {
        const item = this._items.shift();
        if (this._paused && this._items.length < RECEIPT_BUFFER / 2) {
          this._paused = false;
          this._call.resume();
        }
        if (item.cursorOnly !== undefined) {
          this.cursor = item.cursorOnly;
          continue;
        }
        this.cursor = item.cursor;
        yield item;
        continue;
      }
      if (this._done) {
        if (this._error) throw this._error;
        return;
      }
      await new Promise((resolve) => {
        this._wake = resolve;
      });
    }
  }

  /** Ends the stream; the iteration stops. */
  cancel() {
    this._cancelled = true;
    this._call.cancel();
  }
}

function receipt(e) {
  return {
    kind: RECEIPT_KINDS[e.kind] ?? e.kind,
    messageId: e.messageId,
    userId: e.userId,
    seq: Number(e.seq),
    recordedAt: new Date(e.recordedAt * 1000),
    nodeId: e.nodeId,
    cursor: e.cursor,
  };
}
