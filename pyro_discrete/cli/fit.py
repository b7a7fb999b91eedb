"""``pyro-discrete fit``: train one model with one estimator, checkpointing and resuming.

What a run directory promises (see :mod:`~pyro_discrete.cli.rundir`):

- one writer: ``fit`` holds the directory's lock (:class:`~pyro_discrete.cli.lock.RunLock`)
  while it runs; another ``fit`` on it, resumed or ``--overwrite``, is refused;
- a refused resume (other options, a damaged or impossible checkpoint, tensors of another
  shape) leaves every file as it was: :class:`~pyro_discrete.cli.run.Run` checks
  everything, and the checkpoint is restored, before anything is written;
- nothing lost: the checkpoint is replaced atomically every ``--checkpoint-every`` steps and
  on ``SIGINT``/``SIGTERM`` (exit 130/143); ``metrics.csv`` is flushed every ``--log-every``
  steps; a resumed run (after a kill at any moment) continues exactly like an
  uninterrupted one, its curve included;
- a resume changes nothing it does not have to: resuming a finished run leaves every file
  as it is, and a resume whose training options differ from the run's is refused.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_discrete._param_store import load_param_store_state

from . import checkpoints
from .compiling import StepChoice, choose_step
from .errors import CLIError
from .options import FitOptions
from .progress import progress_bar
from .run import Run
from .stopping import StopRequest
from .tasks import Task, check_batch_size, make_device, make_task
from .training import RunState, advance, new_run, register_modules

__all__ = ["cmd_fit"]


def _restore(
    run: RunState, checkpoint: dict, out: Path, config: dict, device: torch.device
) -> None:
    checkpoints.load_model_state(run.model, checkpoint["model"], out, config["model"])
    run.model.to(device)
    batch = run.task.args(run.loader.next_batch())
    register_modules(run.model, batch)
    # Estimators build control-variate networks lazily, drawing their initial weights
    # from torch's RNG. One throw-away gradient evaluation builds them now, so that the RNG
    # restored below is consumed exactly as in an uninterrupted run, and so that every
    # tensor of the checkpoint's param store has a counterpart whose shape it is checked
    # against; the store is then loaded in place, undoing what that evaluation changed.
    run.elbo.loss_and_grads(run.model.model, run.model.guide, *batch)
    load_param_store_state(checkpoint["param_store"])
    for _name, p in pyro.get_param_store().named_parameters():
        p.grad = None
    run.optim.set_state(checkpoint["optim"])
    run.loader.load_state_dict(checkpoint["loader"])
    torch.set_rng_state(checkpoint["rng"])
    run.step, run.elapsed = checkpoint["step"], checkpoint["elapsed"]
    run.excluded = checkpoint["excluded"]
    if "ema" in checkpoint:  # format 1 did not keep the smoothed ELBO: it restarts
        run.ema.load_state_dict(checkpoint["ema"])
        run.smoothed = checkpoint["smoothed"]


def _checkpoint(state: RunState, config: dict) -> dict:
    # the smoothed ELBO must hold every step trained so far: read the compiled steps' losses
    state.sync()
    # a compiled step updates the optimizer's own state tensors in place, so
    # state.optim.get_state() holds the moments and step counts of every step, compiled or not
    return checkpoints.make_checkpoint(
        config,
        step=state.step,
        elapsed=state.elapsed,
        excluded=state.excluded,
        model=state.model,
        optim=state.optim.get_state(),
        loader=state.loader.state_dict(),
        ema=state.ema.state_dict(),
        smoothed=state.smoothed,
    )


def _save(run: Run, state: RunState) -> None:
    """Metrics rows and a checkpoint of the current step, off the training clock."""
    t0 = time.perf_counter()
    run.append_metrics(state.history)
    run.save(_checkpoint(state, run.config))
    state.excluded += time.perf_counter() - t0


def _interrupted(run: Run, state: RunState, signum: int) -> int:
    if run.saved_step == state.step:
        where = f"checkpoint of step {state.step} saved in {run.checkpoint_path}"
    else:
        where = "nothing trained yet, nothing saved"
    print(
        f"pyro-discrete fit: interrupted at step {state.step}; {where}; continue with "
        f"`pyro-discrete fit --out {run.directory} --resume`",
        file=sys.stderr,
    )
    return 128 + signum


def _start(run: Run, task: Task, device: torch.device, step_choice: StepChoice) -> RunState:
    """The run's training state, from scratch or restored from its checkpoint."""
    config = run.config
    state = new_run(
        task,
        config["estimator"],
        config["lr"],
        config["cv_lr_factor"],
        config["batch_size"],
        config["seed"],
        device,
        step_choice=step_choice,
    )
    if run.checkpoint is not None:
        try:
            _restore(state, run.checkpoint, run.directory, config, device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CLIError(
                f"{run.checkpoint_path} does not fit this run ({type(e).__name__}: "
                f"{first}); start again with --overwrite"
            ) from None
    return state


def _train_until(options: FitOptions, run: Run, state: RunState) -> int:
    """Train to the run's steps, saving as it goes; the signal that stopped it early, or 0."""
    steps = run.config["steps"]

    def on_step(state: RunState) -> None:
        if state.step % options.checkpoint_every == 0 and state.step < steps:
            _save(run, state)
        elif state.history:
            t0 = time.perf_counter()
            run.append_metrics(state.history)
            state.excluded += time.perf_counter() - t0

    with StopRequest() as stop:
        bar = progress_bar(steps, state.step, state.name, options.progress)
        try:
            advance(
                state,
                steps,
                bar=bar,
                on_step=on_step,
                log_every=options.log_every,
                stop=stop.requested,
            )
        finally:
            bar.close()
        with stop.deferred():  # a second signal now would lose the step's checkpoint
            if run.saved_step != state.step and state.step > 0:
                _save(run, state)
    return stop.signum or 0


def _train(options: FitOptions, run: Run, task: Task, device: torch.device) -> int:
    """Train to the run's steps from its checkpoint (or from scratch), then summarise."""
    config = run.config
    step_choice = choose_step(
        options.compile,
        options.compile_backend,
        device,
        steps=config["steps"] - run.start_step,
        estimators=[config["estimator"]],
    )
    state = _start(run, task, device, step_choice)
    run.commit()  # every check passed and the checkpoint is restored: now the files change
    print(
        f"fit: {run.config['model']} with {run.config['estimator']} on {task.data_name}, "
        f"steps {state.step} -> {run.config['steps']}, output {run.directory}; "
        f"{step_choice.description}",
        file=sys.stderr,
    )
    signum = _train_until(options, run, state)
    if signum:
        return _interrupted(run, state, signum)
    run.summarise(state, task, options.eval_examples, device)
    return 0


def _resume(options: FitOptions, device: torch.device) -> int:
    updates = {"device": str(device), "parallel": None}  # a multi-process run recorded it
    with Run.resume(options.out, options.given, options.steps, updates) as run:
        if run.finished:
            run.say_finished()
            return 0
        config = run.config
        task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
        return _train(options, run, task, device)


def cmd_fit(options: FitOptions) -> int:
    """Train, checkpointing every ``--checkpoint-every`` steps; ``--resume`` continues."""
    if options.parallel:
        try:
            from .parallel import cmd_fit_parallel  # imports Lightning, an optional dependency
        except ImportError as e:
            raise CLIError(f"--devices/--num-nodes/--strategy: {e}") from None
        return cmd_fit_parallel(options)
    device = make_device(options.device)
    # refused before any file is written
    estimators = [] if options.estimator is None else [options.estimator]
    choose_step(options.compile, options.compile_backend, device, estimators=estimators)
    if options.resume:
        return _resume(options, device)
    config = options.new_run_config(str(device))
    # loads the data before any directory is created: missing data leaves nothing behind
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    check_batch_size(config["batch_size"], task)
    with Run.create(options.out, config, options.overwrite) as run:
        return _train(options, run, task, device)
