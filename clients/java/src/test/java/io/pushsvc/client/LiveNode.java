package io.pushsvc.client;

import static org.junit.jupiter.api.Assertions.fail;

import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.WebSocket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/** The live node the tests run against (PUSHSVC_TEST_* environment), and a WebSocket client. */
final class LiveNode {
  static final String[] VARS = {
    "PUSHSVC_TEST_GRPC_ADDR", "PUSHSVC_TEST_WS_URL", "PUSHSVC_TEST_API_KEY", "PUSHSVC_TEST_JWT_SECRET"
  };

  final String grpcAddr;
  final String wsUrl;
  final String apiKey;
  final String jwtSecret;

  private LiveNode(String grpcAddr, String wsUrl, String apiKey, String jwtSecret) {
    this.grpcAddr = grpcAddr;
    this.wsUrl = wsUrl;
    this.apiKey = apiKey;
    this.jwtSecret = jwtSecret;
  }

  /** The node from the environment; fails (never skips) when a variable is missing. */
  static LiveNode fromEnv() {
    List<String> missing = new ArrayList<>();
    for (String v : VARS) {
      String value = System.getenv(v);
      if (value == null || value.isBlank()) {
        missing.add(v);
      }
    }
    if (!missing.isEmpty()) {
      fail("these tests need a live pushsvc node; not set: " + String.join(", ", missing)
          + ". Run them with `pytest tests/test_java_client.py`, which starts a node,"
          + " or set " + String.join(", ", VARS) + " (gRPC host:port, ws://host:port/ws,"
          + " an API key of the node, its HS256 JWT secret).");
    }
    return new LiveNode(System.getenv(VARS[0]), System.getenv(VARS[1]), System.getenv(VARS[2]),
        System.getenv(VARS[3]));
  }

  PushClient.Builder client() {
    return PushClient.builder().address(grpcAddr).apiKey(apiKey).deadline(Duration.ofSeconds(10));
  }

  /** An HS256 JWT for {@code user}, minted by hand; {@code topicsJson} is a JSON array or null. */
  String token(String user, String topicsJson) {
    return token(user, topicsJson, null);
  }

  /** An HS256 JWT for {@code user} with a {@code jti} claim (when not null). */
  String token(String user, String topicsJson, String jti) {
    long exp = System.currentTimeMillis() / 1000 + 600;
    String claims = "{\"sub\":\"" + user + "\",\"exp\":" + exp
        + (topicsJson == null ? "" : ",\"topics\":" + topicsJson)
        + (jti == null ? "" : ",\"jti\":\"" + jti + "\"") + "}";
    Base64.Encoder b64 = Base64.getUrlEncoder().withoutPadding();
    String signingInput = b64.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
        .getBytes(StandardCharsets.UTF_8)) + "." + b64.encodeToString(
            claims.getBytes(StandardCharsets.UTF_8));
    try {
      Mac mac = Mac.getInstance("HmacSHA256");
      mac.init(new SecretKeySpec(jwtSecret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
      return signingInput + "." + b64.encodeToString(
          mac.doFinal(signingInput.getBytes(StandardCharsets.UTF_8)));
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  /** Connects {@code user} and waits for the welcome frame. */
  Ws connect(String user, String topicsJson) throws Exception {
    return connect(user, topicsJson, "");
  }

  /** Connects {@code user} with more query parameters ({@code "&since=0"}), waits for welcome. */
  Ws connect(String user, String topicsJson, String moreQuery) throws Exception {
    return connectWithToken(token(user, topicsJson), moreQuery);
  }

  /** Connects with {@code token} and more query parameters, waits for the welcome. */
  Ws connectWithToken(String token, String moreQuery) throws Exception {
    Ws ws = new Ws();
    URI uri = URI.create(wsUrl + "?token="
        + URLEncoder.encode(token, StandardCharsets.UTF_8) + moreQuery);
    ws.socket = HttpClient.newHttpClient().newWebSocketBuilder()
        .buildAsync(uri, ws).get(10, TimeUnit.SECONDS);
    ws.await(f -> "welcome".equals(Ws.str(f, "type")));
    return ws;
  }

  /** A WebSocket connection that queues the text frames it receives. */
  static final class Ws implements WebSocket.Listener, AutoCloseable {
    private final BlockingQueue<String> frames = new LinkedBlockingQueue<>();
    private final List<String> seen = new ArrayList<>();
    private final StringBuilder partial = new StringBuilder();
    final CompletableFuture<String> closed = new CompletableFuture<>();
    WebSocket socket;

    @Override
    public CompletionStage<?> onText(WebSocket webSocket, CharSequence data, boolean last) {
      partial.append(data);
      if (last) {
        frames.add(partial.toString());
        partial.setLength(0);
      }
      webSocket.request(1);
      return null;
    }

    @Override
    public CompletionStage<?> onClose(WebSocket webSocket, int statusCode, String reason) {
      closed.complete(statusCode + " " + reason);
      return null;
    }

    @Override
    public void onError(WebSocket webSocket, Throwable error) {
      closed.completeExceptionally(error);
    }

    void send(String frame) throws Exception {
      socket.sendText(frame, true).get(5, TimeUnit.SECONDS);
    }

    /** The next frame matching {@code want}, skipping others; fails after 10 seconds. */
    String await(Predicate<String> want) throws InterruptedException {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
      while (true) {
        long left = deadline - System.nanoTime();
        String frame = left > 0 ? frames.poll(left, TimeUnit.NANOSECONDS) : null;
        if (frame == null) {
          return fail("no matching frame within 10 s; frames seen: " + seen);
        }
        seen.add(frame);
        if (want.test(frame)) {
          return frame;
        }
      }
    }

    /** The next frame that is a message, whatever it is. */
    String nextMessage() throws InterruptedException {
      return await(f -> "message".equals(str(f, "type")));
    }

    @Override
    public void close() {
      if (socket != null) {
        socket.abort();
      }
    }

    /** A top-level string member of a JSON frame (enough for the server's frames). */
    static String str(String json, String name) {
      Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*\"([^\"]*)\"")
          .matcher(json);
      return m.find() ? m.group(1) : null;
    }

    /** A top-level integer member of a JSON frame, or -1. */
    static long num(String json, String name) {
      Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*(\\d+)").matcher(json);
      return m.find() ? Long.parseLong(m.group(1)) : -1;
    }
  }
}
