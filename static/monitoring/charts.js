/* Health charts on the environment page (uPlot, vendored under static/vendor/uplot/).
 *
 * For each [data-health-charts] block: fetch data-history-url?range=<24h|7d|30d|365d> (the API's health-history:
 * parallel arrays t, uptime, http_ms, cpu_percent, memory_bytes and the jobs as events) and draw into its
 * [data-chart] elements: "uptime" (percent), "http_ms" (ms) and "resources" (CPU % and memory MiB, staff only).
 * Deploys, rollbacks, restores, copies and backups are drawn as vertical marks on the time axis, coloured by
 * kind, with a legend line below the charts. The range buttons switch the range; the 24 h view refreshes when the
 * live health socket reports a change (dashboard.js fires "health-changed"), at most every 30 seconds.
 * Each chart element records what it drew in data-points and data-events (tests and people can read them).
 */
(function () {
  "use strict";

  var EVENT_COLOURS = { deploy: "#2563eb", rollback: "#9333ea", restore: "#ea580c", copy: "#ca8a04", backup: "#16a34a" };
  var REFRESH_MS = 30000;

  function eventsPlugin(events) {
    return {
      hooks: {
        draw: [
          function (u) {
            var ctx = u.ctx;
            ctx.save();
            ctx.lineWidth = 2;
            events.forEach(function (event) {
              var x = u.valToPos(event.t, "x", true);
              if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) {
                return;
              }
              ctx.strokeStyle = EVENT_COLOURS[event.kind] || "#6b7280";
              ctx.setLineDash(event.status === "failed" ? [4, 3] : []);
              ctx.beginPath();
              ctx.moveTo(x, u.bbox.top);
              ctx.lineTo(x, u.bbox.top + u.bbox.height);
              ctx.stroke();
            });
            ctx.restore();
          }
        ]
      }
    };
  }

  function width(element) {
    return Math.max(280, element.clientWidth || element.parentNode.clientWidth || 600);
  }

  function Charts(root) {
    this.root = root;
    this.url = root.dataset.historyUrl;
    this.range = "24h";
    this.plots = [];
    this.loadedAt = 0;
    this.status = root.querySelector("[data-chart-status]");
  }

  Charts.prototype.load = function () {
    var self = this;
    var range = this.range;
    this.loadedAt = Date.now();
    if (this.status) {
      this.status.textContent = "loading\u2026";
    }
    return fetch(this.url + "?range=" + encodeURIComponent(range), {
      credentials: "same-origin",
      headers: { Accept: "application/json" }
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (range === self.range) {
          self.draw(data);
          if (self.status) {
            self.status.textContent = data.t.length ? "" : "no data for this range yet";
          }
        }
      })
      .catch(function (error) {
        if (self.status) {
          self.status.textContent = "could not load the history (" + error.message + ")";
        }
      });
  };

  Charts.prototype.draw = function (data) {
    var self = this;
    this.plots.forEach(function (plot) { plot.destroy(); });
    this.plots = [];
    var events = data.events || [];
    var t = data.t || [];
    var specs = {
      uptime: {
        series: [{}, { label: "Uptime %", stroke: "#16a34a", fill: "rgba(22,163,74,0.12)", spanGaps: false }],
        values: [(data.uptime || []).map(function (v) { return v === null ? null : 100 * v; })],
        scales: { y: { range: [0, 100] } }
      },
      http_ms: {
        series: [{}, { label: "Response ms", stroke: "#2563eb" }],
        values: [data.http_ms || []]
      },
      resources: {
        series: [{}, { label: "CPU %", stroke: "#dc2626", scale: "cpu" }, { label: "Memory MiB", stroke: "#7c3aed", scale: "mem" }],
        values: [
          data.cpu_percent || [],
          (data.memory_bytes || []).map(function (v) { return v === null ? null : v / 1048576; })
        ],
        axes: [{}, { scale: "cpu" }, { scale: "mem", side: 1, grid: { show: false } }]
      }
    };
    this.root.querySelectorAll("[data-chart]").forEach(function (element) {
      var spec = specs[element.dataset.chart];
      if (!spec || typeof window.uPlot !== "function") {
        return;
      }
      element.textContent = "";
      var options = {
        width: width(element),
        height: 170,
        series: spec.series,
        scales: Object.assign({ x: { time: true, range: [data.start, data.end] } }, spec.scales || {}),
        plugins: [eventsPlugin(events)]
      };
      if (spec.axes) {
        options.axes = spec.axes;
      }
      self.plots.push(new window.uPlot(options, [t].concat(spec.values), element));
      element.dataset.points = String(t.length);
      element.dataset.events = String(events.length);
    });
    this.root.dataset.loadedRange = data.range;
    this.root.dataset.events = JSON.stringify(events.map(function (event) { return event.kind + ":" + event.t; }));
  };

  Charts.prototype.start = function () {
    var self = this;
    this.root.querySelectorAll("[data-range]").forEach(function (button) {
      button.addEventListener("click", function () {
        self.range = button.dataset.range;
        self.root.querySelectorAll("[data-range]").forEach(function (other) {
          other.setAttribute("aria-pressed", other === button ? "true" : "false");
        });
        self.load();
      });
    });
    var live = this.root.closest("[data-health-live]");
    if (live) {
      live.addEventListener("health-changed", function () {
        if (self.range === "24h" && Date.now() - self.loadedAt >= REFRESH_MS) {
          self.load();
        }
      });
    }
    this.load();
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-health-charts]").forEach(function (root) {
      new Charts(root).start();
    });
  });
})();
