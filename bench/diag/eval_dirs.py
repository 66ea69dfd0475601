import sys
from edadm.pipeline import load_pipeline
from edadm.eval import evaluate as ev
N = int(sys.argv[1]); dirs = sys.argv[2:]
fp = load_pipeline('digits-ddpm')
ref, imgs = ev.evaluate_pipeline(fp, N, [0], batch_size=250, progress=False)
print('fp', round(ref['summary']['fid_digits']['mean'], 2), flush=True)
for d in dirs:
    res, _ = ev.evaluate_pipeline(load_pipeline(d, engine='fake'), N, [0], batch_size=250, reference=imgs, progress=False)
    sm = res['summary']; print(d, 'FID %.2f' % sm['fid_digits']['mean'], 'PSNR %.2f' % sm['psnr_vs_ref']['mean'], flush=True)
