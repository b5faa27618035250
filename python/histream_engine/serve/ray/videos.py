"""/v1's video store for ``histream serve --ray``: one ``VideoStore`` in a named actor, pinned to the node that deploys
(where ``--data-dir`` is), which every ingress replica and engine replica reaches.

The ingress's routes await its calls (``async_store``); an engine replica reads a video's inputs from it and hands it
the mp4's and the final state's bytes (``ReplicaStore``, blocking calls on the replica's thread, as its session is).
A file it serves is sent as bytes: the ingress may run on another node.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..openai.options import VideoOptions
from ..openai.store import AsyncStore, VideoStore
from .registry import NAMESPACE


@ray.remote(num_cpus=0, max_concurrency=16)
class VideoStoreActor:
    def __init__(self, options: VideoOptions):
        self.store = VideoStore(options)

    def call(self, name: str, *args):
        result = getattr(self.store, name)(*args)
        if name == "content" and result is not None:
            return result.read_bytes()  # the ingress may be on another node
        return result

    def __del__(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def start_store(options: VideoOptions, name: str):
    """The store actor, on this (the deploying) node; the caller keeps the handle, which keeps it alive."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return VideoStoreActor.options(name=name, namespace=NAMESPACE, scheduling_strategy=here).remote(options)


def async_store(name: str) -> AsyncStore:
    actor = ray.get_actor(name, namespace=NAMESPACE)
    return AsyncStore(lambda method, *args: actor.call.remote(method, *args))


class ReplicaStore:
    """``jobs.EngineStore`` over the actor, for an engine replica."""

    def __init__(self, name: str):
        self.actor = ray.get_actor(name, namespace=NAMESPACE)

    def job_inputs(self, video_id: str) -> dict[str, bytes]:
        return ray.get(self.actor.call.remote("job_inputs", video_id))

    def complete(self, video_id: str, mp4: bytes, state: bytes | None) -> None:
        ray.get(self.actor.call.remote("complete", video_id, mp4, state))

    def fail(self, video_id: str, code: str, message: str) -> None:
        ray.get(self.actor.call.remote("fail", video_id, code, message))
