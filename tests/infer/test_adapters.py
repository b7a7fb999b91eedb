"""The adapter interface: a new estimator is one adapter class, found by every entry point;
registry errors name the site and suggest the closest name."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, estimator_draws, max_abs_z

from pyro_discrete import estimators as E
from pyro_discrete.infer import DiscreteELBO, SiteError, control_variate_state
from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES, SiteEstimator, Terms


class _HalfBaseline(SiteEstimator):
    """REINFORCE with a running-average baseline, written as a user would add one."""

    name = "test_half_baseline"
    running_state = {"average": 0.0}

    def site_terms(self, ev, site):
        signal = ev.signal(site)
        average = self.statistic(site, "average", signal)
        return Terms(
            surrogate=E.score_surrogate(ev.score(site), signal, average),
            updates=[
                (
                    self.state_name(site.name, "average"),
                    E.decaying_average(average, signal.mean(), 0.5),
                )
            ],
        )


@pytest.fixture(autouse=True)
def _unregister():
    yield
    ESTIMATOR_CLASSES.pop(_HalfBaseline.name, None)
    ESTIMATOR_CLASSES[_HalfBaseline.name] = _HalfBaseline  # keep it for later tests


def test_a_new_adapter_registers_and_is_unbiased():
    assert ESTIMATOR_CLASSES["test_half_baseline"] is _HalfBaseline
    problem = PROBLEMS["sbn_two_layer"]()
    elbo = DiscreteELBO(
        "test_half_baseline", num_particles=50, vectorize_particles=True, max_plate_nesting=2
    )
    draws = estimator_draws(problem, elbo, 30)
    state = control_variate_state()
    assert max_abs_z(draws, problem.exact()) < 4.5
    # its running statistic was written, in place, once per step
    assert "pyro_discrete/test_half_baseline/z1/average" in state
    assert state["pyro_discrete/test_half_baseline/z1/average"] != 0


def test_state_updates_wait_for_a_finite_loss():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.factor("broken", torch.log1p(-z) if z > 0.5 else torch.tensor(0.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(30.0))))

    pyro.clear_param_store()
    elbo = DiscreteELBO("test_half_baseline")
    with pytest.raises(FloatingPointError, match="model site 'broken'"):
        elbo.loss_and_grads(model, guide)
    # read (created at its initial value) but not updated
    assert control_variate_state()["pyro_discrete/test_half_baseline/z/average"] == 0
    assert pyro.param("q").grad is None


def test_unknown_estimator_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'rebar'"):
        DiscreteELBO("rebra")


def test_gumbel_softmax_is_an_alias():
    assert DiscreteELBO("gumbel_softmax").estimator.name == "gumbel"


def test_a_per_site_option_typo_names_the_site():
    def model():
        pyro.sample("k", dist.Bernoulli(0.5))

    def guide():
        pyro.sample(
            "k",
            dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))),
            infer={"estimator": "rebar", "estimator_options": {"temprature": 0.3}},
        )

    with pytest.raises(TypeError, match="on site 'k'.*did you mean 'temperature'"):
        DiscreteELBO().loss_and_grads(model, guide)


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_bernoulli_only_estimators_advise_a_score_function_estimator(name):
    def model():
        pyro.sample("k", dist.Categorical(torch.ones(3)))

    def guide():
        pyro.sample("k", dist.Categorical(logits=pyro.param("q", torch.zeros(3))))

    with pytest.raises(SiteError, match="site 'k'.*Categorical.*'rloo'") as info:
        DiscreteELBO(name).loss_and_grads(model, guide)
    assert "OneHotCategorical" not in str(info.value)


def test_a_site_read_on_the_host_is_warned_about():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        loc = 3.0 if z.item() == 1 else 0.0
        pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(2.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="site 'z' on the host.*Python control flow"):
        DiscreteELBO().loss_and_grads(model, guide)


def test_a_site_nothing_else_depends_on_is_not_warned_about():
    import warnings

    def model():
        pyro.sample("z", dist.Bernoulli(0.3))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        DiscreteELBO().loss_and_grads(model, guide)


def test_a_subclass_without_a_name_does_not_register():
    before = dict(ESTIMATOR_CLASSES)

    class _Abstract(SiteEstimator):
        pass

    assert ESTIMATOR_CLASSES == before


def _rounding_model(y):
    with pyro.plate("d", 3):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)))
        pyro.sample("y", dist.Normal(torch.round(z), 1.0), obs=y)


def _zero_weight_model(y):
    w = pyro.param("w", torch.tensor(0.0))
    with pyro.plate("d", 3):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)))
        pyro.sample("y", dist.Normal(w * z, 1.0), obs=y)


def _bernoulli_guide(y):
    with pyro.plate("d", 3):
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))


def test_a_persistent_zero_gradient_in_the_relaxed_value_is_warned_about():
    import warnings

    from pyro.infer import SVI
    from pyro.optim import Adam

    y = torch.tensor([1.0, 0.0, 2.0])
    pyro.clear_param_store()
    svi = SVI(_rounding_model, _bernoulli_guide, Adam({"lr": 0.1}), DiscreteELBO("rebar"))
    with pytest.warns(RuntimeWarning, match="exactly zero gradient.*'z'"):
        for _ in range(10):
            svi.step(y)
    # a model whose weight starts at 0 is not warned about: its gradient appears
    pyro.clear_param_store()
    svi = SVI(_zero_weight_model, _bernoulli_guide, Adam({"lr": 0.1}), DiscreteELBO("rebar"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(12):
            svi.step(y)
