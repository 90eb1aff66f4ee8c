/* Live container logs (templates/monitoring/logs.html).
 *
 * For each element marked [data-containerlog]: open the service's websocket; the server sends the newest lines,
 * then live lines, in frames of several lines ({"type": "lines", "lines": [{id, ts, stream, text}]}). Every line
 * has a position (its Redis Stream id, "<ms>-<n>"); a socket that closes reconnects with backoff from the last
 * position shown (?after=<id>), so a reconnect loses and repeats nothing, and lines at or before it are dropped.
 * Lines also carry n, counting the stream's lines: when it jumps (the stream no longer held the lines after the
 * position, or expired and started afresh), a marker row says that lines are missing there.
 * Closes 4401 (signed out), 4403 and 4404 (no access, no such service) are final.
 *
 * The page keeps at most data-max-lines lines (the oldest go). Pause keeps receiving but only shows the new lines
 * on Resume (still bounded). The filter hides shown lines that do not contain its text (case-insensitive), new ones
 * included. Frames are drawn once per animation frame, so a burst costs one layout.
 *
 * Log text is untrusted: it goes into the page through textContent only; ANSI colours are rendered by the job
 * log's renderer (static/js/joblog.js, window.PanelJobLog.renderAnsi).
 */
(function () {
  "use strict";

  var FINAL = { 4401: "signed out: log in again to follow this log", 4403: "access lost", 4404: "not available" };
  var MAX_DELAY = 30000;

  function position(id) {
    var parts = String(id).split("-");
    return [Number(parts[0]) || 0, Number(parts[1]) || 0];
  }

  function after(a, b) {
    var x = position(a);
    var y = position(b);
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }

  function ContainerLog(root) {
    this.root = root;
    this.output = root.querySelector("[data-containerlog-output]");
    this.connection = root.querySelector("[data-containerlog-connection]");
    this.pauseButton = root.querySelector("[data-containerlog-pause]");
    this.filterInput = root.querySelector("[data-containerlog-filter]");
    this.wsPath = root.dataset.wsPath;
    this.maxLines = Math.max(100, Number(root.dataset.maxLines) || 5000);
    this.lastId = "";
    this.lastN = 0;
    this.paused = false;
    this.pending = [];
    this.queued = [];
    this.drawing = false;
    this.filter = "";
    this.delay = 1000;
    this.socket = null;
  }

  ContainerLog.prototype.start = function () {
    var self = this;
    this.pauseButton.addEventListener("click", function () {
      self.setPaused(!self.paused);
    });
    this.filterInput.addEventListener("input", function () {
      self.filter = self.filterInput.value.toLowerCase();
      self.output.querySelectorAll(".line").forEach(function (row) {
        self.applyFilter(row);
      });
    });
    this.connect();
  };

  ContainerLog.prototype.connect = function () {
    var self = this;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + this.wsPath;
    if (this.lastId) {
      url += "?after=" + encodeURIComponent(this.lastId);
    }
    var socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener("open", function () {
      self.delay = 1000;
      self.showConnection(self.paused ? "paused" : "live");
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (frame.type === "lines" && Array.isArray(frame.lines)) {
        self.receive(frame.lines);
      }
    });
    socket.addEventListener("close", function (event) {
      if (self.socket !== socket) {
        return;
      }
      self.socket = null;
      if (FINAL[event.code]) {
        self.showConnection(FINAL[event.code]);
        return;
      }
      var wait = self.delay;
      self.delay = Math.min(MAX_DELAY, self.delay * 2);
      self.showConnection("reconnecting…");
      window.setTimeout(function () {
        self.connect();
      }, wait);
    });
  };

  ContainerLog.prototype.receive = function (lines) {
    var fresh = [];
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      if (typeof line.id !== "string" || (this.lastId && !after(line.id, this.lastId))) {
        continue;
      }
      this.lastId = line.id;
      if (typeof line.n === "number" && line.n > 0) {
        if (this.lastN && line.n !== this.lastN + 1) {
          // The stream no longer held what came between (a long disconnection): say so where it happened.
          fresh.push({ gap: true });
        }
        this.lastN = line.n;
      }
      fresh.push(line);
    }
    this.root.dataset.lastId = this.lastId;
    if (!fresh.length) {
      return;
    }
    var target = this.paused ? this.pending : this.queued;
    Array.prototype.push.apply(target, fresh);
    if (target.length > this.maxLines) {
      target.splice(0, target.length - this.maxLines);
    }
    if (!this.paused) {
      this.schedule();
    }
  };

  ContainerLog.prototype.schedule = function () {
    var self = this;
    if (this.drawing) {
      return;
    }
    this.drawing = true;
    window.requestAnimationFrame(function () {
      self.drawing = false;
      self.draw();
    });
  };

  ContainerLog.prototype.draw = function () {
    var lines = this.queued;
    this.queued = [];
    if (!lines.length) {
      return;
    }
    var output = this.output;
    var follow = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    var placeholder = output.querySelector(".empty");
    if (placeholder) {
      placeholder.remove();
    }
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < lines.length; i++) {
      fragment.appendChild(this.renderLine(lines[i]));
    }
    output.appendChild(fragment);
    var extra = output.childElementCount - this.maxLines;
    while (extra-- > 0) {
      output.firstElementChild.remove();
    }
    this.root.dataset.shown = String(output.childElementCount);
    if (follow) {
      output.scrollTop = output.scrollHeight;
    }
  };

  ContainerLog.prototype.renderLine = function (line) {
    var row = document.createElement("span");
    if (line.gap) {
      row.className = "line gap";
      row.dataset.search = "";
      row.textContent = "… lines missing here: the panel no longer kept them when the page reconnected";
      return row;
    }
    row.className = "line stream-" + (line.stream === "err" ? "err" : "out");
    row.dataset.id = line.id;
    var ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = window.PanelJobLog.formatTime(line.ts);
    ts.title = String(line.ts || "");
    var text = document.createElement("span");
    text.className = "text";
    var raw = String(line.text || "");
    if (window.PanelJobLog && window.PanelJobLog.renderAnsi) {
      window.PanelJobLog.renderAnsi(raw, text);
    } else {
      text.textContent = raw;
    }
    row.append(ts, text);
    row.dataset.search = text.textContent.toLowerCase();
    this.applyFilter(row);
    return row;
  };

  ContainerLog.prototype.applyFilter = function (row) {
    row.hidden = Boolean(this.filter) && row.dataset.search.indexOf(this.filter) === -1;
  };

  ContainerLog.prototype.setPaused = function (paused) {
    this.paused = paused;
    this.pauseButton.textContent = paused ? "Resume" : "Pause";
    this.pauseButton.setAttribute("aria-pressed", paused ? "true" : "false");
    if (!paused && this.pending.length) {
      Array.prototype.push.apply(this.queued, this.pending);
      this.pending = [];
      this.schedule();
    }
    if (this.socket) {
      this.showConnection(paused ? "paused" : "live");
    }
  };

  ContainerLog.prototype.showConnection = function (text) {
    if (this.connection) {
      this.connection.textContent = text;
    }
  };

  window.PanelJobLog.startEach("[data-containerlog]", "containerlogStarted", ContainerLog);
})();
