"""Runs ``pyro-discrete`` with one fault injected at a chosen moment (for the fault suite).

    python tests/faults/cli_driver.py FAULT -- fit --out runs/a ...

FAULT is one of

- ``ACTION@STEP``: after training step STEP (of ``fit``, or of any run of ``compare``),
  ACTION is ``sigint``, ``sigterm`` or ``sigkill`` sent to this process,
  ``sigterm-twice``: a SIGTERM, and another 50 ms later, or ``pause``:
  print ``paused`` and wait for a line on stdin (the run keeps its lock meanwhile);
- ``sigkill-in-checkpoint-write@N``: SIGKILL in the middle of the N-th write of
  ``checkpoint.pt``, after half of its bytes;
- ``sigkill-in-validation``: SIGKILL while the final validation ELBO is computed;
- ``ACTION-rankR@STEP`` (``fit --devices``): ACTION (``sigterm``, ``sigint``, ``sigkill``)
  sent to the process of rank R after its step STEP (Lightning starts ranks 1 to W-1 by
  running this same command line, so every rank installs the fault and checks its rank).

The faults are injected from outside the package (by wrapping its functions), so that the
package carries no test hooks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from pyro_discrete import _io
from pyro_discrete.cli import fit, main, run
from pyro_discrete.cli.compare import comparison


def _signal(name: str):
    def act() -> None:
        os.kill(os.getpid(), getattr(signal, name.upper()))

    return act


def _sigterm_twice() -> None:
    def later() -> None:
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=later, daemon=True).start()


def _pause() -> None:
    print("paused", flush=True)
    sys.stdin.readline()


def _after_step(module, step: int, action) -> None:
    original = module.advance

    def advance(run, until, **kwargs):
        on_step = kwargs.get("on_step")

        def hooked(r):
            if on_step is not None:
                on_step(r)
            if r.step == step:
                action()

        kwargs["on_step"] = hooked
        return original(run, until, **kwargs)

    module.advance = advance


def _kill_in_checkpoint_write(n: int) -> None:
    original = _io.atomic_write
    writes = []

    def atomic_write(path, write):
        if os.path.basename(path) != "checkpoint.pt":
            return original(path, write)
        writes.append(path)
        if len(writes) < n:
            return original(path, write)

        def half_then_die(f):
            import io

            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        return original(path, half_then_die)

    _io.atomic_write = atomic_write


def _kill_in_validation() -> None:
    def elbo_estimate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    run.elbo_estimate = elbo_estimate


def _after_parallel_step(rank: int, step: int, action) -> None:
    from pyro_discrete.cli import parallel

    original = parallel._RunDirectory.on_train_batch_end

    def on_train_batch_end(self, trainer, *args, **kwargs):
        original(self, trainer, *args, **kwargs)
        if trainer.global_rank == rank and self.step == step:
            action()

    parallel._RunDirectory.on_train_batch_end = on_train_batch_end


def install(fault: str) -> None:
    name, _, at = fault.partition("@")
    if "-rank" in name:
        action, _, rank = name.partition("-rank")
        _after_parallel_step(int(rank), int(at), _signal(action))
        return
    if name == "sigkill-in-checkpoint-write":
        _kill_in_checkpoint_write(int(at))
    elif name == "sigkill-in-validation":
        _kill_in_validation()
    else:
        actions = {"pause": _pause, "sigterm-twice": _sigterm_twice}
        action = actions[name] if name in actions else _signal(name)
        for module in (fit, comparison):
            _after_step(module, int(at), action)


if __name__ == "__main__":
    fault, separator, *argv = sys.argv[1:]
    assert separator == "--", "usage: cli_driver.py FAULT -- ARGS"
    install(fault)
    sys.exit(main(argv, as_process=True))
