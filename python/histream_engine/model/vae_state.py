"""The Wan VAE's saved stream state: which decode calls' latents it keeps, and the check of a saved list of them.

The decoder's causal history after latent frame n depends only on latent frames n - R + 1 .. n (R: ``Decoder.reach``,
38 for the Wan2.1 VAE). So a saved state does not hold that history (every causal conv's last 2 input frames: 9.9 GB
at 1920x1088 in bf16) but the latents of the last decode calls, whole calls holding at least R latent frames, and
``WanVAE.load_state`` decodes those calls again. Whole calls, because a call is cut into passes from its own start:
the same calls give the same passes, so the same shapes and the same arithmetic.
"""

from __future__ import annotations


def calls_to_drop(sizes: list[int], reach: int) -> int:
    """How many of the oldest calls (``sizes``: each call's latent frames, oldest first) a state can let go: all but
    the fewest newest whole calls that hold at least ``reach`` frames (all of them if together they hold fewer)."""
    drop, rest = 0, sum(sizes)
    while drop < len(sizes) - 1 and rest - sizes[drop] >= reach:
        rest -= sizes[drop]
        drop += 1
    return drop


def chunk_calls(latent_frames: int, chunk: int, reach: int) -> list[int]:
    """The last of a stream's decode calls after ``latent_frames`` latent frames decoded a chunk at a time (the last
    call short when they end mid-chunk): enough of them that ``calls_to_drop`` keeps what it keeps of all of them."""
    whole, part = divmod(latent_frames, chunk)
    return [chunk] * min(whole, reach // chunk + 2) + ([part] if part else [])


def checked_calls(meta: dict) -> list[int]:
    """A saved state's ``calls`` (latent frames of each decode call kept, oldest first), refused unless positive
    counts within its ``latent_frames``."""
    calls, frames = meta.get("calls"), meta["latent_frames"]
    if (not isinstance(calls, list) or not all(type(n) is int and n > 0 for n in calls)  # noqa: E721 - bools are ints
            or sum(calls) > frames):
        raise ValueError(f"bad Wan VAE state: calls {calls!r} for {frames} latent frames (want the latent frames of "
                         "each decode call kept, at most latent_frames in all, as state_tensors writes them). A state "
                         "holding the decoder's causal-conv frames instead comes from an older histream_engine and "
                         "cannot be loaded: decode the stream again from its start")
    return calls
