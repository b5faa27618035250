"""``histream serve``: live streaming of generated video to a browser page, chunk by chunk.

One engine, one stream generating at a time (``jobs.JobQueue``: FIFO, positions published to waiting clients), a
JSON API and a WebSocket per stream (``app``), and a single static page with no build step (``static/index.html``).
Needs the ``serve`` extra (FastAPI, uvicorn, Pillow for JPEG frames).
"""
