"""Loaded by ``sdpipe worker`` processes that ``python -m bench.t2_breakdown`` starts (on PYTHONPATH).

With ``SDPIPE_BENCH_BREAKDOWN_DIR`` set, the process installs :mod:`bench._breakdown`'s wrappers
and each process it forks writes its CPU totals by category to that folder.
"""

import os
from pathlib import Path

if os.environ.get("SDPIPE_BENCH_BREAKDOWN_DIR"):
    from bench import _breakdown

    _breakdown.install()
    os.register_at_fork(after_in_child=lambda: _breakdown.start_dumping(Path(os.environ[_breakdown.ENV_DIR])))
