"""TAEHV's decoder for Wan 2.1 latents (``taew2_1``, madebyollin/taehv, MIT), streaming chunk by chunk.

A stack of per-frame 2D convolutions in three stages. Each stage: three MemBlocks (a residual conv block whose
first conv also sees the block's input one time step earlier: the only link between frames), a 2x nearest
upsample, a TGrow (a 1x1 conv making ``stride`` frames of each one; strides 1, 2, 2) and a 3x3 conv. Then ReLU
and a conv to RGB. One latent frame becomes 4 frames; the stream's first 3 are dropped so that frame counts are
the Wan VAE's (1 for the first latent frame, 4 for each later one). No latent scale or shift is applied.

Parameter names are those of the published ``taew2_1.pth`` / ``safetensors/taew2_1.safetensors``: its
``nn.Sequential`` indices (``decoder.1`` the input conv, ``decoder.3.conv.0`` a MemBlock's first conv,
``decoder.7.conv`` a TGrow, ...). Layers without parameters have no entry.

Streaming: a MemBlock's first conv is split into the part that reads the current frame and the part that reads
the previous one. Both are computed for every frame of a chunk in one conv; the second part is then shifted
one step in time, its last frame carried in the state to the next chunk. Since everything else is per frame,
decoding a video in pieces gives what decoding it whole gives. Frames are kept time-major, ``[T * B, C, H, W]``,
so a shift in time is a slice, and channels-last on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS_PER_STAGE = 3  # MemBlocks per stage in every published TAEHV


@dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16  # Wan 2.1's latent channels
    channels: tuple[int, ...] = (256, 128, 64, 64)  # the three stages' widths, then the last conv's
    time_upscale: tuple[int, ...] = (1, 2, 2)  # TGrow stride per stage
    space_upscale: int = 2  # per stage: 8x in all

    def __post_init__(self):
        if len(self.channels) != 4 or len(self.time_upscale) != 3:
            raise ValueError("TAEHV has three stages: channels needs 4 entries and time_upscale 3")

    @property
    def frames_per_latent(self) -> int:
        t = 1
        for s in self.time_upscale:
            t *= s
        return t

    @property
    def frames_to_trim(self) -> int:
        """Outputs dropped at the stream's start, so that the first latent frame gives one frame."""
        return self.frames_per_latent - 1

    def stage_indices(self, stage: int) -> dict[str, object]:
        """The published ``nn.Sequential`` index of each layer of ``stage`` (0, 1, 2)."""
        base = 3 + stage * (BLOCKS_PER_STAGE + 3)
        return {"blocks": [str(base + k) for k in range(BLOCKS_PER_STAGE)], "grow": str(base + BLOCKS_PER_STAGE + 1),
                "conv": str(base + BLOCKS_PER_STAGE + 2)}

    @property
    def head_index(self) -> str:
        return str(3 + 3 * (BLOCKS_PER_STAGE + 3) + 1)  # after the last stage's conv and a ReLU: "22"


def _conv3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """relu(conv(relu(conv(relu(conv([x_t, x_{t-1}]))))) + x_t): channels in = out, so the skip is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        # indices as in the published nn.Sequential: conv, ReLU, conv, ReLU, conv
        self.conv = nn.ModuleDict({"0": _conv3(2 * channels, channels), "2": _conv3(channels, channels),
                                   "4": _conv3(channels, channels)})

    def forward(self, x: torch.Tensor, batch: int, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[T * B, C, H, W]`` time-major; ``prev`` ``[B, C, H, W]``: the past half of the first conv applied to
        the frame before ``x`` (None at the stream's start: an empty past). Returns the output and the new ``prev``."""
        C = self.channels
        first = self.conv["0"]
        w = first.weight  # [C, 2C, 3, 3]: input channels [x_t, x_{t-1}]
        both = F.conv2d(x, torch.cat([w[:, :C], w[:, C:]], dim=0), torch.cat([first.bias, first.bias.new_zeros(C)]), padding=1)
        now, past = both[:, :C], both[:, C:]  # [T * B, C, H, W] each
        # frame t takes the past half of frame t - 1; the stream's first frames take an empty past (zero)
        prev = torch.zeros_like(past[:batch]) if prev is None else prev
        h = now + torch.cat([prev, past[:-batch]], dim=0)
        h = self.conv["4"](F.relu(self.conv["2"](F.relu(h))))
        return F.relu(h + x), past[-batch:].clone()


class TGrow(nn.Module):
    """One frame in, ``stride`` frames out: a 1x1 conv to ``stride * C`` channels, frame j taking the j-th group."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        y = self.conv(x)  # [T * B, s * C, H, W]
        if self.stride == 1:
            return y
        TB, SC, H, W = y.shape
        T, s, C = TB // batch, self.stride, SC // self.stride
        fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((T * s * batch, C, H, W), dtype=y.dtype, device=y.device, memory_format=fmt)
        out.view(T, s, batch, C, H, W).copy_(y.view(T, batch, s, C, H, W).transpose(1, 2))  # time-major: (t, j, b)
        return out


class TAEHVState:
    """One video's streaming history: per MemBlock, its past half for the last frame seen."""

    def __init__(self):
        self.past: dict[str, torch.Tensor] = {}
        self.latent_frames = 0


class TAEHV(nn.Module):
    name = "taehv"

    def __init__(self, config: TAEHVConfig | None = None):
        super().__init__()
        self.config = cfg = config or TAEHVConfig()
        c = cfg.channels
        layers: dict[str, nn.Module] = {"1": _conv3(cfg.latent_channels, c[0])}
        for stage in range(3):
            idx = cfg.stage_indices(stage)
            for i in idx["blocks"]:
                layers[i] = MemBlock(c[stage])
            layers[idx["grow"]] = TGrow(c[stage], cfg.time_upscale[stage])
            layers[idx["conv"]] = _conv3(c[stage], c[stage + 1], bias=False)
        layers[cfg.head_index] = _conv3(c[3], 3)
        self.decoder = nn.ModuleDict(layers)

    @property
    def device(self) -> torch.device:
        return self.decoder["1"].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder["1"].weight.dtype

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def new_state(self) -> TAEHVState:
        return TAEHVState()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: TAEHVState | None = None) -> torch.Tensor:
        """Latents ``[B, 16, F, h, w]`` (as the DiT makes them) -> video ``[B, 3, T, 8h, 8w]`` in [-1, 1].

        T = 4F, or 4F - 3 when these are the video's first latent frames. Pass the same ``state`` for consecutive
        pieces of one video; without one, ``latents`` is a whole video.
        """
        cfg = self.config
        if latents.dim() != 5 or latents.shape[1] != cfg.latent_channels:
            raise ValueError(f"latents must be [B, {cfg.latent_channels}, F, h, w], got {tuple(latents.shape)}")
        state = state or TAEHVState()
        B, C, Fr, h, w = latents.shape
        first = state.latent_frames == 0
        fmt = torch.channels_last if latents.device.type == "cuda" else torch.contiguous_format
        x = latents.to(self.dtype).permute(2, 0, 1, 3, 4).reshape(Fr * B, C, h, w).contiguous(memory_format=fmt)  # [F * B, 16, h, w]
        x = torch.tanh(x / 3) * 3  # TAEHV's soft clamp of the latents to (-3, 3)
        x = F.relu(self.decoder["1"](x))
        for stage in range(3):
            idx = cfg.stage_indices(stage)
            for i in idx["blocks"]:
                x, state.past[i] = self.decoder[i](x, B, state.past.get(i))
            x = F.interpolate(x, scale_factor=cfg.space_upscale, mode="nearest")
            x = self.decoder[idx["grow"]](x, B)
            if stage == 2 and first:
                x = x[cfg.frames_to_trim * B :]  # what follows is per frame: the dropped frames need not be finished
            x = self.decoder[idx["conv"]](x)
        x = self.decoder[cfg.head_index](F.relu(x))  # [T * B, 3, H, W] in ~[0, 1]
        state.latent_frames += Fr
        video = x.clamp(0.0, 1.0) * 2.0 - 1.0
        return video.view(-1, B, 3, *video.shape[-2:]).permute(1, 2, 0, 3, 4)  # [B, 3, T, H, W]
