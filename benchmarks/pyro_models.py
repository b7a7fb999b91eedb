"""The benchmark models as ordinary Pyro ``model``/``guide`` pairs.

They wrap the very modules of :mod:`benchmarks.handwritten` (same architecture, same
initialisation when built from the same seed), so that ``TraceGraph_ELBO``,
``pyro_discrete``'s ``DiscreteELBO`` and the hand-written step train the same network.
Data points live in ``pyro.plate("data")`` at dim -1 (``max_plate_nesting=1``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from benchmarks.handwritten import CategoricalVAE, LatentModel, LinearSBN, _BaselineNet


class PyroPair:
    """``model(x)`` and ``guide(x)`` around a :class:`LatentModel`.

    :param prefix: prefix of the parameter names and of the sample-site names (each
        variant gets its own), so that no two variants share control-variate state in the
        param store, which is keyed by site name.
    :param nn_baselines: one NVIL baseline net per layer, passed to the guide sites as
        Pyro's ``infer={"baseline": {"nn_baseline": ...}}`` (TraceGraph_ELBO's mechanism).
    """

    def __init__(
        self,
        net: LatentModel,
        prefix: str,
        nn_baselines: nn.ModuleList | None = None,
    ) -> None:
        self.net = net
        self.prefix = prefix
        self.nn_baselines = nn_baselines

    def _site(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def _infer(self, k: int, x: Tensor) -> dict:
        if self.nn_baselines is None:
            return {}
        return {
            "baseline": {
                "nn_baseline": self.nn_baselines[k],
                "nn_baseline_input": x - self.net.xbar,
            }
        }

    def model(self, x: Tensor) -> None:
        net = self.net
        pyro.module(f"{self.prefix}_net", net)
        batch = x.shape[0]
        with pyro.plate("data", batch, dim=-1):
            if isinstance(net, LinearSBN):
                top = net.n_layers - 1
                prior = net.prior_logits.expand(batch, net.n_latent)
                h = pyro.sample(self._site(f"h{top}"), dist.Bernoulli(logits=prior).to_event(1))
                for k in reversed(range(net.n_layers)):
                    logits = net.dec[k](2 * h - 1)
                    if k == 0:
                        pyro.sample(
                            self._site("x"), dist.Bernoulli(logits=logits).to_event(1), obs=x
                        )
                    else:
                        h = pyro.sample(
                            self._site(f"h{k - 1}"), dist.Bernoulli(logits=logits).to_event(1)
                        )
            elif isinstance(net, CategoricalVAE):
                prior = net.prior_logits.expand(batch, net.n_groups, net.n_classes)
                b = pyro.sample(self._site("h0"), dist.OneHotCategorical(logits=prior).to_event(1))
                logits = net.dec(b.reshape(batch, -1))
                pyro.sample(self._site("x"), dist.Bernoulli(logits=logits).to_event(1), obs=x)
            else:
                raise TypeError(type(net).__name__)

    def guide(self, x: Tensor) -> None:
        net = self.net
        pyro.module(f"{self.prefix}_net", net)
        if self.nn_baselines is not None:
            pyro.module(f"{self.prefix}_baselines", self.nn_baselines)
        batch = x.shape[0]
        with pyro.plate("data", batch, dim=-1):
            if isinstance(net, LinearSBN):
                inp = x - net.xbar
                for k in range(net.n_layers):
                    d = dist.Bernoulli(logits=net.enc[k](inp)).to_event(1)
                    h = pyro.sample(self._site(f"h{k}"), d, infer=self._infer(k, x))
                    inp = 2 * h - 1
            elif isinstance(net, CategoricalVAE):
                logits = net.enc(x - net.xbar).view(batch, net.n_groups, net.n_classes)
                d = dist.OneHotCategorical(logits=logits).to_event(1)
                pyro.sample(self._site("h0"), d, infer=self._infer(0, x))
            else:
                raise TypeError(type(net).__name__)


def nvil_baselines(net: LatentModel) -> nn.ModuleList:
    """Per-layer NVIL baselines shaped like the hand-written ones."""
    n_in = net.n_visible
    dev = next(net.parameters()).device
    return nn.ModuleList(_BaselineNet(n_in) for _ in range(net.n_layers)).to(dev)


def discrete_elbo_available() -> tuple[bool, str]:
    """Whether ``pyro_discrete.infer.DiscreteELBO`` imports, and why not."""
    try:
        from pyro_discrete.infer import DiscreteELBO  # noqa: F401
    except Exception as exc:  # any import-time failure means "not ready yet"
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def tracegraph_loss() -> pyro.infer.ELBO:
    return pyro.infer.TraceGraph_ELBO(max_plate_nesting=1)


def discrete_loss(estimator: str) -> pyro.infer.ELBO:
    from pyro_discrete.infer import DiscreteELBO

    try:
        return DiscreteELBO(estimator=estimator, max_plate_nesting=1)
    except TypeError:  # an ELBO subclass may not forward Pyro's keyword arguments
        return DiscreteELBO(estimator=estimator)


def discrete_optim(lr: float = 1e-3) -> tuple[pyro.optim.PyroOptim, str]:
    """The optimiser pyro_discrete recommends, and its name for the report.

    ``pyro_discrete.optim.MultiTensorAdam`` (one fused Adam, control variates at 10× the
    rate, as the hand-written steps do) where it exists, else Pyro's per-parameter Adam.
    """
    try:
        from pyro_discrete.optim import MultiTensorAdam
    except ImportError:
        return pyro.optim.Adam({"lr": lr}), "pyro.optim.Adam"
    try:
        from pyro_discrete.infer import control_variate_lr

        return MultiTensorAdam(control_variate_lr(lr)), "MultiTensorAdam(control_variate_lr)"
    except (ImportError, TypeError, ValueError):
        return MultiTensorAdam({"lr": lr}), "MultiTensorAdam"


def make_svi(
    pair: PyroPair,
    loss: pyro.infer.ELBO,
    lr: float = 1e-3,
    optim: pyro.optim.PyroOptim | None = None,
) -> pyro.infer.SVI:
    if optim is None:
        optim = pyro.optim.Adam({"lr": lr})
    return pyro.infer.SVI(pair.model, pair.guide, optim, loss=loss)


__all__ = [
    "PyroPair",
    "discrete_elbo_available",
    "discrete_loss",
    "discrete_optim",
    "make_svi",
    "nvil_baselines",
    "tracegraph_loss",
]
