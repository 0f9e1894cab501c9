"""``python -m alt_engine.jobs``: the worker and the job processes it starts (``worker.main``)."""

import sys

from alt_engine.jobs.worker import main

sys.exit(main(sys.argv[1:]))
