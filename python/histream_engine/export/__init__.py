"""Exported DiT forwards: ONNX graphs per fixed signature (``onnx_export``) and TensorRT engines built from them
(``tensorrt_build``). The runtime side (reading manifests, running graphs) is ``runtime.graph_signature`` and
``runtime.dit_runners``."""
