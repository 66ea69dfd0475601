"""edadm demo: a tiny run end to end (report, engine line, one trajectory collection)."""
import json

from edadm.cli import main


def test_tiny_demo_writes_a_report_naming_engine_and_isa(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--num", "8", "--settings", "w8a8,w4a8", "--num-samples", "16", "--steps", "4",
                 "--out", str(out), "--no-progress"])
    assert code in (0, None)
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"FP32", "W8A8 naive", "W4A8 naive"}
    # FP calibration trajectories are collected once for both settings (one calibration config)
    assert [k for k in report["timings_s"] if "trajectories" in k] == ["calibration trajectories (naive)"]
    assert report["machine"]["isa"] and "integer engine on" in report["kernels"]["W8A8 naive"]
    assert "Engine: int" in (out / "report.md").read_text()
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
