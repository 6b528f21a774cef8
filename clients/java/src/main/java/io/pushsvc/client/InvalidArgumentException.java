package io.pushsvc.client;

import io.grpc.Status;

/** The request is malformed (INVALID_ARGUMENT); retrying it unchanged fails again. */
public class InvalidArgumentException extends PushsvcException {
  private static final long serialVersionUID = 1L;

  public InvalidArgumentException(Status status, Throwable cause) {
    super(status, cause);
  }
}
