r"""Gradient-estimator diagnostics at fixed parameter values: variance and a bias z-test.

Both functions call ``elbo.loss_and_grads(model, guide, *args)`` repeatedly and read the
``.grad`` of parameters in Pyro's param store. Estimators may update state on every call
(running means and variances of NVIL, decaying baselines), and this state lives in the param
store too, so the store is snapshot first and restored **before every call and on exit**:
each sample is an independent draw of the gradient estimate :math:`\hat g` at one and the
same state. State kept outside the param store (plain attributes of an ELBO object) is not
restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch

from pyro_discrete.infer.control_variates import PREFIX as CONTROL_VARIATE_PREFIX

__all__ = [
    "BiasTest",
    "GradientStatistics",
    "ParamStoreSnapshot",
    "bias_ztest",
    "gradient_samples",
    "gradient_variance",
    "guide_param_names",
]


class ParamStoreSnapshot:
    """Values of every parameter in Pyro's param store, restorable *in place*.

    Restoring copies values into the existing tensors instead of swapping tensors, so modules
    registered with :func:`pyro.module` (whose parameters *are* the store's tensors) and
    optimiser state keyed on those tensors stay connected.
    """

    def __init__(self) -> None:
        store = pyro.get_param_store()
        self.values = {n: p.detach().clone() for n, p in store.named_parameters()}

    def restore(self, names: Iterable[str] | None = None) -> None:
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        with torch.no_grad():
            for name in self.values if names is None else names:
                if name in current:
                    current[name].copy_(self.values[name])


def _zero_grads() -> None:
    for _name, p in pyro.get_param_store().named_parameters():
        p.grad = None


def guide_param_names(guide: Callable, *args, **kwargs) -> list[str]:
    """Names of the param-store parameters that one run of ``guide`` touches."""
    with torch.no_grad():
        trace = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
    return [name for name, site in trace.nodes.items() if site["type"] == "param"]


@dataclass
class GradientStatistics:
    r"""Per-component mean and variance of a gradient estimator over ``num_samples`` draws.

    ``mean`` and ``variance`` map parameter names to tensors of the parameter's shape; they
    are gradients of the *loss* (the negative ELBO), as in ``.grad`` after
    ``loss_and_grads``. ``loss`` is the mean of the returned loss values.
    """

    mean: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    num_samples: int
    loss: float

    @property
    def num_components(self) -> int:
        return sum(v.numel() for v in self.variance.values())

    @property
    def mean_variance(self) -> float:
        """Mean over all parameter components of the variance of :math:`\\hat g`."""
        return sum(v.sum().item() for v in self.variance.values()) / self.num_components

    @property
    def log_mean_variance(self) -> float:
        r""":math:`\log \frac{1}{D}\sum_{d} \mathrm{Var}[\hat g_d]`, the REBAR paper's figure."""
        return math.log(self.mean_variance)

    def log_mean_variance_per_param(self) -> dict[str, float]:
        return {n: math.log(v.mean().item()) for n, v in self.variance.items()}


def gradient_samples(
    elbo,
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 100,
    params: Iterable[str] | None = None,
    callback: Callable[[dict[str, torch.Tensor]], None] | None = None,
    **kwargs,
) -> GradientStatistics:
    """Draw ``num_samples`` gradient estimates at fixed parameters; the engine of this module.

    Welford's update in float64 accumulates the moments, so memory does not grow with
    ``num_samples``. ``callback`` (if given) receives each draw, a dict of gradient tensors.
    """
    if num_samples < 2:
        raise ValueError("num_samples must be at least 2 to estimate a variance")
    names = (
        list(params)
        if params is not None
        else [
            n
            for n in guide_param_names(guide, *args, **kwargs)
            if not n.startswith(CONTROL_VARIATE_PREFIX)
        ]
    )
    if not names:
        raise ValueError("no parameters to measure: the guide registers no parameters")
    entry = ParamStoreSnapshot()
    try:
        # One uncounted call creates lazily initialised state (control-variate networks,
        # running statistics), so that every counted draw starts from identical state.
        _zero_grads()
        elbo.loss_and_grads(model, guide, *args, **kwargs)
        start = ParamStoreSnapshot()
        missing = [n for n in names if n not in start.values]
        if missing:
            raise KeyError(f"parameters not in the param store: {', '.join(missing)}")
        current = dict(pyro.get_param_store().named_parameters())
        if all(current[n].grad is None for n in names):
            raise RuntimeError(
                "no gradient reached the measured parameters. If a module was re-created "
                "while the param store still held parameters of the same names, pyro.module "
                "kept the old tensors: call pyro.clear_param_store() before building it."
            )
        mean = {n: torch.zeros_like(start.values[n], dtype=torch.float64) for n in names}
        m2 = {n: torch.zeros_like(m) for n, m in mean.items()}
        loss_total = 0.0
        for i in range(num_samples):
            start.restore()
            _zero_grads()
            loss_total += float(elbo.loss_and_grads(model, guide, *args, **kwargs))
            current = dict(pyro.get_param_store().named_parameters())
            draw = {}
            for n in names:
                g = current[n].grad
                g = torch.zeros_like(current[n]) if g is None else g.detach()
                draw[n] = g
                delta = g.double() - mean[n]
                mean[n] += delta / (i + 1)
                m2[n] += delta * (g.double() - mean[n])
            if callback is not None:
                callback(draw)
    finally:
        # parameters created by the warm-up keep their post-warm-up values, the rest go back
        # to their values on entry
        if "start" in locals():
            start.restore()
        entry.restore()
        _zero_grads()
    variance = {n: m2[n] / (num_samples - 1) for n in names}
    return GradientStatistics(mean, variance, num_samples, loss_total / num_samples)


def gradient_variance(
    elbo,
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 100,
    params: Iterable[str] | None = None,
    **kwargs,
) -> GradientStatistics:
    r"""Variance of a gradient estimator at the current, fixed parameter values.

    Runs ``elbo.loss_and_grads`` ``num_samples`` times, restoring the param store before
    each call, and returns per-parameter means and variances of :math:`\hat g` with the
    summary :attr:`GradientStatistics.log_mean_variance`
    :math:`= \log \frac{1}{D}\sum_d \mathrm{Var}[\hat g_d]`, the quantity plotted in the
    REBAR paper [1] (there measured at the same parameter values for every estimator).

    It measures the gradient the ELBO actually produces: NVIL's default variance
    normalisation rescales the guide's gradient and makes its variance look small; pass
    ``DiscreteELBO("nvil", normalize_variance=False)`` to measure the unbiased estimate.

    :param elbo: any object with Pyro's ``loss_and_grads(model, guide, *args)``, e.g.
        :class:`~pyro_discrete.infer.DiscreteELBO` or :class:`pyro.infer.TraceGraph_ELBO`.
    :param int num_samples: number of gradient draws (at least 2).
    :param params: names of param-store parameters to measure; default: every parameter the
        guide touches except control-variate parameters (names starting ``pyro_discrete/``).

    **References**

    [1] G. Tucker et al. (2017), "REBAR: Low-variance, unbiased gradient estimates for
        discrete latent variable models", Figure 2.

    Example::

        >>> from pyro.infer import TraceGraph_ELBO
        >>> import pyro, torch
        >>> from pyro_discrete.models import SigmoidBeliefNet
        >>> pyro.clear_param_store()
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> x = torch.bernoulli(torch.full((8, 6), 0.5))
        >>> one = gradient_variance(TraceGraph_ELBO(), vae.model, vae.guide, x, num_samples=100)
        >>> four = gradient_variance(TraceGraph_ELBO(num_particles=4), vae.model, vae.guide, x,
        ...                          num_samples=100)
        >>> one.log_mean_variance - four.log_mean_variance > 0.7   # about log 4 = 1.4
        True
        >>> pyro.clear_param_store()
    """
    return gradient_samples(
        elbo, model, guide, *args, num_samples=num_samples, params=params, **kwargs
    )


@dataclass
class BiasTest:
    r"""Result of :func:`bias_ztest`.

    ``z`` maps parameter names to per-component z-scores of the mean difference;
    ``max_abs_z`` is the largest :math:`|z|`; ``p_value`` is the Bonferroni-corrected
    two-sided p-value of the hypothesis that *every* component's mean difference is zero,
    :math:`\min(1, M \cdot \mathrm{erfc}(\max|z| / \sqrt 2))` over the ``num_components``
    :math:`M` tested components.
    """

    z: dict[str, torch.Tensor]
    mean_difference: dict[str, torch.Tensor]
    max_abs_z: float
    p_value: float
    num_components: int
    num_samples: int

    def rejects(self, level: float = 0.01) -> bool:
        """Whether the test rejects "no bias" at family-wise level ``level``."""
        return self.p_value < level


def bias_ztest(
    elbo,
    reference,
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 200,
    params: Iterable[str] | None = None,
    **kwargs,
) -> BiasTest:
    r"""z-test of :math:`\mathbb{E}[\hat g_a] = \mathbb{E}[\hat g_b]`, component by component.

    With :math:`S` draws of each estimator at the same fixed parameters,
    :math:`z_d = (\bar g_{a,d} - \bar g_{b,d}) / \sqrt{s^2_{a,d}/S + s^2_{b,d}/S}`. Against
    exact gradients (``reference`` a mapping), the second variance term is zero. Since
    :math:`M` components are tested at once, the reported p-value is Bonferroni-corrected;
    components where both estimators are constant and agree are not counted.

    :param elbo: the estimator under test (an object with ``loss_and_grads``).
    :param reference: a second estimator, or a mapping from parameter name to the exact
        gradient of the *loss* (the negative ELBO), e.g. from exact enumeration.
    :param int num_samples: draws of each estimator; the test's power grows with
        :math:`\sqrt S`.
    :param params: parameter names (default as in :func:`gradient_variance`, or the keys of
        ``reference`` when it is a mapping).

    Example::

        >>> from pyro.infer import TraceGraph_ELBO
        >>> import pyro, torch
        >>> from pyro_discrete.models import SigmoidBeliefNet
        >>> pyro.clear_param_store()
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> x = torch.bernoulli(torch.full((8, 6), 0.5))
        >>> test = bias_ztest(TraceGraph_ELBO(), TraceGraph_ELBO(num_particles=2),
        ...                   vae.model, vae.guide, x, num_samples=50)
        >>> test.num_components
        21
        >>> pyro.clear_param_store()
    """
    if isinstance(reference, Mapping):
        names = list(params) if params is not None else list(reference)
        stats_a = gradient_samples(
            elbo, model, guide, *args, num_samples=num_samples, params=names, **kwargs
        )
        mean_b = {n: torch.as_tensor(reference[n]).double() for n in names}
        var_b = {n: torch.zeros_like(mean_b[n]) for n in names}
    else:
        stats_a = gradient_samples(
            elbo, model, guide, *args, num_samples=num_samples, params=params, **kwargs
        )
        names = list(stats_a.mean)
        stats_b = gradient_samples(
            reference, model, guide, *args, num_samples=num_samples, params=names, **kwargs
        )
        mean_b, var_b = stats_b.mean, stats_b.variance
    z, diff = {}, {}
    max_abs_z, tested = 0.0, 0
    for n in names:
        d = stats_a.mean[n] - mean_b[n].to(stats_a.mean[n])
        se = ((stats_a.variance[n] + var_b[n].to(d)) / num_samples).sqrt()
        # exact ties with zero spread carry no evidence either way; a nonzero difference with
        # zero spread is infinitely significant
        informative = (se > 0) | (d != 0)
        zn = torch.where(se > 0, d / se.clamp_min(1e-300), torch.sign(d) * math.inf)
        zn = torch.where(informative, zn, torch.zeros_like(zn))
        z[n], diff[n] = zn, d
        tested += int(informative.sum())
        if informative.any():
            max_abs_z = max(max_abs_z, zn.abs().max().item())
    p_min = math.erfc(max_abs_z / math.sqrt(2))
    p_value = min(1.0, tested * p_min) if tested else 1.0
    return BiasTest(z, diff, max_abs_z, p_value, tested, num_samples)
