package io.pushsvc.client;

import io.grpc.Status;

/**
 * The node, or its store, could not be reached (UNAVAILABLE), even after the client's retries.
 * Nothing was done; the call can be tried again later.
 */
public class UnavailableException extends PushsvcException {
  private static final long serialVersionUID = 1L;

  public UnavailableException(Status status, Throwable cause) {
    super(status, cause);
  }
}
