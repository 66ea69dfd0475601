import pytest

from edadm.eval.evaluate import add_paired_delta, format_table
from edadm.eval.metrics import mean_std


def _run(vals):
    per = [{"seed": i, "fid_digits": v} for i, v in enumerate(vals)]
    return {"per_seed": per, "summary": {"fid_digits": mean_std(vals)}}


def test_paired_delta_removes_the_shared_seed_spread():
    fp = _run([50.0, 75.0, 58.0])
    q = _run([52.0, 77.5, 59.0])
    add_paired_delta(q, fp)
    d = q["summary"]["fid_digits_delta"]
    assert d["values"] == [2.0, 2.5, 1.0]
    assert d["std"] < q["summary"]["fid_digits"]["std"] / 5
    table = format_table([("q", q["summary"])], keys=("fid_digits", "fid_digits_delta"))
    assert "ΔFID" in table and "1.833 ± 0.764" in table


def test_mean_std_single_value():
    assert mean_std([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1, "values": [3.0]}
    assert mean_std([1.0, 3.0])["std"] == pytest.approx(2 ** 0.5)
