"""A MailHog stand-in for the lab: an SMTP server on :1025 that keeps every mail in memory and MailHog's HTTP API
on :8025, in the shapes MailHog's own source gives them (data/message.go, api/v1.go, api/v2.go):

- ``GET /api/v2/messages?start=&limit=`` and ``GET /api/v2/search?kind=from|to|containing&query=&start=&limit=``:
  ``{"total", "count", "start", "items": [Message]}``, newest first;
- ``GET /api/v1/messages`` (a list), ``GET /api/v1/messages/{id}``, ``GET /api/v1/messages/{id}/download`` (raw),
  ``DELETE /api/v1/messages`` and ``DELETE /api/v1/messages/{id}``.

A Message is ``{"ID", "From": Path, "To": [Path], "Content": {"Headers", "Body", "Size", "MIME"}, "Created",
"MIME": {"Parts": [Content]} | null, "Raw": {"From", "To", "Data", "Helo"}}`` with Path ``{"Relays", "Mailbox",
"Domain", "Params"}``. Only the standard library (the lab image has no pip).
"""

import datetime
import email
import email.policy
import json
import secrets
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOSTNAME = "mailhog.example"
MESSAGES = []  # newest last
LOCK = threading.Lock()
MAX_DATA = 20 * 1024 * 1024


def path_of(address):
    address = address.strip().strip("<>")
    mailbox, _, domain = address.partition("@")
    return {"Relays": None, "Mailbox": mailbox, "Domain": domain, "Params": ""}


def headers_of(message):
    headers = {}
    for name, value in message.items():
        headers.setdefault(name, []).append(str(value))
    return headers


def content_of(part):
    raw = part.as_string()
    _, _, body = raw.partition("\n\n")
    return {"Headers": headers_of(part), "Body": body, "Size": len(body), "MIME": None}


def store(helo, sender, recipients, data):
    parsed = email.message_from_string(data, policy=email.policy.compat32)
    message_id = f"{secrets.token_urlsafe(18)}@{HOSTNAME}"
    received = f"from {helo} by {HOSTNAME} (MailHog)\r\n          id {message_id}; {email.utils.formatdate()}"
    headers = {"Received": [received], "Return-Path": [f"<{sender}>"], "Message-ID": [message_id]}
    headers.update(headers_of(parsed))
    _, _, body = data.replace("\r\n", "\n").partition("\n\n")
    mime = None
    if parsed.is_multipart():
        mime = {"Parts": [content_of(part) for part in parsed.get_payload()]}
    message = {
        "ID": message_id,
        "From": path_of(sender),
        "To": [path_of(r) for r in recipients],
        "Content": {"Headers": headers, "Body": body, "Size": len(data), "MIME": None},
        "Created": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
        "MIME": mime,
        "Raw": {"From": sender, "To": list(recipients), "Data": data, "Helo": helo},
    }
    with LOCK:
        MESSAGES.append(message)


class SMTPHandler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        helo, sender, recipients = "", "", []
        self.reply(f"220 {HOSTNAME} ESMTP MailHog")
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = command[:4].upper()
            argument = command[4:].strip()
            if verb in ("HELO", "EHLO"):
                helo = argument
                if verb == "EHLO":
                    self.reply(f"250-Hello {helo}")
                    self.reply("250-PIPELINING")
                    self.reply("250 8BITMIME")
                else:
                    self.reply(f"250 Hello {helo}")
            elif verb == "MAIL":
                sender = argument.partition(":")[2].split()[0].strip("<>") if ":" in argument else ""
                recipients = []
                self.reply(f"250 Sender {sender} ok")
            elif verb == "RCPT":
                recipient = argument.partition(":")[2].split()[0].strip("<>") if ":" in argument else ""
                recipients.append(recipient)
                self.reply(f"250 Recipient {recipient} ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines, size = [], 0
                while True:
                    chunk = self.rfile.readline(65536)
                    if not chunk or chunk in (b".\r\n", b".\n"):
                        break
                    if chunk.startswith(b".."):
                        chunk = chunk[1:]
                    size += len(chunk)
                    if size <= MAX_DATA:
                        lines.append(chunk)
                store(helo, sender, recipients, b"".join(lines).decode("utf-8", "replace"))
                self.reply("250 Ok: queued as " + secrets.token_hex(8))
                sender, recipients = "", []
            elif verb == "RSET":
                sender, recipients = "", []
                self.reply("250 Ok")
            elif verb == "NOOP":
                self.reply("250 Ok")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("500 Unrecognised command")


def matches(message, kind, query):
    query = query.lower()
    if kind == "from":
        return query in message["Raw"]["From"].lower()
    if kind == "to":
        return any(query in r.lower() for r in message["Raw"]["To"])
    return query in message["Raw"]["Data"].lower()


class APIHandler(BaseHTTPRequestHandler):
    server_version = "MailHog"

    def log_message(self, format, *args):
        pass

    def send_json(self, value, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def page(self, found, params):
        try:
            start = max(0, int(params.get("start", ["0"])[0]))
            limit = max(1, min(int(params.get("limit", ["50"])[0]), 250))
        except ValueError:
            start, limit = 0, 50
        items = found[start : start + limit]
        self.send_json({"total": len(found), "count": len(items), "start": start, "items": items})

    def do_GET(self):
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        with LOCK:
            newest_first = list(reversed(MESSAGES))
        if url.path == "/api/v2/messages":
            return self.page(newest_first, params)
        if url.path == "/api/v2/search":
            kind = params.get("kind", [""])[0]
            if kind not in ("from", "to", "containing"):
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            query = params.get("query", [""])[0]
            return self.page([m for m in newest_first if matches(m, kind, query)], params)
        if url.path == "/api/v1/messages":
            return self.send_json(newest_first)
        if url.path.startswith("/api/v1/messages/"):
            rest = url.path[len("/api/v1/messages/") :]
            message_id, _, tail = rest.partition("/")
            found = next((m for m in newest_first if m["ID"] == message_id), None)
            if found is None or tail not in ("", "download"):
                return self.not_found()
            if tail == "download":
                body = found["Raw"]["Data"].encode()
                self.send_response(200)
                self.send_header("Content-Type", "message/rfc822")
                self.send_header("Content-Disposition", f'attachment; filename="{message_id}.eml"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            return self.send_json(found)
        if url.path == "/":
            body = b"<html><body>MailHog (lab stand-in)</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return self.not_found()

    def do_DELETE(self):
        url = urlsplit(self.path)
        if url.path == "/api/v1/messages":
            with LOCK:
                MESSAGES.clear()
        elif url.path.startswith("/api/v1/messages/"):
            message_id = url.path[len("/api/v1/messages/") :]
            with LOCK:
                MESSAGES[:] = [m for m in MESSAGES if m["ID"] != message_id]
        else:
            return self.not_found()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None


class SMTPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    smtp = SMTPServer(("0.0.0.0", 1025), SMTPHandler)
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    print("[SMTP] Binding to address: 0.0.0.0:1025", flush=True)
    http = ThreadingHTTPServer(("0.0.0.0", 8025), APIHandler)
    http.daemon_threads = True
    print("[HTTP] Binding to address: 0.0.0.0:8025", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
