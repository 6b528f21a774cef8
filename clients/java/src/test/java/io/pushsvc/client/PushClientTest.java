package io.pushsvc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.pushsvc.v1.GetMessageStatusResponse;
import io.pushsvc.v1.GetPresenceResponse;
import io.pushsvc.v1.ListNodesResponse;
import io.pushsvc.v1.PublishResponse;
import io.pushsvc.v1.PushRequest;
import io.pushsvc.v1.PushResponse;
import io.pushsvc.v1.ReceiptEvent;
import io.pushsvc.v1.ReceiptKind;
import io.pushsvc.v1.RecipientStatus;
import io.pushsvc.v1.UserPresence;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** PushClient against a live node, checking deliveries on real WebSocket connections. */
class PushClientTest {
  private static LiveNode node;
  private static PushClient client;

  @BeforeAll
  static void setUp() {
    node = LiveNode.fromEnv();
    client = node.client().build();
  }

  @AfterAll
  static void tearDown() {
    if (client != null) {
      client.close();
    }
  }

  private static String user() {
    return "java-" + UUID.randomUUID();
  }

  private static PushRequest request(String user, String json) {
    return PushRequest.newBuilder()
        .addUserIds(user)
        .setPayload(ByteString.copyFrom(json, StandardCharsets.UTF_8))
        .build();
  }

  @Test
  void pushArrivesOnWebSocket() throws Exception {
    String alice = user();
    String nonce = UUID.randomUUID().toString();
    try (LiveNode.Ws ws = node.connect(alice, null)) {
      PushResponse resp = client.push(List.of(alice), "{\"nonce\": \"" + nonce + "\"}");
      assertFalse(resp.getMessageId().isEmpty());
      assertEquals(1, resp.getSeqsCount());
      assertFalse(resp.getDuplicate());
      String frame = ws.nextMessage();
      assertEquals(resp.getMessageId(), LiveNode.Ws.str(frame, "id"), frame);
      assertEquals(resp.getSeqs(0), LiveNode.Ws.num(frame, "seq"), frame);
      assertEquals("application/json", LiveNode.Ws.str(frame, "content_type"), frame);
      assertTrue(frame.contains(nonce), frame);
    }
  }

  @Test
  void pushStreamAnswersInOrderAndDelivers() throws Exception {
    String bob = user();
    try (LiveNode.Ws ws = node.connect(bob, null)) {
      List<PushRequest> requests = new ArrayList<>();
      for (int i = 0; i < 5; i++) {
        requests.add(request(bob, "{\"n\": " + i + "}"));
      }
      requests.add(2, PushRequest.newBuilder().setPayload(ByteString.copyFromUtf8("{}")).build());
      List<PushResponse> responses = client.pushStream(requests);
      assertEquals(6, responses.size());
      PushResponse bad = responses.get(2);
      assertEquals(Status.Code.INVALID_ARGUMENT.value(), bad.getError().getCode(), bad.toString());
      assertTrue(bad.getMessageId().isEmpty());
      responses = new ArrayList<>(responses);
      responses.remove(2);
      long lastSeq = 0;
      for (int i = 0; i < 5; i++) {
        PushResponse r = responses.get(i);
        assertFalse(r.hasError(), r.toString());
        String frame = ws.nextMessage();
        assertEquals(r.getMessageId(), LiveNode.Ws.str(frame, "id"), frame);
        assertTrue(frame.matches(".*\"n\"\\s*:\\s*" + i + "\\b.*"), frame);
        long seq = LiveNode.Ws.num(frame, "seq");
        assertTrue(seq > lastSeq, frame);
        lastSeq = seq;
      }
    }
  }

  @Test
  void publishReachesSubscribers() throws Exception {
    String carol = user();
    String topic = "java." + UUID.randomUUID();
    try (LiveNode.Ws ws = node.connect(carol, "[\"java.*\"]")) {
      ws.send("{\"type\":\"subscribe\",\"topic\":\"" + topic + "\"}");
      ws.await(f -> "subscribed".equals(LiveNode.Ws.str(f, "type")));
      PublishResponse resp = client.publish(topic, "{\"title\": \"hello\"}");
      assertEquals(1, resp.getLocalSubscribers());
      String frame = ws.nextMessage();
      assertEquals(resp.getMessageId(), LiveNode.Ws.str(frame, "id"), frame);
      assertEquals(topic, LiveNode.Ws.str(frame, "topic"), frame);
      assertEquals(-1, LiveNode.Ws.num(frame, "seq"), frame);
      assertTrue(frame.contains("hello"), frame);
    }
  }

  @Test
  void presenceSeesTheWebSocketConnection() throws Exception {
    String dave = user();
    String nobody = user();
    try (LiveNode.Ws ws = node.connect(dave, null)) {
      GetPresenceResponse resp = client.getPresence(List.of(dave, nobody));
      assertEquals(2, resp.getPresenceCount());
      UserPresence on = resp.getPresence(0);
      assertEquals(dave, on.getUserId());
      assertTrue(on.getOnline());
      assertEquals(1, on.getConnections());
      assertEquals(1, on.getNodeIdsCount());
      UserPresence off = resp.getPresence(1);
      assertEquals(nobody, off.getUserId());
      assertFalse(off.getOnline());
      assertEquals(0, off.getConnections());
      // And a message pushed to the user seen online arrives on that connection.
      PushResponse pushed = client.push(List.of(dave), "{\"seen\": true}");
      assertEquals(pushed.getMessageId(), LiveNode.Ws.str(ws.nextMessage(), "id"));
    }
  }

  @Test
  void disconnectClosesWith4000() throws Exception {
    String erin = user();
    try (LiveNode.Ws ws = node.connect(erin, null)) {
      assertEquals(1, client.disconnect(erin, "bye from java").getConnectionsClosed());
      assertEquals("4000 bye from java", ws.closed.get(10, TimeUnit.SECONDS));
    }
  }

  @Test
  void messageStatusFollowsDeliveryAndAck() throws Exception {
    String frank = user();
    try (LiveNode.Ws ws = node.connect(frank, null)) {
      PushResponse resp = client.push(List.of(frank), "{\"track\": 1}");
      long seq = LiveNode.Ws.num(ws.nextMessage(), "seq");
      ws.send("{\"type\":\"ack\",\"seq\":" + seq + "}");
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
      RecipientStatus status;
      do {
        GetMessageStatusResponse st = client.getMessageStatus(resp.getMessageId());
        assertEquals(1, st.getRecipientsCount());
        status = st.getRecipients(0);
        if (status.getDelivered() && status.getAcked()) {
          break; // receipts are written in batches: wait for both
        }
        Thread.sleep(50); // polling a condition with a deadline
      } while (System.nanoTime() < deadline);
      assertEquals(frank, status.getUserId());
      assertEquals(seq, status.getSeq());
      assertTrue(status.getDelivered(), status.toString());
      assertTrue(status.getAcked(), status.toString());
    }
  }

  @Test
  void streamReceiptsDeliversEventsAndResumesFromItsCursor() throws Exception {
    String gina = user();
    try (LiveNode.Ws ws = node.connect(gina, null)) {
      String cursor;
      try (ReceiptStream stream = client.streamReceipts("")) { // this API key's messages
        assertTrue(stream.cursor().startsWith("r1."), stream.cursor());
        PushResponse first = client.push(List.of(gina), "{\"n\": 1}");
        ws.nextMessage();
        ws.send("{\"type\":\"ack\",\"seq\":1}");
        ReceiptEvent delivered = stream.next();
        ReceiptEvent acked = stream.next();
        assertEquals(ReceiptKind.RECEIPT_KIND_DELIVERED, delivered.getKind(), delivered.toString());
        assertEquals(ReceiptKind.RECEIPT_KIND_ACKED, acked.getKind(), acked.toString());
        for (ReceiptEvent e : List.of(delivered, acked)) {
          assertEquals(first.getMessageId(), e.getMessageId());
          assertEquals(gina, e.getUserId());
          assertEquals(1, e.getSeq());
          assertFalse(e.getNodeId().isEmpty());
        }
        assertEquals(acked.getCursor(), stream.cursor());
        cursor = stream.cursor();
      }
      PushResponse second = client.push(List.of(gina), "{\"n\": 2}");
      ws.nextMessage();
      ws.send("{\"type\":\"ack\",\"seq\":2}");
      try (ReceiptStream resumed = client.streamReceipts(List.of(gina), cursor)) {
        ReceiptEvent a = resumed.next();
        ReceiptEvent b = resumed.next();
        assertEquals(second.getMessageId(), a.getMessageId());
        assertEquals(ReceiptKind.RECEIPT_KIND_DELIVERED, a.getKind());
        assertEquals(second.getMessageId(), b.getMessageId());
        assertEquals(ReceiptKind.RECEIPT_KIND_ACKED, b.getKind());
      }
    }
    assertThrows(InvalidArgumentException.class, () -> client.streamReceipts("nope"));
  }

  @Test
  void revokeTokenClosesItsConnectionsWith4001() throws Exception {
    String hal = user();
    String jti = "jti-" + hal;
    long expiresAt = System.currentTimeMillis() / 1000 + 3600;
    try (LiveNode.Ws ws = node.connectWithToken(node.token(hal, null, jti), "")) {
      assertEquals(1, client.revokeToken(jti, expiresAt, "bye").getConnectionsClosed());
      assertEquals("4001 token revoked: bye", ws.closed.get(10, TimeUnit.SECONDS));
    }
    assertThrows(Exception.class, () -> node.connectWithToken(node.token(hal, null, jti), ""));
    assertThrows(InvalidArgumentException.class, () -> client.revokeToken(jti, 1, ""));
  }

  @Test
  void listNodesShowsTheNode() {
    ListNodesResponse resp = client.listNodes();
    assertTrue(resp.getNodesCount() >= 1, resp.toString());
    assertTrue(resp.getNodesList().stream().anyMatch(n -> !n.getNodeId().isEmpty()));
  }

  @Test
  void sameIdempotencyKeyDeliversOnce() throws Exception {
    String gina = user();
    try (LiveNode.Ws ws = node.connect(gina, null)) {
      PushRequest req = request(gina, "{\"once\": 1}").toBuilder()
          .setIdempotencyKey("java-key-" + UUID.randomUUID()).build();
      PushResponse first = client.push(req);
      PushResponse again = client.push(req);
      assertFalse(first.getDuplicate());
      assertTrue(again.getDuplicate());
      assertEquals(first.getMessageId(), again.getMessageId());
      PushResponse next = client.push(List.of(gina), "{\"twice\": 2}");
      assertEquals(first.getMessageId(), LiveNode.Ws.str(ws.nextMessage(), "id"));
      assertEquals(next.getMessageId(), LiveNode.Ws.str(ws.nextMessage(), "id"));
    }
  }

  @Test
  void wrongApiKeyIsUnauthenticated() {
    try (PushClient wrong = node.client().apiKey("not-the-key").build()) {
      UnauthenticatedException e = assertThrows(
          UnauthenticatedException.class, () -> wrong.push(List.of(user()), "{}"));
      assertEquals(Status.Code.UNAUTHENTICATED, e.getCode());
    }
    try (PushClient none = node.client().apiKey(null).build()) {
      assertThrows(UnauthenticatedException.class, () -> none.listNodes());
    }
  }

  @Test
  void emptyUserIdsIsInvalidArgument() {
    InvalidArgumentException e = assertThrows(
        InvalidArgumentException.class, () -> client.push(Collections.emptyList(), "{}"));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getCode());
    assertTrue(e instanceof PushsvcException);
    assertThrows(InvalidArgumentException.class, () -> client.getPresence(List.of()));
  }

  @Test
  void unreachableNodeIsUnavailable() throws Exception {
    int port;
    try (ServerSocket s = new ServerSocket(0)) {
      port = s.getLocalPort();
    }
    try (PushClient nowhere = PushClient.builder().address("127.0.0.1:" + port)
        .apiKey(node.apiKey).maxRetries(1).backoff(Duration.ofMillis(10), Duration.ofMillis(10))
        .build()) {
      PushsvcException e = assertThrows(UnavailableException.class, nowhere::listNodes);
      assertEquals(Status.Code.UNAVAILABLE, e.getCode());
    }
  }

  @Test
  void builderChecksItsSettings() {
    assertThrows(IllegalArgumentException.class, () -> PushClient.builder().build());
    assertThrows(IllegalArgumentException.class,
        () -> PushClient.builder().deadline(Duration.ZERO));
    assertThrows(IllegalArgumentException.class, () -> PushClient.builder().maxRetries(-1));
    try (PushClient lazy = PushClient.builder().address("127.0.0.1:1").build()) {
      assertTrue(lazy != null); // building connects nothing yet
    }
  }
}
