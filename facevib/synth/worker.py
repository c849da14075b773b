"""``python -m facevib.synth.worker JOB_FILE``: the render worker process of :func:`facevib.synth.dataset._run`.

A module of its own, which the package does not import: running ``facevib.synth.jobs`` itself
with ``-m`` would execute it a second time next to the copy the package already imported, and
the jobs unpickle as ``facevib.synth.jobs`` classes, which ``run_job`` must recognise.
"""

import sys

from facevib.synth.jobs import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
