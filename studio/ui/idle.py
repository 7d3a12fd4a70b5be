"""What the app costs while nobody does anything: on 2 cores, a training run gets what is left.

Measured on the development CPU (2 cores), nothing running, 30 s:
- the page: Gradio 6.31's status tracker keeps a `requestAnimationFrame` loop for an event's
  elapsed-time counter and leaves it running when its component goes away (the app's own
  loading screen's does, on every page, even an empty `gr.Blocks`): ~78 frames a second
  forever, 1.5-2.1 CPU-s of headless chromium against 0.5 with the loop slowed to 4 a second
  (0.17 for a blank page). `TrackerFrames` puts `PAGE_SCRIPT` first in the page's <head>,
  before Gradio's modules load (they keep the `requestAnimationFrame` they find; Gradio's own
  `head=` comes too late), and it slows that module's frames to 4 a second: a shown counter
  still moves (it prints tenths), the orphaned loop costs 1/20 of what it did.
- the server: Gradio's queue looks for work every 1 ms and for progress every 10 ms when idle,
  ~1.0 CPU-s of the server's event-loop thread against 0.28 at 20 ms and 100 ms. A queued event
  now waits up to 20 ms for its turn; events with `queue=False` (the Train tab's ticks) never did.
"""
from __future__ import annotations

import gradio as gr
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

QUEUE_IDLE_POLL_S = 0.02  # Gradio's default 0.001
PROGRESS_IDLE_POLL_S = 0.1  # Gradio's default 0.01
TRACKER_FRAME_MS = 250

# A frame asked for by the status tracker's module (its asset name holds "statustracker",
# Chrome's and Firefox's/Safari's stack lines both name the file) comes TRACKER_FRAME_MS later.
PAGE_SCRIPT = f"""<script>
(() => {{
  const frame = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (callback) => {{
    const callers = (new Error().stack || "").split("\\n").slice(1, 4).join(" ");
    if (!callers.includes("/statustracker")) return frame(callback);
    return setTimeout(() => frame(callback), {TRACKER_FRAME_MS});
  }};
}})();
</script>"""


def quiet_queue(demo: gr.Blocks) -> None:
    """Slow the idle polls of `demo`'s queue (after `demo.queue()`). Gradio has no setting for
    them: these are its queue's attributes, checked so an upgrade that renames them fails here."""
    queue = demo._queue
    for name in ("sleep_when_free", "progress_update_sleep_when_free"):
        if not isinstance(getattr(queue, name, None), float):
            raise RuntimeError(f"Gradio's queue has no {name} any more: see studio/ui/idle.py")
    queue.sleep_when_free = QUEUE_IDLE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_IDLE_POLL_S


class TrackerFrames:
    """ASGI middleware: the app's page (`GET /`, HTML) gets `PAGE_SCRIPT` right after `<head>`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def send_with_script(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            headers = MutableHeaders(scope=start)
            if headers.get("content-type", "").startswith("text/html") and b"<head>" in body:
                body = body.replace(b"<head>", b"<head>" + PAGE_SCRIPT.encode(), 1)
                headers["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_with_script)
