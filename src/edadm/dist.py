"""Multi-process sampling on torch.distributed: `torchrun --nproc-per-node N -m edadm sample ...`.

Images are produced in fixed batches (batch b holds indices [b*bs, (b+1)*bs)) and batch b
goes to rank b mod world_size. An image depends only on (seed, index) and every batch has
the same composition whatever the number of processes, so 1 or N processes write
byte-identical files. Each image is written atomically as OUT_DIR/NNNNNN.png as soon as its
batch finishes; a rerun skips batches whose files all exist (resume after a crash or a
kill). When every rank is done, rank 0 packs all images into OUT_DIR/samples.npz
(uint8 [N, H, W, C]). Progress bars and messages come from rank 0 only.

Backends: nccl when each process has a GPU, gloo otherwise (CPU). Started without
torchrun (no WORLD_SIZE in the environment), everything runs in this one process.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import EdadmError
from .utils import atomic_file

log = logging.getLogger("edadm")

PACKED = "samples.npz"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without it)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def rank_device(info: DistInfo, device: str | None) -> str | None:
    """Each process on its own GPU under torchrun; the given device otherwise."""
    if info.world_size > 1 and torch.cuda.is_available() and device in (None, "auto", "cuda"):
        return f"cuda:{info.local_rank}"
    return device


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def finish(info: DistInfo) -> None:
    """Leave the process group (no-op for one process)."""
    if info.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def image_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"{index:06d}.png"


def my_batches(num: int, batch_size: int, info: DistInfo) -> list[tuple[int, int]]:
    """(start, count) of the batches this rank owns."""
    starts = range(0, num, batch_size)
    return [(s, min(batch_size, num - s)) for b, s in enumerate(starts) if b % info.world_size == info.rank]


def sample_to_dir(pipe, out_dir: str | Path, num: int, seed: int = 0, steps: int | None = None,
                  eta: float | None = None, batch_size: int = 250, progress: bool = True,
                  info: DistInfo | None = None, pack: bool = True, guidance_scale: float | None = None,
                  labels=None) -> dict:
    """Write images 0..num-1 of run `seed` into out_dir (this rank's share), resumably.
    `labels`: class-conditional models, one label per image (default: index mod classes)."""
    from PIL import Image

    from .eval.images import to_uint8
    from .sampling import generate

    info = info or DistInfo()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdadmError(f"cannot write output directory {out_dir}: {exc.strerror or exc}") from exc
    batches = my_batches(num, batch_size, info)
    todo = [(s, n) for s, n in batches if not all(image_path(out_dir, s + k).is_file() for k in range(n))]
    skipped = len(batches) - len(todo)
    if skipped and info.is_main:
        log.info("resuming: %d of this process's %d batches already written", skipped, len(batches))
    bar = tqdm(total=sum(n for _, n in batches), initial=sum(n for _, n in batches) - sum(n for _, n in todo),
               desc=f"sampling ({info.world_size} proc)", unit="img", disable=not (progress and info.is_main))
    written = 0
    for s, n in todo:
        imgs = generate(pipe, n, seed=seed, steps=steps, eta=eta, batch_size=batch_size, start=s, progress=False,
                        guidance_scale=guidance_scale, labels=None if labels is None else labels[s:s + n])
        for k, arr in enumerate(to_uint8(imgs)):
            f = image_path(out_dir, s + k)
            if f.is_file():
                continue  # written before an interruption: identical bytes, keep it
            with atomic_file(f) as tmp:
                Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")
            written += 1
        bar.update(n)
    bar.close()
    barrier(info)
    packed = None
    if pack and info.is_main:
        packed = pack_dir(out_dir, num)
    barrier(info)
    return {"written": written, "skipped_batches": skipped, "batches": len(batches), "packed": packed}


def pack_dir(out_dir: Path, num: int) -> Path:
    """All images 0..num-1 of out_dir into one uint8 array file, written atomically."""
    from PIL import Image

    missing = [i for i in range(num) if not image_path(out_dir, i).is_file()]
    if missing:
        raise EdadmError(f"{out_dir}: {len(missing)} images missing (first {missing[0]:06d}.png); rerun to finish")
    arrs = []
    for i in range(num):
        a = np.asarray(Image.open(image_path(out_dir, i)))
        arrs.append(a[..., None] if a.ndim == 2 else a)
    with atomic_file(out_dir / PACKED) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=np.stack(arrs))
    return out_dir / PACKED
