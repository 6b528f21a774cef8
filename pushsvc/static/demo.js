// The /demo page: connects to this node's /ws with the pushsvc browser client.
import { PushClient } from "/demo/pushsvc.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const tokenField = $("token");
tokenField.value = params.get("token") || "";

let client = null;
let count = 0;

function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

function logEvent(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const events = $("events");
  events.prepend(li);
  while (events.children.length > 200) events.lastChild.remove();
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function showState(state) {
  const el = $("state");
  el.textContent = state;
  el.dataset.state = state;
  el.className = `state state-${state}`;
  const running = state !== "closed";
  $("connect").disabled = running;
  $("disconnect").disabled = !running;
}

function payload(msg) {
  if (msg.data_b64 !== undefined) return `(base64) ${msg.data_b64}`;
  if (typeof msg.data === "string") return msg.data;
  const text = JSON.stringify(msg.data);
  return text.length <= 80 ? text : JSON.stringify(msg.data, null, 2);
}

function showMessage(msg) {
  const li = document.createElement("li");
  if (msg.seq !== undefined) li.dataset.seq = String(msg.seq);
  if (msg.topic !== undefined) li.dataset.topic = msg.topic;
  li.dataset.id = msg.id;
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = msg.topic !== undefined ? `#${msg.topic}` : msg.seq !== undefined ? `seq ${msg.seq}` : "live";
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString();
  const data = document.createElement("pre");
  data.className = "data";
  data.textContent = payload(msg);
  li.append(tag, time, data);
  $("messages").prepend(li);
  $("empty").hidden = true;
  count++;
  $("count").textContent = String(count);
}

function connect() {
  const token = tokenField.value.trim();
  if (!token) {
    notice("Paste a token first: pushsvc token --user alice --topic 'news*'");
    return;
  }
  notice("");
  client = new PushClient({
    url: wsUrl(),
    token: async () => tokenField.value.trim(), // asked again before every reconnect
    onMessage: (msg) => {
      showMessage(msg);
      if (msg.seq !== undefined) $("last-seq").textContent = `· last seq ${msg.seq}`;
    },
    onState: (ev) => {
      showState(ev.state);
      logEvent(`state ${ev.state}${ev.code ? ` (close ${ev.code}${ev.reason ? ` ${ev.reason}` : ""})` : ""}`);
      if (ev.state === "closed" && ev.reason && ev.reason.startsWith("gave up")) {
        notice("The node refused the token (expired or invalid?). Paste a new one and connect again.");
      }
    },
    onWelcome: (w) => {
      $("identity").textContent = `user ${w.user} on node ${w.node}`;
      logEvent(`welcome: user ${w.user}, node ${w.node}, latest seq ${w.seq}`);
    },
    onError: (e) => logEvent(`error ${e.code}: ${e.message}`),
  });
  client.on("subscribed", (ev) => logEvent(`subscribed to ${ev.topic}`));
  client.on("unsubscribed", (ev) => logEvent(`unsubscribed from ${ev.topic}`));
  client.connect();
}

$("connect-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!client) connect();
  else if (client.state === "closed" && tokenField.value.trim()) {
    notice("");
    client.connect(); // same client: keeps its last seq and topics
  }
});
$("disconnect").addEventListener("click", () => {
  if (client) client.close();
});
$("topic-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const topic = $("topic").value.trim();
  if (!topic || !client) return;
  client.subscribe(topic);
  $("topics").textContent = `topics: ${client.topics.join(", ")}`;
});

showState("closed");
if (tokenField.value) connect();
