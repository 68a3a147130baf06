"""A stand-in for an SMS gateway: a local HTTP endpoint that prints every
message the alert engine sends to it.

Point a contact's ``notify`` at ``json://127.0.0.1:8000/sms`` (Apprise's
JSON-over-HTTP target posts ``{"title": ..., "message": ...}``) and run::

    python -m farmedge.alerts.inbox --port 8000

Each message is printed as one line: the local time, the path it was posted
to and the text. Used to check a new installation end to end before real
SMS or chat URLs go into the registry (docs/install.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["main", "message_text"]


def message_text(body: bytes) -> str:
    """The text of an Apprise json:// post (or the raw body)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if not isinstance(doc, dict):
        return str(doc)
    title, message = str(doc.get("title") or ""), str(doc.get("message") or doc.get("body")
                                                       or "")
    return f"{title}: {message}" if title and title not in message else message or title


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print(f"{time.strftime('%H:%M:%S')} {self.path} {message_text(body)}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m farmedge.alerts.inbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    args = p.parse_args(argv)
    try:
        server = ThreadingHTTPServer((args.host, args.port), _Handler)
    except OSError as exc:
        print(f"inbox: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    print(f"inbox: waiting for messages on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
