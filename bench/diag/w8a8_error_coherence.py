"""Do a quantized model's eps errors point the same way from step to step (and so add up
along a trajectory instead of averaging out)? On 64 held-out FP trajectories
(teacher-forced), per sample: cosine between the error e_s = eps_q - eps_FP at steps s and
s + 1, and between steps s and s + 10, averaged over samples; every 10th step.

PYTHONPATH=src python bench/diag/w8a8_error_coherence.py DIR..."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import heldout_trajectories  # noqa: E402

import torch
import torch.nn.functional as F

from edadm.pipeline import load_pipeline

base = load_pipeline('digits-ddpm')
traj = heldout_trajectories(base, 64)
for name in sys.argv[1:]:
    q = load_pipeline(name, engine='fake')
    errs = {}
    with torch.no_grad():
        for s in range(traj.num_steps):
            x, t = traj.xs[s], traj.ts[s]
            errs[s] = (q.unet(x, t).sample - base.unet(x, t).sample).flatten(1)
    cos1 = [float(F.cosine_similarity(errs[s], errs[s + 1]).mean()) for s in range(0, traj.num_steps - 1, 10)]
    cos10 = [float(F.cosine_similarity(errs[s], errs[s + 10]).mean()) for s in range(0, traj.num_steps - 10, 10)]
    print(name.rstrip('/').split('/')[-1], 'cos(s, s+1) every 10th step:', ' '.join('%.2f' % c for c in cos1),
          '| mean %.3f' % (sum(cos1) / len(cos1)), flush=True)
    print('   cos(s, s+10):', ' '.join('%.2f' % c for c in cos10), '| mean %.3f' % (sum(cos10) / len(cos10)), flush=True)
