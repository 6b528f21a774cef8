package io.pushsvc.client;

import com.google.protobuf.ByteString;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.pushsvc.v1.DisconnectRequest;
import io.pushsvc.v1.DisconnectResponse;
import io.pushsvc.v1.GetMessageStatusRequest;
import io.pushsvc.v1.GetMessageStatusResponse;
import io.pushsvc.v1.GetPresenceRequest;
import io.pushsvc.v1.GetPresenceResponse;
import io.pushsvc.v1.ListNodesRequest;
import io.pushsvc.v1.ListNodesResponse;
import io.pushsvc.v1.PublishRequest;
import io.pushsvc.v1.PublishResponse;
import io.pushsvc.v1.PushRequest;
import io.pushsvc.v1.PushResponse;
import io.pushsvc.v1.PushServiceGrpc;
import io.pushsvc.v1.RevokeTokenRequest;
import io.pushsvc.v1.RevokeTokenResponse;
import io.pushsvc.v1.StreamReceiptsRequest;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/**
 * Client of the pushsvc gRPC API ({@code pushsvc.v1.PushService}), for business services.
 *
 * <pre>{@code
 * try (PushClient push = PushClient.builder().address("127.0.0.1:50051").apiKey(key).build()) {
 *   PushResponse resp = push.push(List.of("alice"), "{\"hello\": 1}");
 * }
 * }</pre>
 *
 * <p>Every call carries the API key ({@code authorization: Bearer <key>}) and a deadline. Calls
 * failing with UNAVAILABLE are retried with exponential backoff and full jitter; a retried push
 * reuses its idempotency key (a random one is set when the request has none), so a retry never
 * delivers a message twice. Failures throw {@link PushsvcException} (a subclass for
 * UNAUTHENTICATED, INVALID_ARGUMENT and UNAVAILABLE). Thread-safe.
 */
public final class PushClient implements AutoCloseable {
  static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final PushServiceGrpc.PushServiceBlockingStub blocking;
  private final PushServiceGrpc.PushServiceStub async;
  private final Duration deadline;
  private final int maxRetries;
  private final Duration initialBackoff;
  private final Duration maxBackoff;

  private PushClient(Builder b) {
    ManagedChannelBuilder<?> cb;
    if (b.tlsCa != null) {
      ChannelCredentials creds;
      try {
        creds =
            TlsChannelCredentials.newBuilder()
                .trustManager(new ByteArrayInputStream(b.tlsCaPem))
                .build();
      } catch (IOException e) { // from memory: not expected once readCa parsed the file
        throw new IllegalArgumentException("pushsvc: the TLS CA file " + b.tlsCa + ": " + e, e);
      }
      cb = Grpc.newChannelBuilder(b.address, creds);
    } else {
      cb = ManagedChannelBuilder.forTarget(b.address);
      if (b.tls) {
        cb.useTransportSecurity();
      } else {
        cb.usePlaintext();
      }
    }
    cb.intercept(b.interceptors);
    this.channel = cb.build();
    PushServiceGrpc.PushServiceBlockingStub bs = PushServiceGrpc.newBlockingStub(channel);
    PushServiceGrpc.PushServiceStub as = PushServiceGrpc.newStub(channel);
    if (b.apiKey != null && !b.apiKey.isEmpty()) {
      CallCredentials creds = new ApiKeyCredentials(b.apiKey);
      bs = bs.withCallCredentials(creds);
      as = as.withCallCredentials(creds);
    }
    this.blocking = bs;
    this.async = as;
    this.deadline = b.deadline;
    this.maxRetries = b.maxRetries;
    this.initialBackoff = b.initialBackoff;
    this.maxBackoff = b.maxBackoff;
  }

  /** The address {@link #fromEnv()} uses when PUSHSVC_GRPC_ADDR is unset. */
  public static final String DEFAULT_ADDRESS = "127.0.0.1:50051";

  /** What every pushsvc client says when the environment holds no API key. */
  public static final String NO_API_KEY_MESSAGE =
      "pushsvc: no API key: set PUSHSVC_API_KEY, or PUSHSVC_API_KEYS as on the node"
          + " (its first key is used)";

  public static Builder builder() {
    return new Builder();
  }

  /**
   * A client for {@code $PUSHSVC_GRPC_ADDR} (default 127.0.0.1:50051) with {@code
   * $PUSHSVC_API_KEY}, else the first key of {@code $PUSHSVC_API_KEYS}: the names the node and
   * the {@code pushsvc} command read. Same as {@code builder().fromEnv().build()}.
   *
   * @throws IllegalStateException with {@link #NO_API_KEY_MESSAGE} when no key is set
   */
  public static PushClient fromEnv() {
    return builder().fromEnv().build();
  }

  /** {@code $PUSHSVC_GRPC_ADDR} in {@code env}, or {@link #DEFAULT_ADDRESS}. */
  public static String addressFromEnv(Map<String, String> env) {
    String addr = env.getOrDefault("PUSHSVC_GRPC_ADDR", "").trim();
    return addr.isEmpty() ? DEFAULT_ADDRESS : addr;
  }

  /** {@code $PUSHSVC_API_KEY} in {@code env}, else the first of {@code $PUSHSVC_API_KEYS}. */
  public static java.util.Optional<String> apiKeyFromEnv(Map<String, String> env) {
    String own = env.getOrDefault("PUSHSVC_API_KEY", "").trim();
    if (!own.isEmpty()) {
      return java.util.Optional.of(own);
    }
    for (String key : env.getOrDefault("PUSHSVC_API_KEYS", "").split(",")) {
      if (!key.trim().isEmpty()) {
        return java.util.Optional.of(key.trim());
      }
    }
    return java.util.Optional.empty();
  }

  // -- calls -----------------------------------------------------------------------------------

  /**
   * Push sends one message to every connection of each of the request's users. Without an
   * idempotency key in the request, a random one is set (and reused by the retries).
   */
  public PushResponse push(PushRequest request) {
    PushRequest keyed = withIdempotencyKey(request);
    return call(() -> stub().push(keyed));
  }

  /** Push a JSON payload (content type application/json) with the node's default TTL. */
  public PushResponse push(Collection<String> userIds, String json) {
    return push(
        PushRequest.newBuilder()
            .addAllUserIds(userIds)
            .setPayload(ByteString.copyFrom(json, StandardCharsets.UTF_8))
            .setContentType("application/json")
            .build());
  }

  /** {@link #pushStream(List, Duration)} with the client's deadline for each attempt. */
  public List<PushResponse> pushStream(List<PushRequest> requests) {
    return pushStream(requests, deadline);
  }

  /**
   * Push many messages on one PushStream; one response per request, in order. A request that
   * fails answers with a response whose {@code error} is set (the stream goes on). Requests
   * without an idempotency key get a random one, so when the stream fails with UNAVAILABLE it is
   * opened again (with backoff) and the unanswered requests are sent again without any risk of
   * delivering twice. Requests are sent as fast as flow control allows. {@code deadline} bounds
   * each attempt of the whole stream.
   */
  public List<PushResponse> pushStream(List<PushRequest> requests, Duration deadline) {
    Objects.requireNonNull(deadline, "deadline");
    List<PushRequest> keyed = new ArrayList<>(requests.size());
    for (PushRequest r : requests) {
      keyed.add(withIdempotencyKey(r));
    }
    if (keyed.isEmpty()) {
      return new ArrayList<>();
    }
    List<PushResponse> out = new ArrayList<>(keyed.size());
    int attempt = 0;
    while (true) {
      int before = out.size();
      try {
        streamOnce(keyed.subList(before, keyed.size()), out, deadline);
        return out;
      } catch (StatusRuntimeException e) {
        if (out.size() == keyed.size()) {
          return out; // every request was answered before the stream broke
        }
        PushsvcException err = PushsvcException.of(e);
        if (out.size() > before) {
          attempt = 0; // the stream advanced: count the retries anew
        }
        if (!(err instanceof UnavailableException) || attempt >= maxRetries) {
          throw err;
        }
      }
      sleepBeforeRetry(attempt++);
    }
  }

  /** Publish sends one message to every connection subscribed to the request's topic. */
  public PublishResponse publish(PublishRequest request) {
    return call(() -> stub().publish(request));
  }

  /** Publish a JSON payload (content type application/json) to {@code topic}. */
  public PublishResponse publish(String topic, String json) {
    return publish(
        PublishRequest.newBuilder()
            .setTopic(topic)
            .setPayload(ByteString.copyFrom(json, StandardCharsets.UTF_8))
            .setContentType("application/json")
            .build());
  }

  /** Per user, in request order: online, number of connections, node ids. */
  public GetPresenceResponse getPresence(GetPresenceRequest request) {
    return call(() -> stub().getPresence(request));
  }

  public GetPresenceResponse getPresence(Collection<String> userIds) {
    return getPresence(GetPresenceRequest.newBuilder().addAllUserIds(userIds).build());
  }

  /** Close every connection of a user (close code 4000, the reason as close reason). */
  public DisconnectResponse disconnect(DisconnectRequest request) {
    return call(() -> stub().disconnect(request));
  }

  public DisconnectResponse disconnect(String userId, String reason) {
    return disconnect(DisconnectRequest.newBuilder().setUserId(userId).setReason(reason).build());
  }

  /** Per recipient of a stored message: seq, delivered, acked. */
  public GetMessageStatusResponse getMessageStatus(GetMessageStatusRequest request) {
    return call(() -> stub().getMessageStatus(request));
  }

  public GetMessageStatusResponse getMessageStatus(String messageId) {
    return getMessageStatus(GetMessageStatusRequest.newBuilder().setMessageId(messageId).build());
  }

  /** The live nodes of the fleet. */
  public ListNodesResponse listNodes() {
    return call(() -> stub().listNodes(ListNodesRequest.getDefaultInstance()));
  }

  /**
   * Opens a StreamReceipts call: delivered and acked receipts of {@code userIds}' messages (empty:
   * of the messages pushed with this client's API key), recorded on any node, after {@code cursor}
   * ({@link ReceiptStream#cursor()} of an earlier stream; empty: from now on). Returns once the
   * node accepted the stream, so a bad cursor throws here. The stream has no deadline and is not
   * retried: close it when done.
   */
  public ReceiptStream streamReceipts(Collection<String> userIds, String cursor) {
    StreamReceiptsRequest request =
        StreamReceiptsRequest.newBuilder().addAllUserIds(userIds).setCursor(cursor).build();
    return new ReceiptStream(blocking, request);
  }

  /** {@link #streamReceipts(Collection, String)} of this API key's own messages. */
  public ReceiptStream streamReceipts(String cursor) {
    return streamReceipts(List.of(), cursor);
  }

  /**
   * Revokes a token id (the JWT {@code jti}, or the one an AuthService returned) until {@code
   * expiresAtEpochSeconds} (the token's own expiry): its connections close with WebSocket code
   * 4001 on every node, and it is refused at connect.
   */
  public RevokeTokenResponse revokeToken(String jti, long expiresAtEpochSeconds, String reason) {
    RevokeTokenRequest request =
        RevokeTokenRequest.newBuilder()
            .setJti(jti)
            .setExpiresAt(expiresAtEpochSeconds)
            .setReason(reason)
            .build();
    return call(() -> stub().revokeToken(request));
  }

  /** Closes the channel, waiting up to 5 seconds for calls in flight. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  // -- machinery -------------------------------------------------------------------------------

  private PushServiceGrpc.PushServiceBlockingStub stub() {
    return blocking.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  private static PushRequest withIdempotencyKey(PushRequest r) {
    if (!r.getIdempotencyKey().isEmpty()) {
      return r;
    }
    return r.toBuilder().setIdempotencyKey("pushsvc-java-" + UUID.randomUUID()).build();
  }

  private <T> T call(Supplier<T> rpc) {
    int attempt = 0;
    while (true) {
      try {
        return rpc.get();
      } catch (StatusRuntimeException e) {
        PushsvcException err = PushsvcException.of(e);
        if (!(err instanceof UnavailableException) || attempt >= maxRetries) {
          throw err;
        }
      }
      sleepBeforeRetry(attempt++);
    }
  }

  /** Exponential backoff with full jitter; attempt 0 is the first retry. */
  private void sleepBeforeRetry(int attempt) {
    long base = initialBackoff.toNanos();
    long ceiling = maxBackoff.toNanos();
    for (int i = 0; i < attempt && base < ceiling; i++) {
      base *= 2;
    }
    long nanos = ThreadLocalRandom.current().nextLong(Math.min(base, ceiling) + 1);
    try {
      TimeUnit.NANOSECONDS.sleep(nanos);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new PushsvcException(Status.CANCELLED.withDescription("interrupted"), e);
    }
    // Dial again now rather than failing fast while the channel waits out its own backoff.
    channel.resetConnectBackoff();
  }

  /** One PushStream attempt: sends {@code requests}, appends the responses to {@code out}. */
  private void streamOnce(List<PushRequest> requests, List<PushResponse> out, Duration deadline) {
    CompletableFuture<Void> done = new CompletableFuture<>();
    StreamObserver observer = new StreamObserver(requests, out, done);
    async
        .withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS)
        .pushStream(observer);
    try {
      done.get();
    } catch (InterruptedException e) {
      observer.cancel(e);
      Thread.currentThread().interrupt();
      throw new PushsvcException(Status.CANCELLED.withDescription("interrupted"), e);
    } catch (ExecutionException e) {
      Throwable cause = e.getCause();
      if (cause instanceof StatusRuntimeException) {
        throw (StatusRuntimeException) cause;
      }
      throw Status.fromThrowable(cause).asRuntimeException();
    }
    if (out.size() < requests.size()) {
      throw new PushsvcException(
          Status.INTERNAL.withDescription(
              "PushStream ended after " + out.size() + " of " + requests.size() + " responses"),
          null);
    }
  }

  private static final class StreamObserver
      implements ClientResponseObserver<PushRequest, PushResponse> {
    private final List<PushRequest> requests;
    private final List<PushResponse> out;
    private final CompletableFuture<Void> done;
    private ClientCallStreamObserver<PushRequest> call;
    private int next;
    private boolean halfClosed;

    StreamObserver(List<PushRequest> requests, List<PushResponse> out, CompletableFuture<Void> done) {
      this.requests = requests;
      this.out = out;
      this.done = done;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<PushRequest> requestStream) {
      this.call = requestStream;
      requestStream.setOnReadyHandler(this::sendWhileReady);
    }

    private synchronized void sendWhileReady() {
      while (next < requests.size() && call.isReady()) {
        call.onNext(requests.get(next++));
      }
      if (next == requests.size() && !halfClosed) {
        halfClosed = true;
        call.onCompleted();
      }
    }

    synchronized void cancel(Throwable cause) {
      call.cancel("interrupted", cause);
    }

    @Override
    public void onNext(PushResponse value) {
      synchronized (out) {
        out.add(value);
      }
    }

    @Override
    public void onError(Throwable t) {
      done.completeExceptionally(t);
    }

    @Override
    public void onCompleted() {
      done.complete(null);
    }
  }

  /** {@code authorization: Bearer <api key>} on every call. */
  private static final class ApiKeyCredentials extends CallCredentials {
    private final String header;

    ApiKeyCredentials(String apiKey) {
      this.header = "Bearer " + apiKey;
    }

    @Override
    public void applyRequestMetadata(
        RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
      Metadata headers = new Metadata();
      headers.put(AUTHORIZATION, header);
      applier.apply(headers);
    }
  }

  /** The PEM bytes of a CA file, checked to hold at least one certificate. */
  private static byte[] readCa(Path caFile) {
    byte[] pem;
    try {
      pem = Files.readAllBytes(caFile);
    } catch (IOException e) {
      throw new IllegalArgumentException(
          "pushsvc: cannot read the TLS CA file " + caFile + ": " + e, e);
    }
    try {
      if (CertificateFactory.getInstance("X.509")
          .generateCertificates(new ByteArrayInputStream(pem))
          .isEmpty()) {
        throw new CertificateException("no certificate");
      }
    } catch (CertificateException e) {
      throw new IllegalArgumentException(
          "pushsvc: the TLS CA file " + caFile + " holds no PEM certificate", e);
    }
    return pem;
  }

  /** Settings of a {@link PushClient}; only the address is required. */
  public static final class Builder {
    private String address;
    private String apiKey;
    private Duration deadline = Duration.ofSeconds(5);
    private int maxRetries = 3;
    private Duration initialBackoff = Duration.ofMillis(200);
    private Duration maxBackoff = Duration.ofSeconds(5);
    private boolean tls;
    private Path tlsCa;
    private byte[] tlsCaPem;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder() {}

    /** Address and API key from the process environment; see {@link PushClient#fromEnv()}. */
    public Builder fromEnv() {
      return fromEnv(System.getenv());
    }

    /**
     * Address and API key from {@code env} (PUSHSVC_GRPC_ADDR, PUSHSVC_API_KEY, else the first
     * of PUSHSVC_API_KEYS); TLS verified against the CA file PUSHSVC_TLS_CA names, else with
     * the JVM's trust store when PUSHSVC_TLS is 1, true, yes or on.
     *
     * @throws IllegalStateException with {@link #NO_API_KEY_MESSAGE} when there is no key
     */
    public Builder fromEnv(Map<String, String> env) {
      this.address = addressFromEnv(env);
      this.apiKey =
          apiKeyFromEnv(env).orElseThrow(() -> new IllegalStateException(NO_API_KEY_MESSAGE));
      String ca = env.getOrDefault("PUSHSVC_TLS_CA", "").trim();
      String flag = env.getOrDefault("PUSHSVC_TLS", "").trim().toLowerCase(Locale.ROOT);
      if (!ca.isEmpty()) {
        tlsCa(Path.of(ca));
      } else if (List.of("1", "true", "yes", "on").contains(flag)) {
        useTls(true);
      }
      return this;
    }

    /** The node (or load balancer) as {@code host:port}, or any gRPC target string. */
    public Builder address(String address) {
      this.address = address;
      return this;
    }

    /** One of the node's API keys (PUSHSVC_API_KEYS). Null or empty sends no key. */
    public Builder apiKey(String apiKey) {
      this.apiKey = apiKey;
      return this;
    }

    /** The deadline of each call (each attempt of it). Default 5 seconds. */
    public Builder deadline(Duration deadline) {
      if (deadline == null || deadline.isNegative() || deadline.isZero()) {
        throw new IllegalArgumentException("deadline must be positive");
      }
      this.deadline = deadline;
      return this;
    }

    /** How many times a call failing with UNAVAILABLE is tried again. Default 3. */
    public Builder maxRetries(int maxRetries) {
      if (maxRetries < 0) {
        throw new IllegalArgumentException("maxRetries must be >= 0");
      }
      this.maxRetries = maxRetries;
      return this;
    }

    /**
     * Backoff before retry n (n = 0, 1...): a random time between 0 and min(max, initial * 2^n).
     * Defaults: 200 ms and 5 s.
     */
    public Builder backoff(Duration initial, Duration max) {
      if (initial == null || max == null || initial.isNegative() || max.compareTo(initial) < 0) {
        throw new IllegalArgumentException("need 0 <= initial <= max");
      }
      this.initialBackoff = initial;
      this.maxBackoff = max;
      return this;
    }

    /** Use TLS (the JVM's trust store) instead of plaintext. */
    public Builder useTls(boolean tls) {
      this.tls = tls;
      return this;
    }

    /**
     * Use TLS and verify the node's certificate against the CA certificates in this PEM file
     * (a private CA's, for example) instead of the JVM's trust store. Read by {@link #build()}.
     */
    public Builder tlsCa(Path caFile) {
      this.tlsCa = caFile;
      this.tls = caFile != null || this.tls;
      return this;
    }

    /** Interceptors for every call (tracing, metrics...), in gRPC's order. */
    public Builder intercept(ClientInterceptor... interceptors) {
      this.interceptors.addAll(List.of(interceptors));
      return this;
    }

    public PushClient build() {
      if (address == null || address.isEmpty()) {
        throw new IllegalArgumentException("address is required (host:port)");
      }
      if (tlsCa != null) {
        tlsCaPem = readCa(tlsCa);
      }
      return new PushClient(this);
    }
  }
}
