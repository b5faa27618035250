"""The latency-per-frame benchmark suite (``histream bench`` or ``python -m bench``).

Installed as ``histream_engine.bench``; runnable from a checkout as ``python -m bench``.
"""
