"""What the CPU kernels may use on this machine: the host CPU's features (as numba compiles for them) and AMX.

Intel AMX (``amx-tile`` + ``amx-int8``) keeps 8 tile registers of up to 16 rows × 64 bytes; Linux hands their state
(XTILEDATA, ~8 KiB a thread) only to a process that asks for it (``arch_prctl(ARCH_REQ_XCOMP_PERM, 18)``, once; a
forked child keeps the permission). :data:`AMX` is true where the CPU has the instructions and the kernel granted
the request at import; kernels compiled with it false never emit a tile instruction.

Example::

    >>> isinstance(AMX, bool) and isinstance(FEATURES, dict)
    True
"""

from __future__ import annotations

import ctypes
import platform
import sys

import llvmlite.binding as llvm

FEATURES: dict[str, bool] = dict(llvm.get_host_cpu_features())   # what the compiled kernels will be built for
_SYS_ARCH_PRCTL = 158                   # x86-64 Linux system call number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def _request_amx() -> bool:
    """Ask Linux for the AMX tile state (true when granted; false on other systems and CPUs)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    if not (FEATURES.get("amx-tile") and FEATURES.get("amx-int8")):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


AMX = _request_amx()
