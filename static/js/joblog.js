/* Live job log.
 *
 * For each element marked [data-joblog]: fetch the stored lines after the last seen seq (paging while the server
 * says there are more), then open the job's websocket from that seq and append live lines. Lines are de-duplicated
 * by seq. A socket that closes while the job runs reconnects with backoff: it catches up over HTTP first (which
 * also brings the final status if the job ended meanwhile), then opens a new socket with ?after=<last seq>. A
 * socket closed because the user signed out (4401) or lost access (4403, 4404) is not reopened. Status frames
 * update every [data-job-status] badge of the job; when a running job ends, a "joblog-finished" event fires on
 * <body> (htmx reloads the parts of the page that depend on the result). Steps frames redraw every
 * [data-job-steps] list of the job: each step's name, state (succeeded, failed, running) and duration. Progress
 * frames ({label, done, total} in bytes) update every [data-job-progress] bar of the job with the bytes and percent.
 *
 * Log text is untrusted: it is only ever inserted with textContent, never as HTML. ANSI colours (SGR 0, 1, 22,
 * 30-37, 39, 90-97) become spans with classes; other escape sequences are dropped.
 */
(function () {
  "use strict";

  var TERMINAL = ["succeeded", "failed", "canceled", "interrupted"];
  var COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
  var CLOSE_SIGNED_OUT = 4401;
  var CLOSE_NOT_ALLOWED = [4403, 4404];
  var HTTP_NOT_ALLOWED = [401, 403, 404];
  var MAX_DELAY = 30000;
  // CSI sequences (colours, cursor movement), OSC sequences (titles) and lone escapes.
  var ESCAPES = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g;

  function isTerminal(status) {
    return TERMINAL.indexOf(status) !== -1;
  }

  function JobLog(root) {
    this.root = root;
    this.jobId = root.dataset.jobId;
    this.output = root.querySelector("[data-joblog-output]");
    this.connection = root.querySelector("[data-joblog-connection]");
    this.linesUrl = root.dataset.linesUrl;
    this.wsPath = root.dataset.wsPath;
    this.status = root.dataset.status;
    this.lastSeq = 0;
    this.delay = 1000;
    this.socket = null;
    this.ansi = { colour: null, bold: false };
  }

  JobLog.prototype.start = function () {
    var self = this;
    this.catchUp()
      .then(function () {
        if (!isTerminal(self.status)) {
          self.connect();
        } else {
          self.showConnection("");
        }
      })
      .catch(function (error) {
        self.failed(error);
      });
  };

  JobLog.prototype.catchUp = function () {
    var self = this;
    var url = this.linesUrl + "?after=" + encodeURIComponent(String(this.lastSeq));
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (HTTP_NOT_ALLOWED.indexOf(response.status) !== -1) {
          var refused = new Error("HTTP " + response.status);
          refused.notAllowed = response.status === 401 ? "signed out" : "not allowed";
          throw refused;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        self.append(data.lines || []);
        if (data.status) {
          self.setStatus(data.status, null);
        }
        if (data.more) {
          return self.catchUp();
        }
        return null;
      });
  };

  JobLog.prototype.connect = function () {
    var self = this;
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + window.location.host + this.wsPath + "?after=" + encodeURIComponent(String(this.lastSeq));
    var socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener("open", function () {
      self.delay = 1000;
      self.showConnection("live");
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (frame.type === "lines") {
        self.append(frame.lines || []);
      } else if (frame.type === "steps") {
        renderSteps(self.jobId, frame.steps || []);
      } else if (frame.type === "progress") {
        renderProgress(self.jobId, frame.progress || {});
      } else if (frame.type === "status") {
        self.setStatus(frame.status, frame.reason);
      }
    });
    socket.addEventListener("close", function (event) {
      if (self.socket !== socket) {
        return;
      }
      self.socket = null;
      if (isTerminal(self.status)) {
        self.showConnection("");
      } else if (event.code === CLOSE_SIGNED_OUT) {
        self.showConnection("signed out: log in again to follow this job");
      } else if (CLOSE_NOT_ALLOWED.indexOf(event.code) !== -1) {
        self.showConnection("not allowed to follow this job");
      } else {
        self.retry();
      }
    });
  };

  JobLog.prototype.retry = function () {
    var self = this;
    var wait = this.delay;
    this.delay = Math.min(this.delay * 2, MAX_DELAY);
    this.showConnection("reconnecting in " + Math.round(wait / 1000) + " s");
    window.setTimeout(function () {
      self.catchUp()
        .then(function () {
          if (!isTerminal(self.status)) {
            self.connect();
          }
        })
        .catch(function (error) {
          self.failed(error);
        });
    }, wait);
  };

  // A catch-up that failed: try again later, unless the server said the user may not see the log (any more).
  JobLog.prototype.failed = function (error) {
    if (error && error.notAllowed === "signed out") {
      this.showConnection("signed out: log in again to follow this job");
    } else if (error && error.notAllowed) {
      this.showConnection("not allowed to follow this job");
    } else {
      this.retry();
    }
  };

  JobLog.prototype.showConnection = function (text) {
    if (this.connection) {
      this.connection.textContent = text;
    }
  };

  JobLog.prototype.setStatus = function (status, reason) {
    var previous = this.status;
    this.status = status;
    this.root.dataset.status = status;
    document.querySelectorAll('[data-job-status="' + CSS.escape(this.jobId) + '"]').forEach(function (badge) {
      badge.textContent = status;
      badge.className = "badge badge-" + status;
    });
    if (reason) {
      document.querySelectorAll('[data-job-reason="' + CSS.escape(this.jobId) + '"]').forEach(function (node) {
        node.textContent = reason;
        var row = node.closest("[data-reason-row]");
        if (row) {
          row.hidden = false;
        }
      });
    }
    if (isTerminal(status) && !isTerminal(previous)) {
      if (this.socket) {
        this.socket.close(1000);
      }
      document.body.dispatchEvent(new CustomEvent("joblog-finished", { detail: { job: this.jobId, status: status } }));
    }
  };

  JobLog.prototype.append = function (lines) {
    if (!lines.length) {
      return;
    }
    var output = this.output;
    var follow = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      if (typeof line.seq !== "number" || line.seq <= this.lastSeq) {
        continue;
      }
      this.lastSeq = line.seq;
      fragment.appendChild(this.renderLine(line));
    }
    if (!fragment.childNodes.length) {
      return;
    }
    var placeholder = output.querySelector(".empty");
    if (placeholder) {
      placeholder.remove();
    }
    output.appendChild(fragment);
    this.root.dataset.lastSeq = String(this.lastSeq);
    if (follow) {
      output.scrollTop = output.scrollHeight;
    }
  };

  JobLog.prototype.renderLine = function (line) {
    var row = document.createElement("span");
    row.className = "line stream-" + String(line.stream || "out").replace(/[^a-z]/g, "");
    row.dataset.seq = String(line.seq);
    var ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = formatTime(line.ts);
    row.appendChild(ts);
    var text = document.createElement("span");
    text.className = "text";
    this.renderAnsi(String(line.text || ""), text);
    row.appendChild(text);
    return row;
  };

  JobLog.prototype.renderAnsi = function (raw, parent) {
    var state = this.ansi;
    var position = 0;
    var match;
    ESCAPES.lastIndex = 0;
    while ((match = ESCAPES.exec(raw)) !== null) {
      appendSegment(parent, raw.slice(position, match.index), state);
      position = ESCAPES.lastIndex;
      if (match[2] === "m") {
        applySgr(state, match[1]);
      }
    }
    appendSegment(parent, raw.slice(position), state);
  };

  function applySgr(state, params) {
    var codes = params === "" ? [0] : params.split(";").map(Number);
    for (var i = 0; i < codes.length; i++) {
      var code = codes[i];
      if (code === 0) {
        state.colour = null;
        state.bold = false;
      } else if (code === 1) {
        state.bold = true;
      } else if (code === 22) {
        state.bold = false;
      } else if (code === 39) {
        state.colour = null;
      } else if (code >= 30 && code <= 37) {
        state.colour = "ansi-" + COLOURS[code - 30];
      } else if (code >= 90 && code <= 97) {
        state.colour = "ansi-bright-" + COLOURS[code - 90];
      } else if (code === 38 || code === 48) {
        // 256-colour and RGB forms carry their own arguments: skip them, keep the current colour.
        i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 0;
      }
    }
  }

  function appendSegment(parent, text, state) {
    if (!text) {
      return;
    }
    if (!state.colour && !state.bold) {
      parent.appendChild(document.createTextNode(text));
      return;
    }
    var span = document.createElement("span");
    var classes = [];
    if (state.colour) {
      classes.push(state.colour);
    }
    if (state.bold) {
      classes.push("ansi-bold");
    }
    span.className = classes.join(" ");
    span.textContent = text;
    parent.appendChild(span);
  }

  var STEP_STATES = ["running", "succeeded", "failed"];

  function renderSteps(jobId, steps) {
    var selector = '[data-job-steps="' + CSS.escape(jobId) + '"]';
    document.querySelectorAll(selector).forEach(function (list) {
      var fragment = document.createDocumentFragment();
      steps.forEach(function (step) {
        var status = STEP_STATES.indexOf(step.status) !== -1 ? step.status : "running";
        var item = document.createElement("li");
        item.className = "step step-" + status;
        item.dataset.stepStatus = status;
        var icon = document.createElement("span");
        icon.className = "step-icon";
        icon.setAttribute("aria-hidden", "true");
        var name = document.createElement("span");
        name.className = "step-name";
        name.textContent = String(step.name || "");
        var badge = document.createElement("span");
        badge.className = "badge badge-" + status;
        badge.textContent = status;
        var seconds = document.createElement("span");
        seconds.className = "muted small step-seconds";
        if (typeof step.seconds === "number") {
          seconds.textContent = step.seconds.toFixed(1) + " s";
        }
        item.append(icon, " ", name, " ", badge, " ", seconds);
        fragment.appendChild(item);
      });
      list.replaceChildren(fragment);
    });
    document.querySelectorAll('[data-job-steps-empty="' + CSS.escape(jobId) + '"]').forEach(function (node) {
      node.hidden = steps.length > 0;
    });
  }

  var UNITS = ["bytes", "KB", "MB", "GB", "TB"];

  function formatBytes(value) {
    var number = Number(value) || 0;
    var unit = 0;
    while (number >= 1024 && unit < UNITS.length - 1) {
      number /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(number) : number.toFixed(1)) + " " + UNITS[unit];
  }

  function renderProgress(jobId, progress) {
    var done = Number(progress.done) || 0;
    var total = Number(progress.total) || 0;
    var text = String(progress.label || "") + ": " + formatBytes(done);
    if (total > 0) {
      text += " of " + formatBytes(total) + " (" + Math.min(100, Math.floor((100 * done) / total)) + " %)";
    }
    document.querySelectorAll('[data-job-progress="' + CSS.escape(jobId) + '"]').forEach(function (box) {
      box.hidden = false;
      var bar = box.querySelector("[data-job-progress-bar]");
      if (bar) {
        if (total > 0) {
          bar.max = total;
          bar.value = Math.min(done, total);
        } else {
          bar.removeAttribute("value");
        }
      }
      var label = box.querySelector("[data-job-progress-text]");
      if (label) {
        label.textContent = text;
      }
    });
  }

  function formatTime(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) {
      return "";
    }
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  // Start one viewer per element matching selector, once (flag: the dataset key that marks it started).
  function startEach(selector, flag, Viewer) {
    function start() {
      document.querySelectorAll(selector).forEach(function (root) {
        if (!root.dataset[flag]) {
          root.dataset[flag] = "1";
          new Viewer(root).start();
        }
      });
    }
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", start);
    } else {
      start();
    }
  }

  startEach("[data-joblog]", "joblogStarted", JobLog);
  // The ANSI renderer, the time format and the start-up, shared with the container log viewer
  // (static/monitoring/logs.js) and exposed for tests in the browser.
  window.PanelJobLog = {
    renderAnsi: function (raw, parent) { JobLog.prototype.renderAnsi.call({ ansi: { colour: null, bold: false } }, raw, parent); },
    formatTime: formatTime,
    startEach: startEach,
  };
})();
