from edadm.pipeline import load_pipeline, get_denoiser
from edadm.quant.wrap import quant_modules
from edadm.eval import evaluate as ev
C = '/tmp/edadm-bench-cache/'
NR, R = C + 'q-digits-ddpm-w8a8-qdiffusion-norecon', C + 'q-digits-ddpm-w8a8-qdiffusion'
def ld(p): return load_pipeline(p, engine='fake')
def copy_layers(dst, src, pred):
    s = dict(quant_modules(get_denoiser(src))); n_ = 0
    for n, m in quant_modules(get_denoiser(dst)):
        if pred(n):
            m.weight.data.copy_(s[n].weight.data); n_ += 1
            for (a, _), (b, _) in zip(m.weight_quantizers(), s[n].weight_quantizers()):
                a.scale.data.copy_(b.scale.data); a.zero_point.copy_(b.zero_point)
    return n_
te = lambda n: 'time_emb' in n
A = ld(R); print('replaced', copy_layers(A, ld(NR), te), 'time-embedding layers with nearest rounding', flush=True)
B = ld(NR); print('replaced', copy_layers(B, ld(R), lambda n: not te(n)), 'other layers with AdaRound', flush=True)
fp = load_pipeline('digits-ddpm')
ref, imgs = ev.evaluate_pipeline(fp, 500, [0], batch_size=250, progress=False)
for name, p in [('recon, time-emb layers nearest', A), ('no recon, AdaRound everywhere but time-emb', B)]:
    res, _ = ev.evaluate_pipeline(p, 500, [0], batch_size=250, reference=imgs, progress=False)
    sm = res['summary']; print(name, 'FID %.2f' % sm['fid_digits']['mean'], 'PSNR %.2f' % sm['psnr_vs_ref']['mean'], flush=True)
