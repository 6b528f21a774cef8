package io.pushsvc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

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

  @Test
  void aTlsCaFileThatCannotBeUsedFailsTheBuild(@TempDir Path dir) throws Exception {
    Map<String, String> env =
        Map.of("PUSHSVC_API_KEYS", "k", "PUSHSVC_TLS_CA", dir.resolve("missing.pem").toString());
    IllegalArgumentException missing =
        assertThrows(
            IllegalArgumentException.class, () -> PushClient.builder().fromEnv(env).build());
    assertTrue(
        missing.getMessage().startsWith("pushsvc: cannot read the TLS CA file "),
        missing.getMessage());
    Path notPem = Files.writeString(dir.resolve("not.pem"), "not a certificate");
    IllegalArgumentException bad =
        assertThrows(
            IllegalArgumentException.class,
            () -> PushClient.builder().address("h:1").tlsCa(notPem).build());
    assertEquals(
        "pushsvc: the TLS CA file " + notPem + " holds no PEM certificate", bad.getMessage());
    Map<String, String> systemRoots = Map.of("PUSHSVC_API_KEYS", "k", "PUSHSVC_TLS", "true");
    try (PushClient c = PushClient.builder().fromEnv(systemRoots).build()) {
      // built: TLS with the JVM's trust store
    }
  }
}
