"""``histream serve --ray``: the ingress (plain serve's app over the registry), the stream registry actor, the engine
replicas and their rank groups, and deploying them (docs/ray-serve.md)."""
