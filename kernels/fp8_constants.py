"""The FP8 constants every FP8 path shares, defined once: e4m3's range and the scale rule, and the FP8 core's fixed
choices that its Triton kernels and their torch model (``attention/fp8_quant.py``) must agree on.

Every e4m3 scale in the package is ``amax / E4M3_MAX`` over its group, floored at ``SCALE_FLOOR`` so that an all-zero
group never divides by zero (its codes are zeros whatever the scale): the ring cache's per-(slot, head) scales
(``kernels/recache_write_fp8.py``, and its torch reference), the FP8 core's Q blocks (``kernels/attention_core_fp8.py``),
the FP8 linears (``model/fp8_linear.py``) and the FP8 export's static scales (``graphs/fp8.py``).

They live here because ``kernels/`` is the bottom layer and may import only itself: a definition in ``attention/`` or
``model/`` could not reach the kernels, while everything above may import this module. It is plain Python and torch,
no Triton, so the torch references import it where Triton is not installed.
"""

from __future__ import annotations

import math

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # what every scale aims an amax at: e4m3's largest finite value
SCALE_FLOOR = 1e-12 / E4M3_MAX
# Where codes saturate: e4m3's largest finite value read from the format, kept apart from E4M3_MAX (which tests patch to
# break a scale on purpose) so that a wrong scale clips on every torch; casting past it is not portable (torch 2.11
# gives NaN, 2.13 saturates).
E4M3_FINITE = torch.finfo(E4M3).max

Q_BLOCK = 64  # query rows per Q scale: the FP8 pre-pass's tile
P_SHIFT = 8.0  # log2 of the factor P is scaled by before its cast: [0, 1] -> [0, 256], clear of e4m3's subnormals
# With ``window`` positions K is rotated after dequantization and quantized again with its slot's scale times this:
# a rotation turns a pair (x, y) into one whose elements reach at most sqrt(2) * max(|x|, |y|).
ROTATED_K_SCALE = math.sqrt(2.0)
