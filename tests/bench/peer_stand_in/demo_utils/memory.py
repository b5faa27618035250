raise RuntimeError("builds a CUDA device at import time, as the peer's does: the harness must stand in for it")
