"""``histream serve``: live streaming of generated video to a browser page, chunk by chunk.

One wire protocol (``protocol``: requests, limits, checks, events, info, final states), one session loop that drives
an engine stream and turns it into events (``session``), one WebSocket pump (``pump``) and one HTTP app with the page
(``app``, ``static/index.html``), over a transport (``transport``): plain ``histream serve`` runs one engine behind a
FIFO queue in this process (``local/``), ``--ray`` runs engine replicas on Ray Serve behind a registry actor
(``ray/``). Needs the ``serve`` extra (FastAPI, uvicorn, Pillow for JPEG frames); ``--ray`` the ``ray`` extra.
"""
