package io.pushsvc.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;

/**
 * A pushsvc call failed. {@link #getCode()} is the gRPC status code, {@link #getDescription()}
 * the server's explanation. Codes with a useful reaction have a subclass: {@link
 * UnauthenticatedException}, {@link InvalidArgumentException}, {@link UnavailableException}.
 */
public class PushsvcException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final transient Status status;

  public PushsvcException(Status status, Throwable cause) {
    super(status.getCode() + (status.getDescription() == null ? "" : ": " + status.getDescription()),
        cause);
    this.status = status;
  }

  /** The exception of the right subclass for {@code status}. */
  public static PushsvcException of(Status status, Throwable cause) {
    switch (status.getCode()) {
      case UNAUTHENTICATED:
        return new UnauthenticatedException(status, cause);
      case INVALID_ARGUMENT:
        return new InvalidArgumentException(status, cause);
      case UNAVAILABLE:
        return new UnavailableException(status, cause);
      default:
        return new PushsvcException(status, cause);
    }
  }

  static PushsvcException of(StatusRuntimeException e) {
    return of(e.getStatus(), e);
  }

  /** The gRPC status code, e.g. {@code INVALID_ARGUMENT}. */
  public Status.Code getCode() {
    return status.getCode();
  }

  /** The full gRPC status. */
  public Status getStatus() {
    return status;
  }

  /** The server's human-readable explanation (may be null). */
  public String getDescription() {
    return status.getDescription();
  }
}
