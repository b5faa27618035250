"""TAEHV for Wan 2.1 latents (``taew2_1``, madebyollin/taehv, MIT): its decoder, streaming chunk by chunk, and its
encoder (loaded only when asked for).

A stack of per-frame 2D convolutions in three stages. Each stage: three MemBlocks (a residual conv block whose
first conv also sees the block's input one time step earlier: the only link between frames), a 2x nearest
upsample, a TGrow (a 1x1 conv making ``stride`` frames of each one; strides 1, 2, 2) and a 3x3 conv. Then ReLU
and a conv to RGB. One latent frame becomes 4 frames; the stream's first 3 are dropped so that frame counts are
the Wan VAE's (1 for the first latent frame, 4 for each later one). No latent scale or shift is applied.

Parameter names are those of the published ``taew2_1.pth`` / ``safetensors/taew2_1.safetensors``: its
``nn.Sequential`` indices (``decoder.1`` the input conv, ``decoder.3.conv.0`` a MemBlock's first conv,
``decoder.7.conv`` a TGrow, ...). Layers without parameters have no entry.

The encoder mirrors it: a conv from RGB to 64 channels and a ReLU, then three stages, each a TPool (a 1x1 conv over
``stride`` consecutive frames' channels side by side, making one frame of them; strides 2, 2, 1), a 3x3 stride-2
conv and three MemBlocks; then a conv to the 16 latent channels. It takes pixels in [0, 1] and pads a video's end
with copies of its last frame to whole groups of 4 frames, so 4k+1 frames give k+1 latent frames, the Wan VAE's
count (``encoder.0`` the input conv, ``encoder.2.conv`` a TPool, ``encoder.4.conv.0`` a MemBlock's first conv, ...).

Streaming: a MemBlock's first conv is split into the part that reads the current frame and the part that reads
the previous one. Both are computed for every frame of a chunk in one conv; the second part is then shifted
one step in time, its last frame carried in the state to the next chunk. Since everything else is per frame,
decoding a video in pieces gives what decoding it whole gives. Frames are kept time-major, ``[T * B, C, H, W]``,
so a shift in time is a slice, and channels-last on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoder import (EncoderNotLoadedError, check_state, check_stream_shape, check_video, config_json, state_layout,
                      twin_layout)

BLOCKS_PER_STAGE = 3  # MemBlocks per stage in every published TAEHV
ENCODE_LATENTS_PER_PASS = 1  # the encoder takes 4 frames at a time (a MemBlock's past carried between): bounded memory
STATE_STEADY_AFTER = 1  # every MemBlock's past is one frame, there from the first latent frame on


@dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16  # Wan 2.1's latent channels
    channels: tuple[int, ...] = (256, 128, 64, 64)  # the three stages' widths, then the last conv's
    time_upscale: tuple[int, ...] = (1, 2, 2)  # TGrow stride per stage
    space_upscale: int = 2  # per stage: 8x in all
    encoder_channels: int = 64  # every encoder stage's width
    time_downscale: tuple[int, ...] = (2, 2, 1)  # TPool stride per encoder stage

    def __post_init__(self):
        if len(self.channels) != 4 or len(self.time_upscale) != 3 or len(self.time_downscale) != 3:
            raise ValueError("TAEHV has three stages: channels needs 4 entries, time_upscale and time_downscale 3")

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

    @property
    def frames_per_latent_encoded(self) -> int:
        """Video frames the encoder pools into one latent frame."""
        return math.prod(self.time_downscale)

    def encoder_stage_indices(self, stage: int) -> dict[str, object]:
        """The published encoder ``nn.Sequential`` index of each layer of ``stage`` (0, 1, 2): after the input conv
        and its ReLU (0, 1), a TPool, a stride-2 conv and the MemBlocks."""
        base = 2 + stage * (BLOCKS_PER_STAGE + 2)
        blocks = [str(base + 2 + k) for k in range(BLOCKS_PER_STAGE)]
        return {"pool": str(base), "conv": str(base + 1), "blocks": blocks}

    @property
    def encoder_head_index(self) -> str:
        return str(2 + 3 * (BLOCKS_PER_STAGE + 2))  # the conv to latents: "17"


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


class TPool(nn.Module):
    """``stride`` frames in, one out: a 1x1 conv over the frames' channels side by side, the earliest frame's first."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        if self.stride == 1:
            return self.conv(x)
        TB, C, H, W = x.shape  # time-major, T a multiple of the stride
        T, s = TB // batch, self.stride
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        grouped = torch.empty((T // s * batch, s * C, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
        grouped.view(T // s, batch, s, C, H, W).copy_(x.view(T // s, s, batch, C, H, W).transpose(1, 2))
        return self.conv(grouped)  # [T / s * B, C, H, W]


class TAEHVState:
    """One video's streaming history: per MemBlock, its past half for the last frame seen."""

    def __init__(self):
        self.past: dict[str, torch.Tensor] = {}  # by the MemBlock's index in the decoder: "3", ..., "17"
        self.latent_frames = 0
        self.latent_shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream's latents: the first decode's


class TAEHV(nn.Module):
    name = "taehv"

    def __init__(self, config: TAEHVConfig | None = None, with_encoder: bool = False):
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
        if with_encoder:
            self.encoder = self._build_encoder()

    def _build_encoder(self) -> nn.ModuleDict:
        cfg = self.config
        if cfg.frames_per_latent_encoded != cfg.frames_per_latent:
            raise ValueError(f"the encoder's TPool strides {cfg.time_downscale} pool {cfg.frames_per_latent_encoded} "
                             f"frames per latent frame, the decoder's TGrow strides {cfg.time_upscale} make "
                             f"{cfg.frames_per_latent}")
        E = cfg.encoder_channels
        layers: dict[str, nn.Module] = {"0": _conv3(3, E)}
        for stage in range(3):
            idx = cfg.encoder_stage_indices(stage)
            layers[idx["pool"]] = TPool(E, cfg.time_downscale[stage])
            layers[idx["conv"]] = nn.Conv2d(E, E, 3, stride=2, padding=1, bias=False)
            for i in idx["blocks"]:
                layers[i] = MemBlock(E)
        layers[cfg.encoder_head_index] = _conv3(E, cfg.latent_channels)
        return nn.ModuleDict(layers)

    @property
    def device(self) -> torch.device:
        return self.decoder["1"].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder["1"].weight.dtype

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

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
        check_stream_shape(state, latents)
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

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1], T = 4k+1, H and W multiples of 8 -> latents ``[B, 16, k+1, H/8, W/8]``
        as the DiT makes them (TAEHV applies no scale or shift), what ``decode`` takes.

        As TAEHV's own ``encode_video``: pixels go to [0, 1] and the end is padded with copies of the last frame to
        whole groups of 4, so latent frame i pools frames 4i..4i+3. The groups pass one latent frame at a time, each
        MemBlock's past carried from one to the next: the result is the whole video's, in bounded memory.
        """
        if not self.has_encoder:
            raise EncoderNotLoadedError("this TAEHV was loaded without its encoder: load it with load_taehv(path, "
                                        "encoder=True) (or load_vae(path, encoder=True)) to encode frames")
        latent_frames = check_video(video)
        B, _, T, H, W = video.shape
        group = self.config.frames_per_latent_encoded
        x = video.to(self.dtype) * 0.5 + 0.5  # TAEHV's pixels are [0, 1]
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, -T % group, -1, -1)], dim=2)  # [B, 3, group * (k+1), H, W]
        frames = x.permute(2, 0, 1, 3, 4)  # [T', B, 3, H, W]: time-major
        fmt = torch.channels_last if video.device.type == "cuda" else torch.contiguous_format
        past: dict[str, torch.Tensor] = {}
        step = group * ENCODE_LATENTS_PER_PASS
        out = [self._encode_frames(frames[t : t + step].reshape(-1, 3, H, W).contiguous(memory_format=fmt), B, past)
               for t in range(0, frames.shape[0], step)]  # [n * B, 16, H/8, W/8] each
        z = torch.cat(out, dim=0).view(latent_frames, B, self.config.latent_channels, *out[0].shape[-2:])
        return z.permute(1, 2, 0, 3, 4).contiguous()  # [B, 16, k+1, H/8, W/8]

    def _encode_frames(self, x: torch.Tensor, batch: int, past: dict[str, torch.Tensor]) -> torch.Tensor:
        """Frames ``[T * B, 3, H, W]`` time-major in [0, 1], T a multiple of 4 -> latents ``[T / 4 * B, 16, H/8, W/8]``;
        ``past`` holds each MemBlock's past half for the frame before ``x`` (empty at the video's start)."""
        cfg, enc = self.config, self.encoder
        x = F.relu(enc["0"](x))
        for stage in range(3):
            idx = cfg.encoder_stage_indices(stage)
            x = enc[idx["conv"]](enc[idx["pool"]](x, batch))  # fewer frames, then half the size
            for i in idx["blocks"]:
                x, past[i] = enc[i](x, batch, past.get(i))
        return enc[cfg.encoder_head_index](x)

    def state_tensors(self, state: TAEHVState) -> tuple[dict[str, torch.Tensor], dict]:
        """Each MemBlock's carried past half under its module name (``decoder.3``, ...), and a dict: decoder, config,
        dtype, latent_frames and latent_shape."""
        tensors = {f"decoder.{i}": t.contiguous() for i, t in state.past.items()}  # [B, C, H, W] each
        # the encoder's fields are left out: a decoder loaded with or without its encoder takes the same states
        meta = {"decoder": self.name, "config": config_json(self.config, ("encoder_channels", "time_downscale")),
                "dtype": str(self.dtype).removeprefix("torch."), "latent_frames": state.latent_frames,
                "latent_shape": list(state.latent_shape) if state.latent_shape is not None else None}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> TAEHVState:
        check_state(self, tensors, meta, twin_layout(self._twin, STATE_STEADY_AFTER))
        state = TAEHVState()
        state.past = {k.removeprefix("decoder."): t.to(self.device) for k, t in tensors.items()}
        state.latent_frames = meta["latent_frames"]
        state.latent_shape = tuple(meta["latent_shape"]) if meta["latent_shape"] is not None else None
        return state

    def state_nbytes(self, state: TAEHVState) -> int:
        return sum(t.nbytes for t in state.past.values())

    def state_shapes(self, batch: int, height: int, width: int, latent_frames: int | None = None
                     ) -> dict[str, tuple[int, ...]]:
        """The carried pasts' names and shapes after ``latent_frames`` latent frames of ``[batch, 16, F, height,
        width]`` (None: from the first on, their size for good), from a decode on meta tensors (no memory, no
        arithmetic)."""
        frames = STATE_STEADY_AFTER if latent_frames is None else latent_frames
        return state_layout(self._twin, batch, height, width, frames, STATE_STEADY_AFTER)[0]

    def _twin(self) -> TAEHV:
        return TAEHV(self.config)
