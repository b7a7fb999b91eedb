r"""``indecater``: the CatLog-derivative trick for a site's independent categorical variables
(De Smet, Sansone, Zuidberg Dos Martires, NeurIPS 2023). Unbiased.

See :mod:`pyro_discrete.estimators.indecater` for the formula. Within a plate element a
site's value holds :math:`D` independent variables given the sites before it: the elements
of a Bernoulli site's event (:math:`K = 2`), the rows of a one-hot site's event, or the one
index of a ``Categorical``. For each variable and each value other than the sampled one,
the site's learning signal (the cost terms that depend on it, per plate element) is
evaluated with that one variable changed in every plate element at once, the sites before
it kept and the guide sites after it **drawn afresh given the changed value**: the later
sites' distributions may depend on this site (a deeper layer of a belief net), and a fresh
draw keeps :math:`f(x_{-d}, X_d = k)` an unbiased estimate of its expectation over them
(the CatLog-derivative trick for variables ordered in the guide).

The :math:`D(K - 1)` changed values are evaluated as one vectorised pass of the model and
guide (an extra batch dim left of every plate, as ``vectorize_particles`` adds one), in
chunks of ``chunk_size`` if set, or one pass each with ``vectorize=False``.
"""

from __future__ import annotations

import dataclasses

import pyro
import torch
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor

from pyro_discrete import estimators as E
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.infer.evaluation import DiscreteSite, Evaluation, cost_terms, reduce_to_frames
from pyro_discrete.infer.sites import BERNOULLI, CATEGORICAL, ONE_HOT, SiteError

__all__ = ["IndeCateR"]

#: the extra plate of the vectorised pass over changed values
VALUES_PLATE = "indecater_changed_values"


def _batch_depth(ev: Evaluation) -> int:
    """How many batch dims the program uses: the changed values go left of all of them."""
    depth = 0
    for trace in (ev.model_trace, ev.guide_trace):
        for node in trace.nodes.values():
            if node["type"] != "sample":
                continue
            depth = max(depth, len(getattr(node["fn"], "batch_shape", ())))
            for frame in node["cond_indep_stack"]:
                if frame.dim is not None:
                    depth = max(depth, -frame.dim)
    return depth


def _broadcasting(choose):
    """A policy whose kept values take the site's full shape in the pass, as Pyro's own
    draws do: program code that combines two sites' values then sees equal shapes."""

    def policy(msg):
        value = choose(msg)
        if value is None or isinstance(msg["fn"], _Subsample):
            return value
        shape = torch.broadcast_shapes(value.shape, msg["fn"].shape())
        return value.expand(shape)

    return policy


class IndeCateR(SiteEstimator):
    r"""IndeCateR (De Smet et al. 2023): each of a site's independent categorical
    variables summed exactly over its :math:`K` values, the others sampled. **Unbiased.**

    .. math::

        \hat g = \sum_{d} \sum_{k} \partial_\theta\, q_d(k)\; f(x_{-d}, X_d = k)

    per sample and plate element, :math:`f` the site's learning signal; with
    ``num_particles`` = N the estimate is averaged over the N samples of :math:`x_{-d}`.
    For Bernoulli (:math:`K = 2`), one-hot and index ``Categorical`` sites.

    **Cost per step:** :math:`1 + D(K-1)` evaluations of the model and guide per particle
    and site (:math:`D` the variables per plate element, e.g. :math:`1 + D` for :math:`D`
    binary latents: 201 for the 200-bit belief nets), as one vectorised pass of batch
    :math:`D(K-1)` on top of the base pass; no backward through them.

    Guide sites after this one are drawn afresh in that pass, given the changed value, so
    deeper layers stay unbiased. Refused with a :class:`SiteError`: a cost term that
    depends on the site but lies outside one of its plates (a global site below a local
    one, say): changing a variable in every plate element at once is exact only when each
    cost term reads one plate element; use ``'rloo'`` there.

    Options: ``vectorize`` (True: one batched pass; False: one pass per changed value, for
    programs that cannot take an extra batch dim on the left), ``chunk_size`` (None: all
    changed values in one pass; an int bounds the pass's batch, and so its memory).
    """

    name = "indecater"
    requires = "discrete"  # check_site below: Bernoulli, one-hot and index Categorical
    defaults = {"vectorize": True, "chunk_size": None}

    def validate_options(self) -> None:
        chunk = self.options["chunk_size"]
        if chunk is not None and not (isinstance(chunk, int) and chunk > 0):
            raise ValueError(
                f"estimator 'indecater': chunk_size must be a positive int or None, got {chunk!r}"
            )
        if not isinstance(self.options["vectorize"], bool):
            raise TypeError("estimator 'indecater': vectorize must be True or False")

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        if kind not in (BERNOULLI, ONE_HOT, CATEGORICAL):
            raise SiteError(
                f"site '{name}' has distribution {dist_name}; estimator 'indecater' sums "
                "each variable over its values and handles Bernoulli, OneHotCategorical and "
                "Categorical sites only: give this site a score-function estimator with "
                "infer={'estimator': 'rloo'} (or 'reinforce', 'nvil')"
            )

    # -- the site as D categorical variables ----------------------------------------------

    @staticmethod
    def _variables(site: DiscreteSite) -> tuple[Tensor, Tensor, int]:
        """``(index, log_probs, K)``: the sampled categories ``(*batch, D)`` and the
        differentiable log-probabilities ``(*batch, D, K)``."""
        batch = tuple(site.fn.batch_shape)
        value = site.hard.detach()
        if site.kind == BERNOULLI:
            logits = site.logits.reshape(batch + (-1,))
            log_probs = torch.stack(
                [torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)],
                -1,
            )
            return value.reshape(batch + (-1,)).long(), log_probs, 2
        k = site.logits.shape[-1]
        if site.kind == ONE_HOT:
            log_probs = site.logits.log_softmax(-1).reshape(batch + (-1, k))
            return value.argmax(-1).reshape(batch + (-1,)), log_probs, k
        logits = site.logits.expand(batch + (k,))  # index Categorical
        return value.long().reshape(batch + (1,)), logits.log_softmax(-1).unsqueeze(-2), k

    @staticmethod
    def _values(site: DiscreteSite, index: Tensor, k: int) -> Tensor:
        """Site values ``(S, *batch, *event)`` from category indices ``(S, *batch, D)``."""
        shape = index.shape[:1] + tuple(site.fn.batch_shape) + tuple(site.fn.event_shape)
        dtype = site.hard.dtype
        if site.kind == BERNOULLI:
            return index.to(dtype).reshape(shape)
        if site.kind == ONE_HOT:
            return torch.nn.functional.one_hot(index, k).to(dtype).reshape(shape)
        return index.squeeze(-1).to(dtype).reshape(shape)

    # -- checks -------------------------------------------------------------------------

    @staticmethod
    def _check_plates(ev: Evaluation, site: DiscreteSite) -> None:
        batch = site.fn.batch_shape
        for cost in ev.costs:
            if site.name not in ev.deps.get(cost.key, ()):
                continue
            missing = [
                name
                for name, dim in site.frames
                if (name, dim) not in cost.frames and -dim <= len(batch) and batch[dim] > 1
            ]
            if missing:
                role, other = cost.key
                raise SiteError(
                    f"the {role} cost of site '{other}' depends on site '{site.name}' but "
                    f"lies outside its plate(s) {missing}: estimator 'indecater' changes a "
                    "variable in every element of those plates at once, which is exact only "
                    "when each cost term reads a single plate element. Use "
                    f"infer={{'estimator': 'rloo'}} (or 'reinforce') for '{site.name}'"
                )

    # -- the passes at changed values ------------------------------------------------------

    def _relaxed(self, ev: Evaluation) -> bool:
        return any(s.estimator.pathwise for s in ev.sites.values())

    def _vectorized_signals(self, ev: Evaluation, site: DiscreteSite, values: Tensor) -> Tensor:
        """The learning signal at each of ``values`` ``(S, *batch, *event)``, one pass."""
        depth = _batch_depth(ev)
        dim = -(depth + 1)
        count = values.shape[0]
        batch = tuple(site.fn.batch_shape)
        shaped = values.reshape(
            (count,) + (1,) * (depth - len(batch)) + batch + tuple(site.fn.event_shape)
        )

        def in_plate(fn):
            def wrapped(*args, **kwargs):
                with pyro.plate(VALUES_PLATE, count, dim=dim):
                    return fn(*args, **kwargs)

            return wrapped

        shifted = dataclasses.replace(ev, model=in_plate(ev.model), guide=in_plate(ev.guide))
        choose = shifted.prefix_choice(site, at_site=lambda msg: shaped, after=lambda msg: None)
        try:
            model_trace, guide_trace = shifted.run(_broadcasting(choose))
        except (RuntimeError, ValueError) as error:
            raise SiteError(
                f"estimator 'indecater' evaluates site '{site.name}' at {count} changed "
                f"values as one batch (an extra plate at dim {dim}), and the model or guide "
                "failed on it. Make every shape in the program follow its plates (as for "
                "vectorize_particles=True), or evaluate them one at a time with "
                "infer={'estimator': 'indecater', 'estimator_options': {'vectorize': False}}. "
                f"The error: {error}"
            ) from error
        keep = tuple(site.frames) + ((VALUES_PLATE, dim),)
        total = None
        for cost in cost_terms(model_trace, guide_trace, relaxed=self._relaxed(ev)):
            if site.name in ev.deps.get(cost.key, ()):
                part = reduce_to_frames(cost.value, cost.frames, keep, depth + 1)
                total = part if total is None else total + part
        if total is None:
            return values.new_zeros((count,) + batch)
        total = total.reshape(total.shape[:1] + total.shape[depth + 1 - len(batch) :])
        return total.expand((count,) + batch)

    def _looped_signals(self, ev: Evaluation, site: DiscreteSite, values: Tensor) -> Tensor:
        """The learning signal at each of ``values``, one pass per value."""
        batch = tuple(site.fn.batch_shape)
        signals = []
        for value in values:
            choose = ev.prefix_choice(site, at_site=lambda msg, v=value: v, after=lambda msg: None)
            model_trace, guide_trace = ev.run(choose)
            costs = cost_terms(model_trace, guide_trace, relaxed=self._relaxed(ev))
            signals.append(ev.signal(site, costs).expand(batch))
        return torch.stack(signals)

    def changed_signals(self, ev: Evaluation, site: DiscreteSite, values: Tensor) -> Tensor:
        """:math:`f` at each changed value, ``(S, *batch)``, without gradients."""
        with torch.no_grad():
            if not self.options["vectorize"]:
                return self._looped_signals(ev, site, values)
            chunk = self.options["chunk_size"] or values.shape[0]
            parts = [
                self._vectorized_signals(ev, site, values[i : i + chunk])
                for i in range(0, values.shape[0], chunk)
            ]
            return torch.cat(parts) if len(parts) > 1 else parts[0]

    # -- the surrogate ------------------------------------------------------------------

    def site_terms(self, ev: Evaluation, site: DiscreteSite) -> Terms:
        self._check_plates(ev, site)
        index, log_probs, k = self._variables(site)
        batch = tuple(site.fn.batch_shape)
        changed = E.indecater_changed_indices(index, k)  # (D(K-1), *batch, D)
        signals = self.changed_signals(ev, site, self._values(site, changed, k))
        base = ev.signal(site).detach().expand(batch)
        table = E.indecater_value_table(base, signals, index, k)
        return Terms(surrogate=E.indecater_surrogate(log_probs, table))
