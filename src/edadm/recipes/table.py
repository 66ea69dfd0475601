"""The recipes side by side: every knob of every recipe as QuantConfig resolves it
(docs/recipes.md embeds this table; tests/test_recipes.py checks it is current). Apart from
the registry because it needs the config, and the config needs the registry."""
from __future__ import annotations

from ..config import QuantConfig
from . import names, resolve

# Knobs shown by markdown_table, in order: (label, section, field); section None: QuantConfig.
KNOBS = [
    ("calibration strategy", "calib", "strategy"), ("calibration samples N", "calib", "num_samples"),
    ("FP trajectories B", "calib", "num_trajectories"), ("uniform steps", "calib", "uniform_steps"),
    ("TDAC lambda", "calib", "tdac_lambda"), ("TDAC radius", "calib", "tdac_radius"),
    ("activation range kind", None, "act_range_kind"), ("activation range search", None, "act_range"),
    ("weight range search", None, "weight_range"), ("Lp of the range searches", None, "lp"),
    ("weights symmetric", None, "weight_symmetric"), ("split shortcut", None, "split_shortcut"),
    ("reconstruction", "recon", "enabled"), ("stages", "recon", "stages"),
    ("reference iterations per unit (stage 1 / joint)", "recon", "reference_iters"),
    ("reference iterations per unit (stage 2)", "recon", "reference_act_iters"),
    ("iterations at the default scale (stage 1 / joint)", "recon", "iters"),
    ("iterations at the default scale (stage 2)", "recon", "act_iters"), ("batch", "recon", "batch_size"),
    ("learned rounding (AdaRound)", "recon", "learn_rounding"), ("rounding lr (Adam)", "recon", "lr_weight"), ("rounding lr schedule", "recon", "lr_weight_schedule"),
    ("rounding regulariser weight", "recon", "round_weight"), ("regulariser beta", "recon", "b_start"),
    ("regulariser warm-up", "recon", "warmup"), ("step-size lr (Adam, cosine)", "recon", "lr_act"),
    ("step-size lr relative to the initial step", "recon", "lr_act_relative"),
    ("stage-2 loss exponent p", "recon", "act_loss_p"), ("loss balance over timesteps", "recon", "step_balance"), ("FBR inner-layer weight", "recon", "add_loss"),
    ("QDrop input mixing", "recon", "input_mix_prob"), ("QDrop activation drop", "recon", "act_drop_prob"),
]


def markdown_table() -> str:
    """Every knob of every recipe as QuantConfig resolves it, W4 / W8 where they differ
    (docs/recipes.md embeds this table; a test checks it is current)."""
    first = ["naive", "ptq4dm", "qdiffusion", "eda-dm"]
    order = [n for n in first if n in names()] + [n for n in names() if n not in first]
    cfgs = {n: (resolve(QuantConfig(method=n, weight_bits=4)), resolve(QuantConfig(method=n, weight_bits=8)))
            for n in order}
    stage2 = {"reference_act_iters", "act_iters", "act_loss_p"}
    rounding_reg = {"b_start", "warmup"}
    rounding = {"lr_weight", "lr_weight_schedule", "round_weight", "b_start", "warmup"}

    def value(c, section, key):
        r = c.recon
        if section == "recon" and key != "enabled" and not r.enabled:
            return "-"  # no reconstruction: its knobs do not apply
        if (key in stage2 and r.stages != "two-stage") or (key in rounding_reg and r.round_weight == 0) or (
                key in rounding and not r.learn_rounding):
            return "-"
        if (key == "uniform_steps" and c.calib.strategy != "uniform") or (
                key in ("tdac_lambda", "tdac_radius") and c.calib.strategy != "tdac"):
            return "-"
        if key == "b_start":
            return f"{r.b_start:g} -> {r.b_end:g}"
        if key == "weight_symmetric" and c.weight_symmetric is None:
            return "yes at 8 bits, no below"
        v = getattr(c if section is None else getattr(c, section), key)
        return f"{v:g}" if isinstance(v, float) else str(v)

    def cell(n, section, key):
        vals = [value(c, section, key) for c in cfgs[n]]
        return vals[0] if vals[0] == vals[1] else f"{vals[0]} (W4) / {vals[1]} (W8)"

    lines = ["| knob | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for label, section, key in KNOBS:
        lines.append(f"| {label} | " + " | ".join(cell(n, section, key) for n in order) + " |")
    return "\n".join(lines)

