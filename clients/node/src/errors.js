// Typed errors: every failed call rejects with a PushsvcError (or a subclass
// named after its gRPC status code).
import { status as Status } from "@grpc/grpc-js";

export { Status };

const CODE_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name]));

/** The name of a gRPC status code number, e.g. 3 -> "INVALID_ARGUMENT". */
export function statusName(code) {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

export class PushsvcError extends Error {
  constructor(code, details, { metadata, cause } = {}) {
    super(`${statusName(code)}: ${details}`, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    /** The gRPC status code number (Status.INVALID_ARGUMENT...). */
    this.code = code;
    /** The server's explanation (the status details). */
    this.details = details;
    /** Trailing metadata of the failed call, when there was one. */
    this.metadata = metadata;
    /** How many times the call was tried before it failed. */
    this.attempts = 1;
  }

  /** The status code's name, e.g. "INVALID_ARGUMENT". */
  get codeName() {
    return statusName(this.code);
  }

  /** True for UNAVAILABLE: nothing was done, trying again later may work. */
  get retryable() {
    return this.code === Status.UNAVAILABLE;
  }

  isInvalidArgument() {
    return this.code === Status.INVALID_ARGUMENT;
  }

  isUnauthenticated() {
    return this.code === Status.UNAUTHENTICATED;
  }

  isNotFound() {
    return this.code === Status.NOT_FOUND;
  }

  isResourceExhausted() {
    return this.code === Status.RESOURCE_EXHAUSTED;
  }

  isUnavailable() {
    return this.code === Status.UNAVAILABLE;
  }

  isDeadlineExceeded() {
    return this.code === Status.DEADLINE_EXCEEDED;
  }
}

/** The request is malformed; sending it unchanged fails again. */
export class InvalidArgumentError extends PushsvcError {}
/** Missing or wrong API key. */
export class UnauthenticatedError extends PushsvcError {}
/** The key is valid but may not do this. */
export class PermissionDeniedError extends PushsvcError {}
/** Unknown, expired or online-only message id. */
export class NotFoundError extends PushsvcError {}
/** Rate limit reached (or request too large); slow down. */
export class ResourceExhaustedError extends PushsvcError {}
/** The node is not in a state to do this. */
export class FailedPreconditionError extends PushsvcError {}
/** The node does not know this call (an older version). */
export class UnimplementedError extends PushsvcError {}
/** No answer within the deadline: the call may or may not have taken effect. */
export class DeadlineExceededError extends PushsvcError {}
/** The node, or its store, cannot be reached; nothing was done. */
export class UnavailableError extends PushsvcError {}
/** The call was cancelled by the caller (AbortSignal, or the stream was closed). */
export class CancelledError extends PushsvcError {}

const CLASSES = {
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.UNAUTHENTICATED]: UnauthenticatedError,
  [Status.PERMISSION_DENIED]: PermissionDeniedError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.UNIMPLEMENTED]: UnimplementedError,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.CANCELLED]: CancelledError,
};

/** A PushsvcError of the right subclass for a status code and message. */
export function errorFromStatus(code, details, options) {
  const Cls = CLASSES[code] ?? PushsvcError;
  return new Cls(code, details || statusName(code), options);
}

/** Wraps what grpc-js rejects with (a ServiceError) into a PushsvcError. */
export function toPushsvcError(err) {
  if (err instanceof PushsvcError) return err;
  if (err && typeof err.code === "number") {
    return errorFromStatus(err.code, err.details ?? err.message, { metadata: err.metadata, cause: err });
  }
  return errorFromStatus(Status.UNKNOWN, String(err?.message ?? err), { cause: err });
}

function is(code) {
  return (err) => err instanceof PushsvcError && err.code === code;
}

export function isPushsvcError(err) {
  return err instanceof PushsvcError;
}
export const isInvalidArgument = is(Status.INVALID_ARGUMENT);
export const isUnauthenticated = is(Status.UNAUTHENTICATED);
export const isNotFound = is(Status.NOT_FOUND);
export const isResourceExhausted = is(Status.RESOURCE_EXHAUSTED);
export const isUnavailable = is(Status.UNAVAILABLE);
export const isDeadlineExceeded = is(Status.DEADLINE_EXCEEDED);
