import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import heldout_error, step_weighted, heldout_trajectories
from edadm.pipeline import load_pipeline
base = load_pipeline('digits-ddpm')
traj = heldout_trajectories(base, 64)
C = '/tmp/edadm-bench-cache/'
res = {}
for name in sys.argv[1:]:
    q = load_pipeline(C + name, engine='fake')
    res[name] = heldout_error(base.unet, q.unet, traj)
    print(name, 'done', flush=True)
names = list(res)
print('step t ' + ' '.join(names))
for s in range(0, traj.num_steps, 5):
    print(s, int(traj.ts[s]), ' '.join('%.3e' % res[n][s] for n in names))
for n in names:
    e = res[n]; k = len(e) // 3
    print(n, 'thirds', ['%.3e' % (sum(e[a:b]) / (b - a)) for a, b in ((0, k), (k, 2 * k), (2 * k, len(e)))],
          'x-weighted thirds', ['%.3e' % v for v in [sum(x) for x in (lambda w: (w[:k], w[k:2*k], w[2*k:]))(step_weighted(e, traj.ts, base.scheduler))]])
