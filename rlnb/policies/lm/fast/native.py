"""Fused CPU kernels for tiny Llama-family models (float32), compiled on first use.

Decoding a 2-layer, hidden-64 model spends more time dispatching small PyTorch operations
(norms, RoPE, cache writes, a 20-key softmax, the sampling step) than doing their
arithmetic, and the replayed update's backward (:mod:`rlnb.policies.lm.fast.replay`) builds
padded grids for a few thousand dot products and spends ten operations on each RMSNorm.
``native.c`` does each of those pieces in one call; the matrix products stay with PyTorch.

The C source is compiled with the system's C compiler (``$CC``, else ``cc``) the first time
it is needed, into ``$RLNB_CACHE/native`` (default ``~/.cache/rlnb/native``), keyed by the
source, the compiler and this CPU (it is built for the CPU it runs on), then loaded with
:mod:`ctypes`. Each kernel is checked against the PyTorch operations it replaces when the
library is loaded. Where there is no compiler, the build fails or the check fails, every
caller uses its PyTorch operations instead (same results within float rounding);
:func:`status` says which and why. ``RLNB_NATIVE=0`` turns the kernels off.

A library is loaded only from a private cache: never from a folder (or a file) that another
user owns or may write to, where they could have planted their own. Such a cache is left
alone and the kernels are built into a per-user folder of mode 0o700 instead
(:func:`rlnb.cache.private_dir`); :func:`status` says so.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from rlnb.cache import cache_dir as _cache_dir
from rlnb.cache import private_dir, untrusted
from rlnb.policies.lm.fast.attention import attend_step
from rlnb.policies.lm.fast.rmsnorm import rms, rms_backward

_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp-simd", "-std=c11"]
_log = logging.getLogger(__name__)

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "unit_rms": [_P, _P, _I, _I, _F],
    "decode_attend": [_P, _P, _P, _I, _P, _P, _P, _I, _I, _I, _I, _I, _I],
    "attend_cells_backward": [_P] * 13 + [_I] * 8,
    "sample_step": [_P, _P, _I, _I, _F, _P, _I, _P, _P, _P],
    "rms_forward": [_P, _P, _P, _P, _I, _I, _F],
    "rms_backward": [_P] * 7 + [_I, _I],
}

_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$RLNB_CACHE/native`` or ``~/.cache/rlnb/native``."""
    return _cache_dir("native")


def enabled() -> bool:
    return os.environ.get("RLNB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def status() -> str:
    """``"loaded: <path>"``, ``"disabled: ..."`` or ``"unavailable: <why>"``; followed by
    ``(... built in the private folder ...)`` when the cache was not private."""
    kernels()
    return str(_state.get("status", "not loaded"))


def kernels() -> Kernels | None:
    """The loaded kernels, compiling them on the first call; None where they cannot be
    used (see :func:`status`). Cached for the process (``RLNB_NATIVE`` is read each call)."""
    if not enabled():
        _state["status"] = "disabled: RLNB_NATIVE=" + os.environ.get("RLNB_NATIVE", "")
        return None
    if "kernels" not in _state:
        note: list[str] = []
        try:
            k = Kernels(_build(note))
            # The first caller may be sampling under inference mode; the check differentiates.
            with torch.inference_mode(False), torch.enable_grad():
                k.self_check()
            _state["kernels"] = k
            _state["status"] = f"loaded: {k.path}" + "".join(note)
        except Exception as e:  # no compiler, a failed build or check: PyTorch ops instead
            _state["kernels"] = None
            _state["status"] = f"unavailable: {e}" + "".join(note)
            _log.info("rlnb native kernels unavailable (%s); using PyTorch operations", e)
    return _state["kernels"]  # type: ignore[return-value]


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _library_name(cc: str, version: str) -> str:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    return f"kernels-{key}.so"


def _private_cache(directory: Path) -> str | None:
    """Make ``directory`` (mode 0o700) if missing; why it is not private, or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        return f"{directory} cannot be made ({err.strerror or err})"
    return untrusted(directory)


def _build(note: list[str] | None = None) -> Path:
    """The compiled library: from the cache if it is there and private, else built. A
    cache another user can write to is not used (``note`` receives why)."""
    note = [] if note is None else note
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"the C compiler {cc!r} does not run: {e}") from e
    name = _library_name(cc, version)
    directory = cache_dir()
    problem = _private_cache(directory)
    if problem is None and (os.path.lexists(directory / name)):
        problem = untrusted(directory / name)
        if problem is None:
            return directory / name
    if problem is not None:
        directory = private_dir("native")
        note.append(f" (the kernel cache is not private: {problem}; nothing was loaded from "
                    f"it, the kernels were built in the private folder {directory} instead)")
        out = directory / name
        if os.path.lexists(out) and untrusted(out) is None:
            return out
    out = directory / name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        res = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"],
                             capture_output=True, text=True, timeout=300)
        if res.returncode:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o755)  # never group- or world-writable, whatever the umask
        os.replace(tmp, out)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _need(dtype: torch.dtype, **tensors: torch.Tensor) -> None:
    """The C functions read raw memory: a tensor of another dtype or device is an error
    here, not garbage there."""
    for name, t in tensors.items():
        if t.dtype != dtype or t.device.type != "cpu":
            raise ValueError(f"{name} must be a {dtype} CPU tensor, got {t.dtype} on {t.device}")


class Kernels:
    """Typed wrappers of ``native.c``. Every tensor argument must be a float32 (int64 for
    indices) CPU tensor; inputs are made contiguous here, outputs are allocated here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        for name, args in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, None
        self.lib.sample_step.restype = ctypes.c_int64
        self._sample_step = self.lib.sample_step
        self._rms_forward = self.lib.rms_forward
        self._rms_backward = self.lib.rms_backward
        self._unit_rms = self.lib.unit_rms
        self._decode_attend = self.lib.decode_attend
        self._cells_backward = self.lib.attend_cells_backward

    # --- decoding -------------------------------------------------------------------
    def unit_rms(self, x: torch.Tensor, c2: float) -> torch.Tensor:
        """``x / sqrt(|x|^2 + c2)`` over the last dimension of ``x (B, d)``."""
        _need(torch.float32, x=x)
        x = x.contiguous()
        out = torch.empty_like(x)
        self._unit_rms(x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], c2)
        return out

    def decode_attend(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      cache: torch.Tensor, start: torch.Tensor, at: int, H: int,
                      KV: int) -> torch.Tensor:
        """One decoding step: RoPE on q and k of ``qkv (B, (H + 2 KV) * hd)`` in place (``cos``,
        ``sin``: ``(B, ..., hd)`` rows, the last dimension contiguous), k and v written to
        ``cache (2, B, KV, Lt, hd)`` at ``at``, then each row's attention over its keys
        ``start[b] .. at`` -> ``(B, H * hd)``."""
        _need(torch.float32, qkv=qkv, cos=cos, sin=sin, cache=cache)
        _need(torch.int64, start=start)
        B = qkv.shape[0]
        _, _, _, Lt, hd = cache.shape
        if not (qkv.is_contiguous() and cache.is_contiguous() and start.is_contiguous()):
            raise ValueError("decode_attend needs contiguous qkv, cache and start")
        if cos.stride(-1) != 1 or sin.stride() != cos.stride():
            raise ValueError("decode_attend needs cos and sin rows with one stride")
        out = qkv.new_empty((B, H * hd))
        self._decode_attend(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos.stride(0),
                            cache.data_ptr(), start.data_ptr(), out.data_ptr(), B, H, KV, hd,
                            Lt, at)
        return out

    def sample_step(self, logits: torch.Tensor, noise: torch.Tensor, temperature: float,
                    eos: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One Gumbel-max sampling step of ``logits (B, V)`` with ``noise (B, V)``: tokens
        ``(B,)``, their log-probabilities ``(B, 1)`` (of ``log_softmax(logits /
        temperature)``), and the number of rows done; ``done (B,)`` (bool) is updated in
        place with the rows whose token is one of ``eos`` (int64 ids)."""
        _need(torch.float32, logits=logits, noise=noise)
        _need(torch.int64, eos=eos)
        _need(torch.bool, done=done)
        if not (logits.is_contiguous() and noise.is_contiguous() and done.is_contiguous()):
            raise ValueError("sample_step needs contiguous logits, noise and done")
        B, V = logits.shape
        tok = torch.empty(B, dtype=torch.long)
        lp = logits.new_empty((B, 1))
        n_done = self._sample_step(logits.data_ptr(), noise.data_ptr(), B, V, temperature,
                                   eos.data_ptr(), eos.numel(), tok.data_ptr(), lp.data_ptr(),
                                   done.data_ptr())
        return tok, lp, int(n_done)

    # --- the replayed backward ---
    def rms_forward(self, x: torch.Tensor, w: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm of the rows of ``x (N, d)`` with weight ``w``: ``(y (N, d), r (N,))``,
        ``r = 1 / rms(x)``, ``y = x r w``."""
        _need(torch.float32, x=x, w=w)
        x, w = x.contiguous(), w.contiguous()
        N, d = x.shape
        y, r = torch.empty_like(x), x.new_empty(N)
        self._rms_forward(x.data_ptr(), w.data_ptr(), y.data_ptr(), r.data_ptr(), N, d, eps)
        return y, r

    def rms_backward(self, dy: torch.Tensor, x: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
                     res: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward of :meth:`rms_forward` at ``dy (N, d)``: ``(dx (+ res), dw)``."""
        _need(torch.float32, dy=dy, x=x, r=r, w=w, **({} if res is None else {"res": res}))
        dy, x, r, w = dy.contiguous(), x.contiguous(), r.contiguous(), w.contiguous()
        res = None if res is None else res.contiguous()
        N, d = x.shape
        dx, dw = torch.empty_like(x), x.new_empty(d)
        self._rms_backward(dy.data_ptr(), x.data_ptr(), r.data_ptr(), w.data_ptr(),
                           None if res is None else res.data_ptr(), dx.data_ptr(),
                           dw.data_ptr(), N, d)
        return dx, dw

    # --- the replayed backward, attention --------------------------------------------------------
    def attend_cells_backward(self, q, k, v, kp, vp, dout, cos, sin, cells, pstart, dqkv,
                              n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward of the completion tokens' attention (see ``native.c``): ``cells (R, J)``
        maps (row, step) to a cell (-1 after the row's last step); writes ``dqkv (C, H + 2
        KV, hd)`` (must be contiguous) and returns the gradients at the prompts' keys and
        values ``(G, KV, Lp, hd)`` (rotated coordinates)."""
        _need(torch.float32, q=q, k=k, v=v, kp=kp, vp=vp, dout=dout, cos=cos, sin=sin,
              dqkv=dqkv)
        _need(torch.int64, cells=cells, pstart=pstart)
        C, H, hd = q.shape
        G, KV, Lp, _ = kp.shape
        R, J = cells.shape
        if not dqkv.is_contiguous() or tuple(dqkv.shape) != (C, H + 2 * KV, hd):
            raise ValueError("attend_cells_backward needs a contiguous (C, H + 2 KV, hd) dqkv")
        ins = [t.contiguous() for t in (q, k, v, kp, vp, dout, cos, sin, cells, pstart)]
        dkp = kp.new_zeros((G, KV, Lp, hd))
        dvp = kp.new_zeros((G, KV, Lp, hd))
        self._cells_backward(*[t.data_ptr() for t in ins], dqkv.data_ptr(), dkp.data_ptr(),
                             dvp.data_ptr(), C, R, J, n, H, KV, hd, Lp)
        return dkp, dvp

    # --- the check at load ------------------------------------------------------------
    @torch.no_grad()
    def self_check(self) -> None:
        """Each kernel against the PyTorch operations it replaces, on random inputs; a
        RuntimeError where one differs (a miscompiled library is then not used)."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(5, 24, generator=g)
        _close("unit_rms", self.unit_rms(x, 0.5), x / (x.square().sum(1, keepdim=True) + 0.5).sqrt())

        B, H, KV, hd, Lt, at = 3, 4, 2, 8, 9, 6
        qkv = torch.randn(B, (H + 2 * KV) * hd, generator=g)
        cache = torch.randn(2, B, KV, Lt, hd, generator=g)
        cos, sin = torch.randn(B, hd, generator=g), torch.randn(B, hd, generator=g)
        start = torch.tensor([0, 2, 5])
        ref_cache = cache.clone()
        r = qkv.view(B, H + 2 * KV, hd)
        qk = r[:, :H + KV] * cos[:, None] + r[:, :H + KV].roll(hd // 2, -1) * sin[:, None]
        ref_cache[0, :, :, at] = qk[:, H:]
        ref_cache[1, :, :, at] = r[:, H + KV:]
        bias = torch.full((B, 1, Lt), float("-inf"))
        for b in range(B):
            bias[b, 0, start[b]:at + 1] = 0
        ref = attend_step(qk[:, :H], ref_cache[0], ref_cache[1],
                           bias.repeat_interleave(KV, 0), fused=False)
        out = self.decode_attend(qkv, cos, sin, cache, start, at, H, KV)
        _close("decode_attend", out, ref)
        _close("decode_attend cache", cache, ref_cache)
        logits = 3 * torch.randn(6, 11, generator=g)
        noise = torch.randn(6, 11, generator=g)
        done = torch.tensor([True, False, False, False, False, False])
        tok, lp, n_done = self.sample_step(logits, noise, 0.7, torch.tensor([3, 5]), done)
        logp = torch.log_softmax(logits / 0.7, -1)
        want = torch.argmax(logp + noise, -1)
        if not torch.equal(tok, want) or n_done != int(done.sum()):
            raise RuntimeError("native kernel sample_step disagrees with PyTorch (tokens)")
        _close("sample_step", lp, logp.gather(1, want[:, None]))
        if not torch.equal(done[1:], torch.isin(want[1:], torch.tensor([3, 5]))) or not done[0]:
            raise RuntimeError("native kernel sample_step disagrees with PyTorch (done)")
        self._check_cells_backward(g)
        for d in (64, 24):
            x, w, dy, res = (torch.randn(7, d, generator=g) for _ in range(4))
            w = w[0]
            xhat, r = rms(x, 1e-6)
            y, r_n = self.rms_forward(x, w, 1e-6)
            _close("rms_forward", y, xhat * w)
            _close("rms_forward r", r_n, r.view(-1))
            dx, dw = rms_backward(dy, xhat, r, w)
            dx_n, dw_n = self.rms_backward(dy, x, r_n, w, res)
            _close("rms_backward dx", dx_n, dx + res)
            _close("rms_backward dw", dw_n, dw)
        _close("decode_attend rope", qkv.view(B, H + 2 * KV, hd)[:, :H + KV], qk)


    def _check_cells_backward(self, g: torch.Generator) -> None:
        """attend_cells_backward against autograd through the attention it differentiates,
        written out cell by cell (2 groups, one left-padded; rows of 1 to 3 steps)."""
        G, n, J, H, KV, hd, Lp = 2, 2, 3, 4, 2, 4, 3
        lengths, pstart = [3, 1, 2, 3], torch.tensor([0, 1])
        cells = torch.full((G * n, J), -1, dtype=torch.long)
        order = [(r, t) for t in range(J) for r in range(G * n) if t < lengths[r]]
        for c, (r, t) in enumerate(order):
            cells[r, t] = c
        C = len(order)
        with torch.enable_grad():
            q_raw, k_raw, v = (torch.randn(C, h, hd, generator=g).requires_grad_()
                               for h in (H, KV, KV))
            kp, vp = (torch.randn(G, KV, Lp, hd, generator=g).requires_grad_() for _ in "kv")
            cos, sin = torch.randn(C, 1, hd, generator=g), torch.randn(C, 1, hd, generator=g)
            q, k = (x * cos + x.roll(hd // 2, -1) * sin for x in (q_raw, k_raw))
            dout = torch.randn(C, H * hd, generator=g)
            loss = torch.zeros(())
            for c, (r, t) in enumerate(order):
                gr, own = r // n, cells[r, : t + 1]
                for h in range(H):
                    kv = h // (H // KV)
                    keys = torch.cat([kp[gr, kv, pstart[gr]:], k[own, kv]])
                    vals = torch.cat([vp[gr, kv, pstart[gr]:], v[own, kv]])
                    out = torch.softmax(keys @ q[c, h], 0) @ vals
                    loss = loss + out @ dout[c, h * hd:(h + 1) * hd]
            loss.backward()
        dqkv = torch.empty(C, H + 2 * KV, hd)
        dkp, dvp = self.attend_cells_backward(q.detach(), k.detach(), v.detach(),
                                              kp.detach(), vp.detach(), dout, cos[:, 0],
                                              sin[:, 0], cells, pstart, dqkv, n)
        want = torch.cat([q_raw.grad, k_raw.grad, v.grad], 1)
        _close("attend_cells_backward", dqkv, want)
        _close("attend_cells_backward (prompt keys)", dkp, kp.grad)
        _close("attend_cells_backward (prompt values)", dvp, vp.grad)


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        err = (got - want).abs().max().item() if got.shape == want.shape else "shape"
        raise RuntimeError(f"native kernel {name} disagrees with PyTorch (max error {err})")
