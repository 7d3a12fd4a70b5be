"""Serving the app over HTTP: what may reach it, decided in one place (app.py and the tests use it).

Gradio 6 answers any `Host` header (a page on another site that rebinds its DNS name to
127.0.0.1 drives a localhost app), echoes any `Origin` with credentials allowed on a reachable
app, and sets its login cookie `SameSite=None`. So the app is launched with:
- Starlette's `TrustedHostMiddleware`: a localhost app answers only the loopback names
  (127.0.0.1, localhost, [::1]), and the share server's when shared;
- `SameOrigin`: a browser request (one with an `Origin`) runs only when it comes from the page
  the app served itself (its origin is the `Host` it asked), so another site's page cannot
  call the API with the user's cookie; requests without an `Origin` (scripts, gradio_client)
  are not a browser's cross-site request and pass;
- `LaxCookies`: the login cookie goes `SameSite=Lax`: no other site's request carries it;
- `queue(api_open=False)` (in `build_app`): every endpoint runs through the queue, so the model
  queue's concurrency limit holds; uploads capped at `MAX_UPLOAD`; no SSR (a Node proxy in
  front) and no MCP server.
And the page gets `idle.PAGE_SCRIPT` (`idle.TrackerFrames`: what an idle page costs the run it shows).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import gradio as gr
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studio.ui import idle

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SHARE_HOSTS = ("*.gradio.live",)  # Gradio's share server forwards its link's Host
MAX_UPLOAD = "100mb"  # a training text file; Gradio answers a larger upload with 413


class SameOrigin:
    """Refuse (403) a request whose `Origin` is not the app's own: scheme-less `host:port` equal
    to the `Host` it was sent to. Gradio's CORS layer still answers preflights; this refuses
    the request itself, so a simple cross-site POST (a form, an upload) never runs either."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                await PlainTextResponse("cross-origin request refused", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_SAMESITE_NONE = re.compile(r"samesite=none", re.IGNORECASE)


class LaxCookies:
    """Every cookie the app sets is `SameSite=Lax` (Gradio's login cookie says `None`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_lax(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                cookies = headers.getlist("set-cookie")
                if cookies:
                    del headers["set-cookie"]
                    for cookie in cookies:
                        headers.append("set-cookie", _SAMESITE_NONE.sub("SameSite=Lax", cookie))
            await send(message)

        await self.app(scope, receive, send_lax)


@dataclass(frozen=True)
class Served:
    local_url: str
    share_url: str | None


def allowed_hosts(loopback: bool, share: bool) -> list[str]:
    """The `Host` names the app answers: bound to a loopback address, the loopback names (plus
    the share server's when shared); bound to a network address, any (its users may know the
    machine by any name; the login guards it)."""
    if not loopback:
        return ["*"]
    return [*LOOPBACK_HOSTS, *(SHARE_HOSTS if share else ())]


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, *, loopback: bool = True,
           share: bool = False, auth: tuple[str, str] | None = None, quiet: bool = True) -> Served:
    """Start `demo` in the background with the guards above; `demo.close()` stops it."""
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(loopback, share)),
                  Middleware(SameOrigin), Middleware(LaxCookies), Middleware(idle.TrackerFrames)]
    _, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=True, quiet=quiet,
        max_file_size=MAX_UPLOAD, app_kwargs={"middleware": middleware}, ssr_mode=False, mcp_server=False)
    return Served(local_url, share_url)
