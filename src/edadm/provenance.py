"""Where a measurement was taken: the machine (CPU, ISA oneDNN uses, threads, load) and the
code (git commit). One module used by `edadm demo`, the reports and every script in bench/."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def machine_info() -> dict:
    from .deploy.kernels import isa_info

    isa = isa_info()
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "isa": isa["isa"],
            "machine_isa": isa["machine_isa"], "int8_accumulation": isa["int8_accumulation"],
            "aten_capability": isa["aten_capability"], "cpu_flags": " ".join(isa["cpu_flags"])}
    try:  # a load well above 0 while measuring means another process shared the cores
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
