package io.pushsvc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.ByteString;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.ForwardingClientCallListener;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.pushsvc.v1.PushRequest;
import io.pushsvc.v1.PushResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Retries through a REAL store outage. tests/test_java_client.py starts a fleet node on a
 * FerretDB of its own, stops the FerretDB, and runs
 *
 * <pre>PUSHSVC_TEST_OUTAGE=1 mvn -B -o test -Dtest=OutageRetryTest</pre>
 *
 * <p>with the PUSHSVC_TEST_* variables of {@link LiveNode}. The node is up, its store is not:
 * Push answers UNAVAILABLE. Once every push this test keeps in flight has been refused at least
 * once, the test prints {@link #OUTAGE_MARK}; the wrapper then checks the node's
 * pushsvc_store_errors_total and starts the FerretDB again, and the pushes must succeed on a
 * retry, exactly once.
 *
 * <p>The plain live run leaves this class out (Surefire {@code <excludes>} in pom.xml; {@code
 * -Dtest=...} overrides them). Selected without PUSHSVC_TEST_OUTAGE=1 it FAILS: it cannot pass
 * without an outage.
 */
class OutageRetryTest {
  /** Tells the wrapper it may bring the store back (see tests/outage.py). */
  static final String OUTAGE_MARK = "PUSHSVC_OUTAGE_SEEN";

  private static final String GENERATED_KEY =
      "pushsvc-java-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}";

  private final Recorder rec = new Recorder();
  private final List<PushClient> clients = new ArrayList<>();
  private final ExecutorService pool = Executors.newCachedThreadPool(r -> {
    Thread t = new Thread(r, "outage-push");
    t.setDaemon(true);
    return t;
  });

  @AfterEach
  void tearDown() {
    pool.shutdownNow();
    clients.forEach(PushClient::close);
  }

  private static LiveNode outage() {
    if (!"1".equals(System.getenv("PUSHSVC_TEST_OUTAGE"))) {
      fail("PUSHSVC_TEST_OUTAGE=1 is not set: this test needs a node whose store is down now and"
          + " comes back once it prints " + OUTAGE_MARK + " (`.venv/bin/pytest"
          + " tests/test_java_client.py` arranges that); the plain live run excludes it.");
    }
    return LiveNode.fromEnv();
  }

  private PushClient newClient(LiveNode node, int retries, Duration backoff, Duration max) {
    PushClient c = node.client().intercept(rec).maxRetries(retries).backoff(backoff, max)
        .deadline(Duration.ofSeconds(10)).build();
    clients.add(c);
    return c;
  }

  private static PushRequest request(String user, String json) {
    return PushRequest.newBuilder()
        .addUserIds(user)
        .setPayload(ByteString.copyFrom(json, StandardCharsets.UTF_8))
        .setContentType("application/json")
        .build();
  }

  private static String user(String what) {
    return "java-outage-" + what + "-" + UUID.randomUUID();
  }

  private static boolean storeUnavailable(Recorder.Attempt a) {
    return a.status.getCode() == Status.Code.UNAVAILABLE
        && a.status.getDescription() != null && a.status.getDescription().contains("store");
  }

  @Test
  @Timeout(value = 180, unit = TimeUnit.SECONDS)
  void pushesRetriedThroughAStoreOutageAreStoredAndDeliveredExactlyOnce() throws Exception {
    LiveNode node = outage();
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
    // Enough to outlast the outage: the store returns within a few seconds of the mark (a
    // refused attempt takes from milliseconds to the node's 3 s store timeout; the backoffs
    // alone add up to about 9 s on average).
    PushClient client = newClient(node, 8, Duration.ofMillis(500), Duration.ofSeconds(3));
    String userGen = user("gen");
    String userKey = user("key");
    String userOut = user("out");
    String userBad = user("bad");

    // With the store down, a malformed push is still refused at once: not retried.
    PushRequest malformed = request(userBad, "{}").toBuilder().addUserIds("").build();
    try {
      client.push(malformed);
      fail("a push to an empty user id succeeded");
    } catch (InvalidArgumentException e) {
      assertEquals(1, rec.pushesTo(userBad).size(),
          "malformed push: INVALID_ARGUMENT after " + rec.pushesTo(userBad).size() + " attempts");
    }

    // In flight through the outage: a push with a generated key, one with the caller's key,
    // and one whose single retry runs out while the store is down.
    String explicitKey = "java-outage-explicit-" + UUID.randomUUID();
    String payloadGen = "{\"outage\":\"generated key\"}";
    String payloadKey = "{\"outage\":\"explicit key\",\"n\":2}";
    Map<String, CompletableFuture<PushResponse>> inFlight = new LinkedHashMap<>();
    PushRequest reqGen = request(userGen, payloadGen);
    PushRequest reqKey = request(userKey, payloadKey).toBuilder()
        .setIdempotencyKey(explicitKey).build();
    inFlight.put(userGen, CompletableFuture.supplyAsync(() -> client.push(reqGen), pool));
    inFlight.put(userKey, CompletableFuture.supplyAsync(() -> client.push(reqKey), pool));

    PushClient shortLived = newClient(node, 1, Duration.ofMillis(100), Duration.ofMillis(100));
    try {
      shortLived.push(request(userOut, "{}"));
      fail("the push with 1 retry succeeded while the store is down: is it really down?");
    } catch (UnavailableException e) {
      assertEquals(Status.Code.UNAVAILABLE, e.getCode());
      assertNotNull(e.getDescription(), e.toString());
      assertTrue(e.getDescription().contains("store"), "push with 1 retry: " + e);
      assertEquals(2, rec.pushesTo(userOut).size(), "attempts of the push with 1 retry");
    }

    for (Map.Entry<String, CompletableFuture<PushResponse>> e : inFlight.entrySet()) {
      while (rec.pushesTo(e.getKey()).stream().noneMatch(OutageRetryTest::storeUnavailable)) {
        if (e.getValue().isDone()) {
          fail("push to " + e.getKey() + " ended without a store failure ("
              + rec.pushesTo(e.getKey()) + "): is the store really down?");
        }
        if (System.nanoTime() > deadline) {
          fail("push to " + e.getKey() + ": no attempt ended");
        }
        Thread.sleep(20); // polling a condition with a deadline
      }
    }
    // Every push in flight has been refused: the store may come back.
    System.out.println(OUTAGE_MARK + ": every push got UNAVAILABLE; start the store again");
    System.out.flush();

    Map<String, PushResponse> results = new LinkedHashMap<>();
    for (Map.Entry<String, CompletableFuture<PushResponse>> e : inFlight.entrySet()) {
      PushResponse r;
      try {
        r = e.getValue().get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
      } catch (ExecutionException ex) {
        throw new AssertionError("push to " + e.getKey() + " after the outage: " + ex.getCause()
            + "; attempts " + rec.pushesTo(e.getKey()), ex.getCause());
      } catch (TimeoutException ex) {
        throw new AssertionError("push to " + e.getKey() + " did not finish after the outage");
      }
      assertFalse(r.getDuplicate(), e.getKey() + ": " + r);
      assertEquals(List.of(1L), r.getSeqsList(), e.getKey() + ": want a first delivery, seq 1");
      results.put(e.getKey(), r);
    }
    Map<String, String> keys = new LinkedHashMap<>();
    keys.put(userGen, checkRetried(userGen, null));
    keys.put(userKey, checkRetried(userKey, explicitKey));

    // The node knows the key each push kept through its retries: pushing it again is a
    // duplicate of the same message, and nothing is stored twice.
    for (Map.Entry<String, String> e : keys.entrySet()) {
      PushResponse again = client.push(
          request(e.getKey(), "{}").toBuilder().setIdempotencyKey(e.getValue()).build());
      assertTrue(again.getDuplicate(), "same key again to " + e.getKey() + ": " + again);
      assertEquals(results.get(e.getKey()).getMessageId(), again.getMessageId(), e.getKey());
    }
    checkStoredOnce(node, userGen, results.get(userGen), payloadGen);
    checkStoredOnce(node, userKey, results.get(userKey), payloadKey);
  }

  /**
   * The push to {@code user} was tried more than once, every attempt with the same key ({@code
   * wantKey}, or a generated one when null), every attempt but the last refused because of the
   * store; returns the key.
   */
  private String checkRetried(String user, String wantKey) {
    List<Recorder.Attempt> calls = rec.pushesTo(user);
    assertTrue(calls.size() >= 2,
        "push to " + user + ": " + calls.size() + " attempt(s), want a retry after the outage");
    String key = calls.get(0).key;
    if (wantKey != null) {
      assertEquals(wantKey, key, "push to " + user);
    } else {
      assertTrue(key.matches(GENERATED_KEY), "push to " + user + " sent key " + key);
    }
    for (int i = 0; i < calls.size(); i++) {
      Recorder.Attempt a = calls.get(i);
      assertEquals(key, a.key, "push to " + user + ": attempt " + i);
      if (i < calls.size() - 1) {
        assertTrue(storeUnavailable(a), "push to " + user + ": attempt " + i + ": " + a.status);
      } else {
        assertTrue(a.status.isOk(), "push to " + user + ": last attempt: " + a.status);
      }
    }
    System.out.println("push to " + user + ": " + calls.size() + " attempts ("
        + calls.stream().map(a -> (a.end - a.start) / 1_000_000 + " ms")
            .collect(Collectors.joining(", "))
        + ") with key " + key);
    return key;
  }

  /**
   * A new connection replaying the user's inbox from the start (since=0) gets the message once,
   * with seq 1, and nothing else before a ping's pong (frames are written in order).
   */
  private static void checkStoredOnce(
      LiveNode node, String user, PushResponse res, String payload) throws Exception {
    try (LiveNode.Ws ws = node.connect(user, null, "&since=0")) {
      String frame = ws.nextMessage();
      assertEquals(res.getMessageId(), LiveNode.Ws.str(frame, "id"), frame);
      assertEquals(1, LiveNode.Ws.num(frame, "seq"), frame);
      // The node embeds a JSON payload in the frame as it was pushed.
      assertTrue(frame.contains("\"data\":" + payload), frame);
      ws.send("{\"type\":\"ping\"}");
      ws.await(f -> {
        if ("message".equals(LiveNode.Ws.str(f, "type"))) {
          fail(user + " got the message more than once: " + f);
        }
        return "pong".equals(LiveNode.Ws.str(f, "type"));
      });
    }
  }

  /**
   * A real gRPC client interceptor (passed with {@link PushClient.Builder#intercept}): it sees
   * every attempt a PushClient makes, retries included, with the request as sent and the status
   * that came back.
   */
  static final class Recorder implements ClientInterceptor {
    /** One finished call. */
    static final class Attempt {
      final String method;
      final long start = System.nanoTime();
      volatile List<String> users = List.of();
      volatile String key;
      volatile long end;
      volatile Status status;

      Attempt(String method) {
        this.method = method;
      }

      @Override
      public String toString() {
        return method + " key=" + key + " " + status;
      }
    }

    /** The finished attempts, in the order they ended. */
    private final List<Attempt> done = new ArrayList<>();

    @Override
    public <Q, R> ClientCall<Q, R> interceptCall(
        MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
      Attempt a = new Attempt(method.getFullMethodName());
      return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
        @Override
        public void start(Listener<R> listener, Metadata headers) {
          super.start(
              new ForwardingClientCallListener.SimpleForwardingClientCallListener<>(listener) {
                @Override
                public void onClose(Status status, Metadata trailers) {
                  a.end = System.nanoTime();
                  a.status = status;
                  synchronized (done) {
                    done.add(a);
                  }
                  super.onClose(status, trailers);
                }
              },
              headers);
        }

        @Override
        public void sendMessage(Q message) {
          if (message instanceof PushRequest) {
            PushRequest r = (PushRequest) message;
            a.users = List.copyOf(r.getUserIdsList());
            a.key = r.getIdempotencyKey();
          }
          super.sendMessage(message);
        }
      };
    }

    /** The finished Push attempts whose first recipient is {@code user}. */
    List<Attempt> pushesTo(String user) {
      synchronized (done) {
        return done.stream()
            .filter(a -> a.method.endsWith("/Push") && !a.users.isEmpty()
                && a.users.get(0).equals(user))
            .collect(Collectors.toList());
      }
    }
  }
}
