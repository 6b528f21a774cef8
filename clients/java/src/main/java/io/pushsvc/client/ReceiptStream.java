package io.pushsvc.client;

import io.grpc.Context;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.pushsvc.v1.PushServiceGrpc;
import io.pushsvc.v1.ReceiptEvent;
import io.pushsvc.v1.StreamReceiptsRequest;
import io.pushsvc.v1.StreamReceiptsResponse;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.Iterator;
import java.util.NoSuchElementException;

/**
 * An open StreamReceipts call ({@link PushClient#streamReceipts}): an iterator of delivered and
 * acked {@link ReceiptEvent}s, recorded on any node of the fleet. {@link #hasNext()} blocks until
 * the next event arrives.
 *
 * <p>{@link #cursor()} is where to resume after the last event {@link #next()} returned (before
 * any, where the stream started). When the stream ends with an error, {@link #hasNext()} throws
 * a {@link PushsvcException}: RESOURCE_EXHAUSTED (the consumer fell too far behind) or
 * UNAVAILABLE (the node drains) mean "open a new stream from {@link #cursor()}". After {@link
 * #close()}, {@link #hasNext()} returns false. Use it from one thread.
 */
public final class ReceiptStream implements Iterator<ReceiptEvent>, AutoCloseable {
  private final Context.CancellableContext context;
  private final Iterator<StreamReceiptsResponse> responses;
  private final Deque<ReceiptEvent> pending = new ArrayDeque<>();
  private volatile boolean closed;
  private String cursor;

  ReceiptStream(PushServiceGrpc.PushServiceBlockingStub stub, StreamReceiptsRequest request) {
    context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      responses = stub.streamReceipts(request);
      StreamReceiptsResponse first = responses.next(); // the node accepted the stream
      pending.addAll(first.getEventsList());
      cursor = first.getCursor();
    } catch (StatusRuntimeException e) {
      context.cancel(e);
      throw PushsvcException.of(e);
    } catch (NoSuchElementException e) {
      context.cancel(e);
      throw new PushsvcException(
          Status.UNAVAILABLE.withDescription("the receipt stream ended at once"), e);
    } finally {
      context.detach(previous);
    }
  }

  /** Where to resume after the last event returned. */
  public String cursor() {
    return cursor;
  }

  @Override
  public boolean hasNext() {
    while (pending.isEmpty()) {
      if (closed) {
        return false;
      }
      try {
        if (!responses.hasNext()) {
          return false;
        }
        StreamReceiptsResponse r = responses.next();
        if (r.getEventsCount() == 0) {
          cursor = r.getCursor(); // a keep-alive
        }
        pending.addAll(r.getEventsList());
      } catch (StatusRuntimeException e) {
        if (closed) {
          return false;
        }
        throw PushsvcException.of(e);
      }
    }
    return true;
  }

  @Override
  public ReceiptEvent next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the receipt stream is over");
    }
    ReceiptEvent e = pending.removeFirst();
    cursor = e.getCursor();
    return e;
  }

  /** Ends the stream. */
  @Override
  public void close() {
    closed = true;
    context.cancel(null);
  }
}
