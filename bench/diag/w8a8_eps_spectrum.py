"""Does a quantized model predict less (or more) high-frequency noise than FP at the last steps?
64 held-out FP trajectories; at each of the last ten DDIM steps the eps prediction of FP and of
each model on the same x_t, high-pass filtered (the top band of w8a8_error_spectrum.py).
Prints per step the model's high-band (|f| >= 12 cycles per image) eps energy relative to FP's
(< 1: the noise estimate is attenuated, so noise stays in the image) and the correlation of the
model's high-band eps with FP's (how much of the fine noise it still finds).
PYTHONPATH=src python bench/diag/w8a8_eps_spectrum.py DIR..."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import heldout_trajectories  # noqa: E402
import torch
from edadm.pipeline import load_pipeline
base = load_pipeline('digits-ddpm')
traj = heldout_trajectories(base, 64)
f = torch.fft.fftfreq(32) * 32
high = ((f[:, None] ** 2 + f[None, :] ** 2).sqrt() >= 12).to(torch.complex64)


def highpass(e):
    return torch.fft.ifft2(torch.fft.fft2(e[:, 0]) * high).real


with torch.no_grad():
    fp = {s: base.unet(traj.xs[s], traj.ts[s]).sample for s in range(90, 100)}
print('step:t ratio(high-band eps energy model / FP) corr(high-band eps model, FP)')
for name in sys.argv[1:]:
    q = load_pipeline(name, engine='fake')
    out = []
    with torch.no_grad():
        for s in range(90, 100):
            hq, hf = highpass(q.unet(traj.xs[s], traj.ts[s]).sample), highpass(fp[s])
            ratio = float(hq.pow(2).sum() / hf.pow(2).sum())
            corr = float((hq * hf).sum() / (hq.norm() * hf.norm()))
            out.append('%d:%.3f/%.3f' % (int(traj.ts[s]), ratio, corr))
    print(name.rstrip('/').split('/')[-1], ' '.join(out), flush=True)
