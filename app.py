"""Launch the studio: `python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth-file FILE] [--models-dir DIR]`.

Reachable means authenticated: with `--share`, or a `--host` that is not a loopback address, and no
login given, the app makes up a password, prints the login once (as Jupyter prints its token) and
requires it. `--public-without-login` opts out, and says the risk in its name. A login is given
as `--auth-file FILE` (its first line, user:pass) or the `STUDIO_AUTH` variable, which other
users of the machine cannot read in `ps`; `--auth user:pass` still works, visibly.

Models its users may name: presets, runs, and model folders under each `--models-dir`; a typed
local folder anywhere else only while the app is reachable from this machine alone
(`studio.workspace.ModelAccess`).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys

LOGIN_USER = "studio"
AUTH_ENV = "STUDIO_AUTH"


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` ("localhost", 127.0.0.0/8, ::1).

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "192.168.1.5", "example.org")]
    [True, True, True, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the studio: train and probe small language models")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = first free from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:pass (every user of the machine sees it in ps: "
                                  "prefer --auth-file or $STUDIO_AUTH)")
    p.add_argument("--auth-file", metavar="FILE", help="require the login on FILE's first line, user:pass")
    p.add_argument("--public-without-login", action="store_true",
                   help="serve a reachable app with no login: anyone who can reach it can train on this machine")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="a folder of Hugging Face model folders to offer in the model pickers (repeatable); "
                        "a reachable app opens no other local folder")
    args = p.parse_args(argv)
    if args.auth is not None and args.auth_file is not None:
        p.error("give --auth or --auth-file, not both")
    source, login = "--auth", args.auth
    if args.auth_file is not None:
        try:
            with open(os.path.expanduser(args.auth_file)) as f:
                source, login = "--auth-file", f.readline().strip()
        except OSError as e:
            p.error(f"--auth-file: cannot read {args.auth_file}: {e.strerror}")
    elif login is None and os.environ.get(AUTH_ENV):
        source, login = AUTH_ENV, os.environ[AUTH_ENV].strip()
    args.auth = None
    if login is not None:
        user, sep, password = login.partition(":")
        if not sep or not user or not password:
            p.error(f"{source} must be user:pass with both parts non-empty")
        args.auth = (user, password)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in [0, 65535], got {args.port}")
    for folder in args.models_dir:
        if not os.path.isdir(os.path.expanduser(folder)):
            p.error(f"--models-dir must be a folder, got {folder!r}")
    args.reachable = args.share or not is_loopback(args.host)
    args.generated_login = False
    if args.reachable and args.auth is None and not args.public_without_login:
        args.auth = (LOGIN_USER, secrets.token_urlsafe(12))
        args.generated_login = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import studio

    studio.interactive_threads()  # before torch loads (through the UI)
    from studio.ui import build_app, serve
    from studio.workspace import ModelAccess, Workspace

    access = ModelAccess(roots=tuple(args.models_dir), local_folders=not args.reachable)
    demo = build_app(Workspace(access=access))
    served = serve.launch(demo, args.host, args.port or None, loopback=is_loopback(args.host), share=args.share,
                          auth=args.auth, quiet=False)
    local_url, share_url = served.local_url, served.share_url
    if args.generated_login:
        print(f"This app can be reached from other machines, so it asks for a login:\n"
              f"    user: {args.auth[0]}\n    password: {args.auth[1]}\n"
              f"(choose your own with --auth-file FILE or ${AUTH_ENV}=user:pass)", flush=True)
    elif args.reachable and args.auth is None:
        print("WARNING: --public-without-login: anyone who can reach this app can use it", flush=True)
    if args.share and not share_url:
        print(f"share link unavailable (no network to Gradio's share server); serving locally at {local_url}",
              flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        # a run started from the app stops with it, after saving its `last` checkpoint; its temp files go
        demo.workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
