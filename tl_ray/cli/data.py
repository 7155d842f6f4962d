"""``tl-ray data``: ingest, inspect and verify datasets."""

from __future__ import annotations

import argparse

from tl_ray.cli._common import add_output, print_json


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 5,6,7. Received: {text!r}") from None


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
        report = ingest.ingest_folder(args.source, args.to, validation_fraction=args.validation_fraction,
                                      skip_bad=args.skip_bad, **common)
    print_json(report)
    return 0


def cmd_data_inspect(args) -> int:
    from tl_ray.data.manifest import read_manifest

    manifest = read_manifest(args.uri)
    if args.output == "json":
        print(manifest.to_json())
        return 0
    size = "x".join(map(str, manifest.image_shape or [])) or "mixed sizes"
    print(f"{args.uri}: {manifest.num_rows} images ({size}) in {len(manifest.shards)} {manifest.format} shards, "
          f"{sum(s.bytes for s in manifest.shards) / 2**20:.1f} MiB; {len(manifest.class_names)} classes: "
          f"{', '.join(manifest.class_names)}")
    return 0


def cmd_data_verify(args) -> int:
    from tl_ray.data.manifest import verify

    problems = verify(args.uri)
    for p in problems:
        print(f"BAD  {p}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 3


def add_commands(sub) -> None:
    """Adds ``data ingest|inspect|verify`` to the ``tl-ray`` subparsers ``sub``."""
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
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class sample and the validation split")
    p.add_argument("--rows-per-shard", type=int, default=4096, help="images per shard file")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed in the report)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already at --to")
    p.add_argument("--format", default="parquet", choices=["parquet", "tfrecord"], help="shard format")
    p.add_argument("--target-shard-mb", type=float, default=64.0, help="a shard also closes at this many MiB")
    p.add_argument("--workers", type=int, help="threads that read and encode images (default min(8, CPUs+2))")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_data_ingest)
    p = data.add_parser("inspect", help="print a dataset's manifest")
    p.add_argument("uri")
    add_output(p)
    p.set_defaults(func=cmd_data_inspect)
    p = data.add_parser("verify", help="re-check every shard's sha256, row count and (TFRecord) CRCs")
    p.add_argument("uri")
    p.set_defaults(func=cmd_data_verify)
