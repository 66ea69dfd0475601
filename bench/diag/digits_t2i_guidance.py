"""digits-t2i FP quality vs guidance scale (250 images, seed 0, the pipeline's PLMS 50 steps).

The shipped default 7.5 (Stable Diffusion's) collapses every prompt to one prototype digit
(FP FID-digits ~570 on 1000 x 3, IS 10.0). Run: PYTHONPATH=src python bench/diag/digits_t2i_guidance.py"""
from edadm.eval import evaluate as ev
from edadm.pipeline import load_pipeline

p = load_pipeline('digits-t2i')
for g in (1.0, 1.5, 2.0, 3.0, 7.5):
    r, imgs = ev.evaluate_pipeline(p, 250, [0], batch_size=250, progress=False, guidance_scale=g)
    print(g, {k: round(v['mean'], 3) for k, v in r['summary'].items() if isinstance(v, dict) and 'mean' in v},
          flush=True)
