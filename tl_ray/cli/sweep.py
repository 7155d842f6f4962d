"""``tl-ray train|tune|run|report|cache``: one trial, a sweep, the whole pipeline, a sweep's report, and the
feature cache the sweeps share."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import sys

from tl_ray.cli._common import add_output, add_spec, add_storage, fail, load, print_json
from tl_ray.errors import ConfigError, TrialError, error_summary


def cmd_train(args) -> int:
    from tl_ray.pipeline import train_once

    spec = load(args)
    row = train_once(spec)
    print(f"trial {row.trial_id}: {spec.tune.metric}={row.metric} after {row.epochs} epochs; checkpoint {row.checkpoint}")
    return 0


def _json_output(args):
    """With ``-o json`` the progress lines go to stderr, so stdout holds the JSON summary alone."""
    return contextlib.redirect_stdout(sys.stderr) if args.output == "json" else contextlib.nullcontext()


def _resume_command(args, promote: bool) -> str:
    """The exact command that continues this invocation's sweep."""
    words = ["tl-ray", "tune", args.spec, *(w for kv in args.set or [] for w in ("--set", kv)), "--resume"]
    return shlex.join(words + (["--promote"] if promote else []))


def _rerun_hint(args, spec) -> str:
    """How to rerun a sweep's failed trials: resuming it, except a staged sweep, whose later stages depend on
    which trials the earlier ones promoted, so it runs again whole."""
    if spec.tune.stages:
        return "run the sweep again: " + _resume_command(args, promote=False).removesuffix(" --resume")
    return f"rerun the failed trials with: {_resume_command(args, promote=False)}"


def _interrupted(args, exc, promote: bool) -> int:
    """Prints why the sweep stopped and how to resume it; 130 is the shell's code for Ctrl-C."""
    from tl_ray.tune.interrupt import SweepInterrupted

    if isinstance(exc, SweepInterrupted):
        print(f"SweepInterrupted: {exc}. Resume it with: {_resume_command(args, promote)}", file=sys.stderr)
    else:  # a second Ctrl-C skipped Tune's final save: resuming starts from its last periodic save
        print(f"interrupted before the sweep state was saved; continue from its last save with: "
              f"{_resume_command(args, promote)}", file=sys.stderr)
    return 130


def cmd_tune(args) -> int:
    from tl_ray.pipeline import sweep_and_promote
    from tl_ray.tune.interrupt import SweepInterrupted

    spec = load(args)
    try:
        with _json_output(args):
            result, promotion = sweep_and_promote(spec, promote=args.promote, resume=args.resume, out=print)
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        return _interrupted(args, exc, promote=args.promote)
    if args.output == "json":
        print_json({"experiment": result.experiment_path, "metric": spec.tune.metric, "mode": spec.tune.mode,
                    "best": result.best.trial_id, "wall_time_s": round(result.wall_time_s, 1),
                    "trials": [dataclasses.asdict(r) for r in result.rows],
                    "promotion": dataclasses.asdict(promotion) if promotion else None})
    failed = [r for r in result.rows if r.status == "ERROR"]
    if not failed:
        return 0
    first = "; ".join(f"{r.trial_id}: {error_summary(r.error)}" for r in failed[:3])
    return fail(TrialError(
        f"{len(failed)} of {len(result.rows)} trials ended in ERROR once train.max_failures="
        f"{spec.train.max_failures} retries ran out ({first}{'; ...' if len(failed) > 3 else ''}). The table, "
        f"the report{' and the promotion' if args.promote else ''} above stand. Fix the cause, then "
        f"{_rerun_hint(args, spec)}"
    ))


def cmd_run(args) -> int:
    from tl_ray.pipeline import run_pipeline
    from tl_ray.tune.interrupt import SweepInterrupted

    spec = load(args)
    try:
        with _json_output(args):
            figures = run_pipeline(spec, keep_serving=args.keep_serving, out=print)
    except SweepInterrupted as exc:  # nothing was promoted from the partial sweep
        return _interrupted(args, exc, promote=True)
    if args.output == "json":
        print_json(figures)
    if not figures.get("failed_trials"):
        return 0
    return fail(TrialError(
        f"{figures['failed_trials']} of {figures['trials']} trials ended in ERROR (see [tune] above); the "
        "promotion, test and serving above stand, from the trials that finished. Fix the cause, then "
        f"{_rerun_hint(args, spec)}"
    ))


def cmd_report(args) -> int:
    from tl_ray import store
    from tl_ray.tune.report import build_report

    uri = args.experiment if store.is_absolute(args.experiment) or "/" in args.experiment else store.join(
        args.storage, "experiments", args.experiment)
    report = build_report(uri, args.metric, args.mode, top=args.top)
    print(report.table)
    for f in report.files:
        print(f"wrote {f}")
    return 0


def cmd_cache_list(args) -> int:
    from tl_ray.feature_cache import cache_root, list_entries

    entries = list_entries(args.storage)
    if args.output == "json":
        print_json([dataclasses.asdict(e) for e in entries])
        return 0
    if not entries:
        print(f"no feature-cache entries in {cache_root(args.storage)}")
    for e in entries:
        if not e.complete:
            print(f"{e.key_id}  partial (being built, or its builder died)")
            continue
        k = e.key
        size = "x".join(str(v) for v in k.get("image_size", []))
        print(f"{e.key_id}  {k.get('backbone')} {size}  weights {str(k.get('weights'))[:19]}  {e.rows} rows  "
              f"{e.bytes / 2**20:.1f} MiB  {e.created}  {e.dataset_uri}")
    return 0


def cmd_cache_purge(args) -> int:
    from tl_ray.feature_cache import cache_root, purge

    if not args.keys and not args.all:
        raise ConfigError("name the entries to delete (ids from `tl-ray cache list`) or pass --all.")
    deleted = purge(args.storage, None if args.all else args.keys)
    print(f"deleted {len(deleted)} feature-cache entr{'y' if len(deleted) == 1 else 'ies'} from {cache_root(args.storage)}"
          + (f": {', '.join(deleted)}" if deleted else ""))
    return 0


def add_commands(sub) -> None:
    """Adds ``train``, ``tune``, ``run``, ``report`` and ``cache list|purge`` to the ``tl-ray`` subparsers."""
    p = sub.add_parser("train", help="train one trial (no sweep)")
    add_spec(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("tune", help="run the spec's sweep and print the results table")
    add_spec(p)
    p.add_argument("--promote", action="store_true", help="register the best trial and gate the alias")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    add_output(p)
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("run", help="ingest -> pretrain -> sweep -> promote -> serve, end to end")
    add_spec(p)
    p.add_argument("--keep-serving", action="store_true", help="keep the endpoint up until Ctrl-C")
    add_output(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="table and plots of a sweep, written next to it in the store")
    p.add_argument("experiment", help="experiment folder name under STORAGE/experiments, or its path/URI")
    add_storage(p)
    p.add_argument("--metric", default="val_accuracy", help="the result column the plots and the table rank by")
    p.add_argument("--mode", default="max", choices=["max", "min"], help="whether the metric is better high or low")
    p.add_argument("--top", type=int, default=20, help="trials the table lists and the learning curves draw, best "
                                                       "first (every trial is in trials.csv); default 20")
    p.set_defaults(func=cmd_report)

    cache = sub.add_parser("cache", help="backbone features cached for frozen-base trials").add_subparsers(
        dest="cache_cmd", required=True)
    p = cache.add_parser("list", help="entries: key, backbone, size, weights digest, rows, bytes, dataset")
    add_storage(p)
    add_output(p)
    p.set_defaults(func=cmd_cache_list)
    p = cache.add_parser("purge", help="delete entries (they are rebuilt when a trial needs them)")
    p.add_argument("keys", nargs="*", help="entry ids from `tl-ray cache list`")
    p.add_argument("--all", action="store_true", help="delete every entry")
    add_storage(p)
    p.set_defaults(func=cmd_cache_purge)
