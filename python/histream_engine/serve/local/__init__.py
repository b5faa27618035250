"""Plain ``histream serve``: one engine in this process behind a FIFO job queue (``queue``), and its transport."""
