"""``tl-ray serve`` (a registry version behind Ray Serve) and ``tl-ray predict`` (a client of it)."""

from __future__ import annotations

import os

from tl_ray.cli._common import DEFAULT_STORAGE, load
from tl_ray.errors import ConfigError


def cmd_serve(args) -> int:
    from tl_ray.pipeline import serve_forever

    if args.spec:
        spec = load(args)
        storage, serve_spec = args.storage or spec.storage, spec.serve
        ref = args.model or (f"{spec.promote.name}:{spec.promote.alias}" if spec.promote else None)
    else:
        from tl_ray.spec.serve import ServeSpec

        storage, serve_spec, ref = args.storage or DEFAULT_STORAGE, ServeSpec(), args.model
    if not ref:
        raise ConfigError("tl-ray serve needs --model NAME:ALIAS (or NAME:vN), or a spec whose promote section "
                          "names the model.")
    # Flushed line by line: under Kubernetes or systemd stdout is a pipe, and the drain's lines come last.
    serve_forever(storage, ref, serve_spec, out=lambda line: print(line, flush=True), follow=args.watch_alias)
    return 0


def cmd_predict(args) -> int:
    from tl_ray.serving.client import predict_files

    token = os.environ.get(args.token_env) if args.token_env else None
    for path, pred in zip(args.files, predict_files(args.url, args.files, token=token)):
        print(f"{path}\t{pred['class']}\t{max(pred['probabilities']):.3f}")
    return 0


def add_commands(sub) -> None:
    """Adds ``serve`` and ``predict`` to the ``tl-ray`` subparsers ``sub``."""
    p = sub.add_parser("serve", help="serve a registry model with Ray Serve until Ctrl-C or SIGTERM",
                       epilog="examples:\n  tl-ray serve --storage s3://bucket/tl-ray --model fashion-transfer:production\n"
                              "  tl-ray serve jobs/quickstart/target.yaml --watch-alias")
    p.add_argument("spec", nargs="?", help="experiment spec (YAML) giving the store, the model and serve settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. serve.max_batch_size=16")
    p.add_argument("--storage", help="store root (default: the spec's, else ./tlray-store or $TLRAY_STORAGE)")
    p.add_argument("--model", help="NAME:ALIAS or NAME:vN (default: the spec's promote.name:promote.alias)")
    p.add_argument("--watch-alias", action="store_true",
                   help="watch the alias in the registry and swap to each newly promoted version without downtime "
                        "(every serve.watch_interval_s)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("predict", help="send images to a running endpoint and print classes")
    p.add_argument("url", help="endpoint base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("files", nargs="+", help="PNG or JPEG files")
    p.add_argument("--token-env", metavar="VAR", help="send the bearer token held by this environment variable")
    p.set_defaults(func=cmd_predict)
