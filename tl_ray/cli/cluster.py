"""``tl-ray submit`` (a command as a Ray Job on a cluster) and ``tl-ray jobs list|logs|stop``."""

from __future__ import annotations

import os

from tl_ray.cli._common import add_output, add_spec, print_json


def cmd_submit(args) -> int:
    from tl_ray import submit

    job_id = submit.submit(args.spec, args.address, command=args.job_command, overrides=args.set,
                           package=args.package, pip_requirement=args.pip, env_names=args.env or None)
    if not args.no_wait:  # as `ray job submit`: stream the logs, exit non-zero unless the job succeeded
        print(f"{job_id} {submit.follow(args.address, job_id)}")
    return 0


def cmd_jobs_list(args) -> int:
    from tl_ray import submit

    rows = submit.list_jobs(args.address)
    if args.output == "json":
        print_json(rows)
        return 0
    for row in rows:
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


def _job_api_address() -> str:
    """$RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS, else the local head's job API."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    return os.environ.get("RAY_API_SERVER_ADDRESS") or (
        ray_address if ray_address.startswith("http") else "http://127.0.0.1:8265")


def add_commands(sub) -> None:
    """Adds ``submit`` and ``jobs list|logs|stop`` to the ``tl-ray`` subparsers ``sub``."""
    address = _job_api_address()
    p = sub.add_parser("submit", help="run a tl-ray command on a Ray cluster as a Ray Job")
    add_spec(p)
    p.add_argument("job_command", nargs="?", default="run", choices=["run", "tune", "train", "serve"])
    p.add_argument("--address", default=address, help="the cluster's job API (default $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--package", default="source", choices=["source", "pip"],
                   help="ship this tl-ray as source, or install a pinned pip requirement on the cluster")
    p.add_argument("--pip", help="pip requirement with --package pip (default tl-ray==<this version>)")
    p.add_argument("--env", action="append", metavar="NAME",
                   help="forward this environment variable by name (default: the AWS_* variables that are set)")
    p.add_argument("--no-wait", action="store_true",
                   help="print the job ID and return at once (by default the job's logs stream until it ends, "
                        "and the exit code is non-zero unless it succeeded)")
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, follow and stop Ray Jobs").add_subparsers(dest="jobs_cmd", required=True)
    for name, func, helptext in (
        ("list", cmd_jobs_list, "list the cluster's jobs"),
        ("logs", cmd_jobs_logs, "print (or --follow) a job's logs"),
        ("stop", cmd_jobs_stop, "stop a job"),
    ):
        p = jobs.add_parser(name, help=helptext)
        p.add_argument("--address", default=address, help="the cluster's job API")
        if name == "list":
            add_output(p)
        else:
            p.add_argument("job_id")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
        p.set_defaults(func=func)
