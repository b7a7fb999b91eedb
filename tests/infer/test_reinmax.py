"""ReinMax inside DiscreteELBO: hard forward values, and a mean gradient closer to the exact
one (enumeration) than straight-through's on models whose ELBO is quadratic in the sample."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, Problem, estimator_draws, max_abs_z

from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, ReinMax_ELBO, SiteError

NUM_DRAWS = 20
PARTICLES = 500


def gaussian_bits() -> Problem:
    """Three Bernoulli bits per datum (``to_event``) with a Gaussian likelihood whose mean
    is linear in them: the ELBO is quadratic in the single site's value."""
    n, d = 3, 3
    g = torch.Generator().manual_seed(7)
    y = torch.randn(n, generator=g)
    init = dict(prior=torch.randn(d, generator=g), w=torch.randn(d, generator=g))
    init.update(q=torch.randn(n, d, generator=g))

    def model(y):
        with pyro.plate("data", n, dim=-1):
            b = pyro.sample(
                "b", dist.Bernoulli(logits=pyro.param("prior").expand(n, d)).to_event(1)
            )
            pyro.sample("y", dist.Normal(b @ pyro.param("w"), 0.7), obs=y)

    def guide(y):
        with pyro.plate("data", n, dim=-1):
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("q")).to_event(1))

    return Problem("gaussian_bits", model, guide, (y,), init, guide_params=("q",))


def linear_bits() -> Problem:
    """Four Bernoulli bits per datum whose learning signal is linear in them (a factor
    :math:`c^\top b` and the log-masses): :math:`\nabla_b f` does not depend on :math:`b`."""
    n, d = 2, 4
    g = torch.Generator().manual_seed(8)
    # a large signal and probabilities away from 1/2, where ReinMax's weights M(b) vary most
    weights = 20 * torch.randn(d, generator=g)
    init = dict(prior=torch.randn(d, generator=g), q=2 * torch.randn(n, d, generator=g))

    def model():
        with pyro.plate("data", n, dim=-1):
            b = pyro.sample(
                "b", dist.Bernoulli(logits=pyro.param("prior").expand(n, d)).to_event(1)
            )
            pyro.factor("signal", (b * weights).sum(-1))

    def guide():
        with pyro.plate("data", n, dim=-1):
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("q")).to_event(1))

    return Problem("linear_bits", model, guide, (), init, guide_params=("q",))


def _mean_gradient_distance(problem, estimator, **options):
    exact = problem.exact()
    elbo = DiscreteELBO(
        estimator,
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=1,
        temperature=1.0,
        **options,
    )
    draws = estimator_draws(problem, elbo, NUM_DRAWS)
    distance = sum(((d.mean(0) - exact[k]) ** 2).sum() for k, d in draws.items()) ** 0.5
    return distance.item(), max_abs_z(draws, exact)


@pytest.mark.parametrize("make", [gaussian_bits, PROBLEMS["mixture_of_experts"]])
def test_closer_to_the_exact_gradient_than_straight_through(make):
    """One site, f quadratic in it: at temperature 1 ReinMax is exact in expectation (the
    paper's second-order claim); straight-through is clearly biased."""
    reinmax, z_reinmax = _mean_gradient_distance(make(), "reinmax")
    straight, z_straight = _mean_gradient_distance(make(), "st")
    print(
        f"{make.__name__}: |mean - exact| reinmax {reinmax:.4f} (max|z| {z_reinmax:.1f}), "
        f"st {straight:.4f} (max|z| {z_straight:.1f})"
    )
    assert reinmax < 0.4 * straight
    assert z_reinmax < 4.5 < z_straight


@pytest.mark.parametrize("make", [gaussian_bits, PROBLEMS["mixture_of_experts"]])
def test_relaxed_endpoint_reinmax_rao_is_closer_to_the_exact_gradient_than_st(make):
    """Where ReinMax is nearly exact, the relaxed-endpoint form of ReinMax-Rao at its default
    endpoint temperature keeps most of the gain (measured: 0.055 vs 0.284 and 0.196 vs
    0.757), and a hot endpoint loses it: the endpoint temperature matters, the test can
    fail."""
    relaxed = {"form": "relaxed_endpoint"}
    rao, _ = _mean_gradient_distance(make(), "reinmax_rao", **relaxed)
    straight, _ = _mean_gradient_distance(make(), "st")
    hot, _ = _mean_gradient_distance(make(), "reinmax_rao", endpoint_temperature=0.5, **relaxed)
    print(
        f"{make.__name__}: |mean - exact| reinmax_rao {rao:.4f} (hot {hot:.4f}), st {straight:.4f}"
    )
    assert rao < 0.4 * straight
    assert rao < 0.7 * hot


@pytest.mark.parametrize("name", ["categorical_chain", "sbn_two_layer"])
def test_closer_than_straight_through_on_two_layer_models(name):
    """Two dependent sites: both biased, ReinMax less so."""
    reinmax, _ = _mean_gradient_distance(PROBLEMS[name](), "reinmax")
    straight, _ = _mean_gradient_distance(PROBLEMS[name](), "st")
    print(f"{name}: |mean - exact| reinmax {reinmax:.4f}, st {straight:.4f}")
    assert reinmax < 0.7 * straight


def test_sites_take_exact_hard_values_and_the_estimator_is_registered():
    assert ESTIMATORS["reinmax"] is ReinMax_ELBO
    problem = PROBLEMS["categorical_chain"]()
    problem.reset()
    elbo = ReinMax_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    model_trace, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    for name in ("a", "b"):
        value = guide_trace.nodes[name]["value"]
        assert value.requires_grad
        assert bool((((value == 0) | (value == 1)).all(-1) & (value.sum(-1) == 1)).all())
    with pytest.raises(ValueError, match="temperature"):
        DiscreteELBO("reinmax", temperature=0.0)


# ---------------------------------------------------------------------------------------
# decoupled straight-through, ReinMax-Rao and ReinMax-CV inside DiscreteELBO
# ---------------------------------------------------------------------------------------


def _is_hard_value(value, one_hot):
    binary = (value == 0) | (value == 1)
    if one_hot:
        return bool((binary.all(-1) & (value.sum(-1) == 1)).all())
    return bool(binary.all())


@pytest.mark.parametrize("name", ["decoupled_st", "reinmax_rao", "reinmax_cv"])
@pytest.mark.parametrize(
    "problem_name,one_hot", [("categorical_chain", True), ("sbn_two_layer", False)]
)
def test_new_estimators_give_sites_exact_hard_values(name, problem_name, one_hot):
    assert name in ESTIMATORS
    problem = PROBLEMS[problem_name]()
    problem.reset()
    elbo = DiscreteELBO(name, num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    _, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    latent = [
        n
        for n, node in guide_trace.nodes.items()
        if node["type"] == "sample"
        and not node["is_observed"]
        and node["value"].is_floating_point()
    ]
    assert latent
    for n in latent:
        value = guide_trace.nodes[n]["value"]
        assert value.requires_grad and _is_hard_value(value, one_hot), n
    draws = estimator_draws(problem, elbo, 2)
    assert all(bool(torch.isfinite(d).all()) and d.abs().sum() > 0 for d in draws.values())


def test_decoupled_st_at_unit_forward_temperature_is_straight_through():
    problem = PROBLEMS["categorical_chain"]()
    options = dict(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    st = estimator_draws(problem, DiscreteELBO("st", temperature=0.7, **options), 3)
    decoupled = DiscreteELBO("decoupled_st", temperature=0.7, forward_temperature=1.0, **options)
    same = estimator_draws(problem, decoupled, 3)
    assert all(torch.equal(st[k], same[k]) for k in st)
    tempered = DiscreteELBO("decoupled_st", temperature=0.7, forward_temperature=2.0, **options)
    other = estimator_draws(problem, tempered, 3)
    assert any(not torch.allclose(st[k], other[k]) for k in st)


def test_decoupled_st_samples_the_tempered_law():
    problem = PROBLEMS["mixture_of_experts"]()
    problem.reset()
    pyro.set_rng_seed(0)
    n = 4000
    elbo = DiscreteELBO(
        "decoupled_st",
        forward_temperature=2.5,
        num_particles=n,
        vectorize_particles=True,
        max_plate_nesting=1,
    )
    _, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    node = next(
        node
        for node in guide_trace.nodes.values()
        if node["type"] == "sample"
        and not node["is_observed"]
        and node["value"].is_floating_point()
        and node["value"].dim() >= 3
    )
    frequencies = node["value"].detach().mean(0)
    leaf = node["fn"]
    while hasattr(leaf, "base_dist"):
        leaf = leaf.base_dist
    logits = leaf.logits.detach().reshape((-1,) + frequencies.shape)[0]  # same per particle
    tempered = torch.softmax(logits / 2.5, -1)
    se = (tempered * (1 - tempered) / n).sqrt()
    assert ((frequencies - tempered).abs() / se).max() < 4.5
    untempered = torch.softmax(logits, -1)
    assert ((frequencies - untempered).abs() / se).max() > 4.5  # the test can fail


def _draws(name, problem, draws, particles, **options):
    elbo = DiscreteELBO(
        name, num_particles=particles, vectorize_particles=True, max_plate_nesting=1, **options
    )
    return estimator_draws(problem, elbo, draws)


@pytest.mark.parametrize(
    "make,ratio", [(linear_bits, 0.5), (gaussian_bits, 1.5), (PROBLEMS["categorical_chain"], 1.5)]
)
def test_reinmax_cv_has_reinmax_mean_and_lower_variance(make, ratio):
    """The control variate has mean zero: the two means agree (z-test of their difference).
    It removes the variance that ReinMax's matrix adds to a value gradient that does not
    depend on the sample: on ``linear_bits`` the guide's gradient variance drops by more
    than half; where the value gradient varies with the sample (the other two models) it
    removes little (measured: about equal variances), and must not add much."""
    reinmax = _draws("reinmax", make(), 20, 64)
    cv = _draws("reinmax_cv", make(), 20, 64)
    z = max(
        (
            (cv[k].mean(0) - reinmax[k].mean(0))
            / ((cv[k].var(0) + reinmax[k].var(0)) / 20 + 1e-20).sqrt()
        )
        .abs()
        .max()
        .item()
        for k in reinmax
    )
    guide = make().guide_params
    var_reinmax = sum(reinmax[k].var(0).sum() for k in guide).item()
    var_cv = sum(cv[k].var(0).sum() for k in guide).item()
    print(f"{make.__name__}: max|z| {z:.1f}, variance reinmax {var_reinmax:.4g} cv {var_cv:.4g}")
    assert z < 4.5
    assert var_cv < ratio * var_reinmax


def test_reinmax_cv_needs_particles_and_options_are_checked():
    problem = PROBLEMS["sbn_two_layer"]()
    with pytest.raises(ValueError, match="num_particles"):
        DiscreteELBO("reinmax_cv", num_particles=1)
    with pytest.raises(ValueError, match="forward_temperature"):
        DiscreteELBO("decoupled_st", forward_temperature=0.0)
    with pytest.raises(ValueError, match="endpoint_temperature"):
        DiscreteELBO("reinmax_rao", endpoint_temperature=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        DiscreteELBO("reinmax_rao", num_samples=0)
    with pytest.raises(ValueError, match="rao_temperature"):
        DiscreteELBO("reinmax_rao", rao_temperature=0.0)
    with pytest.raises(ValueError, match="form must be one of gumbel_rao, relaxed_endpoint"):
        DiscreteELBO("reinmax_rao", form="paper")
    # per site, through infer={"estimator": ...}: the multi-sample check names the site
    elbo = DiscreteELBO("st", max_plate_nesting=1, estimator_options=None)
    problem.reset()

    def guide(*args):
        with pyro.poutine.infer_config(config_fn=lambda msg: {"estimator": "reinmax_cv"}):
            problem.guide(*args)

    with pytest.raises(SiteError, match="reinmax_cv.*num_particles"):
        elbo.loss_and_grads(problem.model, guide, *problem.args)


def test_per_site_estimators_mix_in_one_model():
    problem = PROBLEMS["categorical_chain"]()
    chosen = {"a": "reinmax_rao", "b": "decoupled_st"}  # the guide's two sites

    def config(msg):
        return {"estimator": chosen[msg["name"]]} if msg["name"] in chosen else {}

    def guide(*args):
        with pyro.poutine.infer_config(config_fn=config):
            problem.guide(*args)

    def gradients(guide):
        problem.reset()
        pyro.set_rng_seed(3)
        params = problem.params()
        elbo = DiscreteELBO("st", num_particles=2, vectorize_particles=True, max_plate_nesting=1)
        loss = elbo.loss_and_grads(problem.model, guide, *problem.args)
        assert torch.isfinite(torch.as_tensor(loss))
        return {k: p.grad.clone() for k, p in params.items()}

    mixed, plain = gradients(guide), gradients(problem.guide)
    # each site's own guide parameters see its own estimator
    assert not torch.allclose(mixed["q1"], plain["q1"])
    assert not torch.allclose(mixed["Q2"], plain["Q2"])


def test_gumbel_rao_reinmax_rao_is_closer_to_the_exact_gradient_than_straight_through():
    """The Gumbel-Rao form of ReinMax-Rao (the default, rao_temperature 0.5) on the one-hot
    mixture of experts: a mean gradient between ReinMax's and straight-through's (measured
    0.23 against ReinMax 0.15 and ST 0.76; at rao_temperature 2 it is 0.50, so the test can
    fail). Its one-particle guide-gradient variance was measured level with ReinMax's (7.4
    against 6.8, 300 draws each), so no variance claim is asserted."""
    make = PROBLEMS["mixture_of_experts"]
    rao, _ = _mean_gradient_distance(make(), "reinmax_rao")
    straight, _ = _mean_gradient_distance(make(), "st")
    print(f"|mean - exact| reinmax_rao {rao:.4f}, st {straight:.4f}")
    assert rao < 0.5 * straight
