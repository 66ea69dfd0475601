"""python -m edadm.recipes: print the table of every recipe's knobs (docs/recipes.md)."""
from . import markdown_table

print(markdown_table())
