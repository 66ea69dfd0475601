"""Fuzzing with hypothesis: any config, command line or quantized directory either works
or ends in one EdadmError line; never another exception (a traceback for the user)."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edadm import cli
from edadm.config import CalibConfig, QuantConfig, ReconConfig
from edadm.errors import EdadmError

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)


def _section(cls) -> st.SearchStrategy:
    names = [f.name for f in fields(cls)]
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=10)), json_values, max_size=5)


config_dicts = st.fixed_dictionaries({}, optional={
    "calib": st.one_of(_section(CalibConfig), json_values), "recon": st.one_of(_section(ReconConfig), json_values),
}).flatmap(lambda subs: _section(QuantConfig).map(lambda top: {**top, **subs}))


def _one_line(exc: EdadmError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg


@settings(max_examples=300, deadline=None)
@given(config_dicts)
def test_any_config_dict_is_a_valid_config_or_one_error_line(d):
    try:
        cfg = QuantConfig.from_dict(d)
    except EdadmError as exc:
        _one_line(exc)
        return
    cfg.validate()  # what was accepted is valid, and survives a JSON round trip
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).to_dict() == cfg.to_dict()


QUANTIZE_FLAGS = ["--method", "--weight-bits", "--act-bits", "--num-samples", "--num-trajectories", "--uniform-steps",
                  "--weight-range", "--act-range", "--attn-bits", "--strategy", "--tdac-lambda", "--tdac-radius",
                  "--iters", "--recon-batch-size", "--lr-weight", "--lr-act", "--add-loss", "--round-weight", "--qdrop",
                  "--seed", "--steps", "--eta", "--batch-size", "--config", "--preset", "--sampler",
                  "--guidance-scale"]
SWITCHES = ["--recon", "--no-recon", "--split-shortcut", "--no-split-shortcut", "--resume", "--bogus", "-v"]
flag_values = st.one_of(st.sampled_from(["0", "-1", "1", "2", "4", "8", "9", "0.5", "1.5", "nan", "inf", "auto", "eda-dm",
                                         "naive", "mse", "tdac", "x", "", "cifar10", "coco",
                                         "imagenet", "plms", "ddpm"]),
                        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                max_size=6).filter(lambda s: not s.startswith("-")))
flag_pairs = st.lists(st.one_of(st.tuples(st.sampled_from(QUANTIZE_FLAGS), flag_values).map(list),
                                st.sampled_from(SWITCHES).map(lambda s: [s])), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=flag_pairs)
@example(flags=[["--config", "\x0c"]])  # found by this test: a form feed split the error over two lines
def test_any_quantize_command_line_parses_or_gives_one_error_line(flags, monkeypatch, capsys):
    """The whole argv goes through cli.main; the command itself is replaced by the part that
    turns flags into a validated QuantConfig (running it would quantize a model)."""
    seen = {}

    def fake_quantize(args):
        seen["config"] = cli.quant_config(args)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "quantize", fake_quantize)
    argv = ["quantize", "digits-ddpm", "--out", tempfile.gettempdir() + "/edadm-fuzz-out"]
    argv += [tok for pair in flags for tok in pair]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    if rc == 0:
        seen["config"].validate()
    else:
        assert rc == 2
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("edadm: error:") and "Traceback" not in err


# ---- quantized-directory loader ---------------------------------------------------------------

def _mutate_json(obj, path: list, value):
    """Set (or delete, value is ...) obj at the key path; returns obj."""
    if not path:
        return value
    key = path[0]
    if isinstance(obj, dict) and obj:
        k = list(obj)[key % len(obj)]
        if len(path) == 1 and value is ...:
            del obj[k]
        else:
            obj[k] = _mutate_json(obj[k], path[1:], value)
    elif isinstance(obj, list) and obj:
        i = key % len(obj)
        if len(path) == 1 and value is ...:
            del obj[i]
        else:
            obj[i] = _mutate_json(obj[i], path[1:], value)
    return obj


def _load_edited(src: Path, rel: str, edit, engine: str) -> None:
    """Copy the quantized dir, rewrite file `rel` with edit(bytes) -> bytes, load it: it
    must work or fail with one EdadmError line."""
    from edadm import load

    d = Path(tempfile.mkdtemp(prefix="edadm-fuzz-")) / "q"
    shutil.copytree(src, d)
    try:
        f = d / rel
        f.write_bytes(edit(f.read_bytes()))
        try:
            load(d, device="cpu", engine=engine)
        except EdadmError as exc:
            _one_line(exc)
    finally:
        shutil.rmtree(d.parent, ignore_errors=True)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=st.one_of(st.just(...), json_values),
       engine=st.sampled_from(["int", "fake"]))
def test_loader_survives_any_edit_of_the_layer_table(tiny_quant_dir, path, value, engine):
    def edit(data: bytes) -> bytes:
        return json.dumps(_mutate_json(json.loads(data), path, value)).encode()

    _load_edited(tiny_quant_dir, "unet/edadm_quant.json", edit, engine)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=8),
       engine=st.sampled_from(["int", "fake"]), which=st.sampled_from(["edadm_quant.safetensors", "config.json"]))
def test_loader_survives_corrupted_files(tiny_quant_dir, cut, flips, engine, which):
    """Truncated or bit-flipped tensors / config: load works (a flip inside a tensor's data
    is not detectable) or fails with one line."""
    def edit(raw: bytes) -> bytes:
        data = bytearray(raw)
        for pos, x in flips:
            data[int(pos * (len(data) - 1))] ^= x
        return bytes(data[: max(0, int(cut * len(data)))] if cut < 1 else data)

    _load_edited(tiny_quant_dir, f"unet/{which}", edit, engine)
