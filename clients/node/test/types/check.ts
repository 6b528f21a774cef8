// Compiled (not run) by types.test.js: the declarations describe the API as used.
import {
  PushClient,
  PushsvcError,
  Status,
  UnauthenticatedError,
  isUnauthenticated,
  tlsFromEnv,
  type PushRequest,
  type PushResult,
  type UserPresence,
} from "@pushsvc/client";

const client = new PushClient("127.0.0.1:50051", {
  apiKey: "k",
  timeoutMs: 1000,
  retries: 2,
  onRetry: ({ attempt, delayMs, error }) => console.log(attempt, delayMs, error.codeName),
});

const fromEnv: PushClient = PushClient.fromEnv({ timeoutMs: 1000 }, { PUSHSVC_API_KEYS: "k" });
fromEnv.close();

const overTls = new PushClient("push.example.com:443", { apiKey: "k", tlsCa: "/etc/pushsvc/ca.pem" });
const systemRoots = new PushClient("push.example.com:443", { apiKey: "k", tls: true });
const envTls: { tls?: boolean; tlsCa?: string } = tlsFromEnv({ PUSHSVC_TLS_CA: "/ca.pem" });
console.log(overTls, systemRoots, envTls);

async function main(): Promise<void> {
  const r: PushResult = await client.push({ userIds: ["a"], payload: { x: 1 }, ttlSeconds: 0 });
  const seq: number | undefined = r.seqs[0];
  const id: string = r.messageId;
  await client.push({ userIds: "a", payload: new Uint8Array([1]), contentType: "application/octet-stream" });
  const presence: UserPresence[] = await client.getPresence(["a"], { timeoutMs: 100 });
  const online: boolean = presence[0]!.online;
  const pub = await client.publish({ topic: "t", payload: "{}" });
  const subs: number = pub.localSubscribers;
  const { connectionsClosed } = await client.disconnect("a", "bye");
  const status = await client.getMessageStatus(id);
  const acked: boolean = status[0]!.acked;
  const nodes = await client.listNodes();
  const receipts = client.streamReceipts({ userIds: ["a"], cursor: "" });
  const startCursor: string = await receipts.started();
  for await (const rc of receipts) {
    const kind: "delivered" | "acked" = rc.kind;
    console.log(kind, rc.messageId, rc.seq, rc.recordedAt.getTime(), rc.cursor, receipts.cursor);
    receipts.cancel();
  }
  const revoked = await client.revokeToken({ jti: "j", expiresAt: new Date(), reason: "r" });
  console.log(startCursor, revoked.connectionsClosed);
  const addr: string = nodes[0]!.grpcAddr;

  async function* gen(): AsyncGenerator<PushRequest> {
    yield { userIds: ["a"], payload: 1 };
  }
  for await (const res of client.pushStream(gen(), { timeoutMs: null })) {
    if (res.error) console.log(res.error.code === Status.INVALID_ARGUMENT, res.error.message);
  }
  const stream = client.openPushStream();
  const one: PushResult = await stream.push({ userIds: ["a"], payload: 1 });
  await stream.end();

  try {
    await client.push({ userIds: [], payload: null });
  } catch (err) {
    if (isUnauthenticated(err)) {
      const e: UnauthenticatedError = err;
      console.log(e.code === Status.UNAUTHENTICATED, e.details, e.attempts);
    } else if (err instanceof PushsvcError && err.isInvalidArgument()) {
      console.log(err.codeName);
    }
  }
  console.log(seq, online, subs, connectionsClosed, acked, addr, one);
  client.close();
}

void main();
