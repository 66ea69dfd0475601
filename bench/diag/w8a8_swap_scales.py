"""Which part of reconstruction costs Q-Diffusion W8A8 its quality: rounding or act scales?"""
import sys
from edadm.pipeline import load_pipeline, get_denoiser
from edadm.quant.wrap import act_quantizers
from edadm.eval import evaluate as ev
C = '/tmp/edadm-bench-cache/'
setting = sys.argv[1]; N = int(sys.argv[2]); seeds = [int(s) for s in sys.argv[3].split(',')]
NR, R = C + f'q-digits-ddpm-{setting}-qdiffusion-norecon', C + f'q-digits-ddpm-{setting}-qdiffusion'
def copy_acts(dst, src):
    s = dict(act_quantizers(get_denoiser(src)))
    for n, q in act_quantizers(get_denoiser(dst)):
        q.scale.data.copy_(s[n].scale.data); q.zero_point.copy_(s[n].zero_point)
def ld(p): return load_pipeline(p, engine='fake')
nr, r = ld(NR), ld(R)
A = ld(NR); copy_acts(A, r)   # MSE-rounded weights, learned act scales
B = ld(R); copy_acts(B, nr)   # AdaRound weights, MSE act scales
for n, q in list(act_quantizers(get_denoiser(r)))[:0]: pass
d = [(n, float(q.scale.flatten()[0]), float(dict(act_quantizers(get_denoiser(nr)))[n].scale.flatten()[0])) for n, q in act_quantizers(get_denoiser(r))]
import statistics
ratios = [a / b for _, a, b in d]
print('act scale learned/initial: median %.3f min %.3f max %.3f' % (statistics.median(ratios), min(ratios), max(ratios)))
for n, a, b in sorted(d, key=lambda x: x[1] / x[2])[:5] + sorted(d, key=lambda x: x[1] / x[2])[-5:]: print('  ', n, round(a / b, 3))
fp = load_pipeline('digits-ddpm')
ref, imgs = ev.evaluate_pipeline(fp, N, seeds, batch_size=250, progress=False)
print('fp', round(ref['summary']['fid_digits']['mean'], 2), flush=True)
for name, p in [('no recon', nr), ('recon', r), ('no-recon W + recon act scales', A), ('recon W + no-recon act scales', B)]:
    res, _ = ev.evaluate_pipeline(p, N, seeds, batch_size=250, reference=imgs, progress=False)
    sm = res['summary']
    print(name, 'FID %.2f ± %.2f' % (sm['fid_digits']['mean'], sm['fid_digits'].get('std', 0)), 'PSNR %.2f' % sm['psnr_vs_ref']['mean'], flush=True)
