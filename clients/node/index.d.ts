// Type declarations of @pushsvc/client (hand-written; the runtime is src/*.js).
/// <reference types="node" />
import type { ChannelCredentials, ChannelOptions, Client, Metadata, status } from "@grpc/grpc-js";

// -- payloads and requests -------------------------------------------------------

/** bytes as they are, strings as UTF-8, anything else as JSON. */
export type Payload = Buffer | Uint8Array | ArrayBuffer | string | number | boolean | null | object;

export interface PushRequest {
  /** 1 to 1,000 recipients (a single string is one recipient). */
  userIds: string | Iterable<string>;
  /** The message body (at most the node's payload limit, 64 KiB by default). */
  payload: Payload;
  /** MIME type of the payload; default "application/json" (then a string payload must be JSON text). */
  contentType?: string;
  /** Inbox time-to-live. undefined: the node's default; 0: online-only, never stored. */
  ttlSeconds?: number;
  /** Repeating a key within 24 h delivers nothing again. push() generates one when absent. */
  idempotencyKey?: string;
}

export interface PublishRequest {
  /** 1 to 200 characters of letters, digits and "._:-/". */
  topic: string;
  payload: Payload;
  /** Default "application/json". */
  contentType?: string;
}

// -- responses -------------------------------------------------------------------

/** A failed request inside a push stream. */
export interface StreamError {
  /** gRPC status code number (3 = INVALID_ARGUMENT, 8 = RESOURCE_EXHAUSTED, 14 = UNAVAILABLE). */
  code: number;
  message: string;
}

export interface PushResult {
  /** For getMessageStatus; "" in a stream result whose `error` is set. */
  messageId: string;
  /** Per-recipient seqs, in the order of userIds; empty for online-only pushes. */
  seqs: number[];
  /** True when the idempotency key had been seen and nothing was sent again. */
  duplicate: boolean;
  /** Only in push streams: why this request failed; null otherwise. */
  error: StreamError | null;
}

export interface PublishResult {
  messageId: string;
  /** Subscriber connections reached on the node that took the call. */
  localSubscribers: number;
}

export interface UserPresence {
  userId: string;
  online: boolean;
  connections: number;
  nodeIds: string[];
}

export interface DisconnectResult {
  connectionsClosed: number;
}

export interface RecipientStatus {
  userId: string;
  seq: number;
  delivered: boolean;
  acked: boolean;
}

export interface NodeStatus {
  nodeId: string;
  grpcAddr: string;
  wsAddr: string;
  connections: number;
  /** Seconds since the Unix epoch. */
  startedAt: number;
}

// -- client ----------------------------------------------------------------------

export interface RetryInfo {
  /** The rpc name, e.g. "Push". */
  method: string;
  /** 1 for the first retry. */
  attempt: number;
  /** The jittered delay before this retry. */
  delayMs: number;
  /** The UNAVAILABLE error that caused it. */
  error: PushsvcError;
}

export interface PushClientOptions {
  /** One of the node's API keys, sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** Deadline of each unary call attempt, in ms. Default 5000. */
  timeoutMs?: number;
  /** How many times a unary call failing with UNAVAILABLE is tried again. Default 3. */
  retries?: number;
  /** Base of the exponential backoff, in ms (full jitter). Default 200. */
  backoffMs?: number;
  /** Cap of the backoff, in ms. Default 5000. */
  maxBackoffMs?: number;
  /** Dial over TLS (1.2+), verifying the node against the system's trusted roots or `tlsCa`. */
  tls?: boolean;
  /** CA certificates to verify the node with (a PEM file's path, or its bytes); implies TLS. */
  tlsCa?: string | Buffer;
  /** Channel credentials, for full control (they win over tls/tlsCa); default plaintext. */
  credentials?: ChannelCredentials;
  /** Extra grpc-js channel options. */
  channelOptions?: ChannelOptions;
  /** Directory holding pushsvc/v1/push.proto; default: the repository's or the packaged copy. */
  protoDir?: string;
  /** Called before each retry. */
  onRetry?: (info: RetryInfo) => void;
}

export interface CallOptions {
  /** Deadline of each attempt, in ms (default: the client's timeoutMs). */
  timeoutMs?: number;
  /** Retries on UNAVAILABLE for this call (default: the client's retries). */
  retries?: number;
  /** Cancels the call (and any pending retry); rejects with CancelledError. */
  signal?: AbortSignal;
  /** Extra request metadata. */
  metadata?: Record<string, string>;
}

export interface StreamOptions {
  /** Deadline of the whole stream, in ms; default none (null). */
  timeoutMs?: number | null;
  metadata?: Record<string, string>;
}

/** The address `PushClient.fromEnv` uses when PUSHSVC_GRPC_ADDR is unset: 127.0.0.1:50051. */
export declare const DEFAULT_ADDRESS: string;
/** What every pushsvc client says when the environment holds no API key. */
export declare const NO_API_KEY_MESSAGE: string;
/** $PUSHSVC_GRPC_ADDR, or DEFAULT_ADDRESS. */
export declare function addressFromEnv(env?: Record<string, string | undefined>): string;
/** $PUSHSVC_API_KEY, else the first key of $PUSHSVC_API_KEYS, else undefined. */
export declare function apiKeyFromEnv(env?: Record<string, string | undefined>): string | undefined;
/** `{tls: true, tlsCa}` from $PUSHSVC_TLS_CA, `{tls: true}` from $PUSHSVC_TLS=1, else `{}`. */
export declare function tlsFromEnv(
  env?: Record<string, string | undefined>,
): { tls?: boolean; tlsCa?: string };

export declare class PushClient {
  constructor(address: string, options?: PushClientOptions);
  /**
   * A client for $PUSHSVC_GRPC_ADDR with $PUSHSVC_API_KEY (else the first of
   * $PUSHSVC_API_KEYS), over TLS with $PUSHSVC_TLS_CA or $PUSHSVC_TLS (tlsFromEnv);
   * throws an Error with NO_API_KEY_MESSAGE when there is no key.
   */
  static fromEnv(options?: PushClientOptions, env?: Record<string, string | undefined>): PushClient;
  readonly address: string;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** The underlying grpc-js client. */
  readonly grpcClient: Client;
  close(): void;

  /** One message to every connection of each user (stored unless ttlSeconds is 0). */
  push(request: PushRequest, options?: CallOptions): Promise<PushResult>;
  /** Push many messages on one stream; one result per request, in order. Not retried. */
  pushStream(
    requests: Iterable<PushRequest> | AsyncIterable<PushRequest>,
    options?: StreamOptions,
  ): AsyncGenerator<PushResult, void, undefined>;
  /** A push stream driven request by request. */
  openPushStream(options?: StreamOptions): PushStreamSession;
  /** One message to every connection subscribed to the topic (never stored). */
  publish(request: PublishRequest, options?: CallOptions): Promise<PublishResult>;
  /** Per user, in request order. */
  getPresence(userIds: string | Iterable<string>, options?: CallOptions): Promise<UserPresence[]>;
  /** Closes every connection of the user (close code 4000). */
  disconnect(userId: string, reason?: string, options?: CallOptions): Promise<DisconnectResult>;
  /** Per recipient of a stored message. Rejects with NotFoundError for unknown ids. */
  getMessageStatus(messageId: string, options?: CallOptions): Promise<RecipientStatus[]>;
  /** The live nodes of the fleet, ordered by node id. */
  listNodes(options?: CallOptions): Promise<NodeStatus[]>;
  /** Delivered and acked receipts, from any node; for `userIds`, else this key's messages. */
  streamReceipts(request?: StreamReceiptsRequest, options?: { metadata?: Record<string, string> }): ReceiptStream;
  /** Revokes a token id until `expiresAt` (Date or unix seconds): its connections close with 4001. */
  revokeToken(request: RevokeTokenRequest, options?: CallOptions): Promise<{ connectionsClosed: number }>;
}

export interface StreamReceiptsRequest {
  /** Recipients to follow (0 to 1,000); none: the messages pushed with this API key. */
  userIds?: string | Iterable<string>;
  /** Resume after this cursor; "" or absent: from now on. */
  cursor?: string;
}

export interface Receipt {
  kind: "delivered" | "acked";
  messageId: string;
  userId: string;
  seq: number;
  recordedAt: Date;
  /** The node that recorded it. */
  nodeId: string;
  /** Resumes right after this receipt. */
  cursor: string;
}

export declare class ReceiptStream implements AsyncIterable<Receipt> {
  /** Where to resume after the last receipt the iteration returned. */
  readonly cursor: string;
  /** Resolves with the start cursor once the node accepted the stream. */
  started(): Promise<string>;
  [Symbol.asyncIterator](): AsyncIterator<Receipt>;
  cancel(): void;
}

export interface RevokeTokenRequest {
  jti: string;
  /** The token's own expiry: a Date, or unix seconds. */
  expiresAt: Date | number;
  /** Sent in the close frame ("token revoked: <reason>"), at most 100 bytes. */
  reason?: string;
}

export declare class PushStreamSession {
  /** Requests sent and not answered yet. */
  readonly pending: number;
  /** Resolves with this request's result (its `error` may be set). */
  push(request: PushRequest): Promise<PushResult>;
  /** Half-closes; resolves when the server has answered everything and closed. */
  end(): Promise<void>;
  cancel(): void;
}

/** The PushRequest message as sent on the wire (camelCase fields). */
export interface PushRequestMessage {
  userIds: string[];
  payload: Buffer;
  contentType: string;
  ttlSeconds?: number;
  idempotencyKey: string;
}

export declare function buildPushRequest(request: PushRequest): PushRequestMessage;
export declare function encodePayload(payload: Payload): Buffer;
/** The directory the .proto files are loaded from. */
export declare function protoRoot(protoDir?: string): string;
/** The grpc-js client constructor of pushsvc.v1.PushService (for raw access). */
export declare function loadPushService(protoDir?: string): new (
  address: string,
  credentials: ChannelCredentials,
  options?: ChannelOptions,
) => Client;

// -- errors ----------------------------------------------------------------------

/** gRPC status codes (grpc-js `status`). */
export declare const Status: typeof status;
export type StatusCode = status;

export declare function statusName(code: number): string;

export declare class PushsvcError extends Error {
  constructor(code: number, details: string, options?: { metadata?: Metadata; cause?: unknown });
  /** The gRPC status code number. */
  readonly code: status;
  /** The status code's name, e.g. "INVALID_ARGUMENT". */
  readonly codeName: string;
  /** The server's explanation. */
  readonly details: string;
  readonly metadata: Metadata | undefined;
  /** How many times the call was tried. */
  attempts: number;
  /** True for UNAVAILABLE. */
  readonly retryable: boolean;
  isInvalidArgument(): boolean;
  isUnauthenticated(): boolean;
  isNotFound(): boolean;
  isResourceExhausted(): boolean;
  isUnavailable(): boolean;
  isDeadlineExceeded(): boolean;
}
export declare class InvalidArgumentError extends PushsvcError {}
export declare class UnauthenticatedError extends PushsvcError {}
export declare class PermissionDeniedError extends PushsvcError {}
export declare class NotFoundError extends PushsvcError {}
export declare class ResourceExhaustedError extends PushsvcError {}
export declare class FailedPreconditionError extends PushsvcError {}
export declare class UnimplementedError extends PushsvcError {}
export declare class DeadlineExceededError extends PushsvcError {}
export declare class UnavailableError extends PushsvcError {}
export declare class CancelledError extends PushsvcError {}

export declare function errorFromStatus(
  code: number,
  details: string,
  options?: { metadata?: Metadata; cause?: unknown },
): PushsvcError;
export declare function toPushsvcError(err: unknown): PushsvcError;
export declare function isPushsvcError(err: unknown): err is PushsvcError;
export declare function isInvalidArgument(err: unknown): err is InvalidArgumentError;
export declare function isUnauthenticated(err: unknown): err is UnauthenticatedError;
export declare function isNotFound(err: unknown): err is NotFoundError;
export declare function isResourceExhausted(err: unknown): err is ResourceExhaustedError;
export declare function isUnavailable(err: unknown): err is UnavailableError;
export declare function isDeadlineExceeded(err: unknown): err is DeadlineExceededError;
