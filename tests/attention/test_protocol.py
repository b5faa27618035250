"""Every registered attention backend implements ``AttentionBackend`` and declares its ``Capabilities``; the engine
refuses a ring dtype a backend cannot read by asking those capabilities, not the backend's name; the layer view a
backend is handed checks what it holds."""

import inspect
import types

import pytest
import torch

from conftest import random_dit
from histream_engine import Engine, EngineConfig
from histream_engine.attention import BACKENDS, get_backend
from histream_engine.attention.protocol import RING_DTYPES, AttentionBackend, CacheLayer, Capabilities
from histream_engine.kernels.fp8_constants import E4M3
from histream_engine.runtime.runners import precision

E4M3_NAME = "float8_e4m3fn"
# What each backend must say it reads and how it attends; a backend added to the registry must be added here.
DECLARED = {
    "torch": (RING_DTYPES, False), "triton": ((None,), False), "cuda": ((None,), False), "cudnn": ((None,), False),
    "flash_attn": ((None,), False), "torch_fp8": ((E4M3,), True), "triton_fp8": ((E4M3,), True), "auto": ((None,), False),
}


def built_backends():
    """Every backend that can be built here; the others are named with their reason (on the CPU: cuda, flash_attn,
    which build the same ``PrepassAttention`` as triton and cudnn)."""
    built = {}
    for name, ok, reason in BACKENDS.listing():
        if ok:
            built[name] = get_backend(name)
        else:
            assert reason, name
    return built


def test_every_available_backend_implements_the_protocol_with_its_signatures():
    backends = built_backends()
    assert set(DECLARED) == set(BACKENDS.names) and {"torch", "torch_fp8", "auto"} <= set(backends)
    members = ("self_attention", "cross_attention", "write_kv", "ring_attention", "downsample_patches")
    for name, backend in backends.items():
        assert isinstance(backend, AttentionBackend), name
        assert isinstance(backend.capabilities, Capabilities), name
        for member in members:  # isinstance checks only that the names exist: the parameters must match too
            want = list(inspect.signature(getattr(AttentionBackend, member)).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(backend, member)).parameters) == want, (name, member)
        if name == "auto" and backend.capabilities.reads(E4M3):  # no core runs here: the torch reference stands in
            assert (backend.capabilities, backend.name) == (get_backend("torch").capabilities, "torch")
            continue
        assert (backend.capabilities.ring_dtypes, backend.capabilities.fp8_core) == DECLARED[name], name


def test_capabilities_and_layers_refuse_what_does_not_exist(device):
    with pytest.raises(ValueError, match="ring_dtypes must be a non-empty selection"):
        Capabilities(ring_dtypes=())
    with pytest.raises(ValueError, match="ring_dtypes must be a non-empty selection"):
        Capabilities(ring_dtypes=(torch.float8_e5m2,))
    k = torch.zeros(1, 4, 2, 8, device=device)
    k8 = k.to(E4M3)
    scale = torch.ones(1, 1, 2, device=device)
    assert CacheLayer(k, k).kv_dtype is None and CacheLayer(k8, k8, scale, scale).kv_dtype == E4M3
    with pytest.raises(ValueError, match="scales for both K and V"):
        CacheLayer(k8, k8, scale)
    with pytest.raises(ValueError, match="e4m3 K and V with scales"):
        CacheLayer(k8, k8)
    with pytest.raises(ValueError, match="e4m3 K and V with scales"):
        CacheLayer(k, k, scale, scale)


def test_the_engine_refuses_an_unreadable_ring_dtype_by_capabilities(device):
    dit = random_dit("tiny", device=device)
    # the same name, torch, with capabilities that read the model dtype only: refused by what it declares
    model_only = types.SimpleNamespace(name="torch", capabilities=Capabilities(ring_dtypes=(None,)))
    with pytest.raises(ValueError, match="attention='torch' has no FP8 path: it reads a ring in the model dtype.*use triton_fp8"):
        precision.check_engine(EngineConfig(kv_dtype=E4M3_NAME), model_only, dit)
    precision.check_engine(EngineConfig(), model_only, dit)
    e4m3_only = types.SimpleNamespace(name="torch", capabilities=Capabilities(ring_dtypes=(E4M3,), fp8_core=True))
    with pytest.raises(ValueError, match="attention='torch' reads an e4m3 ring cache only: set kv_dtype='float8_e4m3fn'"):
        precision.check_engine(EngineConfig(), e4m3_only, dit)
    precision.check_engine(EngineConfig(kv_dtype=E4M3_NAME), e4m3_only, dit)
    # through the engine, every built backend either reads the model-dtype ring or is refused before any chunk runs
    for name, backend in built_backends().items():
        if backend.capabilities.reads(None):
            assert Engine(dit, EngineConfig(attention=name)).attention.capabilities.reads(None)
        else:
            with pytest.raises(ValueError, match=f"attention={name!r} reads an e4m3 ring cache only"):
                Engine(dit, EngineConfig(attention=name))


@pytest.mark.parametrize("name", ["triton", "torch_fp8"])
def test_a_backend_handed_a_layer_it_cannot_read_says_so(name, device):
    backend = get_backend(name)
    k = torch.zeros(1, 4, 2, 8, device=device)
    scale = torch.ones(1, 1, 2, device=device)
    layer = CacheLayer(k, k) if backend.capabilities.fp8_core else CacheLayer(k.to(E4M3), k.to(E4M3), scale, scale)
    with pytest.raises(ValueError, match=f"attention backend {name!r} reads a ring in .*, not "):
        backend.ring_attention(torch.zeros(1, 4, 2, 8, device=device), layer, None)
