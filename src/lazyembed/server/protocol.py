"""uvicorn's httptools protocol, answering clients that half-close after their request.

``nc -N`` and some scripts send a request, then ``shutdown(SHUT_WR)``. uvicorn's own
protocol lets asyncio close the connection at that EOF, so the answer is lost. This one
keeps the write side open while a request is in progress (the answer is sent, then the
connection closed), and tells the app through the scope extension
``lazyembed.half_closed`` (a callable), so that a long request can still stop between
chunks: an EOF from a client that really left looks the same on the wire. When the app
drops such a request, it calls ``lazyembed.hang_up``: the connection closes, unanswered.

An EOF before the request's body is complete cannot be a half-close (the body can
never arrive): the connection closes at once and the app sees a disconnect. A graceful
shutdown closes at once a connection whose request body is still incomplete (nothing of
it has started; waiting for it would hold the shutdown).

``lazyembed serve`` passes it to uvicorn: ``uvicorn.Config(app, http=HalfCloseProtocol)``.
"""

from __future__ import annotations

from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HalfCloseProtocol(HttpToolsProtocol):
    """See the module docstring."""

    half_closed = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope = cast(dict[str, Any], self.scope)
        extensions = scope.setdefault("extensions", {})
        extensions["lazyembed.half_closed"] = self._is_half_closed
        extensions["lazyembed.hang_up"] = self._hang_up

    def _is_half_closed(self) -> bool:
        return self.half_closed

    def _hang_up(self) -> None:
        """The app answers nobody (its client left): close now, as a disconnect."""
        if self.cycle is not None:
            self.cycle.disconnected = True  # uvicorn then expects no response
        self.transport.close()

    def _body_incomplete(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started

    def shutdown(self) -> None:
        if self._body_incomplete():
            self.transport.close()  # the app sees a disconnect; uvicorn waits no longer
            return
        super().shutdown()

    def eof_received(self) -> bool:  # type: ignore[override]
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self._body_incomplete():
            return False  # idle or a body cut short: let asyncio close, as uvicorn does
        self.half_closed = True
        cycle.keep_alive = False  # close once the answer is sent
        return True  # keep the transport open for writing
