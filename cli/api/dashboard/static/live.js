// sdpipe dashboard: live updates. The one place that maps job and batch events to the page.
//
// Events come from the API's event stream (GET /api/events, Server-Sent Events: one JSON object
// per event with "id", "type", "job_id", "batch_id" and "data"; pipeline/events/model.py lists the
// types). The page says where the stream starts (meta sdpipe-events-after: the newest event when it
// was rendered), so nothing between the render and the connection is lost; after a drop, EventSource
// reconnects by itself and sends Last-Event-ID, and the server replays what was missed. The sign-in
// cookie goes with it (same origin), and no token is needed when the server has none.
//
// A job event refreshes that job's row (its HTML comes from the server, so it is escaped there) or
// inserts it when it is new and the table shows the newest jobs; job.progress (sampling step i of N,
// ETA) updates the row's and the job page's sampling bar in place. Only where the stream cannot be
// opened at all, or the server ends it for good, are the same changes found by polling GET /api/jobs.
"use strict";
(function () {
  const root = document.querySelector('meta[name="sdpipe-root"]')?.content || "";
  const statusEl = () => document.getElementById("live-status");
  const POLL_MS = 1000;
  const OVERVIEW_EVERY_MS = 2000;
  const pending = new Map();  // job id -> timer of a row refresh due
  // The event types this page follows (job.preview is not asked for: no ?previews=true).
  const TYPES = ["job.queued", "job.step.started", "job.step.finished", "job.retrying", "job.progress",
    "job.succeeded", "job.failed", "job.cancelled", "batch.completed", "queue.paused", "queue.resumed"];

  function setStatus(text) {
    const el = statusEl();
    if (el) { el.textContent = "live: " + text; el.dataset.mode = text; }
  }

  function tables() { return Array.from(document.querySelectorAll("[data-live-jobs]")); }
  const byJob = (jobId) => '[data-job="' + CSS.escape(jobId) + '"]';

  function accepts(table, event) {
    const batch = table.dataset.batch || "";
    if (batch && event.batch_id !== batch) return false;
    if (table.dataset.q) return false;  // text filters are the server's: new rows come with a reload
    const state = table.dataset.state || "";
    return !state || !event.data || !event.data.state || event.data.state === state;
  }

  // A page fragment from the server; null when it cannot be had (signed out, server gone: the next
  // event or poll tries again, and the header says whether the page is still live).
  async function fragment(url) {
    try {
      const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
      return response.ok ? await response.text() : null;
    } catch (e) { return null; }
  }

  async function fetchRow(jobId) {
    const html = await fragment(root + "/fragments/jobs/" + encodeURIComponent(jobId) + "/row");
    if (html === null) return null;
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  async function refreshRow(jobId, event) {
    const targets = tables().filter((table) =>
      table.querySelector("tr" + byJob(jobId)) || (table.dataset.firstPage === "true" && accepts(table, event)));
    if (!targets.length) return;
    const row = await fetchRow(jobId);
    if (!row) return;
    for (const table of targets) {
      const body = table.querySelector("tbody");
      const old = body.querySelector("tr" + byJob(jobId));
      const copy = row.cloneNode(true);
      if (old) { old.replaceWith(copy); continue; }
      body.querySelector("tr.empty")?.remove();
      body.prepend(copy);
    }
  }

  function scheduleRow(jobId, event) {
    clearTimeout(pending.get(jobId));
    pending.set(jobId, setTimeout(() => { pending.delete(jobId); refreshRow(jobId, event); }, 100));
  }

  // job.progress: {step, steps, progress, eta_s} of a running generation, on its row and its page.
  function showProgress(event) {
    const d = event.data || {};
    const step = Number(d.step), total = Number(d.steps);
    if (!Number.isFinite(step) || !(total > 0)) return;
    const eta = Number(d.eta_s);
    const text = "sampling " + step + "/" + total + (eta > 0 ? ", about " + Math.ceil(eta) + " s left" : "");
    for (const line of document.querySelectorAll(byJob(event.job_id) + " [data-sampling-line]")) {
      // Only while the job is (about to be shown) generating: a reading that arrives after the job
      // moved on (the poll raced the end of the SD call) is not news.
      const shown = line.closest("[data-state]")?.dataset.state;
      if (shown && shown !== "queued" && shown !== "generating") continue;
      const bar = line.querySelector("progress");
      if (bar) { bar.max = total; bar.value = step; }
      const words = line.querySelector("[data-sampling]");
      if (words) words.textContent = text;
      line.hidden = false;
    }
  }

  let jobViewTimer = null;
  function refreshJobView(event) {
    const view = document.getElementById("job-view");
    if (!view || view.dataset.job !== event.job_id) return;
    clearTimeout(jobViewTimer);
    jobViewTimer = setTimeout(async () => {  // the page again, swapped in place (no reload)
      const html = await fragment(location.href);
      if (html === null) return;
      const doc = new DOMParser().parseFromString(html, "text/html");
      const main = doc.getElementById("main");
      if (main) {
        document.getElementById("main").replaceChildren(...main.childNodes);
        document.dispatchEvent(new CustomEvent("sdpipe:content"));
      }
    }, 150);
  }

  // The overview follows the stream at most every OVERVIEW_EVERY_MS (a throttle, not a debounce: a
  // steady flow of events must not keep postponing it), and every 10 s anyway.
  let overviewDue = null, overviewLast = 0;
  function refreshOverview() {
    const box = document.getElementById("overview");
    if (!box || overviewDue) return;
    const wait = Math.max(0, overviewLast + OVERVIEW_EVERY_MS - Date.now());
    overviewDue = setTimeout(async () => {
      overviewDue = null;
      overviewLast = Date.now();
      const html = await fragment(box.dataset.refresh);
      if (html !== null) { box.innerHTML = html; document.dispatchEvent(new CustomEvent("sdpipe:content")); }
    }, wait);
  }

  // The mapping of one event to the page.
  function applyEvent(event) {
    if (!event || !event.type) return;
    document.dispatchEvent(new CustomEvent("sdpipe:event", { detail: event }));
    if (event.type === "job.progress") { showProgress(event); return; }
    refreshOverview();
    if (event.type.startsWith("queue.")) {  // pause state: the job page says whether its SD call waits
      const view = document.getElementById("job-view");
      if (view) refreshJobView({ job_id: view.dataset.job });
      return;
    }
    if (event.job_id && event.type.startsWith("job.")) { scheduleRow(event.job_id, event); refreshJobView(event); }
  }

  // --- sources -------------------------------------------------------------------------------
  function streamUrl() {
    const params = new URLSearchParams();
    const view = document.getElementById("job-view");
    const batches = new Set(tables().map((t) => t.dataset.batch || ""));
    if (view) params.set("job", view.dataset.job);
    else if (batches.size === 1 && !batches.has("")) params.set("batch", [...batches][0]);
    const after = document.querySelector('meta[name="sdpipe-events-after"]')?.content;
    if (after) params.set("after", after);
    const query = params.toString();
    return root + "/api/events" + (query ? "?" + query : "");
  }

  function startStream() {
    if (!window.EventSource) { startPolling(); return; }
    let opened = false;
    const source = new EventSource(streamUrl());  // same origin: the sign-in cookie goes along
    source.onopen = () => { opened = true; setStatus("on"); };
    for (const type of TYPES) {
      source.addEventListener(type, (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (e) { return; }  // not JSON: not ours
        applyEvent({ ...event, type });
      });
    }
    source.onerror = () => {
      if (!opened || source.readyState === EventSource.CLOSED) {
        // No stream here (never opened), or the server refused a reconnection (signed out, gone):
        // EventSource gives up on those, so poll instead.
        source.close();
        startPolling();
      } else setStatus("reconnecting");  // EventSource reconnects by itself, with Last-Event-ID
    };
    window.addEventListener("pagehide", () => source.close());
  }

  const known = new Map();  // job id -> "state updated_at" last seen
  function startPolling() {
    setStatus("polling");
    const view = document.getElementById("job-view");
    const batch = new URLSearchParams(streamUrl().split("?")[1] || "").get("batch");
    const url = view ? root + "/api/jobs/" + encodeURIComponent(view.dataset.job)
      : root + "/api/jobs?limit=50" + (batch ? "&batch=" + encodeURIComponent(batch) : "");
    let first = true;
    async function poll() {
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (response.ok) {
          const body = await response.json();
          for (const job of body.jobs || [body]) {
            const seen = job.state + " " + job.updated_at;
            if (known.get(job.job_id) !== seen) {
              if (!first || view) applyEvent({ type: "job.state", job_id: job.job_id, batch_id: job.batch_id, data: { state: job.state } });
              known.set(job.job_id, seen);
            }
          }
          first = false;
          setStatus("polling");
        } else setStatus("off (" + response.status + ")");
      } catch (e) { setStatus("off"); }
      setTimeout(poll, POLL_MS);
    }
    poll();
  }

  window.sdpipeLive = { applyEvent, refreshRow };
  document.addEventListener("DOMContentLoaded", () => {
    if (tables().length || document.getElementById("job-view") || document.getElementById("overview")) startStream();
    else statusEl()?.setAttribute("hidden", "");
    if (document.getElementById("overview")) setInterval(refreshOverview, 10000);
  });
})();
