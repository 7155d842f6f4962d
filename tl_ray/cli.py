"""The ``tl-ray`` command line: parse, call the package, print.

    tl-ray data ingest fashion-mnist --to ./tlray-store/datasets/src --classes 0,1,2,3,4
    tl-ray data inspect ./tlray-store/datasets/src
    tl-ray train jobs/quickstart/source.yaml --set train.epochs=1
    tl-ray tune jobs/quickstart/target.yaml --promote
    tl-ray models list
    tl-ray templates list
    tl-ray serve jobs/quickstart/target.yaml
    tl-ray predict http://127.0.0.1:8000 shoe.png
    tl-ray run jobs/quickstart/target.yaml

TensorFlow and Ray are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tl_ray.errors import ConfigError, TLRayError, TrialError, error_summary

DEFAULT_STORAGE = os.environ.get("TLRAY_STORAGE", "./tlray-store")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 5,6,7. Received: {text!r}") from None


def _spec(args):
    from tl_ray.spec import load_spec

    return load_spec(args.spec, overrides=args.set or None)


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="experiment spec (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. train.epochs=3")


# -- data ---------------------------------------------------------------------
def cmd_data_ingest(args) -> int:
    from tl_ray.data import ingest

    common = dict(per_class=args.per_class, validation_to=args.validation_to, seed=args.seed,
                  rows_per_shard=args.rows_per_shard, overwrite=args.overwrite, format=args.format,
                  target_shard_mb=args.target_shard_mb, workers=args.workers, progress=not args.quiet)
    if args.source == "fashion-mnist":
        report = ingest.ingest_fashion_mnist(
            args.to, path=args.from_path or ingest.FASHION_MNIST_DIR, split=args.split, classes=args.classes,
            validation_per_class=args.validation_per_class, **common,
        )
    else:
        report = ingest.ingest_folder(
            args.source, args.to, validation_fraction=args.validation_fraction, skip_bad=args.skip_bad, **common
        )
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_data_inspect(args) -> int:
    from tl_ray.data.manifest import read_manifest

    m = read_manifest(args.uri)
    print(m.to_json())
    return 0


def cmd_data_verify(args) -> int:
    from tl_ray.data.manifest import verify

    problems = verify(args.uri)
    for p in problems:
        print(f"BAD  {p}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 3


# -- training and sweeps --------------------------------------------------------
def cmd_train(args) -> int:
    from tl_ray.pipeline import train_once

    spec = _spec(args)
    row = train_once(spec)
    print(f"trial {row.trial_id}: {spec.tune.metric}={row.metric} after {row.epochs} epochs; checkpoint {row.checkpoint}")
    return 0


def _resume_command(args, promote: bool) -> str:
    """The exact command that continues this invocation's sweep."""
    import shlex

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

    spec = _spec(args)
    try:
        result, _ = sweep_and_promote(spec, promote=args.promote, resume=args.resume, out=print)
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        return _interrupted(args, exc, promote=args.promote)
    failed = [r for r in result.rows if r.status == "ERROR"]
    if failed:  # the table, the report and any promotion above stand: the rest of the sweep was sound
        first = "; ".join(f"{r.trial_id}: {error_summary(r.error)}" for r in failed[:3])
        exc = TrialError(
            f"{len(failed)} of {len(result.rows)} trials ended in ERROR once train.max_failures="
            f"{spec.train.max_failures} retries ran out ({first}{'; ...' if len(failed) > 3 else ''}). The table, "
            f"the report{' and the promotion' if args.promote else ''} above stand. Fix the cause, then "
            f"{_rerun_hint(args, spec)}"
        )
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_report(args) -> int:
    from tl_ray import store
    from tl_ray.tune.report import build_report

    uri = args.experiment if store.is_absolute(args.experiment) or "/" in args.experiment else store.join(
        args.storage, "experiments", args.experiment)
    report = build_report(uri, args.metric, args.mode)
    print(report.table)
    for f in report.files:
        print(f"wrote {f}")
    return 0


# -- trial templates --------------------------------------------------------------
def cmd_templates_start(args) -> int:
    from tl_ray.spec.tune import MIN_KEEP_ALIVE_S
    from tl_ray.train import node_template
    from tl_ray.tune.cluster import join_running_cluster

    if not args.keep_alive >= MIN_KEEP_ALIVE_S:  # nan too
        raise ConfigError(f"--keep-alive must be at least {MIN_KEEP_ALIVE_S:g} s (a template that ends with this "
                          f"command would serve no sweep). Received: {args.keep_alive:g}")
    join_running_cluster()
    nodes = node_template.start_kept_templates(args.keep_alive)
    print(f"{len(nodes)} node(s) have a trial template for this tl-ray and environment "
          f"(key {node_template.template_key()}), kept {args.keep_alive:g} s after its last trial process; "
          "each has imported TensorFlow and is ready to fork trials")
    return 0


def cmd_templates_list(args) -> int:
    from tl_ray.train import node_template
    from tl_ray.tune.cluster import join_running_cluster

    join_running_cluster()
    rows = node_template.kept_templates()
    if not rows:
        print("no kept trial templates in the cluster")
    for row in rows:
        r = row["status"]
        if r is None:
            print(f"node {row['node_id'][:12]}  key {row['key']}  no answer (starting, or ending)")
            continue
        state = "ending" if r["ending"] else (
            f"{r['trial_processes']} trial process(es)" if r["trial_processes"]
            else f"idle {r['idle_s']:.0f} s of {r['keep_alive_s']:g} s")
        print(f"node {row['node_id'][:12]}  key {row['key']}  pid {r['pid']}  {r['rss_mb']:.0f} MiB  {state}")
    return 0


def cmd_templates_stop(args) -> int:
    from tl_ray.train import node_template
    from tl_ray.tune.cluster import join_running_cluster

    join_running_cluster()
    print(f"stopped {node_template.stop_kept_templates()} kept trial template(s) and their trial processes")
    return 0


# -- feature cache ----------------------------------------------------------------
def cmd_cache_list(args) -> int:
    from tl_ray.features import cache_root, list_entries

    entries = list_entries(args.storage)
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
    from tl_ray.features import cache_root, purge

    if not args.keys and not args.all:
        raise ConfigError("name the entries to delete (ids from `tl-ray cache list`) or pass --all.")
    deleted = purge(args.storage, None if args.all else args.keys)
    print(f"deleted {len(deleted)} feature-cache entr{'y' if len(deleted) == 1 else 'ies'} from {cache_root(args.storage)}"
          + (f": {', '.join(deleted)}" if deleted else ""))
    return 0


# -- registry --------------------------------------------------------------------
def cmd_models_list(args) -> int:
    from tl_ray.registry.store import Registry

    reg = Registry(args.storage)
    names = [args.name] if args.name else reg.names()
    if not names:
        print(f"no models in {reg.root}")
    for name in names:
        aliases = reg.aliases(name)
        print(f"{name}  aliases: " + (", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"))
        for v in reg.versions(name):
            meta = reg.metadata(name, v)
            tags = ",".join(sorted(a for a, ver in aliases.items() if ver == v))
            gate = meta.get("gate", {})
            verdict = "" if "accepted" not in gate else ("gate: accepted" if gate["accepted"] else "gate: refused")
            print(f"  v{v:<4} {gate.get('metric', '')}={_num(gate.get('challenger'))}  {verdict:<15} {tags}")
    return 0


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def cmd_models_show(args) -> int:
    from tl_ray.registry.store import Registry

    reg = Registry(args.storage)
    name, version = reg.resolve(args.ref)
    meta = reg.metadata(name, version)
    meta["aliases"] = [a for a, v in reg.aliases(name).items() if v == version]
    meta["lineage"] = reg.lineage(name, version)
    print(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return 0


def cmd_models_promote(args) -> int:
    from tl_ray.registry.store import Registry

    reg = Registry(args.storage)
    name, version = reg.resolve(f"{args.name}:{args.version}")
    before = reg.set_alias(name, args.alias, version, note="tl-ray models promote (by hand)")
    print(f"{name}:{args.alias} -> v{version}" + (f" (was v{before})" if before else ""))
    return 0


def cmd_models_rollback(args) -> int:
    from tl_ray.registry.store import Registry

    version = Registry(args.storage).rollback(args.name, args.alias, note="tl-ray models rollback")
    print(f"{args.name}:{args.alias} -> v{version}")
    return 0


def cmd_models_diff(args) -> int:
    from tl_ray.registry.store import Registry

    d = Registry(args.storage).diff(args.a, args.b)
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True, default=str))
        return 0
    width = max([len(k) for sec in ("metrics", "gate", "spec") for k in d[sec]] + [10])
    print(f"{'':<{width}}  {d['a']:<24} {d['b']}")
    for section in ("metrics", "gate", "spec"):
        print(f"[{section}]" + ("  (fields that differ)" if section == "spec" else ""))
        for key, (a, b) in d[section].items():
            mark = " " if a == b else "*"
            print(f"{mark}{key:<{width}}  {_cell(a):<24} {_cell(b)}")
    print(f"[files] {len(d['files_changed'])} differ")
    print(f"[lineage]  {' <- '.join(d['lineage']['a'])}\n           {' <- '.join(d['lineage']['b'])}")
    return 0


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


# -- weights ---------------------------------------------------------------------
def cmd_weights_stage(args) -> int:
    import yaml

    from tl_ray.errors import ConfigError
    from tl_ray.models.weights import stage_backbone_weights

    backbone_args = {}
    for item in args.arg or []:
        key, sep, raw = item.partition("=")
        if not key.strip() or not sep:
            raise ConfigError(f"--arg expects KEY=VALUE, e.g. alpha=0.35. Received: {item!r}.")
        backbone_args[key.strip()] = yaml.safe_load(raw)
    report = stage_backbone_weights(args.backbone, args.to, weights=args.weights, backbone_args=backbone_args)
    print(json.dumps(report, indent=2))
    print(f"use it with   model: {{backbone: {args.backbone}, weights: {args.to}}}")
    return 0


# -- serving ---------------------------------------------------------------------
def cmd_serve(args) -> int:
    from tl_ray.pipeline import serve_forever

    spec = _spec(args)
    serve_forever(spec, args.model, out=print, follow=args.follow)
    return 0


def cmd_predict(args) -> int:
    from tl_ray.serving.client import predict_files

    token = os.environ.get(args.token_env) if args.token_env else None
    for path, pred in zip(args.files, predict_files(args.url, args.files, token=token)):
        print(f"{path}\t{pred['class']}\t{max(pred['probabilities']):.3f}")
    return 0


def cmd_run(args) -> int:
    from tl_ray.pipeline import run_pipeline
    from tl_ray.tune.interrupt import SweepInterrupted

    spec = _spec(args)
    try:
        figures = run_pipeline(spec, keep_serving=args.keep_serving, out=print)
    except SweepInterrupted as exc:  # nothing was promoted from the partial sweep
        return _interrupted(args, exc, promote=True)
    if figures.get("failed_trials"):  # named in the [tune] lines above; what followed them stands
        exc = TrialError(
            f"{figures['failed_trials']} of {figures['trials']} trials ended in ERROR (see [tune] above); the "
            "promotion, test and serving above stand, from the trials that finished. Fix the cause, then "
            f"{_rerun_hint(args, spec)}"
        )
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


# -- clusters --------------------------------------------------------------------
def cmd_submit(args) -> int:
    from tl_ray import submit

    env_names = args.env if args.env else None
    job_id = submit.submit(args.spec, args.address, command=args.job_command, overrides=args.set,
                           package=args.package, pip_requirement=args.pip, env_names=env_names)
    if args.follow:
        submit.follow(args.address, job_id)
    elif args.wait:
        print(f"{job_id} {submit.wait(args.address, job_id)}")
    return 0


def cmd_jobs_list(args) -> int:
    from tl_ray import submit

    for row in submit.list_jobs(args.address):
        print(f"{row['id']}  {row['status']:<9}  {row['entrypoint']}")
    return 0


def cmd_jobs_logs(args) -> int:
    from tl_ray import submit

    if args.follow:
        submit.follow(args.address, args.job_id)
    else:
        print(submit.logs(args.address, args.job_id), end="")
    return 0


def cmd_jobs_stop(args) -> int:
    from tl_ray import submit

    stopped = submit.stop(args.address, args.job_id)
    print(f"{args.job_id} {'stopping' if stopped else 'was not running'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-ray", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="ingest, inspect and verify datasets").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("ingest", help="write Parquet or TFRecord shards + _manifest.json (resumable)")
    p.add_argument("source", help="'fashion-mnist', or a folder with one sub-folder of images per class")
    p.add_argument("--to", required=True, help="dataset URI (folder or s3://bucket/prefix)")
    p.add_argument("--from", dest="from_path", help="fashion-mnist IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="fashion-mnist split")
    p.add_argument("--classes", type=_ints, help="fashion-mnist class ids to keep, e.g. 5,6,7,8,9")
    p.add_argument("--per-class", type=int, help="cap on images per class")
    p.add_argument("--validation-to", help="also write a validation dataset here, carved from the rest")
    p.add_argument("--validation-per-class", type=int, help="fashion-mnist: validation images per class")
    p.add_argument("--validation-fraction", type=float, help="folder: fraction of images for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows-per-shard", type=int, default=4096)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed in the report)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already at --to")
    p.add_argument("--format", default="parquet", choices=["parquet", "tfrecord"], help="shard format")
    p.add_argument("--target-shard-mb", type=float, default=64.0, help="a shard also closes at this many MiB")
    p.add_argument("--workers", type=int, help="threads that read and encode images (default min(8, CPUs+2))")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_data_ingest)
    p = data.add_parser("inspect", help="print a dataset's manifest")
    p.add_argument("uri")
    p.set_defaults(func=cmd_data_inspect)
    p = data.add_parser("verify", help="re-check every shard's sha256, row count and (TFRecord) CRCs")
    p.add_argument("uri")
    p.set_defaults(func=cmd_data_verify)

    p = sub.add_parser("train", help="train one trial (no sweep)")
    _add_spec(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("tune", help="run the spec's sweep and print the results table")
    _add_spec(p)
    p.add_argument("--promote", action="store_true", help="register the best trial and gate the alias")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="table and plots of a sweep, written next to it in the store")
    p.add_argument("experiment", help="experiment folder name under STORAGE/experiments, or its path/URI")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="store root (default ./tlray-store or $TLRAY_STORAGE)")
    p.add_argument("--metric", default="val_accuracy")
    p.add_argument("--mode", default="max", choices=["max", "min"])
    p.set_defaults(func=cmd_report)

    templates = sub.add_parser(
        "templates", help="the trial templates kept on a cluster's nodes for its next sweeps (tune.trial_process: fork)"
    ).add_subparsers(dest="templates_cmd", required=True)
    p = templates.add_parser("start", help="start one on every node now, so the cluster's first sweep forks at once")
    p.add_argument("--keep-alive", type=float, default=3600.0,
                   help="seconds it stays up with no trial process (default 3600, 'inf': until stopped; a sweep "
                        "sets its own on start)")
    p.set_defaults(func=cmd_templates_start)
    p = templates.add_parser("list", help="node, key, process, memory and idle time of each kept template")
    p.set_defaults(func=cmd_templates_list)
    p = templates.add_parser("stop", help="end every kept template now (sweeps running on them lose their trials)")
    p.set_defaults(func=cmd_templates_stop)

    cache = sub.add_parser("cache", help="backbone features cached for frozen-base trials").add_subparsers(
        dest="cache_cmd", required=True)
    p = cache.add_parser("list", help="entries: key, backbone, size, weights digest, rows, bytes, dataset")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="store root (default ./tlray-store or $TLRAY_STORAGE)")
    p.set_defaults(func=cmd_cache_list)
    p = cache.add_parser("purge", help="delete entries (they are rebuilt when a trial needs them)")
    p.add_argument("keys", nargs="*", help="entry ids from `tl-ray cache list`")
    p.add_argument("--all", action="store_true", help="delete every entry")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="store root (default ./tlray-store or $TLRAY_STORAGE)")
    p.set_defaults(func=cmd_cache_purge)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_cmd", required=True)
    for name, func, helptext in (
        ("list", cmd_models_list, "list models, versions, gate verdicts and aliases"),
        ("show", cmd_models_show, "print a version's metadata and lineage"),
        ("promote", cmd_models_promote, "point an alias (production, staging, canary, ...) at a version"),
        ("rollback", cmd_models_rollback, "move an alias back to its previous version"),
        ("diff", cmd_models_diff, "metrics, gate, spec and lineage of two versions side by side"),
    ):
        p = models.add_parser(name, help=helptext)
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="store root (default ./tlray-store or $TLRAY_STORAGE)")
        if name == "list":
            p.add_argument("name", nargs="?", help="only this model")
        if name == "show":
            p.add_argument("ref", help="NAME, NAME:ALIAS or NAME:vN")
        if name == "diff":
            p.add_argument("a", help="NAME:vN or NAME:ALIAS")
            p.add_argument("b", help="NAME:vN or NAME:ALIAS")
            p.add_argument("--json", action="store_true", help="print the comparison as JSON")
        if name in ("promote", "rollback"):
            p.add_argument("name")
        if name == "promote":
            p.add_argument("version", help="vN")
        if name in ("promote", "rollback"):
            p.add_argument("--alias", default="production", help="production (default), staging, canary, ...")
        p.set_defaults(func=func)

    weights = sub.add_parser("weights", help="stage backbone weights for offline clusters").add_subparsers(
        dest="weights_cmd", required=True)
    p = weights.add_parser("stage", help="build a backbone (downloading ImageNet weights) and upload its .weights.h5")
    p.add_argument("backbone", help="backbone name, e.g. mobilenet_v2")
    p.add_argument("--to", required=True, help="destination .weights.h5 (path or s3:// URI)")
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"], help="what to stage")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="backbone constructor argument, e.g. alpha=0.35 (must match model.backbone_args)")
    p.set_defaults(func=cmd_weights_stage)

    p = sub.add_parser("serve", help="serve NAME:production (or --model) with Ray Serve until Ctrl-C")
    _add_spec(p)
    p.add_argument("--model", help="NAME:ALIAS or NAME:vN (default: promote.name:production)")
    p.add_argument("--follow", action="store_true",
                   help="swap to the new version without downtime whenever the alias moves (serve.follow_interval_s)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("predict", help="send images to a running endpoint and print classes")
    p.add_argument("url", help="endpoint base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("files", nargs="+", help="PNG or JPEG files")
    p.add_argument("--token-env", metavar="VAR", help="send the bearer token held by this environment variable")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("run", help="ingest -> pretrain -> sweep -> promote -> serve, end to end")
    _add_spec(p)
    p.add_argument("--keep-serving", action="store_true", help="keep the endpoint up until Ctrl-C")
    p.set_defaults(func=cmd_run)

    address = os.environ.get("RAY_API_SERVER_ADDRESS") or (
        os.environ["RAY_ADDRESS"] if os.environ.get("RAY_ADDRESS", "").startswith("http") else "http://127.0.0.1:8265"
    )
    p = sub.add_parser("submit", help="run a tl-ray command on a Ray cluster as a Ray Job")
    _add_spec(p)
    p.add_argument("job_command", nargs="?", default="run", choices=["run", "tune", "train", "serve"])
    p.add_argument("--address", default=address, help="the cluster's job API (default $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--package", default="source", choices=["source", "pip"],
                   help="ship this tl-ray as source, or install a pinned pip requirement on the cluster")
    p.add_argument("--pip", help="pip requirement with --package pip (default tl-ray==<this version>)")
    p.add_argument("--env", action="append", metavar="NAME",
                   help="forward this environment variable by name (default: the AWS_* variables that are set)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--wait", action="store_true", help="wait for the job to end; non-zero exit if it fails")
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, follow and stop Ray Jobs").add_subparsers(dest="jobs_cmd", required=True)
    for name, func, helptext in (
        ("list", cmd_jobs_list, "list the cluster's jobs"),
        ("logs", cmd_jobs_logs, "print (or --follow) a job's logs"),
        ("stop", cmd_jobs_stop, "stop a job"),
    ):
        p = jobs.add_parser(name, help=helptext)
        p.add_argument("--address", default=address, help="the cluster's job API")
        if name != "list":
            p.add_argument("job_id")
        if name == "logs":
            p.add_argument("--follow", action="store_true")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter, in this process and the Ray workers it starts.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except TLRayError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
