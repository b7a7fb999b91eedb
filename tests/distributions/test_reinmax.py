"""ReinMax distributions: exact hard values, the ReinMax backward, shapes and errors."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import (
    ReinMaxBernoulli,
    ReinMaxOneHotCategorical,
    ReinMaxRaoBernoulli,
    ReinMaxRaoOneHotCategorical,
)
from pyro_discrete.distributions import functional as fn

from ._helpers import DTYPES, NUM_DRAWS, assert_frequencies, assert_mean_close

ALL = [ReinMaxBernoulli, ReinMaxOneHotCategorical]


def _logits(cls, dtype, extreme=False):
    if cls is ReinMaxBernoulli:
        values = [-30.0, -1.0, 0.0, 2.0, 30.0] if extreme else [-1.0, 0.0, 0.5, 2.0]
    else:
        values = [[30.0, 0.0, -30.0]] if extreme else [[1.0, -0.5, 0.0], [0.0, 2.0, -1.0]]
    return torch.tensor(values, dtype=dtype)


def _is_hard(cls, x):
    if cls is ReinMaxBernoulli:
        return bool(((x == 0) | (x == 1)).all())
    return bool((((x == 0) | (x == 1)).all(-1) & (x.sum(-1) == 1)).all())


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_forward_value_is_exactly_the_hard_sample(cls, dtype, temperature):
    logits = _logits(cls, dtype, extreme=True).requires_grad_()
    torch.manual_seed(0)
    x = cls(temperature, logits=logits).rsample((1000,))
    assert x.dtype == dtype and x.requires_grad and _is_hard(cls, x)
    torch.manual_seed(0)
    u = fn.uniform_like(logits.detach(), x.shape)
    lg = logits.detach().expand(x.shape)
    if cls is ReinMaxBernoulli:
        hard = fn.heaviside(fn.logistic_sample(lg, u))
    else:
        hard = fn.onehot_argmax(fn.gumbel_sample(lg, u))
    assert torch.equal(x.detach(), hard)  # bitwise: no 0.99999994


@pytest.mark.parametrize("cls", ALL)
def test_sampling_law(cls):
    torch.manual_seed(1)
    logits = _logits(cls, torch.float64)
    d = cls(2.0, logits=logits)
    expected = torch.sigmoid(logits) if cls is ReinMaxBernoulli else torch.softmax(logits, -1)
    assert_frequencies(d.rsample((NUM_DRAWS // 4,)).detach(), expected)
    s = d.sample((NUM_DRAWS // 4,))
    assert not s.requires_grad and _is_hard(cls, s)
    assert_frequencies(s, expected)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_is_reinmax(cls, dtype):
    torch.manual_seed(2)
    logits = _logits(cls, dtype).requires_grad_()
    temperature = torch.tensor([[1.5], [3.0]], dtype=dtype)  # broadcasts into the batch
    d = cls(temperature, logits=logits)
    x = d.rsample((40,))
    weights = torch.randn_like(x)
    (g,) = torch.autograd.grad((x * weights).sum(), logits)
    one_hot = cls is ReinMaxOneHotCategorical
    per_draw = E.reinmax_logit_gradient(
        d.logits.detach().expand(x.shape), x.detach(), weights, d.temperature, one_hot=one_hot
    )
    # the temperature's batch dim (2) was broadcast in front of the logits' batch
    torch.testing.assert_close(g, per_draw.sum((0, 1)))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_finite_at_extreme_logits(cls, dtype):
    torch.manual_seed(3)
    logits = _logits(cls, dtype, extreme=True).requires_grad_()
    d = cls(1.0, logits=logits)
    x = d.rsample((500,))
    (g,) = torch.autograd.grad((x * torch.randn_like(x)).sum() + d.log_prob(x).sum(), logits)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("cls", ALL)
def test_log_prob_is_the_discrete_log_mass(cls):
    torch.manual_seed(4)
    logits = _logits(cls, torch.float64).requires_grad_()
    d = cls(1.0, logits=logits)
    x = d.rsample((100,))
    lp = d.log_prob(x)
    torch.testing.assert_close(lp, d.log_prob(x.detach().clone()), rtol=0, atol=0)
    if cls is ReinMaxBernoulli:
        discrete = torch.distributions.Bernoulli(logits=logits)
    else:
        discrete = torch.distributions.OneHotCategorical(logits=logits)
    torch.testing.assert_close(lp, discrete.log_prob(x.detach()))


@pytest.mark.parametrize("cls", ALL)
def test_log_prob_validation_and_bool_values(cls):
    d = cls(1.0, logits=_logits(cls, torch.float32), validate_args=True)
    if cls is ReinMaxBernoulli:
        bad, good = torch.full((4,), 0.5), torch.tensor([True, False, True, True])
    else:
        bad, good = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([False, True, False])
    with pytest.raises(ValueError, match="support"):
        d.log_prob(bad)
    torch.testing.assert_close(d.log_prob(good), d.log_prob(good.float()))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_expand_to_event_and_argument_order(cls, dtype):
    event = () if cls is ReinMaxBernoulli else (3,)
    logits = torch.zeros((4,) + event, dtype=dtype)
    d = cls(torch.full((2, 1), 2.0, dtype=dtype), logits=logits)
    assert d.batch_shape == (2, 4) and d.event_shape == event
    x = d.rsample((5,))
    assert x.shape == (5, 2, 4) + event and _is_hard(cls, x)
    assert d.log_prob(x).shape == (5, 2, 4)
    e = d.expand((3, 2, 4))
    assert type(e) is cls and e.batch_shape == (3, 2, 4) and e.temperature.shape == (3, 2, 4)
    assert e.rsample().shape == (3, 2, 4) + event
    i = e.to_event(2)
    assert i.batch_shape == (3,) and i.log_prob(i.rsample((6,))).shape == (6, 3)
    assert cls.arg_constraints.keys() >= {"logits", "probs", "temperature"}
    # Pyro's relaxed-distribution order: (temperature, probs, logits)
    probs = torch.full((4,) + event, 1 / 3 if event else 0.3, dtype=dtype)
    p = cls(1.0, probs)
    torch.testing.assert_close(p.probs, probs)
    torch.testing.assert_close(p.mean, probs)
    assert p.expand((2, 4)).rsample().shape == (2, 4) + event


@pytest.mark.parametrize("cls", ALL)
def test_bad_arguments(cls):
    logits = _logits(cls, torch.float32)
    for bad in (0.0, -1.0, torch.tensor(0.0)):
        with pytest.raises(ValueError, match="temperature"):
            cls(bad, logits=logits)
    with pytest.raises(ValueError, match="logits.*probs"):
        cls(1.0)
    with pytest.raises(ValueError, match="logits.*probs"):
        cls(1.0, probs=torch.sigmoid(logits), logits=logits)
    with pytest.raises(ValueError, match="temperature"):
        cls(torch.ones(5, 7), logits=logits)


def test_used_in_a_pyro_model():
    def model():
        with pyro.plate("data", 5):
            b = pyro.sample("b", ReinMaxBernoulli(1.0, logits=torch.zeros(5, 3)).to_event(1))
            c = pyro.sample("c", ReinMaxOneHotCategorical(1.0, logits=torch.zeros(5, 4)))
        return b, c

    trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["b"]["fn"].has_rsample and trace.nodes["c"]["value"].shape == (5, 4)
    torch.testing.assert_close(
        trace.log_prob_sum(), torch.tensor(-5 * 3 * 0.6931472 - 5 * 1.3862944)
    )


# ---------------------------------------------------------------------------------------
# ReinMax-Rao (our construction): ReinMax with a Rao-Blackwellised Heun midpoint
# ---------------------------------------------------------------------------------------

RAO = {ReinMaxBernoulli: ReinMaxRaoBernoulli, ReinMaxOneHotCategorical: ReinMaxRaoOneHotCategorical}


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reinmax_rao_forward_is_exactly_the_hard_sample(cls, dtype):
    logits = _logits(cls, dtype, extreme=True).requires_grad_()
    torch.manual_seed(0)
    x = RAO[cls](1.0, logits=logits, num_samples=3).rsample((500,))
    torch.manual_seed(0)
    ref = cls(1.0, logits=logits).rsample((500,))  # the same first noise: the same sample
    assert x.requires_grad and _is_hard(cls, x) and torch.equal(x.detach(), ref.detach())
    (g,) = torch.autograd.grad((x * torch.randn_like(x)).sum(), logits)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reinmax_rao_backward_is_the_formula_at_the_conditional_endpoints(cls, dtype):
    k, tau = 4, 0.7
    torch.manual_seed(2)
    logits = _logits(cls, dtype).requires_grad_()
    temperature = torch.tensor([[1.5], [3.0]], dtype=dtype)
    d = RAO[cls](temperature, logits=logits, endpoint_temperature=tau, num_samples=k)
    torch.manual_seed(3)
    x = d.rsample((20,))
    weights = torch.randn_like(x)
    (g,) = torch.autograd.grad((x * weights).sum(), logits)
    # replay the noise: the sample's, then the K conditional draws given it
    torch.manual_seed(3)
    lg = d.logits.detach().expand(x.shape)
    one_hot = cls is ReinMaxOneHotCategorical
    u = fn.uniform_like(lg)
    v = fn.uniform_like(lg, torch.Size((k,)) + x.shape)
    if one_hot:
        z = fn.gumbel_conditional_sample(lg, x.detach(), v)
        endpoints = fn.relax_categorical(z, tau)
    else:
        z = fn.logistic_conditional_sample(lg, x.detach(), v)
        endpoints = fn.relax_bernoulli(z, tau)
    assert u.shape == x.shape
    per_draw = E.reinmax_rao_logit_gradient(lg, endpoints, weights, d.temperature, one_hot)
    torch.testing.assert_close(g, per_draw.sum((0, 1)))


@pytest.mark.parametrize("cls", ALL)
def test_reinmax_rao_tends_to_reinmax_as_the_endpoint_sharpens(cls):
    logits = _logits(cls, torch.float64).requires_grad_()
    torch.manual_seed(4)
    x = RAO[cls](1.0, logits=logits, endpoint_temperature=1e-6, num_samples=2).rsample((200,))
    weights = torch.randn_like(x)
    (g,) = torch.autograd.grad((x * weights).sum(), logits)
    torch.manual_seed(4)
    ref = cls(1.0, logits=logits).rsample((200,))
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(g, g_ref)
    torch.manual_seed(4)
    soft = RAO[cls](1.0, logits=logits, endpoint_temperature=1.0, num_samples=2).rsample((200,))
    (g_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    assert (g_soft - g_ref).abs().max() > 1e-2  # a soft endpoint is another estimator


def _per_sample_gradients(make, logits, c, replicates):
    rep = logits.expand((replicates,) + logits.shape).clone().requires_grad_()
    (g,) = torch.autograd.grad((make(rep).rsample() * c).sum(), rep)
    return g


@pytest.mark.parametrize("cls", ALL)
def test_reinmax_rao_draws_average_with_the_same_mean_and_less_variance(cls):
    torch.manual_seed(5)
    logits = _logits(cls, torch.float64)[:1]
    c = torch.randn_like(logits)
    n = NUM_DRAWS // 5
    one = _per_sample_gradients(
        lambda lg: RAO[cls](1.0, logits=lg, endpoint_temperature=1.0, num_samples=1), logits, c, n
    )
    many = _per_sample_gradients(
        lambda lg: RAO[cls](1.0, logits=lg, endpoint_temperature=1.0, num_samples=20), logits, c, n
    )
    assert_mean_close(one - many, 0.0)
    assert many.var(0).sum() < 0.9 * one.var(0).sum()


@pytest.mark.parametrize("cls", ALL)
def test_reinmax_rao_shapes_options_and_errors(cls):
    event = () if cls is ReinMaxBernoulli else (3,)
    d = RAO[cls](torch.full((2, 1), 2.0), logits=torch.zeros((4,) + event), num_samples=3)
    x = d.rsample((5,))
    assert x.shape == (5, 2, 4) + event and _is_hard(cls, x)
    e = d.expand((3, 2, 4))
    assert type(e) is type(d) and (e.num_samples, e.endpoint_temperature) == (3, 0.1)
    assert e.rsample().shape == (3, 2, 4) + event
    logits = _logits(cls, torch.float32)
    for bad in (0.0, -0.5, torch.tensor(0.5), "1"):
        with pytest.raises(ValueError, match="endpoint_temperature"):
            RAO[cls](1.0, logits=logits, endpoint_temperature=bad)
    with pytest.raises(ValueError, match="num_samples"):
        RAO[cls](1.0, logits=logits, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        RAO[cls](0.0, logits=logits)
