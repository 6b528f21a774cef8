// The pushsvc admin console: plain DOM, no dependencies, nothing inline (strict CSP).
// Every call to /admin/api/* carries the admin token, which the page asks for once
// and keeps in sessionStorage (this tab only). No cookies are used.

const TOKEN_KEY = "pushsvc-admin-token";
const POLL_MS = 2000;
const WINDOW_S = 600; // the charts show the last ten minutes
const SVG_NS = "http://www.w3.org/2000/svg";
const CHARTS = [
  { key: "connections", title: "connections", digits: 0 },
  { key: "push_rate", title: "pushes/s", digits: 1 },
  { key: "frame_rate", title: "frames/s", digits: 1 },
  { key: "ack_rate", title: "acks/s", digits: 1 },
];

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let pollTimer = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const init = { method: "GET", headers: { Authorization: `Bearer ${token}` }, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(`/admin/api/${path}`, init);
  } catch (err) {
    throw new ApiError(0, `the node does not answer (${err.message})`);
  }
  let answer = {};
  try {
    answer = await resp.json();
  } catch {
    answer = { error: `HTTP ${resp.status}` };
  }
  if (resp.status === 401) {
    signOut(answer.error || "the admin token is not valid");
    throw new ApiError(401, answer.error);
  }
  if (!resp.ok) throw new ApiError(resp.status, answer.error || `HTTP ${resp.status}`);
  return answer;
}

// -- signing in and out ---------------------------------------------------------------------

function signOut(why = "") {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(pollTimer);
  pollTimer = null;
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = why;
  setStatus("idle", "not signed in");
  $("token").focus();
}

async function signIn(candidate) {
  token = candidate;
  try {
    await api("stats");
  } catch (err) {
    if (err.status !== 401) {
      token = "";
      $("sign-in-error").textContent = err.message;
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  $("token").value = "";
  poll();
}

// -- the live views ---------------------------------------------------------------------------

async function poll() {
  clearTimeout(pollTimer);
  try {
    const [nodes, stats] = await Promise.all([api("nodes"), api("stats")]);
    renderNodes(nodes);
    renderStats(stats);
    setStatus("live", "live");
  } catch (err) {
    if (err.status === 401) return;
    setStatus("stale", "stale", err.message);
  }
  if (token) pollTimer = setTimeout(poll, POLL_MS);
}

function setStatus(state, text, title = "") {
  const el = $("status");
  el.className = `badge badge-${state}`;
  el.dataset.state = state;
  el.textContent = text;
  el.title = title;
}

function renderNodes({ now, self, nodes }) {
  const body = $("nodes-body");
  const seen = new Set();
  let connections = 0;
  let users = 0;
  for (const n of nodes) {
    seen.add(n.node_id);
    connections += n.connections;
    users += n.users ?? 0;
    let tr = body.querySelector(`tr[data-node-id="${CSS.escape(n.node_id)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.nodeId = n.node_id;
      for (const cls of ["id", "", "", "num", "num", "num", "num", "num", "num", "", ""]) {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        tr.append(td);
      }
      body.append(tr);
    }
    tr.classList.toggle("self", n.node_id === self);
    const cells = tr.children;
    const storeOk = n.store_ok;
    const values = [
      n.node_id,
      n.ws_addr,
      duration(now - n.started_at),
      n.connections,
      n.users ?? "–",
      rate(n.push_rate),
      rate(n.frame_rate),
      rate(n.ack_rate),
      n.pushed ?? "–",
      storeOk === undefined ? "–" : storeOk ? "ok" : "failing",
      n.at === undefined ? "–" : `${duration(now - n.at)} ago`,
    ];
    values.forEach((v, i) => {
      const text = String(v);
      if (cells[i].textContent !== text) cells[i].textContent = text;
    });
    cells[3].dataset.value = n.connections;
    cells[8].dataset.value = n.pushed ?? "";
    cells[9].className = storeOk === undefined ? "" : storeOk ? "ok" : "bad";
  }
  for (const tr of [...body.children]) if (!seen.has(tr.dataset.nodeId)) tr.remove();
  $("fleet-summary").textContent =
    `${nodes.length} live ${nodes.length === 1 ? "node" : "nodes"}, ${connections} connections, ${users} users`;
}

function renderStats(stats) {
  $("this-node").textContent = `node ${stats.node_id}`;
  const health = $("node-health");
  health.textContent = stats.store.ok
    ? `store ok · ${stats.ready.ok ? "ready" : stats.ready.reason}`
    : stats.store.reason;
  health.className = stats.store.ok && stats.ready.ok ? "muted" : "bad";
  const charts = $("charts");
  for (const spec of CHARTS) {
    let box = charts.querySelector(`[data-metric="${spec.key}"]`);
    if (!box) box = charts.appendChild(newChart(spec));
    drawChart(box, spec, stats.samples, stats.now);
  }
}

function newChart(spec) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.metric = spec.key;
  const h3 = document.createElement("h3");
  const name = document.createElement("span");
  name.textContent = spec.title;
  const value = document.createElement("span");
  value.className = "value";
  h3.append(name, value);
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${spec.title}, last minutes`);
  const grid = document.createElementNS(SVG_NS, "line");
  grid.setAttribute("class", "grid");
  for (const [k, v] of Object.entries({ x1: 0, x2: 300, y1: 50, y2: 50 })) grid.setAttribute(k, v);
  const area = document.createElementNS(SVG_NS, "polygon");
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("class", "line");
  svg.append(grid, area, line);
  const axis = document.createElement("div");
  axis.className = "muted axis-note";
  box.append(h3, svg, axis);
  return box;
}

function drawChart(box, spec, samples, now) {
  // The last ten minutes, or since the first sample of a node younger than that (at least a minute).
  const span = Math.min(WINDOW_S, Math.max(60, samples.length ? now - samples[0].at : 0));
  const points = samples.filter((s) => s.at >= now - span).map((s) => [s.at, s[spec.key]]);
  const max = Math.max(1, ...points.map(([, v]) => v));
  const top = max * 1.1;
  const xy = points.map(([t, v]) => [(300 * (t - (now - span))) / span, 100 - (100 * v) / top]);
  const coords = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  box.querySelector("polyline").setAttribute("points", coords);
  box.dataset.points = String(points.length);
  const area = xy.length ? `${xy[0][0].toFixed(1)},100 ${coords} ${xy[xy.length - 1][0].toFixed(1)},100` : "";
  box.querySelector("polygon").setAttribute("points", area);
  const last = points.length ? points[points.length - 1][1] : 0;
  box.querySelector(".value").textContent = last.toFixed(spec.digits);
  box.querySelector(".axis-note").textContent = `max ${max.toFixed(spec.digits)} · last ${duration(span)}`;
}

// -- by hand ------------------------------------------------------------------------------------

function showResult(el, text, failed = false) {
  el.textContent = text;
  el.classList.toggle("failed", failed);
}

async function act(resultEl, fn) {
  showResult(resultEl, "…");
  try {
    showResult(resultEl, await fn());
  } catch (err) {
    if (err.status !== 401) showResult(resultEl, err.message, true);
  }
}

function lookUpUser(userId) {
  const dl = $("user-result");
  const form = $("user-form");
  $("user-error").textContent = "";
  form.setAttribute("aria-busy", "true");
  form.dataset.outcome = "pending";
  return api(`user?id=${encodeURIComponent(userId)}`).then(
    (u) => {
      dl.replaceChildren();
      const facts = [
        ["user", u.user_id],
        ["online", u.online ? "yes" : "no"],
        ["connections", u.connections],
        ["nodes", u.node_ids.join(", ") || "–"],
        ["latest seq", u.latest_seq],
        ["acked seq", u.acked_seq],
        ["not acked", u.unacked],
      ];
      for (const [k, v] of facts) {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = String(v);
        dd.dataset.fact = k.replace(" ", "-");
        dl.append(dt, dd);
      }
      dl.hidden = false;
      form.dataset.outcome = "shown";
    },
    (err) => {
      dl.hidden = true;
      if (err.status !== 401) $("user-error").textContent = err.message;
      form.dataset.outcome = "failed";
    },
  ).finally(() => form.removeAttribute("aria-busy"));
}

function pushFromForm() {
  const users = $("push-users").value.split(",").map((u) => u.trim()).filter(Boolean);
  const ttlText = $("push-ttl").value.trim();
  if (ttlText && !/^\d+$/.test(ttlText)) throw new ApiError(400, "TTL must be a whole number of seconds (0 = online-only)");
  return api("push", {
    user_ids: users,
    payload: $("push-payload").value,
    content_type: $("push-ctype").value.trim(),
    ttl_seconds: ttlText ? Number(ttlText) : null,
  }).then((r) => {
    if (r.duplicate) return `duplicate of ${r.message_id}: nothing sent again`;
    if (!r.stored) return `online-only push ${r.message_id}: ${r.local_connections} connections on this node`;
    return `pushed ${r.message_id}: ${users.map((u, i) => `${u} seq ${r.seqs[i]}`).join(", ")}`;
  });
}

function publishFromForm() {
  const topic = $("publish-topic").value.trim();
  return api("publish", {
    topic,
    payload: $("publish-payload").value,
    content_type: $("publish-ctype").value.trim(),
  }).then((r) => `published ${r.message_id} to ${topic}: ${r.local_subscribers} subscribers on this node`);
}

function disconnectFromForm() {
  const user = $("disconnect-user").value.trim();
  return api("disconnect", { user_id: user, reason: $("disconnect-reason").value }).then(
    (r) => `disconnected ${user}: ${r.connections_closed} ${r.connections_closed === 1 ? "connection" : "connections"} closed`,
  );
}

// -- formatting ---------------------------------------------------------------------------------

function rate(v) {
  if (v === undefined) return "–";
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

// -- wiring -------------------------------------------------------------------------------------

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (ev) => {
    ev.preventDefault();
    handler();
  });
}

onSubmit("token-form", () => {
  const candidate = $("token").value.trim();
  if (!candidate) {
    $("sign-in-error").textContent = "enter the admin token";
    return;
  }
  signIn(candidate);
});
onSubmit("user-form", () => {
  const userId = $("user-id").value.trim();
  if (userId) lookUpUser(userId);
});
onSubmit("push-form", () => act($("push-result"), pushFromForm));
onSubmit("publish-form", () => act($("publish-result"), publishFromForm));
onSubmit("disconnect-form", () => act($("disconnect-result"), disconnectFromForm));
$("sign-out").addEventListener("click", () => signOut());

if (token) signIn(token);
else signOut();
