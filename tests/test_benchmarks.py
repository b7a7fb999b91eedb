"""The hand-written reference steps against exact enumeration, and a smoke run of the suite.

Each estimator's gradient is drawn in chunks of many rows (the step sums over its batch,
so a chunk's gradient divided by its size is one draw of a batch mean); the chunk means
are i.i.d., which gives a z-test of unbiasedness without per-example gradients.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import handwritten as hw  # noqa: E402

CHUNKS = 60
ROWS = 1200  # per chunk, i.e. 600 copies of each of the 2 data points
Z_MAX = 4.5  # about 40 components per test: a 4.5σ miss is a bug, not bad luck


def _perturbed(model: hw.LatentModel, seed: int) -> hw.LatentModel:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return model


def _tiny(kind: str) -> hw.LatentModel:
    torch.manual_seed(0)  # the initialisation must not depend on which tests ran before
    if kind == "sbn1":
        return _perturbed(hw.LinearSBN(n_visible=4, n_latent=3, n_layers=1), 1)
    if kind == "sbn2":
        return _perturbed(hw.LinearSBN(n_visible=4, n_latent=2, n_layers=2), 2)
    return _perturbed(hw.CategoricalVAE(n_visible=4, n_groups=2, n_classes=3), 3)


def _configure(step: hw.Step) -> None:
    # Non-default control-variate settings: unbiasedness must hold for any of them.
    if isinstance(step, hw.NVIL):
        step.mean.fill_(1.3)  # any constant keeps it unbiased; v = 0 keeps the scale at 1
    if isinstance(step, hw.Rebar):
        with torch.no_grad():
            step.eta_w.fill_(0.4)
            step.log_lam.fill_(math.log(0.3))
            for p in step.residuals.parameters():
                p.add_(0.3 * torch.randn_like(p))


def _make(name: str, model: hw.LatentModel) -> hw.Step:
    # A narrow r_ρ keeps the test fast; unbiasedness holds for any surrogate network.
    if name == "relax":
        return hw.Rebar(model, use_residual=True, residual_hidden=(16, 16))
    return hw.make_step(name, model)


def _draws(model: hw.LatentModel, step: hw.Step, x: torch.Tensor) -> torch.Tensor:
    xs = x.repeat(ROWS // x.shape[0], 1)
    scale = ROWS // x.shape[0]
    out = []
    for _ in range(CHUNKS):
        for p in step.trainable():
            p.grad = None
        if isinstance(step, hw.NVIL):
            step.estimate(xs, update_stats=False)
        else:
            step.estimate(xs)
        out.append(torch.cat([-p.grad.flatten() / scale for p in model.parameters()]))
    return torch.stack(out)


def _z_scores(draws: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return (draws.mean(0) - exact) / (se + 1e-9 * (1 + exact.abs()))


@pytest.mark.parametrize("kind", ["sbn1", "sbn2", "categorical"])
@pytest.mark.parametrize("name", hw.ESTIMATORS)
def test_handwritten_gradient_is_unbiased(name: str, kind: str) -> None:
    model = _tiny(kind)
    torch.manual_seed(10)
    x = torch.bernoulli(torch.full((2, model.n_visible), 0.5))
    exact = torch.cat([g.flatten() for g in hw.exact_gradient(model, x)])
    step = _make(name, model)
    _configure(step)
    torch.manual_seed(11)
    z = _z_scores(_draws(model, step, x), exact)
    assert z.abs().max() < Z_MAX, f"max |z| = {z.abs().max():.2f}"


@pytest.mark.parametrize("variance_of", ["logits", "params"])
def test_z_test_catches_the_missing_stop_gradient(variance_of: str) -> None:
    """Negative control: REBAR whose coefficient keeps its θ-gradient (ESTIMATORS.md)."""

    model = _tiny("sbn1")
    torch.manual_seed(10)
    x = torch.bernoulli(torch.full((2, model.n_visible), 0.5))
    exact = torch.cat([g.flatten() for g in hw.exact_gradient(model, x)])
    step = hw.Rebar(model, stop_coefficient_grad=False, variance_of=variance_of)
    _configure(step)
    torch.manual_seed(11)
    z = _z_scores(_draws(model, step, x), exact)
    assert z.abs().max() > 2 * Z_MAX


def test_conditional_relaxation_thresholds_back_to_b() -> None:
    torch.manual_seed(0)
    for model in (hw.LinearSBN(4, 50), hw.CategoricalVAE(4, 20, 7)):
        x = torch.bernoulli(torch.full((64, 4), 0.5))
        noise = model.sample_noise(64, x)
        hp = model.hard_pass(x, noise)
        z = model.logistic(hp.logits[0], noise[0])
        zt = model.conditional(hp.logits[0], z, hp.samples[0])
        if isinstance(model, hw.LinearSBN):
            assert torch.equal((zt > 0).float(), hp.samples[0])
        else:
            assert torch.equal(zt.argmax(-1), hp.samples[0].argmax(-1))
        torch.testing.assert_close(zt, z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_variance_objective_over_params_is_unbiased_too(name: str) -> None:
    model = _tiny("sbn2")
    torch.manual_seed(10)
    x = torch.bernoulli(torch.full((2, model.n_visible), 0.5))
    exact = torch.cat([g.flatten() for g in hw.exact_gradient(model, x)])
    step = hw.Rebar(
        model, use_residual=name == "relax", residual_hidden=(16,), variance_of="params"
    )
    _configure(step)
    torch.manual_seed(11)
    z = _z_scores(_draws(model, step, x), exact)
    assert z.abs().max() < Z_MAX, f"max |z| = {z.abs().max():.2f}"


@pytest.mark.parametrize("variance_of", ["logits", "params"])
@pytest.mark.parametrize("residual", [False, True])
def test_control_variate_gradient_matches_finite_differences(
    residual: bool, variance_of: str
) -> None:
    """∂Σĝ²/∂φ, including the coefficient's φ-term pushed through by hand."""
    torch.set_default_dtype(torch.float64)
    try:
        model = _tiny("sbn2")
        torch.manual_seed(4)
        x = torch.bernoulli(torch.full((5, model.n_visible), 0.5))
        step = hw.Rebar(model, use_residual=residual, residual_hidden=(8,), variance_of=variance_of)
        _configure(step)
        noise = model.sample_noise(5, x)
        est = step.compute(x, noise)
        for i, p in enumerate(step.cv_params()[:3]):
            idx = (0,) * p.dim()
            eps = 1e-5
            vals = []
            for sign in (1, -1):
                with torch.no_grad():
                    p[idx] += sign * eps
                vals.append(step.compute(x, noise).variance_proxy)
                with torch.no_grad():
                    p[idx] -= sign * eps
            fd = (vals[0] - vals[1]) / (2 * eps)
            torch.testing.assert_close(est.cv_grads[i][idx], fd, rtol=1e-4, atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_quick_benchmark_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--no-storchastic",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "hand-written ms" in proc.stdout
    for name in ("results.csv", "results.md", "meta.json", "scaling.png"):
        assert (tmp_path / name).exists(), name
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert any(",handwritten,rebar," in r for r in rows)


def test_data_parallel_benchmark_reads_the_examples_throughput():
    from benchmarks.data_parallel import parse_throughput

    out = "rank 0/2: step 300, ...\nthroughput: 1234 examples/s (25.7 steps/s)\n"
    assert parse_throughput(out) == 1234.0
    with pytest.raises(ValueError, match="no 'throughput"):
        parse_throughput("rank 0/1: step 3\n")
