"""The package's metadata in pyproject.toml: project URLs on the repository the cluster files install from."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _repository() -> str:
    """The repository the cluster files install tl-ray from (``https://github.com/OWNER/tl-ray``)."""
    match = re.search(r"https://github\.com/[\w.-]+/[\w.-]+?(?=/archive/)", (ROOT / "cluster" / "README.md").read_text())
    assert match, "cluster/README.md names no https://github.com/OWNER/REPO/archive/... source"
    return match.group(0)


def test_project_urls_point_at_the_repository_and_at_docs_that_exist():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    repo = _repository()
    for name, url in urls.items():
        assert url == repo or url.startswith(repo + "/"), f"project.urls.{name} is not on {repo}. Received: {url}"
        if "/blob/main/" in url:
            path = url.split("/blob/main/", 1)[1]
            assert (ROOT / path).is_file(), f"project.urls.{name} names {path}, which the repository lacks"
