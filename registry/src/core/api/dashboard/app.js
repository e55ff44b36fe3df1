// The registry dashboard. Plain DOM, no framework, same-origin
// requests only. Every string from the server is set with textContent or
// setAttribute, never parsed as markup: agent names come from the network.
"use strict";
(() => {
  const KEY = "chatixia.adminKey";
  const REFRESH_MS = 3000;
  // The SVG XML namespace name: an identifier, never fetched.
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const rendered = {}; // section -> JSON last drawn, to redraw only on change
  let timer = 0;
  let noticeTimer = 0;

  // ---- DOM helpers -------------------------------------------------------
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function row(cells) {
    const tr = el("tr");
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.append(c);
      else td.textContent = c === undefined || c === null ? "" : String(c);
      tr.append(td);
    }
    return tr;
  }
  // Class names from a fixed list only; anything else is drawn as "other".
  const KNOWN = ["active", "stale", "offline", "pending_approval", "approved", "rejected", "revoked",
    "pending", "assigned", "in_progress", "completed", "failed"];
  const known = (s) => (KNOWN.includes(s) ? s : "other");
  const badge = (s) => el("span", String(s || "—").replace(/_/g, " "), "badge " + known(s));
  function mono(text, title) {
    const s = el("span", text, "mono");
    if (title) s.title = title;
    return s;
  }
  function clip(text, n) {
    const s = String(text || "");
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }
  function clipped(text, n) {
    const s = el("span", clip(text, n));
    if (String(text || "").length > n) s.title = String(text);
    return s;
  }
  function when(d) {
    if (!(d instanceof Date) || isNaN(d)) return "—";
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }
  const fromEpoch = (secs) => when(new Date(Number(secs) * 1000));
  const fromIso = (s) => when(new Date(String(s)));

  function notice(text, isError) {
    const n = $("notice");
    n.textContent = text;
    n.className = "notice" + (isError ? " error" : "");
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, isError ? 15000 : 6000);
  }

  // ---- admin key ---------------------------------------------------------
  function getKey() {
    try { return sessionStorage.getItem(KEY) || ""; } catch (_) { return ""; }
  }
  function setKey(k) {
    try {
      if (k) sessionStorage.setItem(KEY, k);
      else sessionStorage.removeItem(KEY);
    } catch (_) { /* storage disabled: the key lives for this call only */ }
    keyUi();
  }
  function keyUi() {
    const has = !!getKey();
    $("forget").hidden = !has;
    $("key").placeholder = has ? "admin key set (this tab only)" : "X-API-Key of an admin key";
    document.body.classList.toggle("has-key", has);
    if (!has) {
      delete rendered.devices;
      $("devices").replaceChildren();
      $("devices-table").hidden = true;
      $("devices-locked").hidden = false;
      $("devices-count").textContent = "";
    }
  }
  function needKey() {
    notice("This needs an admin API key: enter it above.", true);
    $("key").focus();
  }

  // ---- HTTP ---------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  function errorText(body, fallback) {
    if (body && typeof body === "object" && typeof body.error === "string") return body.error;
    if (typeof body === "string" && body) return clip(body, 200);
    return fallback;
  }
  async function call(method, path, admin) {
    const headers = {};
    const k = getKey();
    if (admin && !k) throw new HttpError(0, "no admin key");
    // Sent on reads too: with REST_AUTH=strict the registry needs it there.
    if (k) headers["X-API-Key"] = k;
    const resp = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
    const text = await resp.text();
    let body = text;
    try { body = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: keep the text */ }
    if (admin && (resp.status === 401 || resp.status === 403)) {
      setKey("");
      const why = resp.status === 401 ? "not a valid key" : "not an admin key";
      const msg = `Admin key refused (${resp.status}, ${why}: ${errorText(body, "refused")}). It was cleared.`;
      notice(msg, true);
      throw new HttpError(resp.status, msg);
    }
    if (!admin && resp.status === 401) {
      throw new HttpError(401, "this registry needs a key to read (REST_AUTH=strict): enter one above");
    }
    if (!resp.ok) throw new HttpError(resp.status, `${resp.status}: ${errorText(body, resp.statusText)}`);
    // The agent registry and task hub answer "not found" with 200 {"error"}.
    if (body && typeof body === "object" && !Array.isArray(body) && typeof body.error === "string") {
      throw new HttpError(resp.status, body.error);
    }
    return body;
  }

  // Draws a section only when its data changed, so that buttons under the
  // pointer are not replaced by identical ones every few seconds.
  function changed(section, data) {
    const json = JSON.stringify(data);
    if (rendered[section] === json) return false;
    rendered[section] = json;
    return true;
  }
  const list = (v) => (Array.isArray(v) ? v : []);

  // ---- agents --------------------------------------------------------------
  function renderAgents(data) {
    if (!changed("agents", data)) return;
    const agents = list(data).slice().sort((a, b) => String(a.agent_id).localeCompare(String(b.agent_id)));
    const body = $("agents");
    const active = agents.filter((a) => a.health === "active").length;
    $("agents-count").textContent = agents.length ? `${active} active of ${agents.length}` : "";
    if (!agents.length) {
      body.replaceChildren(empty(6, "No agents have registered yet."));
      return;
    }
    body.replaceChildren(...agents.map((a) => {
      const caps = a.capabilities || {};
      const skills = list(caps.skills).map(String);
      const host = el("span", a.hostname);
      if (a.ip) host.append(el("span", ` ${a.ip}:${a.port}`, "muted mono"));
      return row([
        el("strong", a.agent_id),
        badge(a.health),
        host,
        a.sidecar_peer_id ? mono(a.sidecar_peer_id) : el("span", "none", "muted"),
        skills.length ? clipped(skills.join(", "), 60) : el("span", "—", "muted"),
        el("span", fromIso(a.last_heartbeat)),
      ]);
    }));
  }
  function empty(cols, text) {
    const tr = el("tr");
    const td = el("td", text, "muted");
    td.colSpan = cols;
    tr.append(td);
    return tr;
  }

  // ---- mesh topology -------------------------------------------------------
  // One circle per sidecar peer (agents sharing a sidecar share its circle;
  // an agent without a sidecar gets its own), nodes evenly on a ring, one
  // line per link the registry reports.
  function renderMesh(topo) {
    if (!changed("mesh", topo)) return;
    const rank = { active: 0, stale: 1, offline: 2 };
    const nodes = new Map();
    for (const n of list(topo && topo.nodes)) {
      const key = n.sidecar_peer_id ? "p:" + n.sidecar_peer_id : "a:" + n.agent_id;
      let v = nodes.get(key);
      if (!v) {
        v = { peer: String(n.sidecar_peer_id || ""), names: [], health: n.health, reported: !!n.reported, links: 0 };
        nodes.set(key, v);
      } else if ((rank[n.health] ?? 3) < (rank[v.health] ?? 3)) {
        v.health = n.health;
      }
      if (n.agent_id) v.names.push(String(n.agent_id));
    }
    const edges = list(topo && topo.mesh_edges)
      .map((e) => [nodes.get("p:" + e.from_peer), nodes.get("p:" + e.to_peer), e.path === "relay"])
      .filter(([a, b]) => a && b && a !== b);
    for (const [a, b] of edges) { a.links++; b.links++; }
    const peers = [...nodes.values()];
    const real = edges.filter(([a, b]) => a.reported || b.reported).length;
    const relayed = edges.filter(([, , r]) => r).length;
    $("mesh-count").textContent = peers.length
      ? `${peers.length} peer${peers.length === 1 ? "" : "s"}, ${edges.length} link${edges.length === 1 ? "" : "s"}` +
        (edges.length && real < edges.length ? ` (${edges.length - real} assumed)` : "") +
        (relayed ? `, ${relayed} relayed` : "") +
        (topo && topo.truncated ? ", list truncated" : "")
      : "";
    const box = $("mesh");
    if (!peers.length) {
      box.replaceChildren(el("p", "Nothing to draw: no agents or sidecars yet.", "muted"));
      return;
    }
    const W = 640, H = 400, cx = W / 2, cy = H / 2;
    const n = peers.length;
    const ring = n === 1 ? 0 : Math.min(W, H) / 2 - 52;
    const dot = n > 40 ? 5 : n > 16 ? 8 : 12;
    const labels = n <= 40;
    peers.forEach((p, i) => {
      const t = -Math.PI / 2 + (2 * Math.PI * i) / n;
      p.x = cx + ring * Math.cos(t);
      p.y = cy + ring * Math.sin(t);
      p.cos = Math.cos(t);
      p.sin = Math.sin(t);
    });
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "mesh", role: "img", "aria-label": "mesh topology" });
    const lines = svg("g");
    for (const [a, b, relay] of edges) {
      const line = svg("line", {
        x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1),
        class: "edge " + (relay ? "relayed" : a.reported || b.reported ? "real" : "assumed"),
      });
      line.append(svg("title", {}, `${a.peer} ↔ ${b.peer}${relay ? " (through a TURN relay)" : ""}`));
      lines.append(line);
    }
    root.append(lines);
    for (const p of peers) {
      const g = svg("g", { class: "node " + known(p.health) + (p.links ? "" : " lone") });
      const name = p.names.length ? p.names.join(", ") : p.peer;
      const tip = [name, p.peer && p.names.length ? "peer " + p.peer : "", `health ${p.health}`,
        `${p.links} link${p.links === 1 ? "" : "s"}${p.reported ? " (reported)" : p.peer ? " (not reported)" : ""}`];
      g.append(svg("title", {}, tip.filter(Boolean).join("\n")));
      g.append(svg("circle", { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: dot }));
      if (labels) {
        // Name, and the sidecar peer id below it when that says more; set
        // outside the ring: beside a node on the sides, above or below it
        // at the top and bottom.
        const lines = [clip(name, 22)];
        if (p.names.length && p.peer && name !== p.peer) lines.push(clip(p.peer, 22));
        const lh = 15, gap = dot + 6;
        const side = n > 1 && Math.abs(p.cos) > 0.3;
        const anchor = !side ? "middle" : p.cos > 0 ? "start" : "end";
        const x = side ? p.x + gap * p.cos : p.x;
        let y;
        if (side) y = p.y + gap * p.sin + 5 - ((lines.length - 1) * lh) / 2;
        else if (n > 1 && p.sin < 0) y = p.y - gap - (lines.length - 1) * lh;
        else y = p.y + gap + 11;
        lines.forEach((line, i) => g.append(svg("text",
          { x: x.toFixed(1), y: (y + i * lh).toFixed(1), "text-anchor": anchor, class: i ? "peer" : "" }, line)));
      }
      root.append(g);
    }
    box.replaceChildren(root);
  }

  // ---- tasks -----------------------------------------------------------------
  const MAX_TASKS = 50;
  function renderTasks(data) {
    if (!changed("tasks", data)) return;
    const tasks = list(data).slice().sort((a, b) => Number(b.updated_at) - Number(a.updated_at));
    const open = tasks.filter((t) => t.state !== "completed" && t.state !== "failed").length;
    $("tasks-count").textContent = tasks.length
      ? `${open} open of ${tasks.length}` + (tasks.length > MAX_TASKS ? `, newest ${MAX_TASKS} shown` : "")
      : "";
    if (!tasks.length) {
      $("tasks").replaceChildren(empty(7, "No tasks."));
      return;
    }
    $("tasks").replaceChildren(...tasks.slice(0, MAX_TASKS).map((t) => {
      const outcome = t.error ? clipped(t.error, 70) : clipped(t.result, 70);
      if (t.error) outcome.className = "err";
      return row([
        mono(clip(t.id, 12), t.id),
        t.skill || "—",
        badge(t.state),
        `${t.source_agent_id || "?"} → ${t.target_agent_id || "any"}`,
        t.assigned_agent_id || "—",
        fromEpoch(t.updated_at),
        outcome,
      ]);
    }));
  }

  // ---- devices (pairing) -------------------------------------------------------
  const ORDER = { pending_approval: 0, approved: 1, rejected: 2, revoked: 3 };
  const MAX_DEVICES = 100;
  function renderDevices(data) {
    if (!getKey() || !changed("devices", data)) return;
    const entries = list(data).slice().sort((a, b) =>
      (ORDER[a.status] ?? 9) - (ORDER[b.status] ?? 9) || Number(b.created_at) - Number(a.created_at));
    const waiting = entries.filter((e) => e.status === "pending_approval").length;
    $("devices-count").textContent = entries.length ? `${waiting} awaiting approval of ${entries.length}` : "";
    $("devices-locked").hidden = true;
    $("devices-table").hidden = false;
    if (!entries.length) {
      $("devices").replaceChildren(empty(5, "No paired devices. Generate an invite code to pair one."));
      return;
    }
    $("devices").replaceChildren(...entries.slice(0, MAX_DEVICES).map((e) => {
      const actions = el("span", null, "actions");
      if (e.status === "pending_approval") {
        actions.append(button("Approve", "ok", () => act(e, "approve")), button("Reject", "bad", () => act(e, "reject")));
      } else if (e.status === "approved") {
        actions.append(button("Revoke", "bad", () => act(e, "revoke")));
      }
      const tr = row([el("strong", e.agent_name), mono(e.peer_id), badge(e.status), fromEpoch(e.created_at), actions]);
      tr.title = `entry ${e.id}, invited by ${e.invited_by || "?"}, last change ${fromEpoch(e.updated_at)}`;
      return tr;
    }));
  }
  function button(label, cls, onclick) {
    const b = el("button", label, cls);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }
  async function act(entry, op) {
    const who = `"${entry.agent_name}" (${entry.peer_id})`;
    if (op !== "approve" && !window.confirm(`${op[0].toUpperCase() + op.slice(1)} device ${who}? This is final.`)) return;
    try {
      await call("POST", `/api/pairing/${encodeURIComponent(entry.id)}/${op}`, true);
      notice(`Device ${who}: ${op === "approve" ? "approved" : op === "reject" ? "rejected" : "revoked"}.`);
    } catch (err) {
      if (err.status !== 401 && err.status !== 403) notice(`Could not ${op} ${who}: ${err.message}`, true);
    }
    refresh();
  }

  // ---- invite codes ------------------------------------------------------------
  async function generateCode() {
    if (!getKey()) return needKey();
    const out = $("code-out");
    try {
      const r = await call("POST", "/api/pairing/generate-code", true);
      const until = new Date(Date.now() + Number(r.expires_in) * 1000);
      const cmd = `chatixia-sidecar pair --registry ${location.origin} --code ${r.code} --name <device-name>`;
      out.replaceChildren(
        el("span", r.code, "code"),
        el("span", ` single use, valid until ${until.toLocaleTimeString()}. On the device:`, "muted"),
        el("code", cmd),
      );
      out.hidden = false;
    } catch (err) {
      if (err.status !== 401 && err.status !== 403) notice(`No code: ${err.message}`, true);
    }
  }

  // ---- refresh loop --------------------------------------------------------------
  async function refresh() {
    clearTimeout(timer);
    const jobs = [
      call("GET", "/api/registry/agents").then(renderAgents),
      call("GET", "/api/hub/network/topology").then(renderMesh),
      call("GET", "/api/hub/tasks/all").then(renderTasks),
    ];
    if (getKey()) jobs.push(call("GET", "/api/pairing/all", true).then(renderDevices));
    const failed = (await Promise.allSettled(jobs)).filter((r) => r.status === "rejected");
    const status = $("status");
    if (failed.length) {
      const err = failed[0].reason;
      status.textContent = err instanceof TypeError ? "registry unreachable, retrying…" : `error: ${err.message}`;
      status.className = "error";
    } else {
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
      status.className = "muted";
    }
    clearTimeout(timer); // another refresh may have finished meanwhile: keep one loop
    timer = setTimeout(tick, REFRESH_MS);
  }
  function tick() {
    if (document.hidden) timer = setTimeout(tick, REFRESH_MS);
    else refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const k = $("key").value.trim();
      $("key").value = "";
      if (!k) return needKey();
      setKey(k);
      notice("Admin key stored for this browser tab.");
      refresh();
    });
    $("forget").addEventListener("click", () => {
      setKey("");
      notice("Admin key forgotten.");
    });
    $("gen-code").addEventListener("click", generateCode);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    keyUi();
    refresh();
  });
})();
