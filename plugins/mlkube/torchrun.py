"""``python -m mlkube.torchrun``: torchrun (``torch.distributed.run``), ending in one line.

A training pod with several GPUs, or one pod of a multi-node Job, runs the train step under
torchrun. torchrun itself ends a SIGTERM (an eviction, a preemption, a deleted pod) with a
40-line traceback of its own ``SignalException`` and exit status 1, and a failed worker with a
table of every failure. The workers have already said what happened (the trainer's checkpoint
line, or its one-line error, also in the termination message), so this launcher ends with
one line of its own instead and passes on the status a single process would have exited with:
``128 + signal`` (143 for SIGTERM, which Argo's retry rule and Kubernetes read as "stopped"), or
the first failed worker's exit status.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; return the exit status (see the module docstring)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(sys.argv[1:] if argv is None else argv)
    except SignalException as stopped:
        print(f"mlkube torchrun: stopped by {stopped.sigval.name}; the workers were stopped "
              "with it", file=sys.stderr, flush=True)
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        rank, first = failed.get_first_failure()
        status = first.exitcode if first.exitcode > 0 else 128 - first.exitcode
        print(f"mlkube torchrun: worker {rank} exited with status {status}; its error is above",
              file=sys.stderr, flush=True)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
