"""The fp32 -> e4m3 cast of the FP8 kernels, with the rounding Triton's CPU interpreter gets wrong done first.

The interpreter's float conversion rounds the mantissa but drops its carry into the exponent (31.9 becomes 16, not
32: about 2% of random values). Under it (``ROUND_FIRST``) values are rounded to the e4m3 grid in fp32 (3 mantissa
bits; below 2^-6 the subnormals' fixed step 2^-9), so the cast has nothing left to round. A GPU casts with
``cvt.rn.satfinite`` and takes the plain path. Callers clamp to +-E4M3_MAX (``fp8_constants``) first.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def to_e4m3(x, dtype: tl.constexpr, ROUND_FIRST: tl.constexpr):
    if ROUND_FIRST:
        a = tl.abs(x)
        step = tl.math.exp2(tl.floor(tl.math.log2(tl.maximum(a, 0.015625))) - 3.0)
        x = tl.where(x < 0, -1.0, 1.0) * tl.floor(a / step + 0.5) * step
    return x.to(dtype)
