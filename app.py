"""Launch the studio: `python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass]`."""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the studio: train and probe small language models")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = first free from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:pass")
    args = p.parse_args(argv)
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            p.error("--auth must be user:pass with both parts non-empty")
        args.auth = (user, password)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in [0, 65535], got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from studio.ui import build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=2)
    _, local_url, share_url = demo.launch(
        server_name=args.host, server_port=args.port or None, share=args.share, auth=args.auth,
        prevent_thread_lock=True, quiet=False)
    if args.share and not share_url:
        print(f"share link unavailable (no network to Gradio's share server); serving locally at {local_url}",
              flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        # a run started from the app stops with it, after saving its `last` checkpoint
        demo.workspace.training.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
