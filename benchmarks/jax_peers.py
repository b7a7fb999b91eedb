"""NumPyro and hand-written JAX steps on the linear SBN 784-200: the peers of ``CompiledSVI``.

A CPU user who wants a fast step for a discrete-latent model would otherwise reach for
NumPyro under ``jax.jit``. This module times, on the same one-layer linear sigmoid belief
net as :mod:`benchmarks.handwritten` (784 visible, 200 Bernoulli latents, learned prior
logits, encoder input ``x - x̄``, decoder input ``2b - 1``, Adam 1e-3):

- ``numpyro_reinforce``: ``numpyro.infer.SVI(model, guide, Adam, TraceGraph_ELBO())`` with
  ``jax.jit(svi.update)``: REINFORCE, Rao-Blackwellised by NumPyro's dependency tracking,
  no baselines (NumPyro's TraceGraph_ELBO has none);
- ``jax_reinforce`` and ``jax_nvil``: the hand-written steps of
  :class:`benchmarks.handwritten.Reinforce` and :class:`~benchmarks.handwritten.NVIL`
  (baseline net 784-100-1, running mean and variance at rate 0.8) written in JAX, the
  whole step (sampling, gradient, Adam) in one ``jax.jit`` with donated state.

It runs in its own virtual environment (``make peers`` creates ``.venv-peers`` with
``jax[cpu]`` and ``numpyro``; the project's own environment stays torch-only), as a worker
that ``benchmarks.run --peers`` starts as a subprocess. The two talk in JSON lines over a
pipe (:func:`encode` / :func:`decode`), so the torch side interleaves its own rounds with
the peer's and load from other processes hits them alike:

- ``{"op": "build", "variant": V, "batch": B, "x": <base64 uint8 bits>, "xbar": [...],
  "n_visible": 784, "n_latent": 200, "warmup": 3}`` → ``{"ok": true, "id": ...,
  "first_step_ms": ..., "warm_ms": ...}`` (the first step includes tracing and XLA
  compilation);
- ``{"op": "time", "id": ID, "steps": N}`` → ``{"ok": true, "times_ms": [...],
  "median_ms": ...}`` (each step ends with ``block_until_ready``);
- ``{"op": "info"}`` → versions; ``{"op": "quit"}`` ends the worker.

Every failure is a reply ``{"ok": false, "error": "..."}``, never a silent drop. This file
imports neither torch nor (at module level) jax, so the protocol is testable anywhere.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import IO, Any

#: variant name -> estimator it implements (the torch side's row key)
VARIANTS: dict[str, str] = {
    "numpyro_reinforce": "reinforce",
    "jax_reinforce": "reinforce",
    "jax_nvil": "nvil",
}
#: XLA on one CPU thread, as the issue's table (torch runs with ``--threads 1``)
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
PROTOCOL_VERSION = 1


# --------------------------------------------------------------------------------------
# The wire format (shared by the worker and benchmarks.run)
# --------------------------------------------------------------------------------------


def encode(message: dict[str, Any]) -> str:
    """One request or reply as a single JSON line (newline included)."""
    return json.dumps(message, separators=(",", ":")) + "\n"


def decode(line: str) -> dict[str, Any]:
    """The message of one line; a clear error for anything that is not a JSON object."""
    line = line.strip()
    if not line:
        raise ValueError("jax peer protocol: empty line (the worker exited or wrote nothing)")
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"jax peer protocol: not a JSON line: {line[:200]!r} ({exc})") from None
    if not isinstance(message, dict):
        raise ValueError(f"jax peer protocol: expected a JSON object, got {line[:200]!r}")
    return message


def pack_bits(values: list[int] | bytes) -> str:
    """Binary data (0/1 per pixel) as base64 text, one byte per value."""
    return base64.b64encode(bytes(values)).decode("ascii")


def unpack_bits(text: str, rows: int, cols: int) -> list[int]:
    data = base64.b64decode(text.encode("ascii"))
    if len(data) != rows * cols:
        raise ValueError(
            f"jax peer protocol: data holds {len(data)} values, expected {rows}x{cols}"
        )
    if any(v not in (0, 1) for v in set(data)):
        raise ValueError("jax peer protocol: data must be binary (0/1 per pixel)")
    return list(data)


def summarise_ms(times_ms: list[float]) -> float:
    """The figure a ``time`` reply carries: the median step time in ms."""
    if not times_ms:
        raise ValueError("jax peer protocol: no steps were timed")
    return statistics.median(times_ms)


# --------------------------------------------------------------------------------------
# The steps (jax imported lazily: this module must import without it)
# --------------------------------------------------------------------------------------


def _init_params(key, n_visible: int, n_latent: int, xbar):
    """torch.nn.Linear's default initialisation (uniform ±1/√fan_in), decoder bias at
    logit(x̄) and zero prior logits, as in :class:`benchmarks.handwritten.LinearSBN`."""
    import jax
    import jax.numpy as jnp

    k1, k2, k3 = jax.random.split(key, 3)

    def uniform(k, shape, fan_in):
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

    p = jnp.clip(xbar, 0.001, 0.999)
    return {
        "enc_w": uniform(k1, (n_latent, n_visible), n_visible),
        "enc_b": uniform(k2, (n_latent,), n_visible),
        "dec_w": uniform(k3, (n_visible, n_latent), n_latent),
        "dec_b": jnp.log(p) - jnp.log1p(-p),
        "prior": jnp.zeros((n_latent,), jnp.float32),
    }


def _logmass(value, logits):
    import jax

    return (value * logits - jax.nn.softplus(logits)).sum(-1)


def _sbn_terms(params, x, xbar, key):
    """Hard pass of the one-layer SBN: (elbo per example, log q per example)."""
    import jax
    import jax.numpy as jnp

    a = (x - xbar) @ params["enc_w"].T + params["enc_b"]
    b = jax.random.bernoulli(key, jax.nn.sigmoid(jax.lax.stop_gradient(a))).astype(x.dtype)
    log_q = _logmass(b, a)
    dec_logits = (2 * b - 1) @ params["dec_w"].T + params["dec_b"]
    log_px = _logmass(x, dec_logits)
    log_pb = _logmass(b, jnp.broadcast_to(params["prior"], b.shape))
    return log_px + log_pb - log_q, log_q


def _adam(params, grads, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam's update (same bias corrections and eps placement)."""
    import jax
    import jax.numpy as jnp

    t = t + 1
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
    bc1, bc2 = 1 - b1**t, 1 - b2**t

    def move(p, m_, v_):
        return p - lr / bc1 * m_ / (jnp.sqrt(v_ / bc2) + eps)

    return jax.tree_util.tree_map(move, params, m, v), m, v, t


def _zeros_like_tree(tree):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def build_jax_reinforce(x, xbar, n_visible: int, n_latent: int, seed: int = 0):
    """The hand-written REINFORCE step (no baseline) in one jitted function."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
    params = _init_params(key, n_visible, n_latent, xbar)

    def surrogate(params, x, key):
        elbo, log_q = _sbn_terms(params, x, xbar, key)
        return -(elbo.sum() + (jax.lax.stop_gradient(elbo) * log_q).sum()), elbo

    def step(state, x):
        params, m, v, t, key = state
        key, sub = jax.random.split(key)
        grads, elbo = jax.grad(surrogate, has_aux=True)(params, x, sub)
        params, m, v, t = _adam(params, grads, m, v, t)
        return (params, m, v, t, key), -elbo.sum()

    state = (params, _zeros_like_tree(params), _zeros_like_tree(params), jnp.zeros(()), key)
    return jax.jit(step, donate_argnums=0), state


def build_jax_nvil(x, xbar, n_visible: int, n_latent: int, seed: int = 0, alpha: float = 0.8):
    """The hand-written NVIL step: baseline net on x - x̄, running mean and variance of
    the residual (rate ``alpha``), updated after use, as :class:`handwritten.NVIL`."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
    k_model, k_base1, k_base2 = jax.random.split(key, 3)
    params = _init_params(k_model, n_visible, n_latent, xbar)
    hidden = 100
    b1 = 1.0 / jnp.sqrt(n_visible)
    b2 = 1.0 / jnp.sqrt(hidden)
    params["base_w1"] = jax.random.uniform(k_base1, (hidden, n_visible), jnp.float32, -b1, b1)
    params["base_b1"] = jnp.zeros((hidden,), jnp.float32)
    params["base_w2"] = jax.random.uniform(k_base2, (1, hidden), jnp.float32, -b2, b2)
    params["base_b2"] = jnp.zeros((1,), jnp.float32)

    def loss(params, stats, x, key):
        mean, var = stats
        elbo, log_q = _sbn_terms(params, x, xbar, key)
        h = jnp.tanh((x - xbar) @ params["base_w1"].T + params["base_b1"])
        c = (h @ params["base_w2"].T + params["base_b2"])[:, 0]
        signal = jax.lax.stop_gradient(elbo)
        resid = signal - jax.lax.stop_gradient(c)
        coef = (resid - mean) / jnp.maximum(jnp.sqrt(var), 1.0)
        surrogate = elbo.sum() + (coef * log_q).sum()
        baseline_loss = 0.5 * ((signal - mean - c) ** 2).sum()
        return baseline_loss - surrogate, (elbo, resid)

    def step(state, x):
        params, m, v, t, stats, key = state
        key, sub = jax.random.split(key)
        grads, (elbo, resid) = jax.grad(loss, has_aux=True)(params, stats, x, sub)
        params, m, v, t = _adam(params, grads, m, v, t)
        mean, var = stats
        mean = alpha * mean + (1 - alpha) * resid.mean()
        var = alpha * var + (1 - alpha) * resid.var(ddof=1)
        return (params, m, v, t, (mean, var), key), -elbo.sum()

    stats = (jnp.zeros(()), jnp.zeros(()))
    zeros = _zeros_like_tree(params)
    state = (params, zeros, _zeros_like_tree(params), jnp.zeros(()), stats, key)
    return jax.jit(step, donate_argnums=0), state


def build_numpyro_reinforce(x, xbar, n_visible: int, n_latent: int, seed: int = 0):
    """NumPyro's ``TraceGraph_ELBO`` (REINFORCE, no baselines) with ``jax.jit(svi.update)``,
    parameters initialised as the hand-written ones."""
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, TraceGraph_ELBO

    init = _init_params(jax.random.PRNGKey(seed), n_visible, n_latent, xbar)
    batch = x.shape[0]

    def model(x):
        prior = numpyro.param("prior", init["prior"])
        dec_w = numpyro.param("dec_w", init["dec_w"])
        dec_b = numpyro.param("dec_b", init["dec_b"])
        with numpyro.plate("data", batch):
            b = numpyro.sample("b", dist.Bernoulli(logits=prior).expand([n_latent]).to_event(1))
            logits = (2 * b - 1) @ dec_w.T + dec_b
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        enc_w = numpyro.param("enc_w", init["enc_w"])
        enc_b = numpyro.param("enc_b", init["enc_b"])
        with numpyro.plate("data", batch):
            logits = (x - xbar) @ enc_w.T + enc_b
            numpyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), TraceGraph_ELBO())
    state = svi.init(jax.random.PRNGKey(seed + 1), x)
    return jax.jit(svi.update), state


BUILDERS: dict[str, Callable] = {
    "numpyro_reinforce": build_numpyro_reinforce,
    "jax_reinforce": build_jax_reinforce,
    "jax_nvil": build_jax_nvil,
}


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------


class Worker:
    """Holds the built steps and answers requests (one per line)."""

    def __init__(self) -> None:
        self.steps: dict[str, tuple[Callable, Any, Any]] = {}

    def _run(self, ident: str) -> float:
        import jax

        fn, state, x = self.steps[ident]
        t0 = time.perf_counter()
        state, loss = fn(state, x)
        jax.block_until_ready((state, loss))
        elapsed = time.perf_counter() - t0
        self.steps[ident] = (fn, state, x)
        return elapsed * 1e3

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "info":
            import jax
            import jaxlib
            import numpyro

            return {
                "ok": True,
                "protocol": PROTOCOL_VERSION,
                "jax": jax.__version__,
                "jaxlib": jaxlib.__version__,
                "numpyro": numpyro.__version__,
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "devices": [str(d) for d in jax.devices()],
            }
        if op == "build":
            return self._build(request)
        if op == "time":
            ident = request.get("id")
            if ident not in self.steps:
                return {"ok": False, "error": f"unknown step id {ident!r}; build it first"}
            steps = int(request.get("steps", 1))
            if steps < 1:
                return {"ok": False, "error": f"steps must be >= 1, got {steps}"}
            times = [self._run(ident) for _ in range(steps)]
            return {"ok": True, "times_ms": times, "median_ms": summarise_ms(times)}
        return {"ok": False, "error": f"unknown op {op!r} (build, time, info, quit)"}

    def _build(self, request: dict[str, Any]) -> dict[str, Any]:
        variant = request.get("variant")
        if variant not in BUILDERS:
            return {"ok": False, "error": f"unknown variant {variant!r}; one of {list(VARIANTS)}"}
        import jax.numpy as jnp

        batch, n_visible = int(request["batch"]), int(request["n_visible"])
        bits = unpack_bits(request["x"], batch, n_visible)
        x = jnp.asarray(bits, jnp.float32).reshape(batch, n_visible)
        xbar = jnp.asarray(request["xbar"], jnp.float32)
        t0 = time.perf_counter()
        fn, state = BUILDERS[variant](x, xbar, n_visible, int(request["n_latent"]))
        ident = f"{variant}/{batch}/{len(self.steps)}"
        self.steps[ident] = (fn, state, x)
        first = self._run(ident)  # traces and compiles, then runs
        build_ms = (time.perf_counter() - t0) * 1e3
        warm = [self._run(ident) for _ in range(max(int(request.get("warmup", 3)), 1))]
        return {
            "ok": True,
            "id": ident,
            "first_step_ms": first,
            "build_and_first_step_ms": build_ms,
            "warm_ms": summarise_ms(warm),
        }


def serve(stdin: IO[str], stdout: IO[str]) -> int:
    """Answer requests line by line until ``quit`` or the end of input."""
    worker = Worker()
    for line in stdin:
        try:
            request = decode(line)
            if request.get("op") == "quit":
                stdout.write(encode({"ok": True}))
                stdout.flush()
                return 0
            reply = worker.handle(request)
        except Exception as exc:  # reported to the caller, which records it in its table
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        stdout.write(encode(reply))
        stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.jax_peers", description=__doc__)
    p.add_argument("--worker", action="store_true", help="answer JSON requests on stdin")
    p.add_argument("--threads", type=int, default=1, help="1: XLA on one CPU thread")
    args = p.parse_args(argv)
    if args.threads == 1:
        os.environ.setdefault("XLA_FLAGS", ONE_THREAD_XLA_FLAGS)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not args.worker:
        p.print_help()
        return 2
    return serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
