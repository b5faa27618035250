"""The Wan2.1 VAE, streaming: decoding one latent frame at a time, its causal-conv history carried across calls.

Parameter names are those of ``Wan2.1_VAE.pth`` (``conv2`` = post-quant conv, ``decoder.*``; with the
encoder, ``conv1`` = quant conv and ``encoder.*``). The encoder is built only when asked for. Every causal
convolution keeps the last frames of its own input stream in a ``DecodeState``, so decoding a video in
pieces (chunk by chunk, as the DiT produces them) gives exactly what decoding it at once gives. The first
latent frame decodes to 1 video frame, every later one to 4 (two temporal upsamplings that skip frame 0).

That history reaches back a bounded number of latent frames (``Decoder.reach``), so a saved state holds the latents of
the last decode calls instead, and loading it decodes them again (``model/vae_state.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoder import VAE_TIME_STRIDE, EncoderNotLoadedError, check_state, check_stream_shape, check_video, config_json
from .vae_state import calls_to_drop, checked_calls, chunk_calls

# Per-channel latent statistics of the Wan2.1 VAE (z = latent * std + mean before decoding).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
LATENT_FRAMES_PER_PASS = 3  # one chunk
# After 3 latent frames every causal conv holds its full 2 past frames, the temporal upsamplers' included (their time
# conv first runs on the second latent frame): the causal history's shapes stop changing.
CACHE_STEADY_AFTER = 3


@dataclass(frozen=True)
class VAEConfig:
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # encoder view; the decoder reverses it
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self):
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need {self.z_dim} entries")

    @property
    def decoder_dims(self) -> list[int]:
        return [self.dim * m for m in (self.dim_mult[-1],) + tuple(self.dim_mult[::-1])]

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return tuple(self.temporal_downsample[::-1])


class DecodeState:
    """The streaming history of one video: per causal conv, the last frames of its input stream; and the latents of
    the last decode calls, from which a saved state rebuilds the rest."""

    def __init__(self):
        self.frames: dict[nn.Module, torch.Tensor] = {}
        self.started: set[nn.Module] = set()  # temporal upsamplers that have seen their first frame
        self.latent_frames = 0
        self.latent_shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream's latents: the first decode's
        # the last decode calls' latents as decoded (the decoder's dtype), oldest first, [B, 16, F_i, h, w] each: whole
        # calls holding the decoder's reach in latent frames at least (or all of them, from the stream's start)
        self.calls: list[torch.Tensor] = []


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only towards the past in time; with a state, the past comes from earlier calls.

    The conv pads space itself; only time is padded here, with the carried frames or zeros (one copy per call)."""

    def __init__(self, cin: int, cout: int, kernel, padding=(0, 0, 0)):
        super().__init__(cin, cout, kernel, padding=(0, padding[1], padding[2]))
        self.pad_t = 2 * padding[0]

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        # x [B, C, T, H, W]
        front = self.pad_t
        if state is not None and self.pad_t:
            prev = state.frames.get(self)
            if prev is not None:
                x, front = torch.cat([prev, x], dim=2), self.pad_t - prev.shape[2]
            state.frames[self] = x[:, :, -self.pad_t :].clone()
        if front:
            x = F.pad(x, (0, 0, 0, 0, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """Wan's channel RMS norm: L2-normalise over channels, times sqrt(C) and a per-channel gain."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim,) + (1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # indices follow Wan's nn.Sequential: norm, SiLU, conv, norm, SiLU, dropout, conv
        self.residual = nn.ModuleDict({
            "0": RMSNorm(cin, 3), "2": CausalConv3d(cin, cout, 3, (1, 1, 1)),
            "3": RMSNorm(cout, 3), "6": CausalConv3d(cout, cout, 3, (1, 1, 1)),
        })
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, state: DecodeState | None) -> torch.Tensor:
        r = self.residual
        h = r["2"](F.silu(r["0"](x)), state)
        h = r["6"](F.silu(r["3"](h)), state)
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        q, k, v = self.to_qkv(self.norm(frames)).reshape(B * T, 3 * C, H * W).transpose(1, 2).chunk(3, dim=-1)  # [BT, HW, C]
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [BT, HW, C]
        y = self.proj(y.transpose(1, 2).reshape(B * T, C, H, W))
        return x + y.reshape(B, T, C, H, W).permute(0, 2, 1, 3, 4)


class Upsample(nn.Module):
    """2x spatial upsampling (nearest-exact, then a conv halving channels); optionally 2x in time first."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.ModuleDict({"1": nn.Conv2d(dim, dim // 2, 3, padding=1)})
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), (1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, state: DecodeState | None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        # The very first frame is not doubled in time: a video's first latent frame is one video frame.
        if self.time_conv is not None and state is not None:
            if self in state.started:
                y = self.time_conv(x, state).reshape(B, 2, C, T, H, W)
                x = torch.stack((y[:, 0], y[:, 1]), dim=3).reshape(B, C, 2 * T, H, W)
                T = 2 * T
            else:
                state.started.add(self)
        frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        frames = F.interpolate(frames, scale_factor=2.0, mode="nearest-exact")  # copies values: exact in any dtype
        frames = self.resample["1"](frames)
        return frames.reshape(B, T, C // 2, 2 * H, 2 * W).permute(0, 2, 1, 3, 4)


class Downsample(nn.Module):
    """2x spatial downsampling (pad right/bottom, stride-2 conv); optionally 2x in time after it."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.ModuleDict({"1": nn.Conv2d(dim, dim, 3, stride=2)})
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = F.pad(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W), (0, 1, 0, 1))
        frames = self.resample["1"](frames)
        x = frames.reshape(B, T, C, frames.shape[-2], frames.shape[-1]).permute(0, 2, 1, 3, 4)
        if self.time_conv is None:
            return x
        # The first frame passes alone; later groups are convolved together with the frame before them.
        prev = state.frames.get(self)
        state.frames[self] = x[:, :, -1:].detach().clone()
        return x if prev is None else self.time_conv(torch.cat([prev, x], dim=2))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1,) + tuple(cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, (1, 1, 1))
        downs: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                downs.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                downs.append(Downsample(cout, temporal=cfg.temporal_downsample[i]))
        self.downsamples = nn.ModuleList(downs)
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]), ResidualBlock(dims[-1], dims[-1])])
        self.head = nn.ModuleDict({"0": RMSNorm(dims[-1], 3), "2": CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, (1, 1, 1))})

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in list(self.downsamples) + list(self.middle):
            x = layer(x, state)
        return self.head["2"](F.silu(self.head["0"](x)), state)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = cfg.decoder_dims
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, (1, 1, 1))
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])])
        ups: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            cin = cin // 2 if i > 0 else cin  # each Upsample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                ups.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                ups.append(Upsample(cout, temporal=cfg.temporal_upsample[i]))
        self.upsamples = nn.ModuleList(ups)
        self.head = nn.ModuleDict({"0": RMSNorm(dims[-1], 3), "2": CausalConv3d(dims[-1], 3, 3, (1, 1, 1))})

    def forward(self, z: torch.Tensor, state: DecodeState | None) -> torch.Tensor:
        x = self.conv1(z, state)
        for layer in list(self.middle) + list(self.upsamples):
            x = layer(x, state)
        return self.head["2"](F.silu(self.head["0"](x)), state)

    def reach(self) -> int:
        """R: the history carried after latent frame n depends on latent frames n - R + 1 .. n only.

        Walks the layers in order, keeping the causal convs' temporal padding as steps at each one's rate; at every
        causal conv, its carried frames (the last ``pad_t`` of its input) are followed back through the steps to the
        earliest latent frame they read; R is the furthest. Only the convs look across time: the norms, the
        attention and the spatial resamplers are per frame. In latent frames, each conv of padding p at rate r
        reaches back p / r: for the Wan2.1 VAE 24 at rate 1 (11 convs and a time conv), 7 at rate 2 (6 convs and a
        time conv), 6.5 at rate 4 (12 convs and the head), 37.5 in all. Followed frame by frame (an upsampler's output
        frame 2t + j reads its input frame t, hence the rounding down) that is 38."""
        steps: list[tuple[str, int]] = []  # ("conv", p): back p frames; ("up", p): back to the input rate, then p
        carried: list[int] = []

        def carry(pad: int, before: list[tuple[str, int]]) -> None:
            carried.append(-_earliest(before, -pad))

        for layer in [self.conv1, *self.middle, *self.upsamples, self.head["2"]]:
            if isinstance(layer, CausalConv3d):
                carry(layer.pad_t, steps)
                steps.append(("conv", layer.pad_t))
            elif isinstance(layer, ResidualBlock):
                branch: list[tuple[str, int]] = []
                for conv in (layer.residual["2"], layer.residual["6"]):
                    carry(conv.pad_t, steps + branch)
                    branch.append(("conv", conv.pad_t))
                shortcut = layer.shortcut.pad_t if layer.shortcut is not None else 0  # 1x1: no history
                steps.append(("conv", max(sum(p for _, p in branch), shortcut)))  # parallel branches: the longer
            elif isinstance(layer, Upsample) and layer.time_conv is not None:
                carry(layer.time_conv.pad_t, steps)
                steps.append(("up", layer.time_conv.pad_t))
            elif not isinstance(layer, (AttentionBlock, Upsample)):
                raise TypeError(f"Decoder.reach does not know how far {type(layer).__name__} looks back in time")
        return max(carried)


def _earliest(steps: list[tuple[str, int]], frame: int) -> int:
    """The earliest latent frame that ``frame`` (counted back from the stream's last frame, -1, at the rate after
    ``steps``) reads through ``steps``, counted back the same way."""
    for kind, pad in reversed(steps):
        if kind == "up":
            frame //= 2  # output frame 2t + j of a time upsampler comes from its input frame t
        frame -= pad
    return frame


def decoder_reach(config: VAEConfig) -> int:
    """``Decoder.reach`` of the decoder ``config`` describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        return Decoder(config).reach()


class WanVAE(nn.Module):
    name = "wan"

    def __init__(self, config: VAEConfig | None = None, with_encoder: bool = False):
        super().__init__()
        self.config = config or VAEConfig()
        self.conv2 = CausalConv3d(self.config.z_dim, self.config.z_dim, 1)
        self.decoder = Decoder(self.config)
        self.reach = self.decoder.reach()  # latent frames a saved state keeps (at least) and replays
        if with_encoder:
            if self.config.num_res_blocks < 1:
                # the encoder widens each stage in its first residual block: with none, the widths cannot meet
                raise ValueError(f"a Wan VAE encoder needs num_res_blocks >= 1 (it widens each stage in a residual "
                                 f"block); this config has {self.config.num_res_blocks}: build the decoder alone, or "
                                 "give num_res_blocks=1")
            self.conv1 = CausalConv3d(2 * self.config.z_dim, 2 * self.config.z_dim, 1)
            self.encoder = Encoder(self.config)
        self.register_buffer("latents_mean", torch.tensor(self.config.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(self.config.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    def new_state(self) -> DecodeState:
        return DecodeState()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """Normalised latents ``[B, 16, F, h, w]`` -> video ``[B, 3, T, 8h, 8w]`` in [-1, 1].

        T = 4F, or 4F - 3 when these are the video's first latent frames. Pass the same ``state`` for
        consecutive pieces of one video; without one, ``latents`` is a whole video. A state keeps these latents
        until its last calls hold ``reach`` latent frames without them.
        """
        if latents.dim() != 5 or latents.shape[1] != self.config.z_dim:
            raise ValueError(f"latents must be [B, {self.config.z_dim}, F, h, w], got {tuple(latents.shape)}")
        keep = state is not None
        state = state or DecodeState()
        check_stream_shape(state, latents)
        latents = latents.to(self.dtype)
        if keep:
            state.calls.append(latents.detach().clone())  # a copy: the caller may reuse its buffer
            del state.calls[: calls_to_drop([c.shape[2] for c in state.calls], self.reach)]
        z = latents * self.latents_std.to(self.dtype) + self.latents_mean.to(self.dtype)
        z = self.conv2(z)
        # The stream's first latent frame goes alone (the temporal upsamplers skip it); later ones go through the
        # decoder together, up to a chunk's worth at a time (at 1080p, 12 frames of 96 channels are 4.8 GB in bf16).
        start = 1 if state.latent_frames == 0 else 0
        out = [self.decoder(z[:, :, :1], state)] if start else []
        out += [self.decoder(z[:, :, i : i + LATENT_FRAMES_PER_PASS], state) for i in range(start, z.shape[2], LATENT_FRAMES_PER_PASS)]
        state.latent_frames += z.shape[2]
        return torch.cat(out, dim=2).clamp(-1.0, 1.0)

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1], T = 4k+1, H and W multiples of 8 -> normalised latents
        ``[B, 16, k+1, H/8, W/8]`` (the posterior's mean), what ``decode`` takes."""
        if not self.has_encoder:
            raise EncoderNotLoadedError("this Wan VAE was loaded without its encoder: load it with "
                                        "load_vae(path, encoder=True) to encode frames")
        check_video(video)
        state = DecodeState()
        x = video.to(self.dtype)
        # the first frame alone, then groups of 4: each group becomes one latent frame
        pieces = [x[:, :, :1]] + [x[:, :, i : i + VAE_TIME_STRIDE] for i in range(1, x.shape[2], VAE_TIME_STRIDE)]
        h = self.conv1(torch.cat([self.encoder(p, state) for p in pieces], dim=2))
        mu = h[:, : self.config.z_dim]
        return (mu - self.latents_mean.to(mu.dtype)) / self.latents_std.to(mu.dtype)

    def state_tensors(self, state: DecodeState) -> tuple[dict[str, torch.Tensor], dict]:
        """The latents of the last decode calls as one tensor, ``latents`` ``[B, 16, F, h, w]`` (F: their frames,
        ``reach`` or a little more once the stream is that long), and a dict: decoder, config, dtype, latent_frames,
        latent_shape, the temporal upsamplers already started and ``calls`` (each call's latent frames, oldest
        first). Not the causal convs' frames: ``load_state`` decodes these calls again to rebuild them."""
        names = {module: name for name, module in self.named_modules()}
        if any(m not in names for m in state.started):
            raise ValueError("this state was made by another WanVAE instance: save it from the decoder that decoded it")
        tensors = {"latents": torch.cat(state.calls, dim=2)} if state.calls else {}  # [B, 16, F, h, w]
        meta = self._state_meta(state.latent_frames, state.latent_shape, sorted(names[m] for m in state.started),
                                [c.shape[2] for c in state.calls])
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> DecodeState:
        """The state ``state_tensors`` gave, its causal history rebuilt by decoding the kept calls again, in order and
        with the same shapes: from the stream's start when they reach it, else from a state whose temporal upsamplers
        have started and whose convs carry nothing yet (zeros). The history after latent frame n reads latent frames
        n - reach + 1 .. n only, and the calls hold at least those, so every carried value is computed by the same
        operations on the same inputs as in the uninterrupted stream: the same values, bit for bit where the
        device's convolutions are deterministic for a given shape (the CPU's are)."""
        check_state(self, tensors, meta, self._state_layout)
        calls, frames = meta["calls"], meta["latent_frames"]
        start = frames - sum(calls)
        if start and sum(calls) < self.reach:
            raise ValueError(f"this Wan VAE state keeps {sum(calls)} latent frames after frame {start}; rebuilding its "
                             f"history needs the last {self.reach} (this decoder's reach): save it from a decoder that "
                             "kept them (WanVAE.decode keeps them)")
        state = DecodeState()
        if start:
            state.started = {m for m in self.decoder.upsamples if isinstance(m, Upsample) and m.time_conv is not None}
            state.latent_frames = start
        state.latent_shape = tuple(meta["latent_shape"]) if meta["latent_shape"] is not None else None
        latents = tensors["latents"].to(self.device) if calls else None  # [B, 16, sum(calls), h, w]
        offset = 0
        for n in calls:
            self.decode(latents[:, :, offset : offset + n], state)
            offset += n
        return state

    def state_nbytes(self, state: DecodeState) -> int:
        return sum(t.nbytes for t in state.calls)

    def state_shapes(self, batch: int, height: int, width: int, latent_frames: int | None = None
                     ) -> dict[str, tuple[int, ...]]:
        """``state_tensors``' names and shapes after ``latent_frames`` latent frames of ``[batch, 16, F, height, width]``
        decoded a chunk (``LATENT_FRAMES_PER_PASS``) at a time, as a stream does; None: once the stream is longer
        than ``reach`` (``steady_latent_frames``), when the kept calls stop growing."""
        frames = self.steady_latent_frames if latent_frames is None else latent_frames
        sizes = chunk_calls(frames, LATENT_FRAMES_PER_PASS, self.reach)
        kept = sum(sizes[calls_to_drop(sizes, self.reach):])
        return {"latents": (batch, self.config.z_dim, kept, height, width)} if kept else {}

    @property
    def steady_latent_frames(self) -> int:
        """The first chunk boundary from which a stream's saved state keeps the same number of latent frames."""
        return -(-self.reach // LATENT_FRAMES_PER_PASS) * LATENT_FRAMES_PER_PASS

    def cache_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """The causal history a decoding stream holds (every causal conv's last 2 input frames, by module name) for
        latents ``[batch, 16, F, height, width]``, once it has stopped growing (after ``CACHE_STEADY_AFTER`` latent
        frames): what a saved state does not hold. From a decode on meta tensors (no memory, no arithmetic)."""
        with torch.device("meta"):
            twin = self._twin()
        state = twin.new_state()
        twin.decode(torch.empty(batch, self.config.z_dim, CACHE_STEADY_AFTER, height, width, device="meta"), state)
        names = {module: name for name, module in twin.named_modules()}
        return {names[m]: tuple(t.shape) for m, t in state.frames.items()}

    def _state_meta(self, frames: int, shape, started: list[str], calls: list[int]) -> dict:
        return {"decoder": self.name, "config": config_json(self.config), "dtype": str(self.dtype).removeprefix("torch."),
                "latent_frames": frames, "latent_shape": list(shape) if shape is not None else None, "started": started,
                "calls": calls}

    def _state_layout(self, meta: dict) -> tuple[dict[str, tuple[int, ...]], dict]:
        """What a state with ``meta``'s latent shape, frames and calls must hold, for ``check_state``."""
        calls = checked_calls(meta)
        B, h, w = meta["latent_shape"] or (1, 1, 1)
        kept = sum(calls)
        shapes = {"latents": (B, self.config.z_dim, kept, h, w)} if kept else {}
        started = sorted(f"decoder.upsamples.{i}" for i, m in enumerate(self.decoder.upsamples)
                         if isinstance(m, Upsample) and m.time_conv is not None) if meta["latent_frames"] else []
        return shapes, self._state_meta(meta["latent_frames"], meta["latent_shape"], started, calls)

    def _twin(self) -> WanVAE:
        return WanVAE(self.config)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in [-1, 1] -> ``[B, T, H, W, 3]`` uint8, contiguous: made here, on the VAE's device, so
    that what reaches a host (``histream_engine.host``) is at most the one device-to-host copy."""
    return ((video.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()
