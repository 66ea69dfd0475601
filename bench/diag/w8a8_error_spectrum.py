"""Where in frequency does a quantized model's image error sit? 64 images sampled from the
same noise (seed 5) by FP and each quantized model; the error image q - FP goes through a
2-D FFT and its energy is split into radial frequency bands (of 32x32: |f| < 4, 4-8, 8-12,
>= 12 cycles per image). Also the high-pass energy of the images themselves.

PYTHONPATH=src python bench/diag/w8a8_error_spectrum.py DIR..."""
import sys

import torch

from edadm.pipeline import generate, load_pipeline

base = load_pipeline('digits-ddpm')
ref = generate(base, 64, seed=5, progress=False)
f = torch.fft.fftfreq(32) * 32
r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
bands = [(0, 4), (4, 8), (8, 12), (12, 99)]


def split(img):
    p = torch.fft.fft2(img[:, 0]).abs().pow(2).mean(0)
    return [float(p[(r >= a) & (r < b)].sum()) for a, b in bands]


print('bands |f| in cycles per image:', bands)
print('FP image energy per band: ' + ' '.join('%.3g' % v for v in split(ref)))
for name in sys.argv[1:]:
    img = generate(load_pipeline(name, engine='fake'), 64, seed=5, progress=False)
    e = split(img - ref)
    tot = sum(e)
    print(name.rstrip('/').split('/')[-1], 'error energy %.4g' % tot, 'fractions:', ' '.join('%.3f' % (v / tot) for v in e),
          '| image high-band (>=12) energy %.4g (FP %.4g)' % (split(img)[3], split(ref)[3]), flush=True)
