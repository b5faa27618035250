"""``python -m histream_engine ...``: the ``histream`` command line, as torchrun launches it
(``torchrun --nproc-per-node N -m histream_engine generate --parallel ulysses ...``)."""

import sys

from .cli import main

sys.exit(main())
