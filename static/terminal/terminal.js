// The terminal page: asks the panel for a one-time ticket (POST with CSRF), opens the terminal websocket, sends the
// ticket in its first message, then relays keystrokes (binary frames) and the PTY's output (binary frames).
(function () {
  "use strict";

  function start() {
    var root = document.querySelector("[data-terminal]");
    if (!root || !window.Terminal || !window.FitAddon) return;
    var form = root.querySelector("[data-terminal-form]");
    var closeButton = root.querySelector("[data-terminal-close]");
    var openButton = form.querySelector("button[type=submit]");
    var status = root.querySelector("[data-terminal-status]");
    var screen = root.querySelector("[data-terminal-screen]");
    var encoder = new TextEncoder();
    var term = new window.Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
    var fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(screen);
    fit.fit();
    window.panelTerminal = term; // the browser tests read its buffer
    var socket = null;

    function say(text) { status.textContent = text; root.dataset.state = text; }

    function send(data) {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    }
    term.onData(send);
    term.onBinary(function (data) {
      var bytes = new Uint8Array(data.length);
      for (var i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 255;
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(bytes);
    });
    term.onResize(function (size) {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
      }
    });
    window.addEventListener("resize", function () { fit.fit(); });

    function finished(text) {
      socket = null;
      openButton.disabled = false;
      closeButton.disabled = true;
      say(text);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (socket) return;
      openButton.disabled = true;
      say("Opening…");
      var body = new URLSearchParams(new FormData(form));
      fetch(root.dataset.ticketUrl, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value },
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (answer) {
        if (!answer.ok) { finished(answer.data.detail || "Refused."); return; }
        connect(answer.data);
      }).catch(function () { finished("The panel cannot be reached."); });
    });

    closeButton.addEventListener("click", function () { if (socket) socket.close(1000); });

    function connect(ticket) {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var ws = new WebSocket(scheme + window.location.host + ticket.ws_path);
      ws.binaryType = "arraybuffer";
      socket = ws;
      ws.onopen = function () {
        fit.fit();
        ws.send(JSON.stringify({ type: "open", ticket: ticket.ticket, cols: term.cols, rows: term.rows }));
      };
      ws.onmessage = function (event) {
        if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
        var message = JSON.parse(event.data);
        if (message.type === "ready") {
          closeButton.disabled = false;
          say("Connected");
          term.focus();
        } else if (message.type === "end") {
          say(message.message || ("Ended: " + message.reason));
        }
      };
      ws.onclose = function (event) {
        if (socket === ws) finished(status.textContent === "Connected" ? "Closed" : (status.textContent || "Closed"));
        root.dataset.closeCode = String(event.code);
      };
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
