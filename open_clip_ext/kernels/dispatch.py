"""Which CoPE attention implementation runs, and the one log line that says so.

Project rule: a path that has never run on the hardware it targets is never the default there. The fused Triton
kernels (``cope_triton``) have run only in Triton's CPU interpreter, so CUDA runs the pure-PyTorch op
(``cope_torch``, numerics checked on CPU, PyTorch ops only) unless the Triton kernels are asked for. Precedence:

1. an explicit name on the tower: ``model.text.set_cope_impl(name)`` (the stages' ``--cope-impl`` calls it);
2. ``OPEN_CLIP_EXT_COPE_IMPL`` (``torch`` or ``triton``) for towers left at the default ``function``; read at
   every eager CoPE forward, so it may be set at any time before the run;
3. the PyTorch op.

Under ``torch.compile`` the PyTorch op always runs (the kernels are opaque to the compiler), whatever the choice.
Asking for Triton where it cannot run (no Triton, not a CUDA tensor, more than ``cope_triton.MAX_LEN`` keys) is an
error naming the fix, never a silent fallback. This module imports no torch; Triton only when it is asked for.
"""
import logging
import os
from typing import Mapping, Optional, Tuple

ENV_VAR = "OPEN_CLIP_EXT_COPE_IMPL"
# "function": memory-lean, the kernel ENV_VAR names (default: the PyTorch op); "torch": the PyTorch op; "triton":
# the fused Triton kernels (CUDA, opt-in); "autograd": op by op, every (B, H, L, L) intermediate saved (checks).
COPE_IMPLS = ("function", "torch", "triton", "autograd")
ENV_CHOICES = ("torch", "triton")  # the memory-lean kernels "function" can stand for
KERNEL_NAMES = {
    "torch": "the PyTorch op open_clip_ext::cope_attention in kernels/cope_torch.py",
    "triton": "the fused Triton kernels in kernels/cope_triton.py",
    "autograd": "op by op through autograd, CoPE.forward",
}
OPT_IN = f"set_cope_impl('triton'), {ENV_VAR}=triton or --cope-impl triton"

logger = logging.getLogger(__name__)
_announced = set()


def env_cope_impl(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The kernel ``OPEN_CLIP_EXT_COPE_IMPL`` names ("torch" or "triton"), None when unset or empty.

    Raises ValueError for any other value, naming the variable and the accepted values.
    """
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not value:
        return None
    if value not in ENV_CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(ENV_CHOICES)} (or unset: the PyTorch op)")
    return value


def triton_problem(device_type: Optional[str] = None, seq_len: Optional[int] = None,
                   fix: str = "use the PyTorch op ('torch')") -> Optional[str]:
    """Why the Triton kernels cannot run on ``device_type`` for ``seq_len`` keys, ending in ``fix``; None when they
    can (a None argument is not checked: ``triton_problem()`` asks only whether Triton imports).

    Imports Triton (through ``cope_triton``): call it only when Triton has been asked for.
    """
    from . import cope_triton

    if cope_triton.triton is None:
        return f"Triton does not import here; install the triton release that matches torch (torch's CUDA " \
               f"wheels depend on it) or {fix}"
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors: how the tests check them.
    if device_type not in (None, "cuda") and not (device_type == "cpu" and cope_triton.interpreting()):
        return f"the fused Triton kernels run on CUDA only, not on {device_type}; {fix}"
    if seq_len is not None and seq_len > cope_triton.MAX_LEN:
        return f"the fused Triton kernels hold rows of up to {cope_triton.MAX_LEN} keys, got {seq_len}; {fix}"
    return None


def choose_cope_kernel(impl: str, device_type: str, seq_len: Optional[int] = None, source: Optional[str] = None,
                       environ: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """(kernel, why) for a tower set to ``impl`` (one of ``COPE_IMPLS``) on ``device_type`` ("cuda", "cpu", ...).

    ``kernel`` is "torch", "triton" or "autograd"; ``why`` says what chose it (``source``, e.g. "--cope-impl
    triton", names an explicit choice; default "set_cope_impl('<impl>')"). ``environ`` defaults to os.environ.
    Raises ValueError for an unknown ``impl`` or ``OPEN_CLIP_EXT_COPE_IMPL`` value, RuntimeError when Triton is
    asked for where it cannot run (see ``triton_problem``).
    """
    if impl not in COPE_IMPLS:
        raise ValueError(f"cope_impl must be one of {COPE_IMPLS}, got {impl!r}")
    if impl == "function":
        kernel = env_cope_impl(environ)
        if kernel is None:
            why = "the default" + (f"; the Triton kernels have not passed a GPU check yet and are opt-in: {OPT_IN}"
                                   if device_type == "cuda" else "")
            return "torch", why
        why = f"{ENV_VAR}={kernel}"
    else:
        kernel, why = impl, source or f"set_cope_impl({impl!r})"
    if kernel == "triton":
        problem = triton_problem(device_type, seq_len)
        if problem:
            raise RuntimeError(f"{why}: {problem}")
    return kernel, why


def announce(kernel: str, why: str, always: bool = False) -> None:
    """Log at INFO which CoPE attention runs and why: once per process and kernel, or ``always`` (the stages, once
    per run). Never inside compiled code: callers skip it there, since a logging call would break the graph."""
    if always or kernel not in _announced:
        _announced.add(kernel)
        logger.info(f"CoPE attention: {KERNEL_NAMES[kernel]} ({why})")
