"""Small shared helpers: devices, seeds, atomic output."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .errors import EdadmError

log = logging.getLogger("edadm")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def device_of(module: torch.nn.Module) -> torch.device:
    """Where a module computes: its first parameter's device, else its first buffer's (a
    runtime-backed denoiser, deploy.runtimes, has no parameters of its own), else CPU."""
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when present, else CPU; anything else is validated."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EdadmError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdadmError(f"device {device!r} requested but CUDA is not available")
    return dev


def image_seed(seed: int, index: int) -> int:
    """Seed of image `index` in a run seeded with `seed`.

    Every image gets its own generator so that an image depends only on (seed, index),
    not on the batch size or on how many processes share the work.
    """
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def initial_noise(seed: int, start: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T for images start..start+count-1 of a run, on CPU, float32."""
    out = torch.empty((count, *shape))
    for k in range(count):
        g = torch.Generator().manual_seed(image_seed(seed, start + k))
        out[k] = torch.randn(shape, generator=g)
    return out


def _usual_modes(root: Path) -> None:
    """Give what was written under root the modes of any newly created file (0666 / 0777 less
    the umask): some writers (safetensors) create their files 0600, which makes a model
    directory copied to a shared location unreadable to its other users."""
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` on success.

    On failure the temporary directory is removed, so `final` is never half-written.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    except OSError as exc:
        raise EdadmError(f"cannot write output directory {final}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        _usual_modes(tmp)
        if final.exists():
            if not overwrite:
                raise EdadmError(f"output {final} already exists")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `final`; rename it to `final` on success."""
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=final.suffix, dir=parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())
    except OSError as exc:
        raise EdadmError(f"cannot write {final}: {exc.strerror or exc}") from exc
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB.

    Linux: VmHWM from /proc/self/status, the high-water mark of this process's own address
    space. Not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a worker
    started by a large parent would report the parent's peak. Elsewhere: ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0  # macOS reports bytes
    except Exception:  # pragma: no cover - non-POSIX
        return None


def release_free_memory() -> bool:
    """Hand memory that was freed but kept by the C allocator back to the OS (glibc's
    malloc_trim). Loading a large model frees many mid-sized temporaries that glibc keeps in
    its heap: on the Stable Diffusion integer UNet that was 1 GB of resident memory after the
    load. Returns whether the call was made (False where glibc is not the allocator)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
