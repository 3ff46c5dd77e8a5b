"""Comparisons of float results at the scale of the quantities involved.

torch picks its CPU kernels by ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``,
``avx512``) and splits sums across threads: the same float32 computation then adds its
terms in another order and ends a few units in the last place (ulps) of its *largest*
terms apart. An elementwise ``allclose(atol=1e-5)`` ignores that scale: a gradient whose
entries reach 18 differs by 3e-5 between two correct implementations (measured: the
tiny Llama's embedding gradient, scoring forward against the model's own forward, on
avx2), while an entry near 0 compared with ``rtol`` alone demands more than float32 has.

:func:`assert_close` bounds the largest difference by ``rel`` times the tensor's scale
(its largest magnitude). The default, 3e-5, is about 250 float32 ulps of that scale:
what sums of a few hundred terms taken in another order can lose, and far below what a
real error does (a wrong position, mask or temperature moves entries by a sizeable
fraction of the scale: the tests that check those assert differences of 1e-3 and more).
Where a float64 reference is cheap, compare against it (:func:`in_float64`).
"""

from __future__ import annotations

import copy

import torch

#: Largest difference allowed, as a fraction of the reference's largest magnitude.
REL = 3e-5


def scale_of(t: torch.Tensor) -> float:
    """The magnitude of a tensor: its largest absolute entry (1 for an all-zero one)."""
    t = t.detach()
    m = float(t.abs().max()) if t.numel() else 0.0
    return m if m > 0 else 1.0


def assert_close(got: torch.Tensor, want: torch.Tensor, *, rel: float = REL,
                 scale: float | None = None, what: str = "") -> None:
    """``max |got - want| <= rel * scale`` with ``scale`` the largest ``|want|`` unless
    given (pass the scale of the inputs when ``want`` can be near zero by cancellation)."""
    assert got.shape == want.shape, f"{what} shapes {tuple(got.shape)} != {tuple(want.shape)}"
    s = scale_of(want) if scale is None else scale
    diff = float((got.detach().double() - want.detach().double()).abs().max()) if got.numel() else 0.0
    assert diff <= rel * s, (
        f"{what}: max |difference| {diff:.3g} exceeds {rel:g} x scale {s:.3g} = {rel * s:.3g}")


def in_float64(policy):
    """A float64 copy of an LM policy (its model in double precision): the reference for
    float32 paths, free of float32 rounding."""
    ref = copy.deepcopy(policy)
    ref.model.double()
    return ref


__all__ = ["REL", "assert_close", "in_float64", "scale_of"]
