"""``tl-ray serve`` (a registry version behind Ray Serve) and ``tl-ray predict`` (a client of it)."""

from __future__ import annotations

import os

from tl_ray.cli._common import add_spec, load


def cmd_serve(args) -> int:
    from tl_ray.pipeline import serve_forever

    # Flushed line by line: under Kubernetes or systemd stdout is a pipe, and the drain's lines come last.
    serve_forever(load(args), args.model, out=lambda line: print(line, flush=True), follow=args.watch_alias)
    return 0


def cmd_predict(args) -> int:
    from tl_ray.serving.client import predict_files

    token = os.environ.get(args.token_env) if args.token_env else None
    for path, pred in zip(args.files, predict_files(args.url, args.files, token=token)):
        print(f"{path}\t{pred['class']}\t{max(pred['probabilities']):.3f}")
    return 0


def add_commands(sub) -> None:
    """Adds ``serve`` and ``predict`` to the ``tl-ray`` subparsers ``sub``."""
    p = sub.add_parser("serve", help="serve NAME:production (or --model) with Ray Serve until Ctrl-C or SIGTERM")
    add_spec(p)
    p.add_argument("--model", help="NAME:ALIAS or NAME:vN (default: promote.name:production)")
    p.add_argument("--watch-alias", action="store_true",
                   help="watch the alias in the registry and swap to each newly promoted version without downtime "
                        "(every serve.watch_interval_s)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("predict", help="send images to a running endpoint and print classes")
    p.add_argument("url", help="endpoint base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("files", nargs="+", help="PNG or JPEG files")
    p.add_argument("--token-env", metavar="VAR", help="send the bearer token held by this environment variable")
    p.set_defaults(func=cmd_predict)
