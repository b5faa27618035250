"""Exported DiT graphs, export and run side by side.

- Export: ``onnx_export`` traces ``graph_forward.GraphForward`` once per fixed ``signature`` into ONNX, with an
  optional FP8 Q/DQ pass (``fp8``), and writes the ``manifest``; ``tensorrt_build`` builds TensorRT engines from
  those graphs.
- Run: ``runners.GraphForwards`` is the engine's DiT runner for ``EngineConfig(dit="onnxruntime" | "tensorrt")``,
  over an ``onnxruntime_session`` or a ``tensorrt_session``.

This room uses the runtime (schedules, window plans, request checks); the runtime reaches it only through its
DiT-runner registry (``runtime.runners.registry``), by name.
"""
