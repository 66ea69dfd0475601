"""The recipe registry: one file per method, the table in docs/recipes.md current."""
from pathlib import Path

import pytest

from edadm import recipes
from edadm.config import QuantConfig
from edadm.errors import EdadmError
from edadm.recipes.table import markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_docs_table_is_generated_from_the_recipe_files():
    text = DOC.read_text()
    start, end = text.index("<!-- recipes-table -->\n"), text.index("<!-- /recipes-table -->")
    assert text[start + len("<!-- recipes-table -->\n"):end].strip() == markdown_table().strip(), (
        "docs/recipes.md is stale: paste `python -m edadm.recipes` between the markers")


def test_a_new_recipe_file_is_a_new_method(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text('about = "test"\n[calib]\nstrategy = "random"\nnum_samples = 64\n'
                                        '[recon]\nenabled = false\n')
    monkeypatch.setattr(recipes, "_DIR", tmp_path)
    recipes.registry.cache_clear()
    try:
        assert recipes.names() == ("mine",)
        cfg = recipes.resolve(QuantConfig(method="mine"))
        assert (cfg.calib.strategy, cfg.calib.num_samples, cfg.recon.enabled) == ("random", 64, False)
    finally:
        recipes.registry.cache_clear()


@pytest.mark.parametrize("text,needle", [("[calib]\nnum_samplez = 3\n", "unknown calib keys"),
                                         ("oops = 1\n", "unknown keys"), ("[calib\n", "cannot read recipe")])
def test_bad_recipe_files_are_one_line_errors(tmp_path, monkeypatch, text, needle):
    (tmp_path / "bad.toml").write_text(text)
    monkeypatch.setattr(recipes, "_DIR", tmp_path)
    recipes.registry.cache_clear()
    try:
        with pytest.raises(EdadmError, match=needle):
            recipes.resolve(QuantConfig(method="bad"))
    finally:
        recipes.registry.cache_clear()
