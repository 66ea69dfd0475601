"""The front page and the docs stay true: README short, its Python example runs, the
generated results index lists every results page."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", "\n".join(lines)):
        assert (ROOT / link).exists(), link


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    full = 'QuantConfig(method="eda-dm-plus", weight_bits=4, act_bits=8)'
    assert full in code
    tiny = ('QuantConfig(method="eda-dm-plus", weight_bits=4, act_bits=8, steps=4, '
            'calib={"num_samples": 8, "num_trajectories": 8, "batch_size": 8}, recon={"iters": 2, "batch_size": 4})')
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code.replace(full, tiny).replace("num=16", "num=2"), "README.md", "exec"), ns)
    assert ns["images"].shape == (2, 1, 32, 32)
    assert ns["q"].quantized and (tmp_path / "q-w4a8" / "model_index.json").is_file()


def test_results_index_lists_every_results_page():
    index = (ROOT / "docs" / "results.md").read_text()
    results = ROOT / "bench" / "results"
    for f in results.rglob("*.md"):
        rel = f.relative_to(results)
        if "runs" in rel.parts or rel.parts[0].endswith("_runs"):
            continue
        assert f"../bench/results/{rel.as_posix()}" in index, f"{rel}: run python bench/results_page.py"
