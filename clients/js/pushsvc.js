// pushsvc browser client: a dependency-free ES module for the WebSocket protocol
// described in docs/protocol.md (GET /ws). See README.md next to this file.
//
// What it does for you:
// - asks your token provider for a token before EVERY connection attempt;
// - reconnects with exponential backoff and full jitter, immediately after 1012;
// - resumes with since=<last processed seq>, drops duplicates by seq;
// - calls onMessage one message at a time, in order, and acks cumulatively only
//   after the handler returned (or its promise resolved), batched;
// - sends {"type":"ping"} every ping_interval and reconnects when no pong comes back;
// - re-subscribes to your topics after every reconnect.

/** Option defaults; see pushsvc.d.ts for what each one does. */
export const DEFAULTS = Object.freeze({
  reconnectBaseMs: 1000,
  reconnectMaxMs: 30000,
  ackIntervalMs: 100,
  ackEvery: 50,
  pingIntervalMs: 0, // 0: the welcome frame's ping_interval
  pongTimeoutMs: 10000,
  connectTimeoutMs: 15000,
  maxHandshakeFailures: 5,
  probe: true,
});

const OPEN = 1;
const CLOSE_DISCONNECTED = 4000; // the Disconnect API: do not come back
const CLOSE_REVOKED = 4001; // the token was revoked: it would be refused (401)
const CLOSE_RESTART = 1012; // node draining: come back at once (to another node)
const CLOSE_TRY_AGAIN = 1013; // the node is busy (store slow, reconnect storm): 1 to 5 s later
const CLOSE_ABNORMAL = 1006;

/** Keeps the last processed seq in memory (lost on page reload). */
export function memoryStorage(initial = null) {
  let value = initial;
  return {
    load: () => value,
    save: (seq) => {
      value = seq;
    },
  };
}

/** Keeps the last processed seq in localStorage under `key`. */
export function localStorageStorage(key = "pushsvc.lastSeq", store = globalThis.localStorage) {
  return {
    load() {
      const text = store.getItem(key);
      const n = text === null ? NaN : Number(text);
      return Number.isSafeInteger(n) && n >= 0 ? n : null;
    },
    save(seq) {
      if (seq === null) store.removeItem(key);
      else store.setItem(key, String(seq));
    },
  };
}

function wsUrl(url) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`PushClient: url must be ws:, wss:, http: or https:, not ${u.protocol}`);
  }
  u.search = "";
  u.hash = "";
  return u;
}

export class PushClient {
  /** @param {import("./pushsvc").PushClientOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== "string") throw new TypeError("PushClient: url is required");
    if (typeof options.token !== "function" && typeof options.token !== "string") {
      throw new TypeError("PushClient: token must be a function returning a token (or a string)");
    }
    this._opts = { ...DEFAULTS, ...options };
    this._url = wsUrl(options.url);
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._storage = options.storage || memoryStorage();
    this._listeners = new Map();
    for (const [event, key] of [
      ["state", "onState"],
      ["welcome", "onWelcome"],
      ["error", "onError"],
      ["close", "onClose"],
    ]) {
      if (typeof options[key] === "function") this.on(event, options[key]);
    }
    this._state = "closed";
    this._running = false;
    this._gen = 0; // bumps on every attempt: stale callbacks compare and return
    this._conn = null;
    this._timer = null; // reconnect timer
    this._attempt = 0; // backoff exponent
    this._handshakeFailures = 0;
    this._lastSeq = undefined; // undefined: not loaded yet; null: unknown
    this._epoch = 0; // bumps when the inbox was reset: older queued messages keep their hands off lastSeq
    this._chain = Promise.resolve();
    this._unacked = 0;
    this._ackTimer = null;
    this._topics = new Set();
    this._onOnline = () => {
      if (this._running && this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
        this._open();
      }
    };
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this._state;
  }

  /** The highest seq processed by onMessage (null: none known yet). */
  get lastSeq() {
    return this._lastSeq === undefined ? null : this._lastSeq;
  }

  get topics() {
    return [...this._topics];
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  connect() {
    if (this._running) return this;
    this._running = true;
    this._attempt = 0;
    this._handshakeFailures = 0;
    if (globalThis.addEventListener) globalThis.addEventListener("online", this._onOnline);
    this._setState("connecting", {});
    this._open();
    return this;
  }

  close() {
    if (!this._running) return;
    const conn = this._conn;
    if (conn && conn.welcomed) this._flushAck();
    this._halt();
    if (conn) {
      this._detach(conn);
      try {
        conn.ws.close(1000, "client closed");
      } catch {
        /* already closing */
      }
    }
    this._setState("closed", { code: 1000, reason: "closed by the client" });
  }

  subscribe(topic) {
    if (typeof topic !== "string" || !topic) throw new TypeError("PushClient: topic must be a non-empty string");
    this._topics.add(topic);
    if (this._conn && this._conn.welcomed) this._send(this._conn, { type: "subscribe", topic });
  }

  unsubscribe(topic) {
    const had = this._topics.delete(topic);
    if (had && this._conn && this._conn.welcomed) this._send(this._conn, { type: "unsubscribe", topic });
  }

  // -- internals -------------------------------------------------------------------

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        if (event !== "error") this._emit("error", { code: "listener_error", message: String(err), error: err });
        else setTimeout(() => { throw err; });
      }
    }
  }

  _setState(state, info) {
    if (state === this._state) return;
    this._state = state;
    this._emit("state", { state, ...info });
  }

  _halt() {
    this._running = false;
    this._gen++;
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    if (this._ackTimer !== null) clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (globalThis.removeEventListener) globalThis.removeEventListener("online", this._onOnline);
    if (this._conn) this._clearTimers(this._conn);
    this._conn = null;
  }

  async _open() {
    const gen = ++this._gen;
    try {
      if (this._lastSeq === undefined) {
        const loaded = await this._storage.load();
        if (this._lastSeq === undefined) this._lastSeq = Number.isSafeInteger(loaded) && loaded >= 0 ? loaded : null;
      }
    } catch (err) {
      this._emit("error", { code: "storage_error", message: String(err), error: err });
      if (this._lastSeq === undefined) this._lastSeq = null;
    }
    let token;
    try {
      token = typeof this._opts.token === "string" ? this._opts.token : await this._withTimeout(this._opts.token());
      if (typeof token !== "string" || !token) throw new TypeError("the token provider returned no token");
    } catch (err) {
      if (gen !== this._gen || !this._running) return;
      this._emit("error", { code: "token_error", message: String(err), error: err });
      this._handshakeFailed(gen, 0, "token provider failed", false);
      return;
    }
    if (gen !== this._gen || !this._running) return;
    const since = this._lastSeq;
    const url = new URL(this._url);
    url.searchParams.set("token", token);
    if (since !== null) url.searchParams.set("since", String(since));
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (err) {
      this._emit("error", { code: "connect_error", message: String(err), error: err });
      this._halt();
      this._setState("closed", { code: 0, reason: String(err) });
      return;
    }
    const conn = {
      ws,
      gen,
      welcomed: false,
      ackLimit: since === null ? 0 : since, // the server accepts acks up to what it sent (or since)
      ackSent: 0,
      pingTimer: null,
      pongTimer: null,
      connectTimer: null,
    };
    this._conn = conn;
    ws.onmessage = (ev) => this._onFrame(conn, ev.data);
    ws.onclose = (ev) => this._onClose(conn, ev.code, ev.reason || "");
    ws.onerror = () => {}; // a close event follows
    conn.connectTimer = setTimeout(() => this._drop(conn, "no welcome within connectTimeoutMs"), this._opts.connectTimeoutMs);
  }

  /** The token provider gets connectTimeoutMs, like the connection itself. */
  _withTimeout(promise) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("the token provider did not answer within connectTimeoutMs")), this._opts.connectTimeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  _detach(conn) {
    this._clearTimers(conn);
    conn.ws.onmessage = conn.ws.onclose = conn.ws.onerror = null;
  }

  _clearTimers(conn) {
    clearTimeout(conn.connectTimer);
    clearInterval(conn.pingTimer);
    clearTimeout(conn.pongTimer);
    conn.connectTimer = conn.pingTimer = conn.pongTimer = null;
  }

  /** A connection we consider dead: stop listening to it and carry on as if it closed. */
  _drop(conn, reason) {
    if (conn !== this._conn) return;
    this._detach(conn);
    try {
      conn.ws.close(1000, reason.slice(0, 100));
    } catch {
      /* ignore */
    }
    this._onClose(conn, CLOSE_ABNORMAL, reason);
  }

  _send(conn, frame) {
    if (conn.ws.readyState !== OPEN) return false;
    conn.ws.send(JSON.stringify(frame));
    return true;
  }

  _onFrame(conn, data) {
    if (conn !== this._conn || typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        this._onWelcome(conn, frame);
        break;
      case "message":
        if (typeof frame.seq === "number" && frame.seq > conn.ackLimit) conn.ackLimit = frame.seq;
        this._enqueue(frame);
        break;
      case "pong":
        clearTimeout(conn.pongTimer);
        conn.pongTimer = null;
        break;
      case "subscribed":
      case "unsubscribed":
        this._emit(frame.type, { topic: frame.topic });
        break;
      case "error":
        this._emit("error", { code: frame.code, message: frame.message });
        break;
      default:
        break; // newer server frames: ignore
    }
  }

  _onWelcome(conn, frame) {
    clearTimeout(conn.connectTimer);
    conn.connectTimer = null;
    conn.welcomed = true;
    this._handshakeFailures = 0;
    this._attempt = 0;
    const latest = Number(frame.seq) || 0;
    if (latest > 0 && this._lastSeq !== null && latest < this._lastSeq) {
      // The server's inbox is older than our state (e.g. a new data directory):
      // resuming from lastSeq would skip its messages. Start over without since.
      this._emit("error", {
        code: "inbox_reset",
        message: `the server's latest seq ${latest} is below the last processed ${this._lastSeq}: starting over`,
      });
      this._epoch++;
      this._lastSeq = null;
      this._save(null);
      this._detach(conn);
      this._conn = null;
      try {
        conn.ws.close(1000, "inbox reset");
      } catch {
        /* ignore */
      }
      this._open();
      return;
    }
    this._setState("open", {});
    this._emit("welcome", frame);
    for (const topic of this._topics) this._send(conn, { type: "subscribe", topic });
    const every = this._opts.pingIntervalMs || (Number(frame.ping_interval) || 25) * 1000;
    conn.pingTimer = setInterval(() => {
      if (conn.pongTimer !== null) return; // one outstanding ping at a time
      if (!this._send(conn, { type: "ping" })) return;
      conn.pongTimer = setTimeout(() => this._drop(conn, "pong timeout"), this._opts.pongTimeoutMs);
    }, every);
    this._flushAck(); // what was processed while we were away
  }

  _onClose(conn, code, reason) {
    if (conn !== this._conn) return;
    this._detach(conn);
    this._conn = null;
    const wasOpen = conn.welcomed;
    this._emit("close", { code, reason, wasOpen });
    if (!this._running) return;
    if (code === CLOSE_TRY_AGAIN) {
      // Not a refusal: the node took the connection but could not welcome it yet.
      this._setState(this._state === "connecting" ? "connecting" : "reconnecting", { code, reason });
      this._scheduleReconnect(1000 + Math.random() * 4000);
      return;
    }
    if (!wasOpen) {
      this._handshakeFailed(conn.gen, code, reason, this._opts.probe);
      return;
    }
    if (code === CLOSE_DISCONNECTED || code === CLOSE_REVOKED) {
      this._halt();
      this._setState("closed", { code, reason });
      return;
    }
    this._setState("reconnecting", { code, reason });
    if (code === CLOSE_RESTART) {
      this._open(); // at once: the load balancer sends us to a live node
      return;
    }
    this._scheduleReconnect();
  }

  /**
   * The connection closed before the welcome frame. A browser cannot see the HTTP
   * status, so this may be a refused token (401), a refused origin (403), or a node
   * that is down. When the node answers plain HTTP it was a refusal: count it.
   */
  async _handshakeFailed(gen, code, reason, probe) {
    let reachable = null;
    if (probe) reachable = await this._probe();
    if (gen !== this._gen || !this._running) return;
    if (reachable !== false) {
      this._handshakeFailures++;
      this._emit("error", {
        code: "handshake_failed",
        message: `connection refused before the welcome frame (${this._handshakeFailures}/${this._opts.maxHandshakeFailures}): expired or invalid token, or origin not allowed`,
      });
      if (this._handshakeFailures >= this._opts.maxHandshakeFailures) {
        this._halt();
        this._setState("closed", {
          code,
          reason: `gave up after ${this._handshakeFailures} failed handshakes`,
        });
        return;
      }
    }
    this._setState(this._state === "connecting" ? "connecting" : "reconnecting", { code, reason });
    this._scheduleReconnect();
  }

  /** true: the node answers HTTP; false: it does not; null: cannot tell. */
  async _probe() {
    if (typeof globalThis.fetch !== "function" || typeof AbortController !== "function") return null;
    const url = new URL(this._url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 3000);
    try {
      await globalThis.fetch(url.toString(), {
        mode: "no-cors",
        cache: "no-store",
        credentials: "omit",
        signal: abort.signal,
      });
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  _scheduleReconnect(pauseMs = null) {
    const { reconnectBaseMs, reconnectMaxMs } = this._opts;
    const cap = Math.min(reconnectMaxMs, reconnectBaseMs * 2 ** Math.min(this._attempt, 30));
    this._attempt++;
    const delay = pauseMs ?? Math.random() * cap; // full jitter, unless the server asked
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  // -- processing and acks -------------------------------------------------------------

  _enqueue(msg) {
    const epoch = this._epoch;
    this._chain = this._chain.then(() => this._process(msg, epoch));
  }

  async _process(msg, epoch) {
    if (!this._running) return;
    const seq = typeof msg.seq === "number" ? msg.seq : null;
    if (seq !== null && epoch === this._epoch && this._lastSeq !== null && seq <= this._lastSeq) return;
    try {
      if (this._opts.onMessage) await this._opts.onMessage(msg);
    } catch (err) {
      // The message counts as processed: a failing handler must not stall the stream.
      this._emit("error", { code: "handler_error", message: String(err), error: err, msg });
    }
    if (seq === null || epoch !== this._epoch) return;
    if (this._lastSeq !== null && seq <= this._lastSeq) return;
    this._lastSeq = seq;
    await this._save(seq);
    this._unacked++;
    if (this._unacked >= this._opts.ackEvery) this._flushAck();
    else if (this._ackTimer === null) {
      this._ackTimer = setTimeout(() => {
        this._ackTimer = null;
        this._flushAck();
      }, this._opts.ackIntervalMs);
    }
  }

  async _save(seq) {
    try {
      await this._storage.save(seq);
    } catch (err) {
      this._emit("error", { code: "storage_error", message: String(err), error: err });
    }
  }

  _flushAck() {
    const conn = this._conn;
    if (!conn || !conn.welcomed || this._lastSeq === null || this._lastSeq === undefined) return;
    const seq = Math.min(this._lastSeq, conn.ackLimit);
    if (seq > conn.ackSent && this._send(conn, { type: "ack", seq })) conn.ackSent = seq;
    if (conn.ackSent >= this._lastSeq) this._unacked = 0;
  }
}

export default PushClient;
