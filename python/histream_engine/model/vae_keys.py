"""VAE parameter names: diffusers' AutoencoderKLWan <-> Wan's ``Wan2.1_VAE.pth`` (ours).

Both sides keep one flat list per stage in Wan (``decoder.upsamples.N``, ``encoder.downsamples.N``);
diffusers groups the decoder's into ``up_blocks.{stage}.resnets / upsamplers`` and keeps the encoder's flat.
"""

from __future__ import annotations

import re

from .keys import swap_prefix as _swap

_RESNET = (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
           ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))
_FIXED = (
    ("post_quant_conv.", "conv2."), ("quant_conv.", "conv1."),
    ("decoder.conv_in.", "decoder.conv1."), ("encoder.conv_in.", "encoder.conv1."),
    ("decoder.norm_out.gamma", "decoder.head.0.gamma"), ("encoder.norm_out.gamma", "encoder.head.0.gamma"),
    ("decoder.conv_out.", "decoder.head.2."), ("encoder.conv_out.", "encoder.head.2."),
    ("decoder.mid_block.attentions.0.", "decoder.middle.1."), ("encoder.mid_block.attentions.0.", "encoder.middle.1."),
)


def _resnet(rest: str, src: int) -> str:
    """A residual block's parameter; a resampler's (``resample.1``, ``time_conv``) keeps its name."""
    return _swap(rest, _RESNET, src) or rest


def diffusers_to_wan_vae(state: dict, num_res_blocks: int = 2) -> dict:
    per_stage = num_res_blocks + 2  # resnets + one upsampler in Wan's flat decoder list
    out = {}
    for key, value in state.items():
        if (new := _swap(key, _FIXED, 0)) is not None:
            out[new] = value
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", key):
            out[f"{m[1]}.middle.{2 * int(m[2])}.{_resnet(m[3], 0)}"] = value
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            out[f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.{_resnet(m[3], 0)}"] = value
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key):
            out[f"decoder.upsamples.{int(m[1]) * per_stage + num_res_blocks + 1}.{m[2]}"] = value
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)$", key):
            out[f"encoder.downsamples.{m[1]}.{_resnet(m[2], 0)}"] = value
    return out


def wan_to_diffusers_vae(state: dict, num_res_blocks: int = 2) -> dict:
    per_stage = num_res_blocks + 2
    out = {}
    for key, value in state.items():
        if (new := _swap(key, _FIXED, 1)) is not None:
            out[new] = value
        elif m := re.match(r"(encoder|decoder)\.middle\.([02])\.(.*)$", key):
            out[f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_resnet(m[3], 1)}"] = value
        elif m := re.match(r"decoder\.upsamples\.(\d+)\.(.*)$", key):
            stage, pos = divmod(int(m[1]), per_stage)
            if pos <= num_res_blocks:
                out[f"decoder.up_blocks.{stage}.resnets.{pos}.{_resnet(m[2], 1)}"] = value
            else:
                out[f"decoder.up_blocks.{stage}.upsamplers.0.{m[2]}"] = value
        elif m := re.match(r"encoder\.downsamples\.(\d+)\.(.*)$", key):
            out[f"encoder.down_blocks.{m[1]}.{_resnet(m[2], 1)}"] = value
    return out
