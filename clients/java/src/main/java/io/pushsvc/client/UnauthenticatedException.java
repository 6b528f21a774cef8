package io.pushsvc.client;

import io.grpc.Status;

/** Missing or wrong API key (UNAUTHENTICATED). Retrying with the same key fails again. */
public class UnauthenticatedException extends PushsvcException {
  private static final long serialVersionUID = 1L;

  public UnauthenticatedException(Status status, Throwable cause) {
    super(status, cause);
  }
}
