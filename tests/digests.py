"""SHA-256 digests of what quantization produces, to prove a restructuring changed nothing.

For naive W8A8 and EDA-DM W4A8 on the shipped digits-ddpm at a tiny setting (fixed seeds,
one thread): the digest of every saved quantized tensor (integer codes, scales, zero points)
and of 16 images sampled from the saved directory with the integer engine. Float last bits
differ between CPUs, so digests are recorded per machine key (CPU model, torch's and
oneDNN's ISA, torch version) and checked only against the same key.

    python tests/digests.py --record   # before a change: write tests/data/digests.json
    python tests/digests.py            # after it: recompute and compare (exit 1 on a mismatch)

tests/test_digests.py runs the check when the current machine's key is recorded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

RECORD = Path(__file__).parent / "data" / "digests.json"
CASES = {
    "naive-w8a8": dict(method="naive", weight_bits=8, act_bits=8, steps=10,
                       calib=dict(num_samples=40, num_trajectories=20, uniform_steps=10, batch_size=40)),
    "eda-dm-w4a8": dict(method="eda-dm", weight_bits=4, act_bits=8, steps=10,
                        calib=dict(num_samples=40, num_trajectories=40, batch_size=40),
                        recon=dict(iters=20, batch_size=8)),
}


def machine_key() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from edadm.deploy.kernels import isa_info
        isa = isa_info()["isa"]
    except Exception:  # noqa: BLE001 - the key only needs to be stable on one machine
        isa = "?"
    return f"{cpu} | torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()} | oneDNN {isa}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compute(cases=None) -> dict:
    import torch
    from safetensors.torch import load_file

    import edadm

    try:  # the sampler loop's home before and after the restructuring
        from edadm.sampling import generate
    except ImportError:
        from edadm.sampling import generate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: _case(name, torch, load_file, edadm, generate) for name in cases or CASES}
    finally:
        torch.set_num_threads(threads)


def _case(name, torch, load_file, edadm, generate) -> dict:
    torch.manual_seed(0)
    pipe = edadm.load("digits-ddpm", device="cpu")
    edadm.quantize(pipe, edadm.QuantConfig.from_dict(json.loads(json.dumps(CASES[name]))), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        qdir = Path(tmp) / "q"
        edadm.save(pipe, qdir)
        tensors = {}
        for f in sorted(qdir.rglob("*.safetensors")):
            for k, v in sorted(load_file(str(f)).items()):
                tensors[f"{f.relative_to(qdir)}:{k}"] = _sha(v.contiguous().numpy().tobytes())
        loaded = edadm.load(qdir, device="cpu", engine="int")
        imgs = generate(loaded, 16, seed=0, progress=False)
    return {"tensors": _sha(json.dumps(tensors, sort_keys=True).encode()), "num_tensors": len(tensors),
            "images": _sha(imgs.contiguous().numpy().tobytes())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="write this machine's digests into tests/data/digests.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    key = machine_key()
    got = compute()
    records = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if args.record:
        records[key] = got
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        tmp = RECORD.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        tmp.replace(RECORD)
        print(f"recorded for {key}: {json.dumps(got)}")
        return 0
    if key not in records:
        print(f"no digests recorded for this machine ({key}); run with --record before the change", file=sys.stderr)
        return 2
    bad = [n for n in got if got[n] != records[key].get(n)]
    for n in got:
        print(f"{n}: {'same' if n not in bad else 'DIFFERENT'} {json.dumps(got[n])}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
