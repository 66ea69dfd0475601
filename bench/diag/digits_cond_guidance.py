from edadm.pipeline import load_pipeline
from edadm.eval import evaluate as ev
p = load_pipeline('digits-cond')
for g, steps in ((1.0, 20), (3.0, 100), (1.0, 100)):
    r, imgs = ev.evaluate_pipeline(p, 250, [0], steps=steps, batch_size=250, progress=False, guidance_scale=g)
    x = imgs[0]
    print(g, steps, {k: round(v['mean'], 3) for k, v in r['summary'].items() if isinstance(v, dict) and 'mean' in v}, 'mean px %.3f' % float(x.mean()), flush=True)
