// Type declarations for pushsvc.js, the pushsvc browser client.

/** A `message` frame as the server sends it (docs/protocol.md §1.2). */
export interface PushMessage {
  type: "message";
  /** Message id, as returned by Push / Publish. */
  id: string;
  /** Per-user sequence number of a stored message; absent for online-only and topic messages. */
  seq?: number;
  /** Set for topic (Publish) messages. */
  topic?: string;
  content_type: string;
  /** The JSON value (JSON content types) or a string (text/*). */
  data?: unknown;
  /** Base64 of the payload for other content types. */
  data_b64?: string;
}

export interface Welcome {
  type: "welcome";
  conn: string;
  user: string;
  node: string;
  /** The user's latest seq when the connection opened. */
  seq: number;
  /** Seconds between application-level pings. */
  ping_interval: number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  state: ConnectionState;
  /** Close code that caused the change, when there is one. */
  code?: number;
  reason?: string;
}

export interface CloseEvent {
  code: number;
  reason: string;
  /** false: the connection closed before the welcome frame (a failed handshake). */
  wasOpen: boolean;
}

export interface ErrorEvent {
  /**
   * Server error frames: "bad_request" | "forbidden" | "rate_limited" | "too_large" | "unknown_type".
   * Client side: "handshake_failed" | "token_error" | "handler_error" | "storage_error" |
   * "inbox_reset" | "connect_error" | "listener_error".
   */
  code: string;
  message: string;
  error?: unknown;
  /** For "handler_error": the message the handler failed on (it still counts as processed). */
  msg?: PushMessage;
}

export interface TopicEvent {
  topic: string;
}

/** Where the last processed seq is kept. `null` means "unknown". */
export interface SeqStorage {
  load(): number | null | Promise<number | null>;
  save(seq: number | null): void | Promise<void>;
}

export interface PushClientOptions {
  /** `wss://push.example.com/ws`; http(s) URLs and paths relative to the page work too. */
  url: string;
  /** Called before every connection attempt; return a fresh token when the old one expired. */
  token: (() => string | Promise<string>) | string;
  /** Called for every message, one at a time, in order; acked after it returns or resolves. */
  onMessage?: (msg: PushMessage) => void | Promise<void>;
  onState?: (ev: StateEvent) => void;
  onWelcome?: (ev: Welcome) => void;
  onError?: (ev: ErrorEvent) => void;
  onClose?: (ev: CloseEvent) => void;
  /** Default: in memory. Use `localStorageStorage()` to survive page reloads. */
  storage?: SeqStorage;
  /** First backoff cap in ms (default 1000); doubles per failed attempt. */
  reconnectBaseMs?: number;
  /** Largest backoff cap in ms (default 30000). Delays are random in [0, cap). */
  reconnectMaxMs?: number;
  /** Send a pending ack at most this long after processing (default 100). */
  ackIntervalMs?: number;
  /** ...or at once after this many processed messages (default 50). */
  ackEvery?: number;
  /** Override the welcome frame's ping_interval (ms); 0 = use the server's (default). */
  pingIntervalMs?: number;
  /** No pong within this many ms: the connection is dead (default 10000). */
  pongTimeoutMs?: number;
  /** No welcome frame within this many ms: the attempt failed (default 15000). */
  connectTimeoutMs?: number;
  /** Give up (state "closed") after this many consecutive refused handshakes (default 5). */
  maxHandshakeFailures?: number;
  /**
   * After a close before the welcome frame, fetch the URL over plain HTTP (no-cors) to tell a
   * refusal (counted towards maxHandshakeFailures) from a node that is down (not counted).
   * Needs connect-src to allow the http(s) URL. Default true.
   */
  probe?: boolean;
  /** WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
}

export interface PushClientEvents {
  state: StateEvent;
  welcome: Welcome;
  error: ErrorEvent;
  close: CloseEvent;
  subscribed: TopicEvent;
  unsubscribed: TopicEvent;
}

export declare const DEFAULTS: Readonly<
  Required<
    Pick<
      PushClientOptions,
      | "reconnectBaseMs"
      | "reconnectMaxMs"
      | "ackIntervalMs"
      | "ackEvery"
      | "pingIntervalMs"
      | "pongTimeoutMs"
      | "connectTimeoutMs"
      | "maxHandshakeFailures"
      | "probe"
    >
  >
>;

export declare function memoryStorage(initial?: number | null): SeqStorage;
export declare function localStorageStorage(key?: string, store?: Storage): SeqStorage;

export declare class PushClient {
  constructor(options: PushClientOptions);
  readonly state: ConnectionState;
  /** Highest seq processed by onMessage; null when none is known. */
  readonly lastSeq: number | null;
  /** Topics to be (re)subscribed on every connection. */
  readonly topics: string[];
  /** Start connecting (no-op when already running). */
  connect(): this;
  /** Send the pending ack, close with 1000, stop reconnecting. */
  close(): void;
  /** Subscribe now (if open) and after every reconnect. */
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /** Returns a function that removes the listener. */
  on<K extends keyof PushClientEvents>(event: K, fn: (ev: PushClientEvents[K]) => void): () => void;
  off<K extends keyof PushClientEvents>(event: K, fn: (ev: PushClientEvents[K]) => void): void;
}

export default PushClient;
