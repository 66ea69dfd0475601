"""python -m edadm.recipes: the markdown table of every recipe's knobs."""
from .table import markdown_table

print(markdown_table())
