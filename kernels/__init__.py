"""Triton kernels, installed as ``histream_engine.kernels``.

Nothing here touches a GPU or imports Triton at package import time: each kernel module
imports Triton itself and is loaded only by the attention backend that uses it.
"""
