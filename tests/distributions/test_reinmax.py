"""ReinMax distributions: exact hard values, the ReinMax backward, shapes and errors."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import ReinMaxBernoulli, ReinMaxOneHotCategorical
from pyro_discrete.distributions import functional as fn

from ._helpers import DTYPES, NUM_DRAWS, assert_frequencies

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
