"""What waitress itself must refuse, and how: a deadline for a whole request, JSON errors.

waitress keeps a connection while it sends anything (its `channel_timeout` counts idle seconds
only), so clients trickling one byte a second held every one of its 100 connection slots and
locked everyone else out (issue 16, item 9). Here:
- `RequestDeadlineChannel` notes when each request's first byte arrived; `guard` makes the
  server's periodic maintenance (every `CLEANUP_SECONDS`) close a connection whose request head
  and body have not arrived whole within `request_timeout` seconds. A request being answered is
  never cut (the deadline is for receiving it).
- The connection limit is raised from 100 (`WebSettings.max_connections`) and waitress polls
  with poll(), not select() (select stops at 1024 file descriptors).
- Errors waitress answers before Django sees the request (a body over its size cap, headers too
  large, a malformed request line or chunked body) are JSON `{"error": ...}` like the app's,
  not waitress's plain text.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

CLEANUP_SECONDS = 1.0  # how often waitress runs `maintenance`: the deadline's resolution

# Our own words per status waitress can answer by itself; its texts quote the request.
_REASONS = {
    400: "malformed HTTP request (request line, headers or chunked body)",
    413: "request body too large: {length} bytes, the limit is {limit:,} (--max_upload_mb={mb:g})",
    431: "request headers too large",
}


class JsonErrorTask(ErrorTask):
    """waitress's error answer, as JSON with a reason in our words."""

    def execute(self) -> None:
        error = self.request.error
        code = error.code
        limit = getattr(self.channel.server, "upload_limit",
                        self.channel.server.adj.max_request_body_size)
        length = getattr(self.request, "content_length", 0)
        reason = _REASONS.get(code, "the server could not read the request").format(
            length=f"{length:,}" if length > limit else f"more than {limit:,}", limit=limit,
            mb=limit / 1048576)
        body = json.dumps({"error": reason}).encode()
        self.status = f"{code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class RequestDeadlineChannel(HTTPChannel):
    """An HTTPChannel that remembers when the request now arriving began (monotonic seconds)."""

    error_task_class = JsonErrorTask
    request_started = 0.0

    def received(self, data: bytes) -> bool:
        before = self.request
        result = super().received(data)
        if self.request is not None and self.request is not before:
            self.request_started = time.monotonic()  # a new request's first bytes
        return result


def overdue(channel: Any, now: float, request_timeout: float) -> bool:
    """A request still arriving (not yet handed to a worker) after `request_timeout` seconds."""
    return (channel.request is not None and not channel.requests
            and now - channel.request_started > request_timeout)


def _maintenance(server: BaseWSGIServer, original: Any, request_timeout: float,
                 now: float) -> None:
    original(now)  # waitress's own: idle connections past channel_timeout
    mono = time.monotonic()
    for channel in list(server.active_channels.values()):
        if isinstance(channel, RequestDeadlineChannel) and overdue(channel, mono,
                                                                   request_timeout):
            channel.will_close = True  # the loop closes it on its next pass


def guard(server: Any, request_timeout: float, upload_limit: int) -> Any:
    """Installs the deadline and the JSON errors on a server from waitress.create_server (one
    listening socket or several); returns it."""
    dispatchers = ([server] if isinstance(server, BaseWSGIServer)
                   else [d for d in server.map.values() if isinstance(d, BaseWSGIServer)])
    for dispatcher in dispatchers:
        dispatcher.channel_class = RequestDeadlineChannel
        dispatcher.upload_limit = upload_limit
        dispatcher.maintenance = functools.partial(_maintenance, dispatcher,
                                                   dispatcher.maintenance, request_timeout)
    return server
