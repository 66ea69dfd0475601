"""Per-unit reconstruction result of finished quality entries, side by side: each unit's block
output MSE after / before reconstruction on its own calibration set (as logged by
`edadm quantize`), and the geometric mean over units. Reads only committed JSON, no model run.
Calibration sets differ between methods (uniform vs TDAC), so compare ratios, not raw MSEs.
python bench/diag/recon_unit_ratios.py w4a8/qdiffusion w4a8/qdiffusion-refrecon w4a8/eda-dm ..."""
import json
import math
import sys
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "results" / "quality_runs" / "digits-ddpm"
names = sys.argv[1:]
units = [{u["name"]: u for u in json.loads((RUNS / f"{n}.json").read_text())["recon"]["per_unit"]} for n in names]
print("unit".ljust(34) + "".join(n.split("/")[-1].rjust(22) for n in names))
for unit in units[0]:
    print(unit[:34].ljust(34) + "".join(f"{u[unit]['after'] / u[unit]['before']:22.3f}" for u in units))
geo = [math.exp(sum(math.log(v["after"] / v["before"]) for v in u.values()) / len(u)) for u in units]
print("geometric mean".ljust(34) + "".join(f"{g:22.3f}" for g in geo))
