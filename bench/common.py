"""Shared helpers for benchmark scripts: machine / commit metadata and result writing."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edadm.demo import git_commit, machine_info
from edadm.utils import atomic_file


def metadata(argv: list[str] | None = None) -> dict:
    return {"command": "python " + " ".join(argv if argv is not None else sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_commit": git_commit(), "machine": machine_info()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
