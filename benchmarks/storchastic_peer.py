"""storchastic as a peer: step time, gradient variance and bias against exact enumeration.

Run as ``python -m benchmarks.storchastic_peer --out DIR`` (``benchmarks.run`` does so in
a subprocess): importing storchastic monkey-patches torch globally (``torch.is_tensor``,
``Tensor.to``, ``Tensor.le``, ``Tensor.gt``, argument validation of every distribution),
so it must not share a process with the other variants. The hand-written references are
timed here *before* the import and again after it, which also measures the patch's cost.

Every storchastic method runs inside its own ``try``; a failure is recorded with its
exception instead of stopping the script. Writes ``DIR/storchastic.json`` (with a
``markdown`` summary) and prints the summary.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import handwritten as hw

METHODS = ("score", "rebar", "relax", "arm", "disarm")
# storchastic method -> the hand-written estimator computing the same thing.
SAME_AS = {"score": "reinforce", "rebar": "rebar", "relax": "relax"}


def _short(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next(
        (f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames) if "storch" in f.filename),
        "",
    )
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return f"{text} (at {where})" if where else text


def make_method(storch: object, name: str, n_latent: int) -> object:
    m = storch.method  # type: ignore[attr-defined]
    if name == "score":
        return m.ScoreFunction("z", n_samples=1, baseline_factory="None")
    if name == "rebar":
        return m.REBAR("z")
    if name == "relax":
        return m.RELAX("z", in_dim=n_latent)
    if name == "arm":
        return m.ARM("z")
    if name == "disarm":
        return m.DisARM("z")
    raise ValueError(name)


def storch_gradients(
    storch: object, net: hw.LinearSBN, method: object, x: Tensor, cast: bool = False
) -> None:
    """One storchastic pass that leaves ∂(-ELBO summed over the batch) in ``.grad``.

    The model is the one-layer linear SBN of :mod:`benchmarks.handwritten`, with the same
    single-sample ELBO f = log p(x|b) + log p(b) - log q(b|x) as cost.
    """
    st = storch
    st.reset()  # type: ignore[attr-defined]
    # weight 1: sum over the data plate, as the Pyro and hand-written losses do.
    xs = st.denote_independent(x, 0, "data", weight=torch.tensor(1.0))  # type: ignore[attr-defined]
    q = torch.distributions.Bernoulli(logits=net.enc[0](xs - net.xbar))
    b = method(q)  # type: ignore[operator]
    if cast:  # a method that returns bool samples would break the decoder's matmul
        b = b.float()
    logits = net.dec[0](2 * b - 1)
    log_px = (xs * logits - F.softplus(logits)).sum(-1)
    log_pb = torch.distributions.Bernoulli(logits=net.prior_logits).log_prob(b).sum(-1)
    log_qb = q.log_prob(b).sum(-1)
    st.add_cost(-(log_px + log_pb - log_qb), "neg_elbo")  # type: ignore[attr-defined]
    st.backward()  # type: ignore[attr-defined]


def _median_ms(fn: Callable[[], object], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _spec_net(quick: bool, seed: int = 0) -> hw.LinearSBN:
    torch.manual_seed(seed)
    if quick:
        return hw.LinearSBN(64, 16)
    return hw.LinearSBN(784, 200, xbar=torch.rand(784) * 0.6 + 0.05)


def time_handwritten(batch: int, quick: bool, warmup: int, steps: int) -> dict[str, float]:
    out = {}
    for name in ("reinforce", "rebar", "relax"):
        net = _spec_net(quick)
        x = torch.bernoulli(net.xbar.expand(batch, -1))
        step = hw.make_step(name, net)
        out[name] = _median_ms(lambda s=step, x=x: s.step(x), warmup, steps)
    return out


def time_storch(storch: object, batch: int, quick: bool, warmup: int, steps: int) -> dict:
    out: dict[str, dict] = {}
    for name in METHODS:
        net = _spec_net(quick)
        x = torch.bernoulli(net.xbar.expand(batch, -1))
        try:
            method = make_method(storch, name, net.n_latent)
            params = [*net.parameters(), *method.parameters()]  # type: ignore[attr-defined]
            opt = torch.optim.Adam(params, lr=1e-3)

            def step(net: hw.LinearSBN = net, method: object = method, opt=opt, x=x) -> None:
                opt.zero_grad(set_to_none=True)
                storch_gradients(storch, net, method, x)
                opt.step()

            out[name] = {"ms": _median_ms(step, warmup, steps)}
        except Exception as exc:
            out[name] = {"error": _short(exc)}
    return out


def _chunk_draws(grad_fn: Callable[[Tensor], list[Tensor]], x: Tensor, rows: int, chunks: int):
    xs = x.repeat(rows // x.shape[0], 1)
    scale = rows // x.shape[0]
    draws = [torch.cat([g.detach().flatten() for g in grad_fn(xs)]) / scale for _ in range(chunks)]
    return torch.stack(draws)


def bias_check(storch: object, quick: bool) -> dict:
    """Mean gradient on a 4-visible, 3-latent SBN against exact enumeration."""
    torch.manual_seed(1)
    net = hw.LinearSBN(4, 3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.7 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((2, 4), 0.5))
    exact = hw.exact_gradient(net, x)
    params = list(net.parameters())
    groups = {"encoder": [0, 1], "decoder": [2, 3], "prior": [4]}
    sizes = [p.numel() for p in params]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    rows, chunks = (400, 20) if quick else (2000, 50)
    out: dict[str, dict] = {}

    def summarise(draws: Tensor) -> dict:
        mean = draws.mean(0)
        se = draws.std(0) / math.sqrt(draws.shape[0])
        ex = torch.cat([g.flatten() for g in exact])
        res: dict[str, float] = {"max_abs_z": float(((mean - ex) / (se + 1e-12)).abs().max())}
        for gname, idx in groups.items():
            sl = torch.cat([torch.arange(offsets[i], offsets[i] + sizes[i]) for i in idx])
            e, m = ex[sl], mean[sl]
            # Least-squares scale of the mean gradient onto the exact one: 1 if unbiased.
            res[f"{gname}_scale"] = float((m @ e) / (e @ e))
            res[f"{gname}_rel_err"] = float((m - e).norm() / e.norm())
        return res

    for name in ("reinforce", "rebar", "relax"):
        step = hw.make_step(name, net)

        def hand(xs: Tensor, step: hw.Step = step) -> list[Tensor]:
            for p in step.trainable():
                p.grad = None
            step.estimate(xs)
            return [-p.grad for p in params]

        out[f"handwritten {name}"] = summarise(_chunk_draws(hand, x, rows, chunks))

    for name in METHODS:
        try:
            method = make_method(storch, name, net.n_latent)

            def st(xs: Tensor, method: object = method) -> list[Tensor]:
                for p in params:
                    p.grad = None
                storch_gradients(storch, net, method, xs)
                return [-p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

            out[f"storchastic {name}"] = summarise(_chunk_draws(st, x, rows, chunks))
        except Exception as exc:
            out[f"storchastic {name}"] = {"error": _short(exc)}
    return out


def conditional_check(storch: object) -> dict:
    """Fraction of storchastic's conditional Bernoulli relaxations that do not round to b."""
    torch.manual_seed(2)
    out = {}
    for p in (0.1, 0.3, 0.5, 0.7, 0.9):
        probs = torch.full((20000,), p)
        b = torch.bernoulli(probs)
        try:
            s = storch.conditional_gumbel_rsample(b, probs, True, 0.5)  # type: ignore[attr-defined]
            out[str(p)] = float(((s > 0.5).float() != b).float().mean())
        except Exception as exc:
            out[str(p)] = _short(exc)
    return out


def failure_probe(storch: object) -> dict:
    """For each method that fails in the plain model: the dtype it samples, and whether it
    still fails when the sample is cast to float before the model uses it."""
    out: dict[str, dict] = {}
    torch.manual_seed(5)
    net = hw.LinearSBN(4, 3)
    x = torch.bernoulli(torch.full((5, 4), 0.5))
    for name in METHODS:
        entry: dict[str, str] = {}
        for cast in (False, True):
            try:
                method = make_method(storch, name, net.n_latent)
                storch_gradients(storch, net, method, x, cast=cast)
                entry["float cast" if cast else "as sampled"] = "ok"
            except Exception as exc:
                entry["float cast" if cast else "as sampled"] = _short(exc)
        if entry.get("as sampled") != "ok":
            try:
                storch.reset()  # type: ignore[attr-defined]
                xs = storch.denote_independent(x, 0, "data")  # type: ignore[attr-defined]
                q = torch.distributions.Bernoulli(logits=net.enc[0](xs))
                b = make_method(storch, name, net.n_latent)(q)  # type: ignore[operator]
                entry["sample dtype"] = str(getattr(b, "_tensor", b).dtype)
            except Exception as exc:
                entry["sample dtype"] = f"sampling failed: {_short(exc)}"
            out[name] = entry
    return out


def variance_check(storch: object, quick: bool, draws: int) -> dict:
    """log of the mean over encoder components of Var(ĝ), all at the same parameters."""
    net = _spec_net(quick, seed=3)
    torch.manual_seed(4)
    x = torch.bernoulli(net.xbar.expand(24, -1))
    enc = list(net.enc[0].parameters())
    out: dict[str, object] = {}

    def logvar(fn: Callable[[], list[Tensor]]) -> float:
        gs = torch.stack([torch.cat([g.detach().flatten() for g in fn()]) for _ in range(draws)])
        return float(gs.var(0).mean().log())

    for name in ("reinforce", "rebar", "relax"):
        step = hw.make_step(name, net)

        def hand(step: hw.Step = step) -> list[Tensor]:
            for p in step.trainable():
                p.grad = None
            step.estimate(x)
            return [p.grad.clone() for p in enc]

        out[f"handwritten {name}"] = logvar(hand)
    for name in METHODS:
        try:
            method = make_method(storch, name, net.n_latent)

            def st(method: object = method) -> list[Tensor]:
                for p in net.parameters():
                    p.grad = None
                storch_gradients(storch, net, method, x)
                return [p.grad.clone() for p in enc]

            out[f"storchastic {name}"] = logvar(st)
        except Exception as exc:
            out[f"storchastic {name}"] = _short(exc)
    return out


def to_markdown(res: dict) -> str:
    lines = [
        f"storchastic {res.get('version', '?')}, torch {torch.__version__}, "
        f"threads {res['threads']}, batch {res['batch']}, model {res['model']}, "
        f"load average at start {res['loadavg']}.",
        "",
    ]
    if "import_error" in res:
        return "\n".join(lines + [f"`import storch` failed: {res['import_error']}"])
    lines += [
        "| method | storchastic ms | hand-written ms (before import) | ratio "
        "| hand-written ms (after import) | status |",
        "|---|---|---|---|---|---|",
    ]
    before, after = res["handwritten_before"], res["handwritten_after"]
    for name, r in res["storchastic"].items():
        hand = SAME_AS.get(name)
        hb = before.get(hand) if hand else None
        ha = after.get(hand) if hand else None
        ms = r.get("ms")
        ratio = f"{ms / hb:.2f}" if ms and hb else ""
        lines.append(
            f"| {name} | {'' if ms is None else f'{ms:.2f}'} | "
            f"{'' if hb is None else f'{hb:.2f}'} | {ratio} | "
            f"{'' if ha is None else f'{ha:.2f}'} | {r.get('error', 'ok')} |"
        )
    lines += [
        "",
        "storchastic's RELAX surrogate is its default 50-unit MLP on the relaxed sample, "
        "without REBAR's η f(σ_λ(z)) term; the hand-written RELAX has that term and a "
        "200-200 network, so that ratio is not like for like. ARM and DisARM have no "
        "hand-written counterpart here.",
    ]
    lines += ["", "Bias on a 4-visible, 3-latent SBN (mean of chunked draws vs exact):", ""]
    lines += [
        "| estimator | max abs z | encoder scale | decoder scale | prior scale | status |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["bias"].items():
        if "error" in r:
            lines.append(f"| {name} |  |  |  |  | {r['error']} |")
        else:
            lines.append(
                f"| {name} | {r['max_abs_z']:.1f} | {r['encoder_scale']:.2f} | "
                f"{r['decoder_scale']:.2f} | {r['prior_scale']:.2f} | |"
            )
    lines += [
        "",
        "(scale: least-squares factor of the mean gradient onto the exact gradient; 1 when "
        "unbiased; |z| beyond ~4.5 is a significant bias.)",
        "",
        "Conditional Bernoulli relaxation (storch.conditional_gumbel_rsample): fraction of "
        "draws that do not round back to b, by θ: "
        + ", ".join(
            f"θ={k}: {v if isinstance(v, str) else f'{v:.1%}'}"
            for k, v in res["conditional"].items()
        ),
        "",
        f"Gradient variance of the encoder at the same parameters (log mean variance, "
        f"{res['variance_draws']} draws, batch 24):",
        "",
    ]
    lines += [
        f"- {k}: {v if isinstance(v, str) else f'{v:.2f}'}" for k, v in res["variance"].items()
    ]
    if res.get("failures"):
        lines += ["", "Failures in detail (4-visible, 3-latent SBN):", ""]
        for name, entry in res["failures"].items():
            detail = "; ".join(f"{k}: {v}" for k, v in entry.items())
            lines.append(f"- {name}: {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storchastic_peer")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warmup, steps = (1, 3) if args.quick else (5, 30)
    draws = 20 if args.quick else 200
    res: dict = {
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "model": "linear SBN 64-16" if args.quick else "linear SBN 784-200",
        "variance_draws": draws,
        "loadavg": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    res["handwritten_before"] = time_handwritten(args.batch, args.quick, warmup, steps)
    try:
        res["version"] = importlib.metadata.version("storchastic")
        import storch  # noqa: PLC0415  (patches torch; keep it last)
    except Exception as exc:
        res["import_error"] = _short(exc)
    else:
        res["storchastic"] = time_storch(storch, args.batch, args.quick, warmup, steps)
        res["handwritten_after"] = time_handwritten(args.batch, args.quick, warmup, steps)
        res["bias"] = bias_check(storch, args.quick)
        res["conditional"] = conditional_check(storch)
        res["variance"] = variance_check(storch, args.quick, draws)
        res["failures"] = failure_probe(storch)
    res["markdown"] = to_markdown(res)
    (out / "storchastic.json").write_text(json.dumps(res, indent=2))
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
