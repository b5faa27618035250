"""OpenAI's Videos API (``/v1/videos``) on both servers, over the transports' streams (docs/openai-api.md).

- ``options``: the server's /v1 settings (``--data-dir``, retention, stored bytes, upload size, the model's id).
- ``wire``: what the routes take and give in OpenAI's shapes: ``seconds`` and ``size`` read as whole chunks and a
  size, the video object, errors as ``{"error": {message, type, param, code}}``.
- ``forms``: a request's fields and files, from JSON or a multipart form, its uploads bounded.
- ``media``: images and mp4s read, clips taken, parts stitched, thumbnails and spritesheets made.
- ``store``: the videos kept in ``--data-dir``, their retention and the bytes they may take.
- ``jobs``: what runs where the engine is (the local worker, a Ray replica): a video's stream opened from its
  record, and its result handed to the store.
- ``service`` and ``routes``: the /v1 routes over a transport.
"""
