"""Who runs a chunk's DiT forwards: the runner protocol, the registry of runners, the torch runner, and the engine's
precision settings that decide how its linears and caches are stored."""
