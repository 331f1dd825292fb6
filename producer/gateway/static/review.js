// turnq's reviewer page: pending tool approvals, approved or rejected by a person.
//
// Talks only to this gateway's /v1 API with the key the reviewer pasted (kept in this
// tab's sessionStorage, sent as a bearer token, never put in a URL).  Every piece of
// data reaches the page as text (textContent, never innerHTML), and the page's CSP
// allows only this file as script.
"use strict";

(() => {
  const STORE = "turnq.review.key";
  const POLL_MS = 2000;
  const LIMIT = 200;

  const $ = (id) => document.getElementById(id);
  const rows = new Map(); // "turn_id call_id" -> {tr, since, approval}
  let timer = null;
  let generation = 0; // bumped on sign-out: late answers of an old session are dropped

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return node;
  }

  function key() {
    return sessionStorage.getItem(STORE);
  }

  async function api(method, path, body) {
    const init = {
      method,
      headers: { Authorization: `Bearer ${key()}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    return { status: response.status, data };
  }

  // --------------------------------------------------------------- signing in and out
  function signIn(event) {
    event.preventDefault();
    const input = $("key");
    const value = input.value.trim();
    input.value = "";
    if (!value) {
      $("login-error").textContent = "Paste an API key first.";
      return;
    }
    // A header value must be Latin-1; a pasted key with anything else would make fetch throw.
    if (!/^[\x21-\x7e]+$/.test(value)) {
      $("login-error").textContent = "That does not look like an API key (tq_…).";
      return;
    }
    sessionStorage.setItem(STORE, value);
    showDesk();
  }

  function signOut(message) {
    generation += 1;
    sessionStorage.removeItem(STORE);
    clearTimeout(timer);
    timer = null;
    rows.clear();
    $("rows").replaceChildren();
    $("desk").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    document.title = "turnq · approvals";
    $("key").focus();
  }

  function showDesk() {
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("desk").hidden = false;
    $("who").hidden = false;
    $("status").textContent = "Loading…";
    poll();
  }

  // --------------------------------------------------------------- the pending list
  async function poll() {
    clearTimeout(timer);
    const mine = generation;
    try {
      await refresh(mine);
    } catch (error) {
      setStatus(`Cannot reach the gateway (${error.message}); retrying…`, true);
    }
    if (mine === generation && key()) timer = setTimeout(poll, POLL_MS);
  }

  async function refresh(mine) {
    const { status, data } = await api("GET", `/v1/approvals?status=pending&limit=${LIMIT}`);
    if (mine !== generation) return;
    if (status === 401) {
      signOut("The gateway refused that key (unknown, revoked or mistyped).");
      return;
    }
    if (status !== 200 || !data || !Array.isArray(data.approvals)) {
      setStatus(`The gateway answered ${status}: ${problemText(data)}; retrying…`, true);
      return;
    }
    render(data.approvals);
    const more = data.next_cursor ? ` (the oldest ${LIMIT} shown)` : "";
    setStatus(`Updated ${new Date().toLocaleTimeString()}${more}; refreshes every 2 s.`);
  }

  function render(approvals) {
    const body = $("rows");
    const seen = new Set();
    for (const approval of approvals) {
      const id = `${approval.turn_id} ${approval.call_id}`;
      seen.add(id);
      let row = rows.get(id);
      if (!row) {
        row = buildRow(approval);
        rows.set(id, row);
      }
      row.since.textContent = ago(approval.requested_at);
      body.append(row.tr); // moves an existing row: oldest first, inputs kept
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    $("empty").hidden = approvals.length > 0;
    $("approvals").hidden = approvals.length === 0;
    $("count").textContent = `${approvals.length} pending`;
    document.title = `(${approvals.length}) turnq · approvals`;
  }

  function buildRow(approval) {
    const tr = el("tr", "approval");
    tr.dataset.turn = approval.turn_id;
    tr.dataset.call = approval.call_id;

    const since = el("time");
    since.dateTime = approval.requested_at;
    since.title = approval.requested_at;

    const tool = el("td", "tool", el("code", "", approval.tool));
    if (approval.agent) tool.append(el("span", "agent", `agent ${approval.agent}`));

    const reason = el("input", "reason");
    reason.type = "text";
    reason.maxLength = 4000;
    reason.placeholder = "Reason for a rejection (optional)";
    reason.setAttribute("aria-label", "Reason for a rejection");
    const approve = el("button", "approve", "Approve");
    const reject = el("button", "reject", "Reject");
    approve.type = reject.type = "button";
    const note = el("div", "note");
    const row = { tr, since, approval };
    approve.addEventListener("click", () => decide(row, true, null, [approve, reject, reason], note));
    reject.addEventListener("click", () =>
      decide(row, false, reason.value.trim() || null, [approve, reject, reason], note),
    );

    tr.append(
      el("td", "user", approval.user_id),
      el("td", "session", approval.session_id),
      tool,
      el("td", "args", el("pre", "", prettyJson(approval.arguments))),
      el("td", "message", approval.message_text),
      el("td", "since", since),
      el("td", "actions", approve, reason, reject, note),
    );
    return row;
  }

  async function decide(row, approve, message, controls, note) {
    for (const c of controls) c.disabled = true;
    note.textContent = approve ? "Approving…" : "Rejecting…";
    const decision = { call_id: row.approval.call_id, approve };
    if (message) decision.message = message;
    let answer;
    try {
      answer = await api("POST", `/v1/turns/${encodeURIComponent(row.approval.turn_id)}/approvals`, {
        decisions: [decision],
      });
    } catch (error) {
      note.textContent = `Not sent (${error.message}); try again.`;
      for (const c of controls) c.disabled = false;
      return;
    }
    const { status, data } = answer;
    if (status === 200) {
      row.tr.classList.add("decided");
      note.textContent = approve ? "Approved; the turn goes on." : "Rejected; the model is told.";
    } else if (status === 409 && data && data.code === "approval_conflict") {
      row.tr.classList.add("decided");
      note.textContent = `Someone else decided first (${data.turn_status}).`;
    } else if (status === 409 || status === 404) {
      row.tr.classList.add("decided");
      note.textContent = `No longer waiting: ${problemText(data)}`;
    } else if (status === 401) {
      signOut("The gateway refused that key (unknown, revoked or mistyped).");
      return;
    } else {
      note.textContent = `Not recorded (${status}: ${problemText(data)}); try again.`;
      for (const c of controls) c.disabled = false;
    }
    poll();
  }

  // --------------------------------------------------------------- formatting
  function setStatus(text, problem) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("problem", Boolean(problem));
  }

  function problemText(data) {
    return (data && (data.detail || data.title)) || "no details";
  }

  function prettyJson(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      return String(text);
    }
  }

  function ago(stamp) {
    const seconds = Math.max(0, (Date.now() - Date.parse(stamp)) / 1000);
    if (!Number.isFinite(seconds)) return String(stamp);
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut());
    if (key()) showDesk();
    else $("key").focus();
  });
})();
