"""Is the W8A8 reconstruction error a systematic bias? Per step, on 64 held-out FP
trajectories (teacher-forced, seed 987654): total eps MSE vs FP, the part shared by all
samples (mean over samples of the error, squared, averaged over pixels) and the mean error
(DC offset). Then the same 64 images sampled freely: mean pixel value and PSNR vs FP.

PYTHONPATH=src python bench/diag/w8a8_bias.py DIR..."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import heldout_trajectories  # noqa: E402
import torch
from edadm.pipeline import generate, load_pipeline

base = load_pipeline('digits-ddpm')
traj = heldout_trajectories(base, 64)
ref = generate(base, 64, seed=5, progress=False)
print('fp image mean %.4f' % float(ref.mean()))
for name in sys.argv[1:]:
    q = load_pipeline(name, engine='fake')
    rows = []
    with torch.no_grad():
        for s in range(0, traj.num_steps, 5):
            x, t = traj.xs[s], traj.ts[s]
            f = base.unet(x, t).sample
            e = q.unet(x, t).sample - f
            k = float((e * f).sum() / f.pow(2).sum())  # PTQD's correlated part: e = k * eps_fp + residual
            rows.append((s, int(t), float(e.pow(2).mean()), float(e.mean(0).pow(2).mean()), float(e.mean()), k,
                         float((e - k * f).pow(2).mean())))
    img = generate(q, 64, seed=5, progress=False)
    from edadm.eval.images import save_grid
    save_grid(torch.cat([ref[:16], img[:16]]), f'/tmp/bias_{name.rstrip("/").split("/")[-1]}.png', nrow=16, upscale=3)
    psnr = float(10 * torch.log10(1 / (img - ref).pow(2).mean()))
    print(name, 'image mean %.4f (fp %.4f), PSNR %.2f' % (float(img.mean()), float(ref.mean()), psnr))
    print(' step t mse shared_mse shared_frac dc k(corr) resid_mse')
    for s, t, m, b, dc, k, r in rows:
        print(' %d %d %.3e %.3e %.2f %+.2e %+.4f %.3e' % (s, t, m, b, b / m, dc, k, r))
    sys.stdout.flush()
