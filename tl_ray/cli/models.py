"""``tl-ray models`` (the model registry) and ``tl-ray weights`` (backbone weights for offline clusters)."""

from __future__ import annotations

import json
import os

from tl_ray.cli._common import add_output, add_storage, print_json
from tl_ray.errors import ConfigError


def _registry(args):
    from tl_ray.registry.store import Registry

    return Registry(args.storage)


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _seeds_line(seeds: dict) -> str:
    """``run.seeds``' record in one line: each side's test accuracy, the gap and the seed promoted."""
    sides = [f"{name} {s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})"
             for name, s in (("transferred", seeds.get("transferred")), ("from scratch", seeds.get("scratch"))) if s]
    gap = f", gap {seeds['gap'] * 100:+.1f} points" if seeds.get("gap") is not None else ""
    return f"test accuracy {', '.join(sides)}{gap}; promoted seed {seeds['promoted_seed']} ({seeds['selected_on']})"


def _listing(reg, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        aliases = reg.aliases(name)
        versions = [{"version": v, "gate": reg.metadata(name, v).get("gate", {}),
                     "aliases": sorted(a for a, ver in aliases.items() if ver == v)} for v in reg.versions(name)]
        out.append({"name": name, "aliases": aliases, "versions": versions})
    return out


def cmd_models_list(args) -> int:
    reg = _registry(args)
    listing = _listing(reg, [args.name] if args.name else reg.names())
    if args.output == "json":
        print_json(listing)
        return 0
    if not listing:
        print(f"no models in {reg.root}")
    for model in listing:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(model["aliases"].items()))
        print(f"{model['name']}  aliases: {aliases or 'none'}")
        for v in model["versions"]:
            gate = v["gate"]
            verdict = "" if "accepted" not in gate else ("gate: accepted" if gate["accepted"] else "gate: refused")
            print(f"  v{v['version']:<4} {gate.get('metric', '')}={_num(gate.get('challenger'))}  {verdict:<15} "
                  f"{','.join(v['aliases'])}")
    return 0


def cmd_models_show(args) -> int:
    reg = _registry(args)
    name, version = reg.resolve(args.ref)
    meta = reg.metadata(name, version)
    meta["aliases"] = [a for a, v in reg.aliases(name).items() if v == version]
    meta["lineage"] = reg.lineage(name, version)
    if args.output == "json":
        print(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return 0
    gate = meta.get("gate", {})
    verdict = "" if "accepted" not in gate else f", gate {'accepted' if gate['accepted'] else 'refused'}"
    print(f"{name}:v{version}  aliases: {', '.join(meta['aliases']) or 'none'}{verdict}")
    for key in ("created", "class_names", "metrics", "gate", "lineage"):
        if meta.get(key) not in (None, {}, []):
            print(f"  {key}: {_cell(meta[key])}")
    if meta.get("seeds"):
        print(f"  seeds: {_seeds_line(meta['seeds'])}")
    print(f"  (all of it: tl-ray models show {name}:v{version} -o json)")
    return 0


def cmd_models_promote(args) -> int:
    reg = _registry(args)
    if ":" not in args.ref:
        raise ConfigError(f"models promote takes NAME:vN (or NAME:ALIAS). Received: {args.ref!r}.")
    name, version = reg.resolve(args.ref)
    before = reg.set_alias(name, args.alias, version, note="tl-ray models promote (by hand)")
    print(f"{name}:{args.alias} -> v{version}" + (f" (was v{before})" if before else ""))
    return 0


def cmd_models_rollback(args) -> int:
    name, _, alias = args.ref.partition(":")
    alias = alias or args.alias
    version = _registry(args).rollback(name, alias, note="tl-ray models rollback")
    print(f"{name}:{alias} -> v{version}")
    return 0


def cmd_models_diff(args) -> int:
    d = _registry(args).diff(args.a, args.b)
    if args.output == "json":
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


def cmd_models_export(args) -> int:
    from tl_ray.models.export import MODEL_FILE, export_as, load_model

    reg = _registry(args)
    name, version = reg.resolve(args.ref)
    meta = reg.metadata(name, version)
    model = load_model(reg.fetch(f"{name}:v{version}") / MODEL_FILE)  # sha256-checked local copy
    report = export_as(model, args.format, args.dir, name=name, version=version,
                       class_names=meta.get("class_names"), overwrite=args.force)
    print(json.dumps(report, indent=2))
    if args.format == "tf_serving":
        print(f"serve it with   tensorflow_model_server --model_name={name} "
              f"--model_base_path={os.path.dirname(report['path'])} --rest_api_port=8501")
    return 0


def cmd_weights_stage(args) -> int:
    import yaml

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


def add_commands(sub) -> None:
    """Adds ``models list|show|promote|rollback|diff|export`` and ``weights stage`` to the ``tl-ray`` subparsers."""
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("list", help="list models, versions, gate verdicts and aliases")
    p.add_argument("name", nargs="?", help="only this model")
    add_output(p)
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="print a version's metadata and lineage")
    p.add_argument("ref", help="NAME, NAME:ALIAS or NAME:vN")
    add_output(p)
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("promote", help="point an alias (production, staging, canary, ...) at a version",
                          epilog="example:\n  tl-ray models promote fashion-transfer:v3 --alias canary")
    p.add_argument("ref", help="NAME:vN, or NAME:ALIAS to point --alias where that alias points")
    p.set_defaults(func=cmd_models_promote)
    p = models.add_parser("rollback", help="move an alias back to its previous version")
    p.add_argument("ref", help="NAME:ALIAS, or NAME (with --alias)")
    p.set_defaults(func=cmd_models_rollback)
    p = models.add_parser("diff", help="metrics, gate, spec and lineage of two versions side by side")
    p.add_argument("a", help="NAME:vN or NAME:ALIAS")
    p.add_argument("b", help="NAME:vN or NAME:ALIAS")
    add_output(p)
    p.set_defaults(func=cmd_models_diff)
    p = models.add_parser("export", help="write a version for TF Serving, Triton or plain Keras (signatures: README)")
    p.add_argument("ref", help="NAME:vN or NAME:ALIAS")
    p.add_argument("dir", help="local folder; tf_serving writes DIR/NAME/N/")
    p.add_argument("--format", required=True, choices=["saved_model", "tf_serving", "keras"],
                   help="saved_model: DIR/saved_model.pb; tf_serving: DIR/NAME/N/saved_model.pb; keras: DIR/model.keras")
    p.add_argument("--force", action="store_true", help="replace what is already at the destination")
    p.set_defaults(func=cmd_models_export)
    for name, p in models.choices.items():
        add_storage(p)
        if name in ("promote", "rollback"):
            p.add_argument("--alias", default="production", help="the alias to move: production, staging, canary, ...")

    weights = sub.add_parser("weights", help="stage backbone weights for offline clusters").add_subparsers(
        dest="weights_cmd", required=True)
    p = weights.add_parser("stage", help="build a backbone (downloading ImageNet weights) and upload its .weights.h5")
    p.add_argument("backbone", help="backbone name, e.g. mobilenet_v2")
    p.add_argument("--to", required=True, help="destination .weights.h5 (path or s3:// URI)")
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"], help="what to stage")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="backbone constructor argument, e.g. alpha=0.35 (must match model.backbone_args)")
    p.set_defaults(func=cmd_weights_stage)
