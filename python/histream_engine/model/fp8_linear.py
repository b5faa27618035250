"""FP8 (E4M3) linear layers for the transformer blocks, and the layer choice and weight scales the ONNX FP8 export shares.

Which layers: every block's self-attention Q, K, V, O, cross-attention Q and O, and both FFN layers (``block_linears``;
cross-attention K/V run once per prompt). Modulation, the text/time embedders, the patch embedding and the head stay
in the model dtype, as public DiT FP8 recipes keep them.

How: weights quantized once (``Fp8Linear.from_linear``) with one scale per output channel, ``amax / 448``
(``channel_scales``, the export's rule too); activations per token at run time, ``amax / 448`` over the row; the
product is ``torch._scaled_mm`` with row-wise scales (fp32 accumulation, bias and output in the model dtype). Where
this torch's ``_scaled_mm`` takes only per-tensor scales on the device (torch 2.11's CPU kernel: an internal assert on
row-wise ones; 2.13's takes both), and for outputs other than bf16, ``tensorwise_fp8_matmul`` runs the same product
through the per-tensor form.
``reference_fp8_linear`` is the same arithmetic written out in fp32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.fp8_constants import E4M3, E4M3_FINITE, E4M3_MAX, SCALE_FLOOR

BLOCK_PARTS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0", "ffn.2")


def block_linears(dit) -> dict[str, nn.Module]:
    """The linear layers that run in FP8, by name (``blocks.N.part``)."""
    return {f"blocks.{i}.{part}": blk.get_submodule(part) for i, blk in enumerate(dit.blocks) for part in BLOCK_PARTS}


def channel_scales(weight: torch.Tensor, in_dim: int) -> torch.Tensor:
    """Per-output-channel ``amax / 448`` (float32, floored) of a weight whose input dimension is ``in_dim``."""
    return (weight.float().abs().amax(in_dim) / E4M3_MAX).clamp_min(SCALE_FLOOR)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``[N, C]`` -> e4m3 ``[N, C]`` and per-token scales ``[N, 1]`` float32."""
    scale = (x.float().abs().amax(-1, keepdim=True) / E4M3_MAX).clamp_min(SCALE_FLOOR)
    return (x.float() / scale).clamp(-E4M3_FINITE, E4M3_FINITE).to(E4M3), scale


@functools.cache
def rowwise_scaled_mm(device_type: str, out_dtype: torch.dtype) -> bool:
    """Whether this torch's ``_scaled_mm`` takes row-wise scales on ``device_type`` for an ``out_dtype`` output. Only
    bf16 outputs go that way: CUDA's row-wise kernels take bf16 on every path (sm_89 or newer, which
    ``runtime.precision`` checks; fp32 with a bias on none). On the CPU it is tried once on zeros, since torch 2.11's
    kernel refuses row-wise scales with an internal assert and no version check is known to be exact."""
    if out_dtype != torch.bfloat16:
        return False
    if device_type != "cpu":
        return True
    zeros = torch.zeros(16, 16, dtype=E4M3)
    try:
        torch._scaled_mm(zeros, zeros.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=out_dtype)
    except RuntimeError:
        return False
    return True


def tensorwise_fp8_matmul(x8: torch.Tensor, x_scale: torch.Tensor, weight8: torch.Tensor, weight_scale: torch.Tensor,
                          bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The row-wise scaled product through ``_scaled_mm``'s per-tensor form: the e4m3 codes multiplied at unit scales
    with fp32 accumulation, then each token's and channel's scale applied to the fp32 sums (exact: a row's and a
    column's scale factor out of their dot product). x8 ``[N, in]``, x_scale ``[N, 1]``, weight8 ``[out, in]``,
    weight_scale ``[1, out]`` -> ``[N, out]`` in ``out_dtype``."""
    one = torch.ones((), dtype=torch.float32, device=x8.device)
    acc = torch._scaled_mm(x8, weight8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)  # [N, out]
    y = acc * x_scale * weight_scale
    return (y if bias is None else y + bias.float()).to(out_dtype)


class Fp8Linear(nn.Module):
    """``y = x W^T + b`` with W e4m3 per output channel and x e4m3 per token."""

    def __init__(self, weight8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight8.shape[1], weight8.shape[0]
        self.out_dtype = out_dtype
        self.register_buffer("weight8", weight8)  # [out, in] e4m3
        self.register_buffer("weight_scale", weight_scale)  # [1, out] float32
        self.register_buffer("bias", bias)  # [out] in out_dtype, or None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        w = linear.weight.detach()
        scale = channel_scales(w, 1)  # [out]
        w8 = (w.float() / scale[:, None]).clamp(-E4M3_FINITE, E4M3_FINITE).to(E4M3)
        bias = None if linear.bias is None else linear.bias.detach().to(w.dtype)
        return cls(w8, scale[None, :].contiguous(), bias, w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [N, in]
        x8, x_scale = quantize_rows(rows)
        if rowwise_scaled_mm(rows.device.type, self.out_dtype):
            # _scaled_mm wants its second operand column-major: the transposed view of the row-major weight is that
            y = torch._scaled_mm(x8, self.weight8.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=self.bias,
                                 out_dtype=self.out_dtype)  # [N, out]
        else:
            y = tensorwise_fp8_matmul(x8, x_scale, self.weight8, self.weight_scale, self.bias, self.out_dtype)  # [N, out]
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 per channel x per token -> {self.out_dtype}"


def reference_fp8_linear(layer: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s arithmetic in plain fp32: dequantized operands, an fp32 matmul."""
    rows = x.reshape(-1, x.shape[-1])
    x8, x_scale = quantize_rows(rows)
    w = layer.weight8.float() * layer.weight_scale.t()
    y = F.linear(x8.float() * x_scale, w, None if layer.bias is None else layer.bias.float())
    return y.to(layer.out_dtype).view(*x.shape[:-1], layer.out_features)


def quantize_block_linears(dit) -> int:
    """Replace ``dit``'s block linears by ``Fp8Linear`` in place (weights quantized once); returns how many. Layers
    already in FP8 stay as they are, so a second call changes nothing."""
    n = 0
    for name, module in block_linears(dit).items():
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(dit.get_submodule(parent_name), child, Fp8Linear.from_linear(module))
            n += 1
    return n
