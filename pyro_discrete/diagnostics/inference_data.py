r"""Guide draws and importance weights as ArviZ ``InferenceData``, and PSIS :math:`\hat k`.

For an amortised guide :math:`q(z \mid x_n)`, the importance log-weights
:math:`\log w_{sn} = \log p(x_n, z_{sn}) - \log q(z_{sn} \mid x_n)` tell how well the guide
covers each data point's posterior. Pareto smoothed importance sampling fits a generalised
Pareto distribution to the largest weights; its shape :math:`\hat k` is a reliability
diagnostic [1, 2]: :math:`\hat k < 0.5` good, :math:`0.5 \le \hat k < 0.7` usable,
:math:`\hat k \ge 0.7` the weights (and the guide, as a proposal) are unreliable for that
data point.

**References**

[1] Y. Yao, A. Vehtari, D. Simpson, A. Gelman (2018), "Yes, but Did It Work?: Evaluating
    Variational Inference".
[2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto Smoothed Importance
    Sampling".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from .bounds import _latent_and_observed_sites, log_importance_weights

__all__ = ["to_inference_data", "psis_khat"]


def _arviz():
    with warnings.catch_warnings():
        # arviz announces its ongoing refactor with a FutureWarning on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype == torch.bool:
        value = value.to(torch.int8)
    return value.numpy()


def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 100,
    max_plate_nesting: int = 1,
    **kwargs,
):
    r"""Draw ``num_samples`` latent configurations from the guide, with their log-weights.

    Returns an :class:`arviz.InferenceData` with

    - ``posterior``: one variable per latent site of the guide, dims
      ``(chain, draw, data, <site>_dim_0, ...)`` (a single chain; guide draws are
      independent, so ``draw`` indexes i.i.d. samples);
    - ``sample_stats.log_weights``: :math:`\log p(x_n, z_{sn}) - \log q(z_{sn} \mid x_n)`,
      dims ``(chain, draw, data)``;
    - ``observed_data``: the observed sites' values.

    Model and guide must broadcast over a leading sample dimension at
    ``-(max_plate_nesting + 1)``, with every site inside the data plate (see
    :func:`~pyro_discrete.diagnostics.log_importance_weights`).

    Example::

        >>> import pyro, torch
        >>> from pyro_discrete.models import SigmoidBeliefNet
        >>> pyro.clear_param_store()
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> idata = to_inference_data(vae.model, vae.guide, torch.ones(4, 6), num_samples=50)
        >>> dict(idata.posterior["z1"].sizes)
        {'chain': 1, 'draw': 50, 'data': 4, 'z1_dim_0': 3}
        >>> idata.sample_stats["log_weights"].shape
        (1, 50, 4)
        >>> pyro.clear_param_store()
    """
    az = _arviz()
    log_w, guide_trace, model_trace = log_importance_weights(
        model,
        guide,
        *args,
        num_samples=num_samples,
        max_plate_nesting=max_plate_nesting,
        return_traces=True,
        **kwargs,
    )
    num_data = log_w.shape[-1]
    posterior, dims = {}, {}
    for name, site in _latent_and_observed_sites(guide_trace):
        if site["is_observed"]:
            continue
        value = site["value"]
        # left-pad to (samples, *plates) so that every site has the sample and data dims
        batch_ndim = max_plate_nesting + 1
        full = len(site["fn"].batch_shape) + len(site["fn"].event_shape)
        value = value.reshape(
            (1,) * (batch_ndim + len(site["fn"].event_shape) - full) + value.shape
        )
        value = value.expand(num_samples, num_data, *value.shape[2:])
        posterior[name] = _numpy(value)[None]
        dims[name] = ["data"] + [f"{name}_dim_{i}" for i in range(value.dim() - 2)]
    observed = {
        name: _numpy(site["value"])
        for name, site in _latent_and_observed_sites(model_trace)
        if site["is_observed"]
    }
    for name, value in observed.items():
        dims[name] = ["data"] + [f"{name}_dim_{i}" for i in range(value.ndim - 1)]
    return az.from_dict(
        posterior=posterior,
        sample_stats={"log_weights": _numpy(log_w)[None]},
        observed_data=observed or None,
        dims={**dims, "log_weights": ["data"]},
    )


def psis_khat(
    model: Callable | None = None,
    guide: Callable | None = None,
    *args,
    num_samples: int = 1000,
    idata=None,
    max_plate_nesting: int = 1,
    **kwargs,
) -> np.ndarray:
    r"""PSIS Pareto :math:`\hat k` of the guide as a proposal, one per data point.

    Either pass ``model, guide, *args`` (``num_samples`` draws are taken; PSIS needs a few
    hundred or more for a stable fit) or an ``idata`` from :func:`to_inference_data`.
    Computed with :func:`arviz.psislw` over the draws of each data point.

    :returns: a numpy array of shape ``(N,)``; NaN (with a warning) where no Pareto tail
        could be fitted, which happens when a small discrete guide puts many draws on the
        same few values. Values above 0.7 mean the guide is a poor importance proposal.

    Example::

        >>> import pyro, torch
        >>> from pyro_discrete.models import SigmoidBeliefNet
        >>> pyro.clear_param_store()
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> khat = psis_khat(vae.model, vae.guide, torch.ones(4, 6), num_samples=500)
        >>> khat.shape
        (4,)
        >>> pyro.clear_param_store()
    """
    az = _arviz()
    if idata is None:
        if model is None or guide is None:
            raise ValueError("pass model, guide and their arguments, or idata")
        idata = to_inference_data(
            model,
            guide,
            *args,
            num_samples=num_samples,
            max_plate_nesting=max_plate_nesting,
            **kwargs,
        )
    log_w = idata.sample_stats["log_weights"].stack(__sample__=("chain", "draw"))
    with warnings.catch_warnings():
        # psislw warns when k-hat is large, which is what the caller asked to measure
        warnings.simplefilter("ignore", UserWarning)
        _, khat = az.psislw(log_w)
    khat = np.asarray(khat, dtype=float)
    bad = ~np.isfinite(khat)
    if bad.any():
        # PSIS fits a generalised Pareto to the largest weights; with ties or too few
        # distinct weights in the tail (small discrete guides) ArviZ returns inf.
        warnings.warn(
            f"psis_khat: no Pareto fit for {int(bad.sum())} of {khat.size} data points (too "
            "few distinct importance weights in the tail, common for small discrete "
            "guides); their k-hat is NaN. Draw more samples or read the log-weights directly",
            RuntimeWarning,
            stacklevel=2,
        )
        khat[bad] = np.nan
    return khat
