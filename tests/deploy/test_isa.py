"""The integer-kernel tests again, in a subprocess per oneDNN ISA this machine reaches.

oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when torch first uses it, so each ISA needs its
own process. The tests marked ``isa`` (per-layer exactness of every kernel on full-range
codes, the guard, one denoiser call of digits-ddpm W8A8 and W4A8 against the simulation)
run under each cap; an ISA above the machine's is skipped with its name.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edadm.deploy import backends, kernels

from conftest import TRAINED_Q_ENV

CHILD = "EDADM_ISA_CHILD"
ISAS = ["AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_AMX"]


@pytest.mark.skipif(bool(os.environ.get(CHILD)), reason="already inside an ISA subprocess")
@pytest.mark.parametrize("isa", ISAS)
def test_integer_kernels_under_isa_cap(isa, trained_quant_dirs):
    info = kernels.isa_info()
    if not info["x86"]:
        pytest.skip(f"{isa}: not an x86 CPU ({info['machine_isa']})")
    if kernels._rank(isa) > kernels._rank(info["machine_isa"]):
        pytest.skip(f"{isa} is above this CPU's ISA ({info['machine_isa']})")
    tests = Path(__file__).parent
    # the child loads the quantized digits-ddpm directories made once here (conftest.trained_quant_dirs)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, CHILD: "1",
           TRAINED_Q_ENV: str(trained_quant_dirs["w8a8"].parent)}
    env.pop(backends.KERNEL_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "isa", "-p", "no:cacheprovider",
                           str(tests / "test_intengine.py"), str(tests / "test_kernels.py")],
                          capture_output=True, text=True, env=env, cwd=tests.parent.parent, timeout=1200)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    assert proc.returncode == 0, f"under ONEDNN_MAX_CPU_ISA={isa}:\n{tail}"
    assert " passed" in tail, tail
