r"""``pyro-discrete``: train, compare and evaluate discrete-latent models from the command line.

Subcommands::

    pyro-discrete fit --model sbn_linear1 --estimator rebar --steps 20000 --out runs/rebar
    pyro-discrete fit --out runs/rebar --resume --steps 40000
    pyro-discrete compare --model sbn_linear1 --estimators reinforce,nvil,rebar --steps 5000 \
        --out runs/cmp
    pyro-discrete evaluate --checkpoint runs/rebar --samples 100 1000 --split test
    pyro-discrete demo

``fit`` writes ``config.json``, ``metrics.csv`` and an atomically replaced ``checkpoint.pt``
(model parameters, Pyro's param store with the control-variate state, optimiser state, data
position and RNG state) every ``--checkpoint-every`` steps; ``summary.json`` is written last
and marks a finished run. ``compare`` builds its output in a hidden temporary directory and
renames it into place only when ``report.md``, ``results.csv`` and the plots are complete.

Bad input (unknown names, missing data, CUDA requested but unavailable, a checkpoint that
belongs to another model) ends with exit status 2 and one line saying what is wrong and how
to fix it, before any run directory is created.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from torch import nn

from pyro_discrete.datasets import (
    DataNotFoundError,
    DynamicBinarizer,
    MinibatchIterator,
    binarized_mnist,
    fashion_mnist,
    mnist_probabilities,
    training_mean,
)
from pyro_discrete.diagnostics import (
    elbo_estimate,
    gradient_variance,
    importance_weighted_bound,
)
from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, control_variate_lr
from pyro_discrete.models import MODELS, UnknownModelError, synthetic_moe_data
from pyro_discrete.optim import MultiTensorAdam

__all__ = ["CLIError", "main", "make_elbo", "make_task"]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
CV_PREFIX = "pyro_discrete/"
DEMO_ESTIMATORS = ("reinforce", "nvil", "muprop", "rebar", "relax")
_FORMAT_VERSION = 1


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where there is a default the help text does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class CLIError(Exception):
    """Bad input to the command line: reported as one line on stderr with exit status 2."""


# --------------------------------------------------------------------------------------
# estimators and tasks


def make_elbo(name: str, **options) -> DiscreteELBO:
    """The :class:`~pyro_discrete.infer.DiscreteELBO` for estimator ``name``.

    Multi-sample estimators (``rloo``, ``vimco``) get their class's default of 2 particles;
    every model here has one data plate, so ``max_plate_nesting=1``.

    :raises CLIError: for an unknown estimator name, listing the valid ones.
    """
    if name not in ESTIMATORS:
        raise CLIError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    options.setdefault("max_plate_nesting", 1)
    return ESTIMATORS[name](**options)


@dataclass
class Task:
    """A model name bound to its data: how to build the model and feed it minibatches.

    ``train`` holds the training rows (for MNIST-like data, images; for the mixture of
    experts, ``[x, y]`` side by side); :meth:`args` turns rows into model arguments.
    """

    model_name: str
    data_name: str
    train: torch.Tensor
    model_kwargs: dict
    args: Callable[[torch.Tensor], tuple]
    split_rows: Callable[[str], torch.Tensor]
    train_probs: torch.Tensor | None = None  # grey levels, for dynamic binarisation

    def build_model(self) -> nn.Module:
        return MODELS[self.model_name](**self.model_kwargs)

    def loader(self, batch_size: int, seed: int, device: torch.device) -> MinibatchIterator:
        if self.train_probs is not None:
            return DynamicBinarizer(self.train_probs, batch_size, seed=seed, device=device)
        return MinibatchIterator(self.train, batch_size, seed=seed, device=device)


def make_task(
    model_name: str, data: str = "mnist", binarization: str = "static", data_seed: int = 0
) -> Task:
    """Load the data a model is trained on.

    Belief nets and the categorical VAE use binarised MNIST (``data="mnist"``) or
    Fashion-MNIST (``data="fashion_mnist"``); the mixture of experts uses
    :func:`~pyro_discrete.models.synthetic_moe_data` (10,000 / 1,000 / 1,000 points).
    """
    if model_name not in MODELS:
        raise CLIError(f"unknown model {model_name!r}; valid names: {', '.join(sorted(MODELS))}")
    if binarization not in ("static", "dynamic"):
        raise CLIError(f"--binarization must be static or dynamic, got {binarization!r}")
    if model_name == "mixture_of_experts":
        moe = synthetic_moe_data(num_points=12_000, seed=data_seed)
        rows = torch.cat([moe.x, moe.y], -1)
        parts = {"train": rows[:10_000], "valid": rows[10_000:11_000], "test": rows[11_000:]}
        input_dim = moe.x.shape[-1]
        return Task(
            model_name, "synthetic_moe", parts["train"],
            {"input_dim": input_dim, "output_dim": moe.y.shape[-1]},
            lambda r: (r[..., :input_dim], r[..., input_dim:]), parts.__getitem__,
        )
    if data == "mnist":
        def split(name):
            return binarized_mnist(name, "static", seed=data_seed)

        probs = mnist_probabilities("train") if binarization == "dynamic" else None
        mean = training_mean("mnist")
    elif data == "fashion_mnist":
        def split(name):
            return fashion_mnist(name, "static", seed=data_seed)

        probs = fashion_mnist("train") if binarization == "dynamic" else None
        mean = training_mean("fashion_mnist")
    else:
        raise CLIError(f"unknown data set {data!r}; valid: mnist, fashion_mnist")
    train = split("train") if probs is None else probs
    return Task(model_name, data, train, {"x_mean": mean}, lambda r: (r,), split, probs)


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(
            "--device cuda was requested but CUDA is not available to this torch build "
            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
        )
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"bad --device {name!r}: {e}") from None


def _optimizer(lr: float, cv_factor: float) -> pyro.optim.PyroOptim:
    # β₂ = 0.99999 and 10x learning rate for control variates follow the REBAR code; one
    # fused Adam instead of Pyro's optimizer-per-parameter loop, which costs a large share
    # of a batch-24 step
    return MultiTensorAdam(control_variate_lr(lr, cv_factor, betas=(0.9, 0.99999)))


# --------------------------------------------------------------------------------------
# param store state, checkpoints


_CONSTRAINTS = {
    "Real()": torch.distributions.constraints.real,
    "GreaterThan(lower_bound=0.0)": torch.distributions.constraints.positive,
    "Interval(lower_bound=0.0, upper_bound=1.0)": torch.distributions.constraints.unit_interval,
    "Simplex()": torch.distributions.constraints.simplex,
}


def param_store_state(prefix: str = "") -> dict:
    """Unconstrained values and constraint names of the store's parameters (``prefix``-ed).

    Plain tensors and strings only, so checkpoints load with ``torch.load(weights_only=True)``
    and cannot run code.
    """
    store = pyro.get_param_store()
    # read directly: get_state() would also strip the params' `unconstrained` weakrefs
    known = store._constraints
    params, constraints = {}, {}
    for name, value in store.named_parameters():
        if not name.startswith(prefix):
            continue
        key = repr(known[name])
        if key not in _CONSTRAINTS:
            raise ValueError(f"cannot checkpoint parameter {name!r} with constraint {key}")
        params[name] = value.detach().clone()
        constraints[name] = key
    return {"params": params, "constraints": constraints}


def load_param_store_state(state: dict) -> None:
    """Restore :func:`param_store_state` output into the live param store.

    Existing parameters are overwritten *in place* so that modules registered with
    :func:`pyro.module` stay tied to the store; missing ones (control-variate state created
    lazily by an estimator) are added, and the estimator picks them up when it registers
    them (``pyro.param`` returns stored values; control-variate networks are registered with
    ``update_module_params=True``).
    """
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    missing = {}
    with torch.no_grad():
        for name, value in state["params"].items():
            if name in current:
                current[name].copy_(value)
            else:
                missing[name] = value.clone().requires_grad_()
    if missing:
        store.set_state({
            "params": missing,
            "constraints": {n: _CONSTRAINTS[state["constraints"][n]] for n in missing},
        })


def _register(model: nn.Module, args: tuple) -> None:
    # one trace of model and guide registers their modules with the param store
    with torch.no_grad():
        tr = pyro.poutine.trace(model.guide).get_trace(*args)
        pyro.poutine.trace(pyro.poutine.replay(model.model, trace=tr)).get_trace(*args)


def _mkstemp_like_open(path: Path) -> tuple[int, str]:
    # mkstemp creates files readable by the owner only; give them the permissions a plain
    # open() would (0666 less the umask), since run directories are meant to be shared
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _atomic_save(obj: object, path: Path) -> None:
    fd, tmp = _mkstemp_like_open(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = _mkstemp_like_open(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG
    if not path.is_file():
        raise CLIError(
            f"{run_dir} is not a pyro-discrete run directory (no {CONFIG}); pass the --out "
            "directory of a `pyro-discrete fit` run"
        )
    return json.loads(path.read_text())


def _load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CLIError(f"{run_dir} has no {CHECKPOINT} (the run stopped before its first "
                       "checkpoint); start it again with --overwrite")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CLIError(f"cannot read {path}: {e}") from None


def _load_model_state(model: nn.Module, state: dict, run_dir: Path, model_name: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CLIError(
            f"the checkpoint in {run_dir} does not fit model {model_name!r} ({first}); it was "
            "written for another model or model version"
        ) from None


# --------------------------------------------------------------------------------------
# training


class _EMA:
    def __init__(self, decay: float = 0.98):
        self.decay, self.value, self.count = decay, 0.0, 0

    def update(self, x: float) -> float:
        self.count += 1
        self.value = self.decay * self.value + (1 - self.decay) * x
        return self.value / (1 - self.decay**self.count)  # bias-corrected, as Adam does


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, mininterval=0.5,
                dynamic_ncols=True, leave=True, file=sys.stderr)


@dataclass
class RunState:
    """A training run in progress: model, loss, optimiser and data position."""

    task: Task
    model: nn.Module
    elbo: DiscreteELBO
    optim: MultiTensorAdam
    loader: MinibatchIterator
    name: str = ""
    step: int = 0
    elapsed: float = 0.0
    #: time spent in ``on_step`` callbacks on evaluation, not counted as training time
    excluded: float = 0.0
    #: training time of step 1 (estimators build caches and networks on their first step)
    first_step_s: float | None = None
    history: list[dict] = field(default_factory=list)
    ema: _EMA = field(default_factory=_EMA)
    smoothed: float = float("nan")

    @property
    def train_time(self) -> float:
        return self.elapsed - self.excluded

    @property
    def svi(self) -> pyro.infer.SVI:
        return pyro.infer.SVI(self.model.model, self.model.guide, self.optim, loss=self.elbo)


def _advance(
    run: RunState,
    until: int,
    *,
    bar=None,
    log_every: int = 50,
    on_step: Callable[[RunState], None] | None = None,
) -> None:
    """Run SVI until ``run.step == until``; ``on_step`` runs after every step.

    ``run.elapsed`` accumulates only the time spent here, so runs that take turns (see
    :func:`run_compare`) each count their own training time.
    """
    svi = run.svi
    start = time.perf_counter() - run.elapsed
    while run.step < until:
        batch = run.loader.next_batch()
        loss = svi.step(*run.task.args(batch))
        if not math.isfinite(loss):
            raise FloatingPointError(f"{run.name}: loss became {loss} at step {run.step + 1}")
        run.step += 1
        run.elapsed = time.perf_counter() - start
        if run.step == 1:
            run.first_step_s = run.train_time
        run.smoothed = -run.ema.update(loss / batch.shape[0])
        if run.step % log_every == 0 or run.step == until:
            run.history.append(
                {"step": run.step, "wall_time_s": run.train_time, "train_elbo_ema": run.smoothed}
            )
            if bar is not None:
                rate = run.step / run.train_time if run.train_time > 0 else float("nan")
                bar.set_postfix(estimator=run.name, elbo=f"{run.smoothed:.2f}",
                                steps_per_s=f"{rate:.1f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            on_step(run)
            # the callback's own time is on the clock now; it subtracts what it excludes
            run.elapsed = time.perf_counter() - start


def _new_run(task: Task, estimator: str, lr: float, cv_factor: float, batch_size: int,
             seed: int, device: torch.device, init_state: dict | None = None) -> RunState:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = task.build_model()
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    loader = task.loader(batch_size, seed, device)
    return RunState(task, model, make_elbo(estimator), _optimizer(lr, cv_factor), loader,
                    name=estimator)


# --------------------------------------------------------------------------------------
# fit


def _check_fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CLIError(
                f"{out} already exists and is not empty; pass --resume to continue that run, "
                "--overwrite to replace it, or choose another --out"
            )


def cmd_fit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = _device(args.device)
    if args.resume:
        config = _read_config(out)
        for key in ("model", "estimator", "data"):
            given = getattr(args, key)
            if given is not None and given != config[key]:
                raise CLIError(
                    f"--{key} {given} does not match the run in {out}, which was started with "
                    f"--{key} {config[key]}; resume with the same {key} or start a new --out"
                )
        checkpoint = _load_checkpoint(out)
        steps = args.steps if args.steps is not None else config["steps"]
        if steps < checkpoint["step"]:
            raise CLIError(f"--steps {steps} is below the checkpoint's step {checkpoint['step']}")
    else:
        config = {
            "format_version": _FORMAT_VERSION,
            "model": args.model or "sbn_linear1",
            "estimator": args.estimator or "reinforce",
            "data": args.data or "mnist",
            "binarization": args.binarization,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "cv_lr_factor": args.cv_lr_factor,
            "seed": args.seed,
        }
        make_elbo(config["estimator"])  # validates the name before any data is loaded
        steps = args.steps if args.steps is not None else 1000
        checkpoint = None
    config["steps"] = steps
    config["device"] = str(device)
    if config["model"] not in MODELS:
        raise CLIError(f"unknown model {config['model']!r}; valid names: "
                       f"{', '.join(sorted(MODELS))}")
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    if not args.resume:
        _check_fresh_out(out, args.overwrite)

    run = _new_run(task, config["estimator"], config["lr"], config["cv_lr_factor"],
                   config["batch_size"], config["seed"], device)
    if checkpoint is not None:
        _load_model_state(run.model, checkpoint["model"], out, config["model"])
        run.model.to(device)
        batch = task.args(run.loader.next_batch())
        _register(run.model, batch)
        load_param_store_state(checkpoint["param_store"])
        # Estimators build control-variate networks lazily, drawing their initial weights
        # from torch's RNG. One throw-away gradient evaluation builds them now (they load
        # the checkpoint's values from the store), so that the RNG restored below is consumed
        # exactly as in an uninterrupted run; the store is then restored again, undoing the
        # running statistics that evaluation updated.
        run.elbo.loss_and_grads(run.model.model, run.model.guide, *batch)
        load_param_store_state(checkpoint["param_store"])
        for _name, p in pyro.get_param_store().named_parameters():
            p.grad = None
        run.optim.set_state(checkpoint["optim"])
        run.loader.load_state_dict(checkpoint["loader"])
        torch.set_rng_state(checkpoint["rng"])
        run.step, run.elapsed = checkpoint["step"], checkpoint["elapsed"]
        run.excluded = checkpoint["excluded"]
    elif args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)  # a resumed run is unfinished until it ends
    _atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")

    metrics_path = out / METRICS
    header = "step,wall_time_s,train_elbo_ema\n"
    if checkpoint is not None and metrics_path.exists():
        # rows past the checkpoint (a run stopped while saving) would be repeated on resume
        rows = metrics_path.read_text().splitlines()[1:]
        kept = [r for r in rows if r and int(r.split(",")[0]) <= run.step]
        _atomic_write_text(metrics_path, header + "".join(r + "\n" for r in kept))
    elif not metrics_path.exists():
        metrics_path.write_text(header)

    def save(run: RunState) -> None:
        with metrics_path.open("a") as f:
            for row in run.history:
                f.write(f"{row['step']},{row['wall_time_s']:.3f},{row['train_elbo_ema']:.4f}\n")
        run.history.clear()
        _atomic_save(
            {
                "format_version": _FORMAT_VERSION,
                "model_name": config["model"],
                "step": run.step,
                "elapsed": run.elapsed,
                "excluded": run.excluded,
                "model": {k: v.cpu() for k, v in run.model.state_dict().items()},
                "param_store": param_store_state(),
                "optim": run.optim.get_state(),
                "loader": run.loader.state_dict(),
                "rng": torch.get_rng_state(),
            },
            out / CHECKPOINT,
        )

    def maybe_save(run: RunState) -> None:
        if run.step % args.checkpoint_every == 0 and run.step < steps:
            t0 = time.perf_counter()
            save(run)
            run.excluded += time.perf_counter() - t0

    print(f"fit: {config['model']} with {config['estimator']} on {task.data_name}, "
          f"steps {run.step} -> {steps}, output {out}", file=sys.stderr)
    bar = _progress(steps, run.step, config["estimator"], not args.no_progress)
    try:
        _advance(run, steps, bar=bar, on_step=maybe_save, log_every=args.log_every)
    finally:
        bar.close()
    save(run)
    valid_args = task.args(task.split_rows("valid")[: args.eval_examples].to(device))
    summary = {
        "complete": True,
        "step": run.step,
        "train_time_s": round(run.train_time, 2),
        "steps_per_s": round(run.step / run.train_time, 2) if run.train_time else None,
        "valid_elbo": elbo_estimate(run.model.model, run.model.guide, *valid_args),
        "valid_examples": int(valid_args[0].shape[0]),
    }
    _atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    print(f"valid ELBO {summary['valid_elbo']:.2f} nats ({summary['valid_examples']} examples, "
          f"one sample each); run saved in {out}")
    return 0


# --------------------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    run_dir = Path(args.checkpoint)
    device = _device(args.device)
    config = _read_config(run_dir)
    if args.model is not None and args.model != config["model"]:
        raise CLIError(
            f"the checkpoint in {run_dir} is a {config['model']!r} model, not {args.model!r}"
        )
    checkpoint = _load_checkpoint(run_dir)
    if checkpoint.get("model_name") != config["model"]:
        raise CLIError(
            f"{run_dir}: {CHECKPOINT} holds a {checkpoint.get('model_name')!r} model but "
            f"{CONFIG} says {config['model']!r}; the directory mixes two runs"
        )
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    pyro.clear_param_store()
    model = task.build_model()
    _load_model_state(model, checkpoint["model"], run_dir, config["model"])
    model.to(device).eval()
    rows = task.split_rows(args.split)
    if args.max_examples:
        rows = rows[: args.max_examples]
    data = task.args(rows.to(device))
    complete = (run_dir / SUMMARY).is_file()
    print(f"{config['model']} trained with {config['estimator']} for {checkpoint['step']} "
          f"steps{'' if complete else ' (run not finished: last checkpoint)'}; "
          f"{args.split} split, {rows.shape[0]} examples")
    pyro.set_rng_seed(args.seed)
    results = {}
    for k in args.samples:
        t0 = time.perf_counter()
        bound = importance_weighted_bound(
            model.model, model.guide, *data, num_samples=k, batch_size=args.batch_size,
            chunk_size=min(k, 100),
        )
        results[k] = bound
        print(f"  importance-weighted bound, K={k:5d}: {bound:10.3f} nats "
              f"({time.perf_counter() - t0:.1f}s)")
    if args.json:
        _atomic_write_text(Path(args.json), json.dumps(
            {"split": args.split, "examples": int(rows.shape[0]), "step": checkpoint["step"],
             "bounds": {str(k): v for k, v in results.items()}}, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------
# compare


def _estimator_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError("--estimators is empty; give a comma-separated list, e.g. reinforce,rebar")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise CLIError(f"unknown estimator(s) {', '.join(map(repr, unknown))}; valid names: "
                       f"{', '.join(ESTIMATORS)}")
    if len(set(names)) != len(names):
        raise CLIError(f"--estimators lists a name twice: {text}")
    return names


@dataclass
class CompareSettings:
    model: str
    estimators: list[str]
    steps: int
    batch_size: int
    lr: float
    cv_lr_factor: float
    seed: int
    data: str
    binarization: str
    device: str
    reference: str
    variance_points: int
    variance_samples: int
    eval_points: int
    eval_examples: int
    iw_samples: int
    time_budget: float | None


def _calibrate(task: Task, s: CompareSettings, device: torch.device, init: dict,
               steps: int = 12) -> tuple[dict[str, float], float]:
    """Seconds per training step of each estimator, measured on a throwaway run, and the
    total start-up time (first steps build caches and control-variate networks)."""
    timings, startup = {}, 0.0
    for name in s.estimators:
        run = _new_run(task, name, s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init)
        svi = run.svi
        t0 = time.perf_counter()
        for _ in range(2):
            svi.step(*task.args(run.loader.next_batch()))
        startup += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            svi.step(*task.args(run.loader.next_batch()))
        timings[name] = (time.perf_counter() - t0) / steps
    pyro.clear_param_store()
    return timings, startup


# NVIL divides its learning signal by a running standard deviation, which rescales its
# gradient; variances are compared on the unscaled (unbiased) estimate.
_UNSCALED = {"nvil": {"normalize_variance": False}}


def _variance_steps(steps: int, points: int) -> list[int]:
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


class _Slot:
    """A run parked outside the live param store and RNG while other runs take their turn."""

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.park()

    def park(self) -> None:
        self.store = pyro.get_param_store().get_state()
        self.rng = torch.get_rng_state()

    def resume(self) -> RunState:
        store = pyro.get_param_store()
        store.clear()
        store.set_state(self.store)  # the same tensors: modules and optimiser stay attached
        torch.set_rng_state(self.rng)
        return self.run


def run_compare(s: CompareSettings, out: Path, progress: bool = True) -> Path:
    """Train every estimator from one initialisation and write the report to ``out``.

    The estimators take turns, a round of a few steps each, so that all of them have done
    the same number of steps whenever the time budget stops training, and so that changes in
    machine load during the run affect them alike. Each run keeps its own param store and
    RNG stream between turns, so the result does not depend on the interleaving.
    """
    t_start = time.perf_counter()
    device = _device(s.device)
    task = make_task(s.model, s.data, s.binarization, s.seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(s.seed)
    init = copy.deepcopy(task.build_model().state_dict())

    timings = None
    planned = s.steps
    deadline = math.inf
    if s.time_budget is not None:
        timings, startup = _calibrate(task, s, device, init)
        per_step = sum(timings.values())
        # a variance draw costs about one training step; the runs repeat the start-up cost
        overhead = s.variance_points * s.variance_samples * per_step * 1.2 + startup + 10
        spent = time.perf_counter() - t_start
        affordable = int((0.9 * s.time_budget - spent - overhead) / per_step)
        if affordable < 20:
            raise CLIError(
                f"--time-budget {s.time_budget:.0f}s affords only {max(affordable, 0)} steps "
                f"per estimator (about {1000 * per_step:.0f} ms for one step of all of them); "
                "raise the budget or drop estimators"
            )
        planned = min(planned, affordable)
        deadline = t_start + 0.9 * s.time_budget
        print(f"time budget {s.time_budget:.0f}s: planning {planned} steps per estimator "
              f"(measured ms/step: "
              + ", ".join(f"{n} {1000 * t:.1f}" for n, t in timings.items()) + ")",
              file=sys.stderr)

    var_steps = set(_variance_steps(planned, s.variance_points))
    eval_steps = set(_variance_steps(planned, s.eval_points))
    eval_rows = task.train[: s.eval_examples]
    if task.train_probs is not None:  # dynamic binarisation: evaluate on one fixed draw
        eval_rows = (torch.rand(eval_rows.shape, generator=torch.Generator().manual_seed(s.seed))
                     < eval_rows).float()
    eval_args = task.args(eval_rows.to(device))
    variance_batch = task.args(task.loader(s.batch_size, s.seed + 1, device).next_batch())
    eval_seed = s.seed + 12345

    results: list[dict] = []
    reference_states: dict[int, dict] = {}
    cv_states: dict[str, dict[int, dict]] = {name: {} for name in s.estimators}

    def record(estimator, metric, step, wall, value):
        results.append({"estimator": estimator, "metric": metric, "step": step,
                        "wall_time_s": wall, "value": value})

    def evaluate(run: RunState, on_clock: bool = True) -> None:
        t0 = time.perf_counter()
        rng = torch.get_rng_state()  # a separate stream: evaluating leaves training alone
        pyro.set_rng_seed(eval_seed + run.step)
        value = elbo_estimate(run.model.model, run.model.guide, *eval_args)
        torch.set_rng_state(rng)
        record(run.name, "eval_elbo", run.step, run.train_time, value)
        if on_clock:  # called during training: keep it off the training time
            run.excluded += time.perf_counter() - t0

    def snapshot(run: RunState) -> None:
        cv_states[run.name][run.step] = param_store_state(CV_PREFIX)
        if run.name == s.reference:
            reference_states[run.step] = copy.deepcopy(run.model.state_dict())

    def on_step(run: RunState) -> None:
        if run.step in eval_steps:
            evaluate(run)
        if run.step in var_steps:
            snapshot(run)

    slots = {}
    for name in s.estimators:
        run = _new_run(task, name, s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init)
        evaluate(run, on_clock=False)
        slots[name] = _Slot(run)

    chunk = max(1, min(50, planned // 40))
    bar = _progress(planned * len(s.estimators), 0, "training", progress)
    done = 0
    try:
        while done < planned:
            t_round = time.perf_counter()
            target = min(done + chunk, planned)
            for name in s.estimators:
                run = slots[name].resume()
                _advance(run, target, bar=bar, on_step=on_step)
                slots[name].park()
            done = target
            if time.perf_counter() + (time.perf_counter() - t_round) > deadline:
                break
    finally:
        bar.close()
    if done < planned:
        print(f"time budget: stopped every estimator at step {done} of {planned}",
              file=sys.stderr)

    summaries: dict[str, dict] = {}
    for name in s.estimators:
        run = slots[name].resume()
        if done not in eval_steps:
            evaluate(run, on_clock=False)
        if done not in var_steps:
            snapshot(run)
        for row in run.history:
            record(name, "train_elbo_ema", row["step"], row["wall_time_s"], row["train_elbo_ema"])
        # the first step builds caches and networks: reported apart from the steady rate
        ms = 1000 * (run.train_time - run.first_step_s) / max(done - 1, 1)
        record(name, "ms_per_step", done, run.train_time, ms)
        record(name, "first_step_s", 1, run.first_step_s, run.first_step_s)
        summary = {"ms_per_step": ms, "train_time_s": run.train_time,
                   "first_step_s": run.first_step_s}
        if s.iw_samples:
            valid = task.args(task.split_rows("valid")[: s.eval_examples].to(device))
            pyro.set_rng_seed(eval_seed)
            summary["valid_iw_bound"] = importance_weighted_bound(
                run.model.model, run.model.guide, *valid, num_samples=s.iw_samples,
                chunk_size=min(s.iw_samples, 50),
            )
            record(name, f"valid_iw_bound_k{s.iw_samples}", done, run.train_time,
                   summary["valid_iw_bound"])
        summaries[name] = summary
        slots[name].park()
    del slots

    # gradient variance of every estimator at the reference run's parameters
    points = sorted(p for p in reference_states if p <= done)
    print(f"measuring gradient variance at {len(points)} points of the {s.reference} run "
          f"({s.variance_samples} draws each)", file=sys.stderr)
    for point in points:
        for name in s.estimators:
            pyro.clear_param_store()
            pyro.set_rng_seed(s.seed + point)
            model = task.build_model()
            model.load_state_dict(reference_states[point])
            model.to(device)
            _register(model, variance_batch)
            load_param_store_state(cv_states[name][point])
            stats = gradient_variance(
                make_elbo(name, **_UNSCALED.get(name, {})), model.model, model.guide,
                *variance_batch, num_samples=s.variance_samples,
            )
            record(name, "grad_log_variance", point, float("nan"), stats.log_mean_variance)
    pyro.clear_param_store()

    _write_report(out, s, done, results, summaries, timings, points,
                  time.perf_counter() - t_start)
    return out / "report.md"


def _series(results, name, metric, x="step"):
    rows = sorted((r for r in results if r["estimator"] == name and r["metric"] == metric),
                  key=lambda r: r["step"])
    return [r[x] for r in rows], [r["value"] for r in rows]


def _write_report(out: Path, s: CompareSettings, steps: int, results: list[dict],
                  summaries: dict, timings: dict | None, var_steps: list[int],
                  total_time: float) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["estimator", "metric", "step", "wall_time_s", "value"])
        writer.writeheader()
        for r in results:
            writer.writerow({**r, "wall_time_s": f"{r['wall_time_s']:.3f}",
                             "value": f"{r['value']:.6g}"})

    def plot(filename, metric, x, xlabel, ylabel, title, logy=False):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name in s.estimators:
            xs, ys = _series(results, name, metric, x)
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)

    if s.model == "mixture_of_experts":
        data = "synthetic mixture-of-experts data"
    else:
        pretty = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[s.data]
        data = f"{s.binarization}ally binarised {pretty}"
    plot("elbo_vs_steps.png", "eval_elbo", "step", "training step",
         f"ELBO per example (nats, {s.eval_examples} training examples)",
         f"{s.model}: training ELBO")
    plot("elbo_vs_time.png", "eval_elbo", "wall_time_s", "training wall-clock (s)",
         "ELBO per example (nats)", f"{s.model}: training ELBO vs time")
    plot("grad_variance.png", "grad_log_variance", "step", f"step of the {s.reference} run",
         "log mean variance of the gradient", f"{s.model}: gradient variance of the encoder")

    def final(name, metric):
        xs, ys = _series(results, name, metric)
        return ys[-1] if ys else float("nan")

    def best(name):
        _, ys = _series(results, name, "eval_elbo")
        return max(ys) if ys else float("nan")

    def mean_logvar(name):
        _, ys = _series(results, name, "grad_log_variance")
        return sum(ys) / len(ys) if ys else float("nan")

    lines = [
        f"# Gradient estimators compared: `{s.model}` on {data}",
        "",
        f"Every estimator trained for **{steps} steps** (batch {s.batch_size}, Adam lr "
        f"{s.lr:g}, β₂ = 0.99999, control variates at {s.cv_lr_factor:g}× that rate) from the "
        f"same initialisation (seed {s.seed}) on the same sequence of minibatches, device "
        f"`{s.device}`, {torch.get_num_threads()} CPU thread(s). Total time "
        f"{total_time:.0f}s.",
        "",
        "| estimator | ms / step | steps / s | first step (s) | final ELBO | best ELBO "
        "| mean log-variance |"
        + (f" valid IW bound (K={s.iw_samples}) |" if s.iw_samples else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if s.iw_samples else ""),
    ]
    for name in s.estimators:
        ms = summaries[name]["ms_per_step"]
        row = (f"| {name} | {ms:.1f} | {1000 / ms:.1f} | {summaries[name]['first_step_s']:.2f} "
               f"| {final(name, 'eval_elbo'):.2f} | {best(name):.2f} | {mean_logvar(name):.2f} |")
        if s.iw_samples:
            row += f" {summaries[name]['valid_iw_bound']:.2f} |"
        lines.append(row)
    ranking = sorted(s.estimators, key=mean_logvar)
    lines += [
        "",
        "ms / step excludes the first step, where estimators build caches and networks. "
        "ELBO: single-sample estimate per example on the first "
        f"{s.eval_examples} training examples, averaged (higher is better). Variance: "
        "log of the mean over the encoder's parameter components of the variance of the "
        "gradient estimate (lower is better), averaged over the measurement points. "
        f"Ordered by gradient variance, lowest first: {', '.join(ranking)}.",
        "",
        "## Training ELBO against steps",
        "",
        "![ELBO vs steps](elbo_vs_steps.png)",
        "",
        "## Training ELBO against wall-clock time",
        "",
        "Time spent on the ELBO evaluations is excluded.",
        "",
        "![ELBO vs time](elbo_vs_time.png)",
        "",
        "## Gradient variance at shared parameter values",
        "",
        f"As in the REBAR paper: at steps {', '.join(map(str, var_steps))} of the "
        f"`{s.reference}` run, every estimator's gradient for the encoder (inference network) "
        f"parameters was drawn {s.variance_samples} times on one fixed minibatch, at those same "
        "model parameters. Each estimator's own control-variate state (baselines, running "
        "statistics, η, λ, surrogate networks) is taken from its own run at the same step. "
        "NVIL trains with its variance normalisation (the signal divided by a running standard "
        "deviation, which rescales the gradient); its variance here is that of the "
        "unnormalised, unbiased estimate.",
        "",
        "![gradient variance](grad_variance.png)",
        "",
        "| step | " + " | ".join(s.estimators) + " |",
        "|---:|" + "---:|" * len(s.estimators),
    ]
    for point in var_steps:
        cells = []
        for name in s.estimators:
            vals = [r["value"] for r in results if r["estimator"] == name
                    and r["metric"] == "grad_log_variance" and r["step"] == point]
            cells.append(f"{vals[0]:.2f}" if vals else "")
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    if timings:
        lines += ["", "Calibration (ms per step, before training): "
                  + ", ".join(f"{n} {1000 * t:.1f}" for n, t in timings.items()) + "."]
    lines += ["", "Raw figures: [results.csv](results.csv) (columns estimator, metric, step, "
              "wall_time_s, value).", ""]
    (out / "report.md").write_text("\n".join(lines))


def _compare_settings(args: argparse.Namespace, estimators: Sequence[str]) -> CompareSettings:
    reference = args.reference or ("rebar" if "rebar" in estimators else estimators[0])
    if reference not in estimators:
        raise CLIError(f"--reference {reference} is not among --estimators "
                       f"({', '.join(estimators)})")
    if args.model not in MODELS:
        raise CLIError(f"unknown model {args.model!r}; valid names: "
                       f"{', '.join(sorted(MODELS))}")
    if args.steps < 1 or args.batch_size < 1:
        raise CLIError("--steps and --batch-size must be positive")
    if args.variance_samples < 2:
        raise CLIError("--variance-samples must be at least 2")
    return CompareSettings(
        model=args.model, estimators=list(estimators), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, cv_lr_factor=args.cv_lr_factor, seed=args.seed,
        data=args.data or "mnist", binarization=args.binarization, device=args.device,
        reference=reference, variance_points=args.variance_points,
        variance_samples=args.variance_samples, eval_points=args.eval_points,
        eval_examples=args.eval_examples, iw_samples=args.iw_samples,
        time_budget=args.time_budget,
    )


def _compare_into(out: Path, overwrite: bool, settings: CompareSettings, progress: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"{out} already exists and is not empty; pass --overwrite to replace "
                       "it or choose another --out")
    _device(settings.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build everything in a hidden sibling and rename at the end: an interrupted or failed
    # comparison leaves no directory that looks like a finished report.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        run_compare(settings, tmp, progress=progress)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the unfinished state only
        if out.exists():
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"


def cmd_compare(args: argparse.Namespace) -> int:
    settings = _compare_settings(args, _estimator_list(args.estimators))
    report = _compare_into(Path(args.out), args.overwrite, settings, not args.no_progress)
    print(f"report written to {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _compare_settings(args, _estimator_list(args.estimators))
    report = _compare_into(Path(args.out), True, settings, not args.no_progress)
    print(f"demo report written to {report}")
    return 0


# --------------------------------------------------------------------------------------
# argument parsing


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_THREADS_HELP = (
    "torch intra-op threads (default 1: a batch-24 step is too small to gain from more, and "
    "threads that share cores with other processes make each step several times slower; "
    "measured on 2 busy cores, REINFORCE 7.3 ms/step with 1 thread, 28 ms with 2)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-discrete",
        description="Train and compare gradient estimators for discrete latent variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_names = ", ".join(sorted(MODELS))
    estimator_names = ", ".join(ESTIMATORS)

    def common(p, model_default):
        p.add_argument("--model", default=model_default, help=f"one of: {model_names}")
        p.add_argument("--data", default=None, choices=["mnist", "fashion_mnist"],
                       help="data for the VAEs (default mnist; the mixture of experts always "
                       "uses synthetic data)")
        p.add_argument("--binarization", default="static", choices=["static", "dynamic"],
                       help="one fixed Bernoulli draw of the images, or a fresh one per batch")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the initialisation, data order and binarisation")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        p.add_argument("--threads", type=_positive_int, default=1, help=_THREADS_HELP)

    fmt = _DefaultsHelpFormatter
    fit = sub.add_parser("fit", help="train one model with one estimator", formatter_class=fmt,
                         description="Train one model with one estimator; checkpoints every "
                         "--checkpoint-every steps, and --resume continues a run exactly.")
    common(fit, None)
    fit.add_argument("--estimator", default=None, help=f"one of: {estimator_names}")
    fit.add_argument("--steps", type=_positive_int, default=None,
                     help="total training steps (default 1000, or the run's own on --resume)")
    fit.add_argument("--batch-size", type=_positive_int, default=24, help="minibatch size")
    fit.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate of the model")
    fit.add_argument("--cv-lr-factor", type=float, default=10.0,
                     help="control-variate learning rate as a multiple of --lr")
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument("--checkpoint-every", type=_positive_int, default=1000,
                     help="steps between checkpoints")
    fit.add_argument("--log-every", type=_positive_int, default=50,
                     help="steps between rows of metrics.csv")
    fit.add_argument("--eval-examples", type=_positive_int, default=1000,
                     help="validation examples for the final ELBO")
    fit.set_defaults(func=cmd_fit)

    def compare_options(p, estimators, steps, out, budget, model="sbn_linear1"):
        common(p, model)
        p.add_argument("--estimators", default=estimators,
                       help=f"comma-separated, from: {estimator_names}")
        p.add_argument("--steps", type=_positive_int, default=steps,
                       help="training steps per estimator (an upper bound under --time-budget)")
        p.add_argument("--time-budget", type=float, default=budget,
                       help="seconds for the whole comparison: measures each estimator's step "
                       "time first and lowers --steps to fit")
        p.add_argument("--batch-size", type=_positive_int, default=24, help="minibatch size")
        p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate of the model")
        p.add_argument("--cv-lr-factor", type=float, default=10.0,
                       help="control-variate learning rate as a multiple of --lr")
        p.add_argument("--reference", default=None,
                       help="estimator whose trajectory fixes the parameters at which every "
                       "gradient variance is measured (default rebar if listed, else first)")
        p.add_argument("--variance-points", type=_positive_int, default=5,
                       help="points of the reference run where variances are measured")
        p.add_argument("--variance-samples", type=_positive_int, default=100,
                       help="gradient draws per estimator and point")
        p.add_argument("--eval-points", type=_positive_int, default=20,
                       help="points of each run where the ELBO is evaluated")
        p.add_argument("--eval-examples", type=_positive_int, default=2000,
                       help="training examples for the ELBO curves (and validation examples "
                       "for --iw-samples)")
        p.add_argument("--iw-samples", type=int, default=0,
                       help="also report a K-sample importance-weighted bound on validation "
                       "examples (0: skip)")
        p.add_argument("--out", default=out, required=out is None,
                       help="output directory (written whole at the end)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    compare = sub.add_parser(
        "compare", help="train several estimators from one start", formatter_class=fmt,
        description="Train every estimator from the same initialisation on the same minibatches "
        "(taking turns), measure their gradient variance at shared parameter values, and write "
        "report.md, results.csv and PNG plots to --out.")
    compare_options(compare, ",".join(DEMO_ESTIMATORS), 2000, None, None)
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser(
        "demo", help="compare reinforce, nvil, muprop, rebar, relax on binarised MNIST with "
        "the linear one-layer belief net (under 10 minutes on 2 CPU cores)", formatter_class=fmt,
        description="`compare` with settings for a first look (what `make demo` runs): the "
        "linear one-layer belief net on statically binarised MNIST, five estimators, as many "
        "steps as --time-budget allows.")
    compare_options(demo, ",".join(DEMO_ESTIMATORS), 20000, "runs/demo", 480.0)
    demo.set_defaults(func=cmd_demo, lr=1e-3, iw_samples=100, eval_examples=1000)

    evaluate = sub.add_parser(
        "evaluate", help="importance-weighted bound of a fitted model", formatter_class=fmt,
        description="The K-sample importance-weighted bound on log p(x) (Burda et al. 2016), "
        "per example and averaged, for the checkpoint of a `fit` run.")
    evaluate.add_argument("--checkpoint", required=True, help="run directory of `fit`")
    evaluate.add_argument("--samples", type=_positive_int, nargs="+", default=[100],
                          help="one or more K")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"])
    evaluate.add_argument("--max-examples", type=_positive_int, default=None,
                          help="evaluate on the first N examples of the split only")
    evaluate.add_argument("--batch-size", type=_positive_int, default=100,
                          help="examples per vectorised pass")
    evaluate.add_argument("--model", default=None, help="assert the checkpoint's model")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    evaluate.add_argument("--json", default=None, help="also write the bounds to this file")
    evaluate.add_argument("--threads", type=_positive_int, default=None,
                          help="torch intra-op threads (default: torch's choice; evaluation "
                          "batches are large enough to gain from several)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-discrete`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # turn `kill` into an exception, so that `finally` blocks remove temporary output
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except (CLIError, DataNotFoundError, UnknownModelError) as e:
        print(f"pyro-discrete {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"pyro-discrete {args.command}: training diverged: {e}; try a lower --lr",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyro-discrete {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
