"""``Evaluation.build``: the one pass down that ``DiscreteELBO`` asks for each evaluation."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import sbn_two_layer

import pyro_discrete.infer.evaluation as evaluation_module
from pyro_discrete.infer import DiscreteELBO, SiteError
from pyro_discrete.infer.adapters import make_estimator
from pyro_discrete.infer.evaluation import Evaluation


def _build(problem, **options) -> Evaluation:
    estimator = make_estimator("reinforce")
    return Evaluation.build(
        problem.model,
        problem.guide,
        problem.args,
        {},
        estimator_for=lambda msg: estimator,
        max_plate_nesting=1,
        **options,
    )


def test_build_traces_scores_and_finds_the_dependencies():
    problem = sbn_two_layer()
    problem.reset()
    ev = _build(problem)
    assert list(ev.sites) == ["z1", "z2"]  # guide order
    assert ev.orders == {"data": 0, "z1": 1, "z2": 2}  # the plate's subsample site first
    assert ev.guide_trace.nodes["z1"]["value"] is ev.sites["z1"].value
    assert ev.model_trace.nodes["z1"]["value"] is ev.sites["z1"].value  # replayed
    keys = [c.key for c in ev.costs]
    assert keys == [("model", n) for n in ("z2", "z1", "x")] + [("guide", "z1"), ("guide", "z2")]
    # the guide draws z1 from x, then z2 given z1; a sampled value inherits the provenance
    # of its distribution, and the model is replayed at the guide's values
    both = {"z1", "z2"}
    assert ev.deps == {
        ("model", "z2"): both,
        ("model", "z1"): both,
        ("model", "x"): both,
        ("guide", "z1"): {"z1"},
        ("guide", "z2"): both,
    }
    assert ev.particle_frame is None and ev.num_particles == 1


def test_a_structure_is_found_once_per_cache(monkeypatch):
    calls = {"dependencies": 0, "checks": 0}
    trace_dependencies, check_traces = (
        evaluation_module.trace_dependencies,
        evaluation_module.check_traces,
    )

    def counted_dependencies(*args, **kwargs):
        calls["dependencies"] += 1
        return trace_dependencies(*args, **kwargs)

    def counted_checks(*args, **kwargs):
        calls["checks"] += 1
        return check_traces(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "trace_dependencies", counted_dependencies)
    monkeypatch.setattr(evaluation_module, "check_traces", counted_checks)
    problem = sbn_two_layer()
    problem.reset()
    structures: dict = {}
    first = _build(problem, structures=structures, identity="a")
    second = _build(problem, structures=structures, identity="a")
    assert calls == {"dependencies": 1, "checks": 1}
    assert second.structure is first.structure
    assert list(structures) == [("a", list(structures)[0][1])]
    _build(problem, structures=structures, identity="b")  # another model, same structure
    assert calls == {"dependencies": 2, "checks": 2}
    _build(problem)  # no cache: found anew every time
    _build(problem)
    assert calls == {"dependencies": 4, "checks": 4}


def test_an_index_error_under_vectorised_particles_names_the_particle_dim():
    shapes = []
    table = torch.tensor([0.2, 0.7])

    def model():
        with pyro.plate("data", 3):
            x = pyro.sample("x", dist.Bernoulli(0.5 * torch.ones(3)))
            pyro.sample("y", dist.Bernoulli(table[int(x[0])]), obs=torch.ones(3))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", 3):
            shapes.append(pyro.sample("x", dist.Bernoulli(p.expand(3))).shape)

    elbo = DiscreteELBO("rloo", num_particles=4, max_plate_nesting=1)
    with pytest.raises(SiteError, match="after sample site 'x'") as info:
        elbo.loss_and_grads(model, guide)
    (shape,) = shapes
    dim = shape.index(4) - len(shape)  # where the particles really are
    assert dim == -2
    assert f"num_particles=4 at dim {dim}," in str(info.value)
    assert isinstance(info.value.__cause__, (RuntimeError, ValueError))


def test_a_module_s_bound_methods_read_afresh_each_step_keep_their_structure(monkeypatch):
    """``elbo.loss_and_grads(net.model, net.guide, x)`` makes new bound-method objects at
    every call: the structure found at the first step is reused, not found anew each step
    (and a second module of the same class, same trace structure, gets its own)."""
    calls = {"dependencies": 0}
    trace_dependencies = evaluation_module.trace_dependencies

    def counted(*args, **kwargs):
        calls["dependencies"] += 1
        return trace_dependencies(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "trace_dependencies", counted)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit = torch.nn.Parameter(torch.zeros(3))

        def model(self, x):
            with pyro.plate("data", 3):
                z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(3)))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

        def guide(self, x):
            with pyro.plate("data", 3):
                pyro.sample("z", dist.Bernoulli(logits=self.logit))

    pyro.clear_param_store()
    net, other = Net(), Net()
    elbo = DiscreteELBO(estimator="reinforce", max_plate_nesting=1)
    x = torch.tensor([0.0, 1.0, 2.0])
    for _ in range(3):
        elbo.loss_and_grads(net.model, net.guide, x)
    assert calls["dependencies"] == 1
    elbo.loss_and_grads(other.model, other.guide, x)
    assert calls["dependencies"] == 2
