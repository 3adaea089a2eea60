// jetsaga console: one page over the engine's JSON API (/v1), routed by
// the URL's hash (#/sagas, #/saga/<id>, #/definitions, #/definition/<name>,
// #/services). Live pages poll the API every POLL_MS; nothing is pushed.
// Requests that change something carry the session's CSRF value.

const POLL_MS = 3000;
const STATES = ["pending", "running", "compensating", "completed", "compensated", "failed", "partially_compensated", "cancelled"];
const ACTIVE = ["pending", "running", "compensating"];
const ROLES = ["read", "operate", "admin"];

const main = document.getElementById("main");
const flashBox = document.getElementById("flash");
let session = { auth: true, role: null };
let timer = null; // the current page's poll
let view = 0; // bumps on every navigation, so that late answers are dropped

// ---------------------------------------------------------------- helpers

/** Builds an element: h("a", {href: "#"}, "text", child...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const badge = (state, text) => h("span", { class: "badge", "data-state": state }, (text ?? state).replaceAll("_", " "));

function time(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) {
    const sec = ms / 1000;
    return `${Number.isInteger(sec) ? sec : sec.toFixed(sec < 10 ? 2 : 1)} s`;
  }
  const [big, unit, small, smallUnit, size] = ms < 3_600_000 ? [60_000, "min", 1000, "s", 60] : [3_600_000, "h", 60_000, "min", 60];
  const rest = Math.round((ms % big) / small) % size;
  return `${Math.floor(ms / big)} ${unit}${rest ? ` ${rest} ${smallUnit}` : ""}`;
}

const json = (v) => h("pre", { class: "json" }, JSON.stringify(v, null, 2));

/** Shows a message above the page; `keep`: also on the next page. */
function flash(message, error = false, keep = false) {
  flashBox.textContent = message;
  flashBox.classList.toggle("error", error);
  flashBox.dataset.keep = keep ? "1" : "";
  flashBox.hidden = false;
}

const can = (role) => ROLES.indexOf(session.role) >= ROLES.indexOf(role);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the JSON API; throws ApiError with the engine's code and message. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-Jetsaga-Csrf"] = session.csrf;
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, data?.error?.code ?? `HTTP ${res.status}`, data?.error?.message ?? res.statusText);
    if (res.status === 401 && session.auth && path.startsWith("/v1/")) {
      // The session is over: back to the login, saying why.
      session = { auth: true, role: null };
      renderWho();
      showLogin(err.message);
    }
    throw err;
  }
  return data;
}

/** Runs `load` now and every POLL_MS until the next navigation. */
function poll(load) {
  const mine = view;
  const tick = async () => {
    if (mine !== view) return;
    try {
      await load();
    } catch (e) {
      if (mine === view && !(e instanceof ApiError && e.status === 401)) flash(`${e.code ?? "Error"}: ${e.message}`, true);
    }
    if (mine === view && !document.querySelector(".live.paused")) timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function liveIndicator(onResume) {
  const box = h("div", { class: "live", id: "live" });
  const label = h("span", { id: "live-label" }, "Live: updates every 3 s");
  const toggle = h("button", {
    class: "secondary", type: "button", id: "live-toggle",
    onclick: () => {
      const paused = box.classList.toggle("paused");
      toggle.textContent = paused ? "Resume updates" : "Pause updates";
      label.textContent = paused ? "Paused" : "Live: updates every 3 s";
      if (!paused) onResume();
    },
  }, "Pause updates");
  box.append(h("span", { class: "dot", "aria-hidden": "true" }), label, toggle);
  return box;
}

function stamp() {
  const label = document.getElementById("live-label");
  if (label && !document.querySelector(".live.paused")) label.textContent = `Live: updated ${time(Date.now()).slice(11)}, every 3 s`;
}

/** Asks before an action: resolves true when confirmed. */
function confirmAction(title, text, verb) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = verb;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-no").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// ---------------------------------------------------------------- session

function renderWho() {
  const who = document.getElementById("who");
  who.replaceChildren();
  if (!session.auth) {
    who.append(h("span", { class: "muted" }, "no tokens configured: open console"));
    return;
  }
  if (!session.role) return;
  who.append(
    h("span", {}, session.name),
    h("span", { class: "role", id: "role" }, session.role),
    h("button", { class: "secondary", type: "button", id: "logout", onclick: logout }, "Log out"),
  );
}

async function logout() {
  try {
    await api("POST", "/ui/logout");
  } catch (e) {
    flash(`${e.code}: ${e.message}`, true);
    return;
  }
  session = { auth: true, role: null };
  renderWho();
  showLogin("Logged out.");
}

function showLogin(message) {
  view++;
  clearTimeout(timer);
  flashBox.hidden = true;
  const error = h("p", { class: "error-text", id: "login-error", role: "alert" }, message && message !== "Logged out." ? message : "");
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", {
    id: "login",
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try {
        const info = await api("POST", "/ui/login", { token: input.value });
        session = info;
        renderWho();
        input.value = "";
        route();
      } catch (e) {
        error.textContent = e.message;
        input.select();
      }
    },
  },
  h("label", { for: "token" }, "Token", input),
  error,
  h("button", { type: "submit" }, "Log in"));
  main.replaceChildren(h("section", { class: "panel login" },
    h("h1", {}, "Log in to jetsaga"),
    message === "Logged out." ? h("p", { class: "muted", id: "logged-out" }, "Logged out.") : null,
    h("p", { class: "muted" }, "Paste an HTTP API token (", h("code", {}, "jetsaga config new-token"), " makes one). Its role decides what you may do: read views, operate also acts on sagas."),
    form));
  input.focus();
}

// ---------------------------------------------------------------- DAG

/**
 * Draws steps as an SVG DAG: a step's column is its dependency depth (the
 * longest chain of dependencies before it), rows in file order within a
 * column. `state(i)` gives step i's state for its colour.
 */
function dag(steps, state, label) {
  const depth = [];
  const depthOf = (i) => {
    if (depth[i] !== undefined) return depth[i];
    depth[i] = 0; // guards against a cycle (definitions have none)
    depth[i] = steps[i].depends_on.length ? 1 + Math.max(...steps[i].depends_on.map(depthOf)) : 0;
    return depth[i];
  };
  steps.forEach((_, i) => depthOf(i));
  const columns = [];
  steps.forEach((_, i) => (columns[depth[i]] ??= []).push(i));
  const W = 176, H = 54, GX = 56, GY = 22, PAD = 12;
  const pos = [];
  const rows = Math.max(...columns.map((c) => c.length));
  columns.forEach((col, x) => col.forEach((i, y) => {
    const offset = ((rows - col.length) * (H + GY)) / 2;
    pos[i] = { x: PAD + x * (W + GX), y: PAD + offset + y * (H + GY) };
  }));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
  const height = PAD * 2 + rows * H + (rows - 1) * GY;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    s("path", { d: "M0 0 L10 5 L0 10 z", class: "arrow" }))));
  steps.forEach((step, i) => step.depends_on.forEach((d) => {
    const a = pos[d], b = pos[i];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    svg.append(s("path", { class: "edge", d: `M${x1} ${y1} C${mx} ${y1} ${mx} ${y2} ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
  }));
  steps.forEach((step, i) => {
    const st = state(i);
    const g = s("g", { class: "node", transform: `translate(${pos[i].x} ${pos[i].y})`, dataset: { step: step.id, state: st } },
      s("title", {}, `${step.id}: ${st.replaceAll("_", " ")} (${step.service}.${step.operation})`),
      s("rect", { width: W, height: H, rx: 7 }),
      s("rect", { class: "bar", width: 6, height: H, rx: 2 }),
      s("text", { x: 16, y: 22 }, clip(step.id, 22)),
      s("text", { x: 16, y: 41, class: "sub" }, st === "definition" ? clip(`${step.service} · ${step.operation}`, 28) : st.replaceAll("_", " ")));
    svg.append(g);
  });
  return h("div", { class: "dag", id: "dag" }, svg);
}

const clip = (t, n) => (t.length > n ? `${t.slice(0, n - 1)}…` : t);

// ---------------------------------------------------------------- sagas

function query() {
  const hash = location.hash.split("?")[1] ?? "";
  return new URLSearchParams(hash);
}

function toMs(local) {
  return local ? String(new Date(local).getTime()) : "";
}

async function sagasPage() {
  const q = query();
  const defs = await api("GET", "/v1/definitions");
  const stateSel = h("select", { id: "f-state", name: "state" }, h("option", { value: "" }, "any state"),
    STATES.map((st) => h("option", { value: st, selected: q.get("state") === st }, st.replaceAll("_", " "))));
  const sagaSel = h("select", { id: "f-saga", name: "saga" }, h("option", { value: "" }, "any definition"),
    defs.definitions.map((d) => h("option", { value: d.name, selected: q.get("saga") === d.name }, d.name)));
  const after = h("input", { type: "datetime-local", id: "f-after", name: "after", value: q.get("after") ?? "", step: 1 });
  const before = h("input", { type: "datetime-local", id: "f-before", name: "before", value: q.get("before") ?? "", step: 1 });
  const search = h("input", { type: "search", id: "f-search", name: "q", placeholder: "saga id or idempotency key", "aria-label": "Find a saga by id or idempotency key" });
  const filters = h("form", {
    class: "filters", id: "filters",
    onsubmit: (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const [k, el] of [["state", stateSel], ["saga", sagaSel], ["after", after], ["before", before]]) if (el.value) p.set(k, el.value);
      location.hash = `#/sagas${p.size ? `?${p}` : ""}`;
    },
  },
  h("label", {}, "State", stateSel),
  h("label", {}, "Definition", sagaSel),
  h("label", {}, "Created after", after),
  h("label", {}, "Created before", before),
  h("button", { type: "submit", id: "f-apply" }, "Apply filters"),
  h("a", { href: "#/sagas", class: "muted" }, "Clear"));
  const finder = h("form", {
    class: "search", id: "finder",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const term = search.value.trim();
      if (!term) return;
      for (const path of [`/v1/sagas/${encodeURIComponent(term)}`, `/v1/sagas/by-key/${encodeURIComponent(term)}`]) {
        try {
          const d = await api("GET", path);
          location.hash = `#/saga/${encodeURIComponent(d.saga.id)}`;
          return;
        } catch (e) {
          if (e.status !== 404 && e.status !== 400) { flash(`${e.code}: ${e.message}`, true); return; }
        }
      }
      flash(`No saga has the id or idempotency key “${term}”.`, true);
    },
  }, h("label", {}, "Find", search), h("button", { type: "submit", class: "secondary" }, "Find"));

  const counts = h("nav", { class: "counts", id: "counts", "aria-label": "Sagas per state" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "secondary", id: "more", hidden: true }, "Load more");
  const summary = h("p", { class: "muted", id: "summary" });
  const table = h("table", { id: "sagas" },
    h("thead", {}, h("tr", {}, ["Saga", "Definition", "State", "Steps", "Created", "Duration"].map((c, i) => h("th", { class: i >= 3 && i !== 4 ? "num" : null, scope: "col" }, c)))),
    tbody);
  main.replaceChildren(
    h("h1", {}, "Sagas", liveIndicator(() => poll(load))),
    counts,
    h("div", { class: "panel toolbar" }, filters, finder),
    h("section", { class: "panel" }, summary, table, more));

  const params = new URLSearchParams({ limit: "50" });
  if (q.get("state")) params.set("state", q.get("state"));
  if (q.get("saga")) params.set("saga", q.get("saga"));
  if (q.get("after")) params.set("created_after", toMs(q.get("after")));
  if (q.get("before")) params.set("created_before", toMs(q.get("before")));
  let extra = []; // pages loaded with "Load more"
  let next = null;

  const row = (x) => h("tr", { dataset: { id: x.id, state: x.state } },
    h("td", {}, h("a", { href: `#/saga/${encodeURIComponent(x.id)}`, class: "mono" }, x.id)),
    h("td", {}, x.name),
    h("td", {}, badge(x.state)),
    h("td", { class: "num" }, `${x.steps_done}/${x.steps_total}`),
    h("td", {}, time(x.created_at)),
    h("td", { class: "num" }, x.finished_at ? duration(x.finished_at - x.created_at) : `${duration(Date.now() - x.created_at)} so far`));

  const statsParams = q.get("saga") ? `?saga=${encodeURIComponent(q.get("saga"))}` : "";
  async function load() {
    const [page, stats] = await Promise.all([api("GET", `/v1/sagas?${params}`), api("GET", `/v1/stats${statsParams}`)]);
    counts.replaceChildren(
      h("a", { href: "#/sagas", "aria-current": q.get("state") ? null : "true" }, h("b", {}, stats.overall.total), h("span", { class: "label" }, "all")),
      ...STATES.map((st) => {
        const p = new URLSearchParams(q);
        p.set("state", st);
        return h("a", { href: `#/sagas?${p}`, "aria-current": q.get("state") === st ? "true" : null, dataset: { count: st } },
          h("b", {}, stats.overall.states[st] ?? 0), badge(st));
      }));
    const rows = [...page.sagas, ...extra];
    tbody.replaceChildren(...rows.map(row));
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No saga matches these filters.")));
    if (!extra.length) next = page.next ?? null;
    more.hidden = !next;
    summary.textContent = `${rows.length} saga${rows.length === 1 ? "" : "s"} shown, newest first${next ? "; more below" : ""}.`;
    stamp();
  }
  more.addEventListener("click", async () => {
    const p = new URLSearchParams(params);
    p.set("before", next);
    const page = await api("GET", `/v1/sagas?${p}`);
    extra = [...extra, ...page.sagas];
    next = page.next ?? null;
    tbody.append(...page.sagas.map(row));
    more.hidden = !next;
  });
  poll(load);
}

// ---------------------------------------------------------------- one saga

const OUTCOME_TEXT = { ok: "ok", retryable: "retryable error", fatal: "fatal error", timed_out: "timed out", abandoned: "abandoned" };

function actionsFor(saga) {
  const st = saga.status.state;
  const list = [];
  if (["pending", "running"].includes(st)) {
    list.push({ id: "cancel", label: "Cancel", title: "Cancel this saga?", text: "It stops now and nothing is compensated: steps that completed stay done. It ends cancelled.", verb: "Cancel saga", call: () => api("POST", `/v1/sagas/${saga.id}/cancel`, { compensate: false, reason: "cancelled from the console" }) });
    list.push({ id: "compensate", label: "Cancel and compensate", title: "Cancel and roll back?", text: "It stops, and every step that completed is compensated in reverse order. It ends compensated.", verb: "Cancel and compensate", call: () => api("POST", `/v1/sagas/${saga.id}/cancel`, { compensate: true, reason: "cancelled from the console" }) });
  }
  if (["failed", "compensated"].includes(st)) {
    list.push({ id: "retry", label: "Retry", title: "Run this saga again?", text: "It runs forward again from the start, under new idempotency keys for its steps.", verb: "Retry", call: () => api("POST", `/v1/sagas/${saga.id}/retry`, { compensation_only: false }) });
  }
  if (st === "partially_compensated") {
    list.push({ id: "resume", label: "Resume rollback", title: "Resume the rollback?", text: "The compensations that failed run again (fix their cause first).", verb: "Resume rollback", call: () => api("POST", `/v1/sagas/${saga.id}/retry`, { compensation_only: true }) });
  }
  if (!ACTIVE.includes(st)) {
    list.push({ id: "delete", label: "Delete", title: "Delete this saga?", text: "Its record and history are removed for good, and its idempotency key may start a new saga.", verb: "Delete", call: () => api("DELETE", `/v1/sagas/${saga.id}`) });
  }
  return list;
}

function timeline(detail) {
  const { saga, definition } = detail;
  const attempts = [];
  saga.steps.forEach((step, i) => step.attempts.forEach((a) => attempts.push({ step: definition.steps[i].id, ...a })));
  attempts.sort((a, b) => a.started_at - b.started_at);
  const start = saga.created_at;
  const end = Math.max(saga.finished_at ?? Date.now(), ...attempts.map((a) => a.finished_at ?? Date.now()));
  const span = Math.max(end - start, 1);
  const box = h("div", { class: "timeline", id: "timeline" },
    h("div", { class: "head" }, "Step, task"), h("div", { class: "head" }, `0 → ${duration(span)}`), h("div", { class: "head" }, "Duration, result"));
  if (!attempts.length) box.append(h("p", { class: "muted" }, "No task dispatched yet."));
  for (const a of attempts) {
    const outcome = a.outcome?.outcome ?? "running";
    const finished = a.finished_at ?? Date.now();
    const bar = h("div", { class: "span", dataset: { outcome, kind: a.kind }, title: `${a.step} ${a.kind} #${a.number}: ${OUTCOME_TEXT[outcome] ?? "in flight"}` });
    bar.style.left = `${((a.started_at - start) / span) * 100}%`;
    bar.style.width = `${Math.max(((finished - a.started_at) / span) * 100, 0.4)}%`;
    const error = a.outcome?.error;
    box.append(
      h("div", { class: "what" }, h("b", {}, a.step), " ", h("span", { class: "kind" }, `${a.kind} #${a.number}`)),
      h("div", { class: "track" }, bar),
      h("div", { class: "result", dataset: { attempt: `${a.step}/${a.kind}/${a.number}` } },
        `${a.finished_at ? duration(a.finished_at - a.started_at) : "running"} · `,
        h("span", { class: error ? "error-text" : null }, OUTCOME_TEXT[outcome] ?? "in flight", error ? `: ${error}` : "")));
  }
  return box;
}

// The partition of saga `id` in an installation of `count` partitions
// (docs/PROTOCOL.md, "Partitions"): the UUIDv7's rand_a bits, modulo the
// count; 0 with one partition.
function partitionOf(id, count) {
  if (count <= 1 || id.length !== 36 || id[14] !== "7") return 0;
  const bits = parseInt(id.slice(15, 18), 16);
  return Number.isNaN(bits) ? 0 : bits % count;
}

async function sagaPage(id) {
  const header = h("h1", {});
  const body = h("div");
  main.replaceChildren(header, body);
  let cluster = null;
  try {
    cluster = await api("GET", "/v1/cluster");
  } catch {
    cluster = null; // an engine without a cluster: no partition to show
  }
  let last = null;
  const live = liveIndicator(() => poll(load));
  async function load() {
    const detail = await api("GET", `/v1/sagas/${encodeURIComponent(id)}`);
    const text = JSON.stringify(detail);
    if (text === last) { stamp(); return; }
    last = text;
    render(detail);
    stamp();
  }
  function render(detail) {
    const { saga, definition } = detail;
    const st = saga.status.state;
    header.replaceChildren(...[h("span", {}, saga.name), badge(st), ACTIVE.includes(st) ? live : null].filter(Boolean));
    const partition = cluster?.partitions?.[partitionOf(saga.id, cluster?.partitions?.length ?? 1)];
    const facts = h("dl", { class: "facts", id: "facts" },
      h("dt", {}, "Saga id"), h("dd", { class: "mono" }, saga.id),
      h("dt", {}, "Definition"), h("dd", {}, h("a", { href: `#/definition/${encodeURIComponent(saga.name)}?v=${saga.definition_version}` }, `${saga.name} v${saga.definition_version}`)),
      h("dt", {}, "Idempotency key"), h("dd", { class: "mono" }, saga.idempotency_key ?? "—"),
      h("dt", {}, "Created"), h("dd", {}, time(saga.created_at)),
      h("dt", {}, "Finished"), h("dd", {}, saga.finished_at ? `${time(saga.finished_at)} (after ${duration(saga.finished_at - saga.created_at)})` : `not yet (${duration(Date.now() - saga.created_at)} so far)`),
      saga.status.reason ? [h("dt", {}, "Reason"), h("dd", { id: "reason" }, saga.status.reason)] : null,
      saga.status.stuck_steps?.length ? [h("dt", {}, "Stuck steps"), h("dd", {}, saga.status.stuck_steps.join(", "))] : null,
      detail.queue_position !== undefined ? [h("dt", {}, "Queue position"), h("dd", {}, detail.queue_position)] : null,
      h("dt", {}, "Partition"), h("dd", { id: "partition" }, partition ? `${partition.partition}, led by ${partition.leader ?? "no engine right now"}` : "—"),
      saga.generation ? [h("dt", {}, "Run"), h("dd", {}, `${saga.generation + 1} (retried)`)] : null);

    const acts = h("div", { class: "actions", id: "actions" });
    if (can("operate")) {
      for (const a of actionsFor(saga)) {
        acts.append(h("button", {
          type: "button", class: a.id === "delete" || a.id === "cancel" || a.id === "compensate" ? "danger" : null, dataset: { action: a.id },
          onclick: async () => {
            if (!(await confirmAction(a.title, a.text, a.verb))) return;
            try {
              await a.call();
              if (a.id === "delete") {
                flash(`Saga ${saga.id} deleted.`, false, true);
                location.hash = "#/sagas";
                return;
              }
              flash(`${a.label}: done.`);
              last = null;
              view++;
              poll(load);
            } catch (e) {
              flash(`${a.label} refused: ${e.code}: ${e.message}`, true);
            }
          },
        }, a.label));
      }
      if (!acts.children.length) acts.append(h("span", { class: "note" }, "No action applies while it is " + st.replaceAll("_", " ") + "."));
    } else {
      acts.append(h("span", { class: "note", id: "read-only" }, `Your role (${session.role}) may only view; acting on sagas needs operate.`));
    }

    const stepsTable = h("table", { id: "steps" },
      h("thead", {}, h("tr", {}, ["Step", "Service · operation", "State", "Attempts", "Output"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, saga.steps.map((step, i) => {
        const d = definition.steps[i];
        const err = step.status.error;
        return h("tr", { dataset: { step: d.id, state: step.status.state } },
          h("td", {}, h("b", {}, d.id)),
          h("td", {}, `${d.service} · ${d.operation}`, d.compensation ? h("div", { class: "muted" }, `undo: ${d.compensation}`) : null),
          h("td", {}, badge(step.status.state), err ? h("div", { class: "error-text" }, err) : null),
          h("td", { class: "num" }, step.attempts.length + (step.attempts_dropped ?? 0)),
          h("td", {}, step.output === undefined || step.output === null ? "—" : h("details", {}, h("summary", {}, "output"), json(step.output))));
      })));

    const legendStates = ["pending", "running", "succeeded", "failed", "compensating", "compensated", "compensation_failed", "skipped"];
    body.replaceChildren(
      h("div", { class: "grid2" },
        h("section", { class: "panel" }, h("h2", {}, "Steps"),
          dag(definition.steps, (i) => saga.steps[i].status.state, `DAG of saga ${saga.name}`),
          h("div", { class: "legend", "aria-label": "Step states" }, legendStates.map((x) => badge(x)))),
        h("section", { class: "panel" }, h("h2", {}, "Saga"), facts, h("h2", { class: "gap" }, "Actions"), acts)),
      h("section", { class: "panel" }, h("h2", {}, "Timeline of attempts and compensations"), timeline(detail)),
      h("section", { class: "panel" }, h("h2", {}, "Step states"), stepsTable),
      h("section", { class: "panel" }, h("h2", {}, "Input"), json(saga.input)));
    if (!ACTIVE.includes(st)) view++; // finished: stop polling
  }
  poll(load);
}

// ---------------------------------------------------------------- definitions

async function definitionsPage() {
  const list = await api("GET", "/v1/definitions");
  const rows = list.definitions.map((d) => h("tr", { dataset: { definition: d.name } },
    h("td", {}, h("a", { href: `#/definition/${encodeURIComponent(d.name)}` }, d.name)),
    h("td", { class: "num" }, d.version),
    h("td", { class: "num" }, d.steps.length),
    h("td", {}, d.enabled ? badge("completed", "enabled") : badge("failed", "disabled"), d.refusal ? h("div", { class: "muted" }, d.refusal) : null),
    h("td", {}, d.triggers?.length ? d.triggers.map((t) => h("div", { class: "mono" }, t.subject)) : "—"),
    h("td", {}, [d.timeout ? `timeout ${duration(d.timeout)}` : null, d.max_running ? `max ${d.max_running} running` : null].filter(Boolean).join(", ") || "—")));
  main.replaceChildren(h("h1", {}, "Definitions"),
    h("section", { class: "panel" },
      h("table", { id: "definitions" },
        h("thead", {}, h("tr", {}, ["Definition", "Version", "Steps", "Policy", "Triggers", "Limits"].map((c, i) => h("th", { scope: "col", class: i === 1 || i === 2 ? "num" : null }, c)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No definition applied yet (jetsaga def apply FILE)."))))));
}

async function definitionPage(name) {
  const list = await api("GET", "/v1/definitions");
  const current = list.definitions.find((d) => d.name === name);
  if (!current) throw new ApiError(404, "E-NOT-FOUND", `no definition ${name}`);
  const wanted = Number(query().get("v") ?? current.version);
  const d = wanted === current.version ? current : await api("GET", `/v1/definitions/${encodeURIComponent(name)}/versions/${wanted}`);
  const versions = h("select", {
    id: "version", "aria-label": "Version",
    onchange: (ev) => { location.hash = `#/definition/${encodeURIComponent(name)}?v=${ev.target.value}`; },
  }, Array.from({ length: current.version }, (_, i) => current.version - i).map((v) => h("option", { value: v, selected: v === wanted }, `version ${v}${v === current.version ? " (current)" : ""}`)));
  const retry = (r) => `${r.max_attempts} attempt${r.max_attempts === 1 ? "" : "s"}, ${duration(r.initial_delay)} → ${duration(r.max_delay)} ×${r.backoff_factor}, jitter ${r.jitter}`;
  main.replaceChildren(
    h("h1", {}, name, versions),
    h("div", { class: "grid2" },
      h("section", { class: "panel" }, h("h2", {}, "DAG"), dag(d.steps, () => "definition", `DAG of definition ${name}`)),
      h("section", { class: "panel" }, h("h2", {}, "Policy and limits"),
        h("dl", { class: "facts", id: "policy" },
          h("dt", {}, "Starts here"), h("dd", {}, current.enabled ? "yes" : `no: ${current.refusal ?? "disabled"}`),
          h("dt", {}, "Enabled"), h("dd", {}, d.policy?.enabled === false ? "no" : "yes"),
          h("dt", {}, "Environments"), h("dd", {}, d.policy?.environments?.length ? d.policy.environments.join(", ") : "any"),
          h("dt", {}, "Engine environment"), h("dd", {}, current.environment ?? "none set"),
          h("dt", {}, "Saga timeout"), h("dd", {}, d.timeout ? duration(d.timeout) : "none"),
          h("dt", {}, "Max running"), h("dd", {}, d.max_running ?? "unlimited")),
        h("h2", { class: "gap" }, "Triggers"),
        d.triggers?.length
          ? h("ul", { id: "triggers" }, d.triggers.map((t) => h("li", {}, h("code", {}, t.subject), t.input ? h("div", { class: "muted" }, Object.entries(t.input).map(([k, v]) => `${k} ← ${v}`).join(", ")) : null)))
          : h("p", { class: "muted", id: "triggers" }, "None: sagas start from the API, CLI or start stream."))),
    h("section", { class: "panel" }, h("h2", {}, "Steps"),
      h("table", { id: "def-steps" },
        h("thead", {}, h("tr", {}, ["Step", "Service", "Operation", "Compensation", "Timeout", "Retry", "Depends on"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, d.steps.map((st) => h("tr", {},
          h("td", {}, h("b", {}, st.id)), h("td", {}, st.service), h("td", {}, st.operation), h("td", {}, st.compensation ?? "—"),
          h("td", {}, duration(st.timeout)), h("td", {}, retry(st.retry)),
          h("td", {}, st.depends_on.map((i) => d.steps[i].id).join(", ") || "—")))))));
}

// ---------------------------------------------------------------- services

async function servicesPage() {
  const tbody = h("tbody");
  main.replaceChildren(h("h1", {}, "Services", liveIndicator(() => poll(load))),
    h("section", { class: "panel" },
      h("table", { id: "services" },
        h("thead", {}, h("tr", {}, ["Service", "Used by", "Queue depth", "Breaker", "Failures", "Held", "In flight", "Breaker policy", "Last transitions"].map((c, i) => h("th", { scope: "col", class: [2, 4, 5, 6].includes(i) ? "num" : null }, c)))),
        tbody),
      h("p", { class: "note" }, "Queue depth: tasks in the service's work queue not yet acknowledged by a worker. Held: tasks the engine keeps back for an open breaker or the in-flight limit.")));
  async function load() {
    const { services } = await api("GET", "/v1/services");
    tbody.replaceChildren(...services.map((x) => {
      const b = x.status;
      return h("tr", { dataset: { service: x.service } },
        h("td", {}, h("b", {}, x.service)),
        h("td", {}, x.sagas.map((n, i) => [i ? ", " : "", h("a", { href: `#/definition/${encodeURIComponent(n)}` }, n)])),
        h("td", { class: "num", dataset: { cell: "depth" } }, x.queue_depth ?? "?"),
        h("td", {}, b ? badge(b.state) : badge("none", "no policy"), b?.half_opens_at ? h("div", { class: "muted" }, `half-opens ${time(b.half_opens_at).slice(11)}`) : null),
        h("td", { class: "num" }, b ? b.failures : "—"),
        h("td", { class: "num", dataset: { cell: "held" } }, b ? b.held : "—"),
        h("td", { class: "num", dataset: { cell: "in-flight" } }, b ? `${b.in_flight}${b.max_in_flight ? ` / ${b.max_in_flight}` : ""}` : "—"),
        h("td", {}, b?.circuit_breaker ? `opens after ${b.circuit_breaker.failure_threshold} failures, probes after ${duration(b.circuit_breaker.open_timeout)}` : "—"),
        h("td", {}, b?.history?.length ? b.history.slice(-3).map((t) => h("div", { class: "muted" }, `${time(t.at).slice(11)} ${t.from} → ${t.to} (${t.cause})`)) : "—"));
    }));
    if (!services.length) tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No service: apply a definition first.")));
    stamp();
  }
  poll(load);
}

// ---------------------------------------------------------------- routing

async function route() {
  view++;
  clearTimeout(timer);
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/sagas";
  const [, page, arg] = path.split("/");
  for (const a of document.querySelectorAll("[data-nav]")) {
    const on = a.dataset.nav === page || (a.dataset.nav === "sagas" && page === "saga") || (a.dataset.nav === "definitions" && page === "definition");
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (session.auth && !session.role) {
    showLogin();
    return;
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const name = arg ? decodeURIComponent(arg) : null;
    if (page === "saga" && name) await sagaPage(name);
    else if (page === "definitions") await definitionsPage();
    else if (page === "definition" && name) await definitionPage(name);
    else if (page === "services") await servicesPage();
    else await sagasPage();
    document.title = `${main.querySelector("h1")?.firstChild?.textContent ?? "console"} · jetsaga`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    main.replaceChildren(h("section", { class: "panel" }, h("h1", {}, "Cannot show this page"), h("p", { class: "error-text", id: "page-error" }, `${e.code ?? "Error"}: ${e.message}`), h("a", { href: "#/sagas" }, "Back to the sagas")));
  }
}

window.addEventListener("hashchange", () => {
  if (flashBox.dataset.keep === "1") flashBox.dataset.keep = "";
  else flashBox.hidden = true;
  route();
});

async function start() {
  try {
    session = await api("GET", "/ui/session");
  } catch (e) {
    main.replaceChildren(h("p", { class: "error-text" }, `The engine does not answer: ${e.message}`));
    return;
  }
  renderWho();
  route();
}

start();
