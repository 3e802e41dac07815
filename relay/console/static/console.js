// Live parts of the console: server-sent events update the numbers, the bar and the chart in place;
// a change of state (paused, finished) reloads the page, which the server renders in full.
"use strict";

function apply(root, data) {
  for (const [name, value] of Object.entries(data.fields || {})) {
    root.querySelectorAll(`[data-field="${name}"]`).forEach((el) => { el.textContent = value; });
  }
  root.querySelectorAll("progress[data-progress]").forEach((bar) => {
    bar.value = data.percent;
    bar.textContent = `${data.percent}%`;
  });
  if (data.chart) {
    const line = document.getElementById("rate-line");
    if (line) line.setAttribute("points", data.chart.points);
    for (const [name, value] of Object.entries(data.chart)) {
      document.querySelectorAll(`[data-chart="${name}"]`).forEach((el) => { el.textContent = value; });
    }
  }
}

function follow(url) {
  const source = new EventSource(url);
  const shown = document.body.dataset.state;
  let reloading = false;
  const reload = () => {
    if (!reloading) { reloading = true; source.close(); window.location.reload(); }
  };
  const update = (event) => {
    const data = JSON.parse(event.data);
    const root = (data.kind && document.querySelector(`[data-run="${data.kind}"]`)) || document;
    apply(root, data);
    document.body.dataset.live = String(Number(document.body.dataset.live || 0) + 1);
    if (data.terminal || (shown && data.state && data.state !== shown)) reload();
  };
  source.addEventListener("backfill", update);
  source.addEventListener("run", update);
  // The stream ended without a change of state (or could not start): look again in a moment.
  const later = () => { source.close(); window.setTimeout(reload, 1500); };
  source.addEventListener("failure", later);
  source.addEventListener("end", later);
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) later(); };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const url of (document.body.dataset.streams || "").split(" ").filter(Boolean)) follow(url);
  // Buttons that start something that writes ask first (keyboard and pointer alike: a click event).
  document.querySelectorAll("button[data-confirm]").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
});
