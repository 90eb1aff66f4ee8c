/* Live health: the dashboard and the environment page's Health section.
 *
 * For each element marked [data-health-live]: open the health websocket (data-ws-path, e.g. /ws/health/ or
 * /ws/health/?environment=12) and apply every {"type": "health"} frame to the elements inside it:
 * - [data-health-env="<id>"] rows or sections: their [data-field] children (state badge, message, since, uptime,
 *   response time) and their data-rank (problems first);
 * - [data-health-server="<id>"] rows: reachability, load and disk;
 * - a [data-health-rows] tbody is re-sorted by rank then name, so problems stay on top.
 * A socket closed while the page is open reconnects with backoff (the server sends the current health again on
 * connect), except when the user signed out (4401) or lost access (4403, 4404). Text from the server is only ever
 * set with textContent. A "health-changed" event fires on the root after each frame (the charts listen to it).
 */
(function () {
  "use strict";

  var CLOSE_FINAL = [4401, 4403, 4404];
  var MAX_DELAY = 30000;
  var RANK = { down: 0, degraded: 1, unknown: 2, maintenance: 3, up: 4 };
  var BADGES = ["ok", "unconfirmed", "problem", "none", "queued"];

  function percent(value) {
    if (value === null || value === undefined) {
      return "\u2014";
    }
    var p = 100 * value;
    if (p >= 100) {
      return "100 %";
    }
    return p >= 99 ? Math.min(p, 99.99).toFixed(2) + " %" : p.toFixed(1) + " %";
  }

  function minutes(iso) {
    return iso ? String(iso).slice(0, 16).replace("T", " ") : "\u2014";
  }

  function setBadge(element, css, text) {
    BADGES.forEach(function (name) { element.classList.remove("badge-" + name); });
    element.classList.add("badge-" + css);
    element.textContent = text;
  }

  function setField(scope, name, text) {
    scope.querySelectorAll('[data-field="' + name + '"]').forEach(function (element) {
      element.textContent = text;
    });
  }

  function applyEnvironment(root, env) {
    root.querySelectorAll('[data-health-env="' + env.id + '"]').forEach(function (scope) {
      scope.dataset.rank = String(RANK[env.state] === undefined ? 2 : RANK[env.state]);
      scope.dataset.state = env.state;
      scope.querySelectorAll('[data-field="state"]').forEach(function (badge) {
        setBadge(badge, env.css, env.state_label);
      });
      scope.querySelectorAll('[data-field="since"]').forEach(function (element) {
        element.textContent = minutes(env.since);
        element.setAttribute("datetime", env.since || "");
      });
      if (env.uptime) {
        Object.keys(env.uptime).forEach(function (window) {
          setField(scope, "uptime-" + window, percent(env.uptime[window]));
        });
      }
      if ("message" in env) {
        setField(scope, "message", env.message && env.message.length > 200 ? env.message.slice(0, 199) + "\u2026" : (env.message || ""));
      }
      if ("http_ms" in env) {
        setField(scope, "http-ms", env.http_ms === null ? "\u2014" : Math.round(env.http_ms) + " ms");
      }
      if ("websocket_ms" in env) {
        setField(scope, "websocket-ms", env.websocket_ms === null ? "\u2014" : Math.round(env.websocket_ms) + " ms");
      }
    });
  }

  function applyServer(root, server) {
    root.querySelectorAll('[data-health-server="' + server.id + '"]').forEach(function (row) {
      row.querySelectorAll('[data-field="reachable"]').forEach(function (badge) {
        if (server.reachable === true) {
          setBadge(badge, "ok", "yes");
        } else if (server.reachable === false) {
          setBadge(badge, "problem", "unreachable");
        } else {
          setBadge(badge, "none", "not polled yet");
        }
        badge.title = server.error || "";
      });
      var load = server.load1 === null ? "\u2014" : server.load1.toFixed(2) + (server.cpus ? " / " + server.cpus + " CPUs" : "");
      setField(row, "load", load);
      setField(row, "disk", server.disk_percent === null ? "\u2014" : server.disk_percent.toFixed(1) + " % used");
    });
  }

  function resort(root) {
    root.querySelectorAll("[data-health-rows]").forEach(function (body) {
      var rows = Array.prototype.slice.call(body.querySelectorAll("tr[data-health-env]"));
      rows.sort(function (a, b) {
        var rank = Number(a.dataset.rank) - Number(b.dataset.rank);
        return rank !== 0 ? rank : (a.dataset.sortName || "").localeCompare(b.dataset.sortName || "");
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
    var summary = root.querySelector("[data-health-summary]");
    if (summary) {
      var problems = root.querySelectorAll('tr[data-health-env][data-rank="0"], tr[data-health-env][data-rank="1"]').length;
      summary.textContent = problems
        ? problems + " environment" + (problems === 1 ? "" : "s") + " with problems."
        : "No environment is down or degraded.";
    }
  }

  function Live(root) {
    this.root = root;
    this.path = root.dataset.wsPath;
    this.connection = document.querySelector("[data-health-connection]");
    this.delay = 1000;
  }

  Live.prototype.show = function (text) {
    if (this.connection) {
      this.connection.textContent = text;
    }
  };

  Live.prototype.connect = function () {
    var self = this;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + this.path);
    socket.addEventListener("open", function () {
      self.delay = 1000;
      self.show("live");
      self.root.dataset.healthConnected = "true";
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (frame.type !== "health") {
        return;
      }
      (frame.environments || []).forEach(function (env) { applyEnvironment(self.root, env); });
      (frame.servers || []).forEach(function (server) { applyServer(self.root, server); });
      resort(self.root);
      self.root.dispatchEvent(new CustomEvent("health-changed", { detail: frame }));
    });
    socket.addEventListener("close", function (event) {
      self.root.dataset.healthConnected = "false";
      if (CLOSE_FINAL.indexOf(event.code) !== -1) {
        self.show(event.code === 4401 ? "signed out: reload the page" : "no longer allowed");
        return;
      }
      self.show("reconnecting\u2026");
      window.setTimeout(function () { self.connect(); }, self.delay);
      self.delay = Math.min(MAX_DELAY, self.delay * 2);
    });
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-health-live]").forEach(function (root) {
      new Live(root).connect();
    });
  });
})();
