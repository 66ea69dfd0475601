"""Resumable quantization: the run's state on disk, written atomically at each stage.

Layout of a checkpoint directory (by default `.NAME.ckpt` beside the output directory):

    config.json          the QuantConfig of the run; a resume with another config is refused
    calib.pt             calibration set, per-step counts, timesteps, allocation details, timings
    ranges.safetensors   the wrapped denoiser's full state after weight / activation ranges
    units/NNNN.pt        per reconstructed unit, in forward order: the tensors of that unit
                         (baked weights, learned activation step sizes) and its log

A unit's reconstruction touches only its own tensors, so ranges + unit files in order give
exactly the state after the last finished unit. Each file is written to a temporary name and
renamed, so a kill at any moment leaves only whole files.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from .config import QuantConfig
from .errors import EdadmError
from .utils import atomic_file

log = logging.getLogger("edadm")


def _normalised(d: dict) -> dict:
    """The run description as JSON, its quantization config with every field this edadm has:
    a checkpoint written before a field existed holds no value for it, which means the field's
    default (new fields are added with defaults that keep the old behaviour)."""
    d = json.loads(json.dumps(d))
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        try:
            d["config"] = QuantConfig.from_dict(d["config"]).resolved_dict()
        except EdadmError:
            pass  # not a QuantConfig: compared as written
    return d


class Checkpoint:
    def __init__(self, path: str | Path, config_dict: dict, resume: bool):
        self.path = Path(path)
        self.resume = resume
        cfg_file = self.path / "config.json"
        if resume and cfg_file.is_file():
            try:
                saved = json.loads(cfg_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise EdadmError(f"cannot read checkpoint {cfg_file}: {exc}") from exc
            if _normalised(saved) != _normalised(config_dict):
                raise EdadmError(f"checkpoint {self.path} was made with a different configuration; "
                                 "rerun without --resume or with the same flags")
        elif self.path.exists() and not resume:
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            (self.path / "units").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdadmError(f"cannot write checkpoint directory {self.path}: {exc.strerror or exc}") from exc
        if not cfg_file.is_file():
            with atomic_file(cfg_file) as tmp:
                tmp.write_text(json.dumps(config_dict, indent=2))

    # -- calibration set ------------------------------------------------------------------------
    def load_calib(self) -> dict | None:
        f = self.path / "calib.pt"
        if not (self.resume and f.is_file()):
            return None
        log.info("resuming: calibration set from %s", f)
        return torch.load(f, weights_only=False)

    def save_calib(self, data: dict) -> None:
        with atomic_file(self.path / "calib.pt") as tmp:
            torch.save(data, tmp)

    # -- ranges ---------------------------------------------------------------------------------
    def load_ranges(self, model: torch.nn.Module) -> bool:
        from safetensors.torch import load_file

        f = self.path / "ranges.safetensors"
        if not (self.resume and f.is_file()):
            return False
        model.load_state_dict(load_file(str(f), device=str(next(model.parameters()).device)), strict=True)
        log.info("resuming: weight and activation ranges from %s", f)
        return True

    def save_ranges(self, model: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        with atomic_file(self.path / "ranges.safetensors") as tmp:
            save_file(state, str(tmp))

    # -- reconstructed units ----------------------------------------------------------------------
    def finished_units(self) -> list[dict]:
        """Saved units in order (stops at the first gap)."""
        if not self.resume:
            return []
        out = []
        while (f := self.path / "units" / f"{len(out):04d}.pt").is_file():
            out.append(torch.load(f, weights_only=False))
        return out

    def save_unit(self, index: int, name: str, model: torch.nn.Module, ulog: dict) -> None:
        unit = model.get_submodule(name)
        state = {k: v.detach().cpu().clone() for k, v in unit.state_dict().items()}
        with atomic_file(self.path / "units" / f"{index:04d}.pt") as tmp:
            torch.save({"name": name, "state": state, "log": ulog}, tmp)

    @staticmethod
    def apply_unit(model: torch.nn.Module, saved: dict) -> None:
        unit = model.get_submodule(saved["name"])
        unit.load_state_dict(saved["state"], strict=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def default_checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.ckpt"
