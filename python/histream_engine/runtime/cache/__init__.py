"""Where K/V live: the window plan (which frame sits in which ring slot), the ring K/V caches per resolution, one
layer's write-and-attend over its ring, the clean latents kept for re-encoding, and the re-cache pass itself."""
