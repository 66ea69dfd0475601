"""eps MSE / x0-prediction error (eps MSE x (1 - a_t) / a_t) at each of the last ten DDIM steps, 64 held-out trajectories.
PYTHONPATH=src python bench/diag/w8a8_last_steps.py DIR..."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import heldout_trajectories  # noqa: E402
import torch
from edadm.pipeline import load_pipeline
base = load_pipeline('digits-ddpm')
traj = heldout_trajectories(base, 64)
a = base.scheduler.alphas_cumprod
for name in sys.argv[1:]:
    q = load_pipeline(name, engine='fake'); out = []
    with torch.no_grad():
        for s in range(90, 100):
            x, t = traj.xs[s], traj.ts[s]
            e = q.unet(x, t).sample - base.unet(x, t).sample
            # error of the x0 prediction made from it, in pixels ([-1, 1] scale)
            out.append('%d:%.2e/%.2e' % (int(t), float(e.pow(2).mean()), float(e.pow(2).mean() * (1 - a[int(t)]) / a[int(t)])))
    print(name.split('/')[-1], ' '.join(out), flush=True)
