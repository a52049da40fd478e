// The run report's charts, drawn by plotly.js from the report's JSON API. Everything from the
// data is text: labels go through esc() (plotly reads a few HTML tags in labels), nothing is
// ever assigned to innerHTML.
(function () {
  "use strict";
  const root = document.getElementById("report");
  if (!root) return;
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const config = { displaylogo: false, responsive: true, displayModeBar: false };
  const pending = [];

  function layout(title, extra) {
    return Object.assign(
      { title: { text: esc(title), font: { size: 14 } }, margin: { l: 60, r: 20, t: 40, b: 90 }, height: 320, barmode: "group", legend: { orientation: "h", y: -0.35 } },
      extra || {}
    );
  }

  function plot(target, traces, lay) {
    const el = typeof target === "string" ? document.getElementById(target) : target;
    if (!el) return null;
    pending.push(Plotly.newPlot(el, traces, lay, config).then(() => { el.dataset.rendered = "1"; }));
    return el;
  }

  function drawFunnel(report) {
    const stages = report.funnel.map((e) => esc(e.stage));
    const bar = (name, key) => ({ type: "bar", name: name, x: stages, y: report.funnel.map((e) => e[key]) });
    plot("chart-funnel", [bar("in", "rows_in"), bar("passed", "inputs_passed"), bar("out", "rows_out"), bar("rejected", "rejected"), bar("pending", "pending")],
      layout("Rows per stage"));
    const reasons = [...new Set(report.funnel.flatMap((e) => Object.keys(e.rejected_by_reason)))];
    if (!reasons.length) {
      const empty = document.getElementById("chart-reasons");
      if (empty) empty.hidden = true;  // nothing rejected: no empty chart
      return;
    }
    const traces = reasons.map((reason) => ({
      type: "bar", name: esc(reason), x: stages, y: report.funnel.map((e) => e.rejected_by_reason[reason] || 0),
      customdata: report.funnel.map((e) => [e.stage, reason]),
      hovertemplate: "%{x}: %{y} rejected (" + esc(reason) + ") - click for a sample<extra></extra>",
    }));
    const el = plot("chart-reasons", traces, layout("Rejections by reason (click a bar for a sample)", { barmode: "stack" }));
    if (el) el.on("plotly_click", (event) => {
      const [stage, reason] = event.points[0].customdata;
      window.location.href = root.dataset.rejected + encodeURIComponent(stage) + "?reason=" + encodeURIComponent(reason);
    });
  }

  function drawQuality(quality) {
    const grid = document.getElementById("chart-quality");
    if (!grid || !quality) return;
    for (const [dimension, counts] of Object.entries(quality.dimensions)) {
      const cell = document.createElement("div");
      cell.className = "chart small";
      cell.id = "chart-quality-" + dimension;
      grid.appendChild(cell);
      plot(cell, [{ type: "bar", x: quality.bins, y: counts, name: esc(dimension) }],
        layout(dimension.replace(/_/g, " "), { height: 240, xaxis: { title: { text: "score" }, dtick: 1, range: [-0.5, 10.5] }, yaxis: { title: { text: "problems" } } }));
    }
  }

  function drawComplexity(rows) {
    if (!rows) return;
    const origins = rows.map((r) => esc(r.origin));
    plot("chart-complexity", [
      { type: "bar", name: "this run", x: origins, y: rows.map((r) => r.mean) },
      { type: "bar", name: "paper", x: origins, y: rows.map((r) => r.paper) },
    ], layout("Mean complexity by origin", { yaxis: { range: [0, 10] } }));
  }

  function drawLint(lint) {
    if (!lint) return;
    plot("chart-lint", [{ type: "bar", name: "discard rate", x: lint.by_language.map((l) => esc(l.language)), y: lint.by_language.map((l) => l.rate),
      text: lint.by_language.map((l) => l.failed + " of " + l["in"]), textposition: "auto" }],
      layout("Lint gate: discard rate per language", { yaxis: { tickformat: ".0%", range: [0, 1] } }));
  }

  function drawTests(tests) {
    if (!tests) return;
    const rows = tests.by_language;
    plot("chart-tests", [{ type: "bar", name: "pass rate", x: rows.map((t) => esc(t.language)), y: rows.map((t) => t.rate),
      text: rows.map((t) => t.passed + " of " + t.run + " run (" + t.unverified + " unverified)"), textposition: "auto" }],
      layout("Test gate: pass rate per language", { yaxis: { tickformat: ".0%", range: [0, 1] } }));
  }

  function drawUsage(usage) {
    const keys = usage.map((u) => esc(u.key));
    plot("chart-tokens", [
      { type: "bar", name: "prompt", x: keys, y: usage.map((u) => u.prompt_tokens) },
      { type: "bar", name: "completion", x: keys, y: usage.map((u) => u.completion_tokens) },
    ], layout("Tokens per role/stage", { barmode: "stack" }));
    plot("chart-dollars", [{ type: "bar", name: "dollars", x: keys, y: usage.map((u) => u.dollars) }], layout("Dollars per role/stage", { yaxis: { tickprefix: "$" } }));
  }

  function drawWall(rows) {
    if (!rows || !rows.length) return;
    const tasks = rows.map((r) => esc(r.task_id)).reverse();
    plot("chart-wall", [
      { type: "bar", orientation: "h", name: "wall (first start to last end)", y: tasks, x: rows.map((r) => r.wall_seconds).reverse() },
      { type: "bar", orientation: "h", name: "run time (all instances)", y: tasks, x: rows.map((r) => r.run_seconds).reverse() },
    ], layout("Seconds per task", { height: Math.max(260, 26 * rows.length + 120), margin: { l: 180, r: 20, t: 60, b: 40 }, legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom" } }));
  }

  function drawTrends(trends) {
    if (!trends || !trends.length) return;
    const x = trends.map((t) => t.ds);
    const line = (name, key) => ({ type: "scatter", mode: "lines+markers", name: name, x: x, y: trends.map((t) => t[key]) });
    plot("chart-trend-rows", [line("rows published", "published")], layout("Rows published", { xaxis: { type: "category" } }));
    plot("chart-trend-discard", [line("all stages", "discard_rate"), line("lint gate", "lint_discard_rate")],
      layout("Discard rate", { xaxis: { type: "category" }, yaxis: { tickformat: ".0%" } }));
    plot("chart-trend-cost", [line("dollars", "dollars")], layout("Cost", { xaxis: { type: "category" }, yaxis: { tickprefix: "$" } }));
  }

  function drawSubject(subject) {
    if (!subject) return;
    const scope = subject.scopes.dataset && subject.scopes.dataset.rows ? "dataset" : "pool";
    const domains = subject.scopes[scope].tags_per_domain;
    plot("chart-domains", [{ type: "bar", name: "tag uses", x: Object.keys(domains).map(esc), y: Object.values(domains) }], layout("Tags per domain (" + scope + ")"));
    const traces = [];
    for (const [name, s] of Object.entries(subject.scopes)) {
      const total = s.degree_counts.reduce((a, b) => a + b, 0);
      if (!total) continue;
      traces.push({ type: "scatter", mode: "markers", name: name + " (" + s.tags + " tags)", x: s.degrees, y: s.degree_counts.map((n) => n / total) });
      if (s.fit_line) traces.push({ type: "scatter", mode: "lines", name: name + ": alpha = " + s.power_law.alpha, x: s.fit_line.x, y: s.fit_line.y });
    }
    plot("chart-degrees", traces, layout("Tag co-occurrence degree distribution", {
      xaxis: { type: "log", title: { text: "degree d" } }, yaxis: { type: "log", title: { text: "P(degree = d)" } } }));
    const generations = Object.entries(subject.difficulty.by_generation || {});
    plot("chart-difficulty", [{ type: "bar", name: "mean difficulty", x: generations.map(([g]) => (g === "0" ? "seeds (before)" : "generation " + g)),
      y: generations.map(([, s]) => s.mean), text: generations.map(([, s]) => s.rows + " rows"), textposition: "auto" }],
      layout("Difficulty before and after each evolution generation", { xaxis: { type: "category" } }));
    const criteria = Object.entries(subject.selection.criteria || {});
    plot("chart-selection", [
      { type: "bar", name: "rows", x: criteria.map(([c]) => esc(c)), y: criteria.map(([, v]) => v.rows) },
      { type: "bar", name: "only this criterion", x: criteria.map(([c]) => esc(c)), y: criteria.map(([, v]) => v.only_this) },
    ], layout("Seed-selection criteria"));
    const overlap = subject.selection.overlap || {};
    const names = Object.keys(overlap);
    if (names.length) plot("chart-overlap", [{ type: "heatmap", x: names.map(esc), y: names.map(esc), z: names.map((a) => names.map((b) => overlap[a][b])), colorscale: "Blues" }],
      layout("Criteria overlaps (rows meeting both)", { margin: { l: 120, r: 20, t: 40, b: 120 } }));
  }

  function drawDiagnosis(diagnosis) {
    if (!diagnosis) return;
    const done = diagnosis.accuracy.filter((r) => r.accuracy !== null);
    plot("chart-accuracy", [{ type: "scatter", mode: "lines+markers", name: "accuracy", x: done.map((r) => r.iteration), y: done.map((r) => r.accuracy),
      text: done.map((r) => esc(r.target_model)) }], layout("Accuracy across iterations", { xaxis: { dtick: 1, title: { text: "iteration" } }, yaxis: { tickformat: ".0%", range: [0, 1] } }));
    const targeted = diagnosis.targeted_per_deficiency;
    const labels = targeted.map((t) => esc(t.deficiency));
    plot("chart-targeted", [
      { type: "bar", name: "targeted instructions", x: labels, y: targeted.map((t) => t.planned) },
      { type: "bar", name: "published rows", x: labels, y: targeted.map((t) => t.published) },
    ], layout("Targeted rows per deficiency"));
  }

  fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((response) => { if (!response.ok) throw new Error("HTTP " + response.status); return response.json(); })
    .then((report) => {
      drawFunnel(report);
      drawQuality(report.quality);
      drawComplexity(report.complexity);
      drawLint(report.lint);
      drawTests(report.tests);
      drawSubject(report.subject);
      drawDiagnosis(report.diagnosis);
      drawUsage(report.usage);
      drawWall(report.wall_times);
      drawTrends(report.trends);
      return Promise.all(pending);
    })
    .then(() => { document.body.dataset.charts = String(pending.length); })
    .catch((error) => {
      const note = document.createElement("p");
      note.className = "error";
      note.textContent = "The charts could not be drawn: " + error;
      root.prepend(note);
      document.body.dataset.chartsError = String(error);
    });
})();
