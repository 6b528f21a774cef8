package io.pushsvc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/** PushClient.fromEnv reads the names the node and the pushsvc command read. Needs no node. */
class FromEnvTest {
  @Test
  void keyIsOwnKeyElseFirstOfTheNodesKeys() {
    assertEquals(
        Optional.of("own"),
        PushClient.apiKeyFromEnv(Map.of("PUSHSVC_API_KEY", " own ", "PUSHSVC_API_KEYS", "a,b")));
    assertEquals(
        Optional.of("first"), PushClient.apiKeyFromEnv(Map.of("PUSHSVC_API_KEYS", " , first ,b")));
    assertEquals(Optional.empty(), PushClient.apiKeyFromEnv(Map.of("PUSHSVC_API_KEYS", " , ")));
    assertEquals(PushClient.DEFAULT_ADDRESS, PushClient.addressFromEnv(Map.of()));
    assertEquals("h:1", PushClient.addressFromEnv(Map.of("PUSHSVC_GRPC_ADDR", "h:1")));
  }

  @Test
  void noKeyFailsWithOneClearMessage() {
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> PushClient.builder().fromEnv(Map.of()));
    assertEquals(PushClient.NO_API_KEY_MESSAGE, e.getMessage());
    try (PushClient c =
        PushClient.builder().fromEnv(Map.of("PUSHSVC_API_KEYS", "k")).build()) {
      // built: the address defaulted, the key found
    }
  }
}
