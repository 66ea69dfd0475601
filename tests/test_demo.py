"""edadm demo: a tiny run end to end (report, engine line, one trajectory collection)."""
import json

from edadm.cli import main


def test_tiny_demo_writes_a_report_naming_engine_and_isa(tmp_path, capsys):
    out = tmp_path / "demo"
    # the default settings: naive W8A8 and W4A8, and the default method at W4A8 (tiny budget)
    code = main(["demo", "--num", "8", "--num-samples", "16", "--steps", "4", "--iters-scale", "0.001",
                 "--out", str(out), "--no-progress"])
    assert code in (0, None)
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"FP32", "W8A8 naive", "W4A8 naive", "W4A8 eda-dm-plus"}
    # FP calibration trajectories are collected once per calibration config: naive's (both settings), TDAC's
    assert [k for k in report["timings_s"] if "trajectories" in k] == ["calibration trajectories (naive)",
                                                                       "calibration trajectories (eda-dm-plus)"]
    assert report["results"]["W4A8 eda-dm-plus"]["quantize_report"]["seconds"]["reconstruction"] > 0
    assert report["results"]["W4A8 eda-dm-plus"]["quantize_report"]["iters"] == 5  # 5000 x 0.001
    assert report["machine"]["isa"] and "integer engine on" in report["kernels"]["W8A8 naive"]
    md = (out / "report.md").read_text()
    assert "Engine: int" in md and "16 calibration samples, reconstruction at 0.001 x" in md
    assert "defaults for eda-dm-plus: 1024 samples, 0.16 x" in md  # what a full `edadm quantize` uses
    assert (out / "samples.png").stat().st_size > 0


def test_settings_name_their_method_or_take_the_default():
    import pytest

    from edadm.demo import parse_setting
    from edadm.errors import EdadmError

    assert parse_setting("W4A8:eda-dm-plus", "naive") == (4, 8, "eda-dm-plus")
    assert parse_setting("w8a8", "naive") == (8, 8, "naive")
    with pytest.raises(EdadmError, match="unknown method 'edadm'"):
        parse_setting("w4a8:edadm", "naive")
    with pytest.raises(EdadmError, match="expected WxAy"):
        parse_setting("w4:eda-dm", "naive")
