"""Property-based: any object handed to a live stream's ``set_prompt`` (random tensors of any dtype, shape, layout and
device, with NaN or Inf, and non-tensors) is either refused with a ValueError or TypeError that says what to give, or
accepted; either way the stream goes on to finite latents under the prompt it then holds (a switch lands on the next chunk)."""

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_dit
from histream_engine import SCHEDULES, Engine
from histream_engine.runtime.request_checks import PROMPT_DTYPES

TEXT_DIM = 32  # the tiny model's
DTYPES = [*PROMPT_DTYPES, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn]
EXAMPLES = 200 if os.environ.get("HISTREAM_SLOW_TESTS") == "1" else 20

dims = st.sampled_from([0, 1, 2, 3, TEXT_DIM, 16])
shapes = st.one_of(st.lists(dims, min_size=0, max_size=4).map(tuple),
                   st.tuples(st.integers(0, 4), st.sampled_from([TEXT_DIM, 16])),  # [L, dim]: near the valid shape
                   st.tuples(st.integers(0, 3), st.integers(0, 4), st.sampled_from([TEXT_DIM, 16])))  # [B, L, dim]


@st.composite
def prompt_tensors(draw):
    shape, dtype = draw(shapes), draw(st.sampled_from(DTYPES))
    if draw(st.booleans()) and dtype in PROMPT_DTYPES and len(shape) >= 1:  # the refused layout, in dtypes it takes
        return torch.randn(shape).to_sparse().to(dtype)
    if draw(st.integers(0, 9)) == 0:
        return torch.empty(shape, dtype=dtype, device="meta")  # fixed-device: a meta tensor is what is refused
    values = torch.randn(shape) * draw(st.sampled_from([1.0, 1e4]))
    poison = draw(st.sampled_from([None, float("nan"), float("inf")]))
    if poison is not None and values.numel():
        values.view(-1)[draw(st.integers(0, values.numel() - 1))] = poison
    return values.to(dtype)


valid = st.builds(lambda length, dtype, batched: torch.randn((1, length, TEXT_DIM) if batched else (length, TEXT_DIM)).to(dtype),
                  st.integers(1, 5), st.sampled_from(PROMPT_DTYPES), st.booleans())
anything = st.one_of(prompt_tensors(), valid, st.sampled_from([None, 3, "a prompt", [[0.0] * TEXT_DIM], {"embeds": 1}]))


def test_any_object_to_set_prompt_is_a_clear_refusal_or_a_switch_and_the_stream_goes_on():
    dit = random_dit("tiny", seed=3)
    stream = Engine(dit).stream(torch.randn(1, 3, TEXT_DIM), None, 32, 32,
                                schedule=SCHEDULES["histream"].replace(positions="window"))
    next(stream)
    outcomes = {"refused": 0, "switched": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(anything, st.booleans())
    def switch(embeds, recache):
        try:
            stream.set_prompt(embeds, recache=recache)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            assert message and "Traceback" not in message
            assert any(word in message for word in ("prompt embeddings", "batch", "torch.Tensor")), message
            outcomes["refused"] += 1
        else:  # the chunk the switch lands on, under the new prompt
            outcomes["switched"] += 1
            chunk = next(stream)
            assert chunk.prompt_switch is not None and torch.isfinite(chunk.latents).all()

    switch()
    after = next(stream)  # the refusals left nothing pending
    assert after.prompt_switch is None and torch.isfinite(after.latents).all()
    stream.close()
    assert outcomes["refused"] > 0 and outcomes["switched"] > 0, outcomes
