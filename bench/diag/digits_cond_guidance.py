"""digits-cond FP quality vs guidance scale (250 images, seed 0, the pipeline's DDIM sampler).

Found the guidance bug with it: the shipped scheduler clipped x0 (clip_sample) while keeping
the guided eps. Run: PYTHONPATH=src python bench/diag/digits_cond_guidance.py"""
from edadm.pipeline import load_pipeline
from edadm.eval import evaluate as ev

p = load_pipeline('digits-cond')
print('clip_sample', p.scheduler.config.clip_sample)
for g, steps in ((1.0, 20), (2.0, 20), (3.0, 20)):
    r, imgs = ev.evaluate_pipeline(p, 250, [0], steps=steps, batch_size=250, progress=False, guidance_scale=g)
    x = imgs[0]
    print(g, steps, {k: round(v['mean'], 3) for k, v in r['summary'].items() if isinstance(v, dict) and 'mean' in v},
          'mean px %.3f' % float(x.mean()), flush=True)
