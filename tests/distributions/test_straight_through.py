"""Straight-through and Gumbel-Rao distributions."""

from __future__ import annotations

import pyro
import pyro.distributions as pdist
import pytest
import torch

from pyro_discrete.distributions import (
    DecoupledStraightThroughBernoulli,
    DecoupledStraightThroughOneHotCategorical,
    GumbelRaoBernoulli,
    GumbelRaoOneHotCategorical,
    StraightThroughBernoulli,
    StraightThroughOneHotCategorical,
)
from pyro_discrete.distributions import functional as fn

from ._helpers import DTYPES, NUM_DRAWS, assert_frequencies, assert_mean_close

BERNOULLI = [StraightThroughBernoulli, GumbelRaoBernoulli]
CATEGORICAL = [StraightThroughOneHotCategorical, GumbelRaoOneHotCategorical]
ALL = BERNOULLI + CATEGORICAL


def _make(cls, temperature, logits=None, probs=None, **kwargs):
    if cls in (GumbelRaoBernoulli, GumbelRaoOneHotCategorical):
        kwargs.setdefault("num_samples", 7)
    return cls(temperature, logits=logits, probs=probs, **kwargs)


def _logits(cls, dtype, extreme=False):
    if cls in BERNOULLI:
        values = [-30.0, -1.0, 0.0, 2.0, 30.0] if extreme else [-1.0, 0.0, 0.5, 2.0]
    else:
        values = [[30.0, 0.0, -30.0]] if extreme else [[1.0, -0.5, 0.0], [0.0, 2.0, -1.0]]
    return torch.tensor(values, dtype=dtype)


def _is_hard(cls, x):
    if cls in BERNOULLI:
        return bool(((x == 0) | (x == 1)).all())
    return bool((((x == 0) | (x == 1)).all(-1) & (x.sum(-1) == 1)).all())


# ---------------------------------------------------------------------------------------
# forward values and laws
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_value_is_exactly_the_hard_sample(cls, dtype):
    logits = _logits(cls, dtype, extreme=True).requires_grad_()
    d = _make(cls, 0.3, logits=logits)
    torch.manual_seed(0)
    x = d.rsample((1000,))
    assert x.dtype == dtype and x.requires_grad and _is_hard(cls, x)
    # the first noise drawn is that of the hard sample, for ST and Gumbel-Rao alike
    torch.manual_seed(0)
    shape = x.shape
    u = fn.uniform_like(logits.detach(), shape)
    if cls in BERNOULLI:
        hard = fn.heaviside(fn.logistic_sample(logits.detach().expand(shape), u))
    else:
        hard = fn.onehot_argmax(fn.gumbel_sample(logits.detach().expand(shape), u))
    assert torch.equal(x.detach(), hard)


@pytest.mark.parametrize("cls", ALL)
def test_sampling_law(cls):
    torch.manual_seed(1)
    logits = _logits(cls, torch.float64)
    d = _make(cls, 0.5, logits=logits)
    expected = torch.sigmoid(logits) if cls in BERNOULLI else torch.softmax(logits, -1)
    assert_frequencies(d.rsample((NUM_DRAWS // 4,)).detach(), expected)
    s = d.sample((NUM_DRAWS // 4,))
    assert not s.requires_grad and _is_hard(cls, s)
    assert_frequencies(s, expected)


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------


def _grads(x, weights, logits, temperature):
    return torch.autograd.grad((x * weights).sum(), [logits, temperature])


@pytest.mark.parametrize("cls", [StraightThroughBernoulli, StraightThroughOneHotCategorical])
@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_gradient_is_the_relaxed_gradient(cls, dtype):
    logits = _logits(cls, dtype).requires_grad_()
    temperature = torch.tensor(0.4, dtype=dtype, requires_grad=True)
    torch.manual_seed(2)
    weights = torch.randn((50,) + logits.shape, dtype=dtype)
    torch.manual_seed(3)
    x = _make(cls, temperature, logits=logits).rsample((50,))
    torch.manual_seed(3)
    u = fn.uniform_like(logits, x.shape)
    if cls is StraightThroughBernoulli:
        soft = fn.relax_bernoulli(fn.logistic_sample(logits.expand(x.shape), u), temperature)
    else:
        soft = fn.relax_categorical(fn.gumbel_sample(logits.expand(x.shape), u), temperature)
    expected = _grads(soft, weights, logits, temperature)
    for g, g_ref in zip(_grads(x, weights, logits, temperature), expected, strict=True):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("cls", [GumbelRaoBernoulli, GumbelRaoOneHotCategorical])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_rao_gradient_is_the_average_conditional_relaxed_gradient(cls, dtype):
    k = 5
    logits = _logits(cls, dtype).requires_grad_()
    temperature = torch.tensor(0.4, dtype=dtype, requires_grad=True)
    torch.manual_seed(4)
    weights = torch.randn((50,) + logits.shape, dtype=dtype)
    torch.manual_seed(5)
    x = cls(temperature, logits=logits, num_samples=k).rsample((50,))
    torch.manual_seed(5)
    shape = x.shape
    u = fn.uniform_like(logits, shape)
    v = fn.uniform_like(logits, torch.Size((k,)) + shape)
    lg = logits.expand(shape)
    # Paulus et al.: z~_k = logits + G~_k with the conditional Gumbel noise G~_k held fixed,
    # i.e. the straight-through gradient at z~_k (not the gradient through the sampler).
    if cls is GumbelRaoBernoulli:
        hard = fn.heaviside(fn.logistic_sample(lg, u)).detach()
        noise = [
            fn.logistic_conditional_sample(lg, hard, v[i]).detach() - lg.detach() for i in range(k)
        ]
        relaxed = [fn.relax_bernoulli(lg + g, temperature) for g in noise]
    else:
        hard = fn.onehot_argmax(fn.gumbel_sample(lg, u)).detach()
        noise = [
            fn.gumbel_conditional_sample(lg, hard, v[i]).detach() - lg.detach() for i in range(k)
        ]
        relaxed = [fn.relax_categorical(lg + g, temperature) for g in noise]
    per_draw = [_grads(r, weights, logits, temperature) for r in relaxed]
    expected = [torch.stack(gs).mean(0) for gs in zip(*per_draw, strict=True)]
    for g, g_ref in zip(_grads(x, weights, logits, temperature), expected, strict=True):
        torch.testing.assert_close(g, g_ref)


def _per_sample_gradients(cls, logits, c, temperature, replicates, **kwargs):
    """Gradient of c . x w.r.t. the logits, one row per independent replicate."""
    rep = logits.expand((replicates,) + logits.shape).clone().requires_grad_()
    x = cls(temperature, logits=rep, **kwargs).rsample()
    (g,) = torch.autograd.grad((x * c).sum(), rep)
    return g


@pytest.mark.parametrize(
    "st_cls,gr_cls,logits,c",
    [
        (StraightThroughBernoulli, GumbelRaoBernoulli, [0.5, -1.0], [1.0, -2.0]),
        (
            StraightThroughOneHotCategorical,
            GumbelRaoOneHotCategorical,
            [[0.5, -0.3, 0.2]],
            [[1.0, -2.0, 3.0]],
        ),
    ],
)
def test_gumbel_rao_has_lower_variance_than_straight_through(st_cls, gr_cls, logits, c):
    torch.manual_seed(6)
    logits = torch.tensor(logits, dtype=torch.float64)
    c = torch.tensor(c, dtype=torch.float64)
    n = NUM_DRAWS // 5
    st = _per_sample_gradients(st_cls, logits, c, 0.5, n)
    gr = _per_sample_gradients(gr_cls, logits, c, 0.5, n, num_samples=10)
    gr1 = _per_sample_gradients(gr_cls, logits, c, 0.5, n, num_samples=1)
    # same expectation (GR is ST Rao-Blackwellised over z given b) ...
    assert_mean_close(st - gr, 0.0)
    assert_mean_close(st - gr1, 0.0)
    # ... with a clearly lower variance for K = 10, and the same variance for K = 1
    var_st, var_gr, var_gr1 = (g.var(0).sum().item() for g in (st, gr, gr1))
    assert var_gr < 0.6 * var_st, (var_gr, var_st)
    assert 0.9 < var_gr1 / var_st < 1.1, (var_gr1, var_st)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_finite_at_extreme_logits_and_low_temperature(cls, dtype):
    torch.manual_seed(7)
    logits = _logits(cls, dtype, extreme=True).requires_grad_()
    temperature = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    d = _make(cls, temperature, logits=logits)
    x = d.rsample((500,))
    loss = (x * torch.randn_like(x)).sum() + d.log_prob(x).sum()
    grads = torch.autograd.grad(loss, [logits, temperature])
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(d.log_prob(x)).all()


# ---------------------------------------------------------------------------------------
# log_prob
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_prob_depends_on_the_value_alone(cls, dtype):
    torch.manual_seed(8)
    logits = _logits(cls, dtype).requires_grad_()
    d = _make(cls, 0.5, logits=logits)
    x = d.rsample((100,))
    lp = d.log_prob(x)
    torch.testing.assert_close(lp, d.log_prob(x.clone()), rtol=0, atol=0)
    torch.testing.assert_close(lp, d.log_prob(x.detach().clone()), rtol=0, atol=0)
    if cls in BERNOULLI:
        discrete = torch.distributions.Bernoulli(logits=logits)
    else:
        discrete = torch.distributions.OneHotCategorical(logits=logits)
    torch.testing.assert_close(lp, discrete.log_prob(x.detach()))
    # differentiable in the value: a model's log p(b) passes gradient through the sample
    value = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(d.log_prob(value).sum(), value)
    expected = logits if cls in BERNOULLI else torch.log_softmax(logits, -1)
    torch.testing.assert_close(g, expected.detach().expand_as(g))


def test_pyro_straight_through_log_prob_reads_stashed_state():
    # The defect ours avoids: Pyro's version evaluates the Concrete density of a soft sample
    # stashed on the tensor, so a clone of the same value gets a different log_prob.
    torch.manual_seed(9)
    d = pdist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(0.5), logits=torch.zeros(3))
    s = d.rsample()
    assert not torch.allclose(d.log_prob(s), d.log_prob(s.clone()))
    ours = StraightThroughOneHotCategorical(0.5, logits=torch.zeros(3))
    torch.testing.assert_close(ours.log_prob(s), ours.log_prob(s.clone()))


@pytest.mark.parametrize("cls", ALL)
def test_log_prob_validation_and_bool_values(cls):
    d = _make(cls, 0.5, logits=_logits(cls, torch.float32), validate_args=True)
    if cls in BERNOULLI:
        bad, good = torch.full((4,), 0.5), torch.tensor([True, False, True, True])
    else:
        bad, good = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([False, True, False])
    with pytest.raises(ValueError, match="support"):
        d.log_prob(bad)
    torch.testing.assert_close(d.log_prob(good), d.log_prob(good.float()))


# ---------------------------------------------------------------------------------------
# shapes, parameters, errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_expand_to_event(cls, dtype):
    event = () if cls in BERNOULLI else (3,)
    logits = torch.zeros((4,) + event, dtype=dtype)
    temperature = torch.full((2, 1), 0.5, dtype=dtype)  # broadcasts into the batch shape
    d = _make(cls, temperature, logits=logits)
    assert d.batch_shape == (2, 4) and d.event_shape == event
    x = d.rsample((5,))
    assert x.shape == (5, 2, 4) + event and x.dtype == dtype and _is_hard(cls, x)
    assert d.log_prob(x).shape == (5, 2, 4)
    e = d.expand((3, 2, 4))
    assert type(e) is cls and e.batch_shape == (3, 2, 4) and e.temperature.shape == (3, 2, 4)
    if hasattr(d, "num_samples"):
        assert e.num_samples == d.num_samples
    assert e.rsample().shape == (3, 2, 4) + event
    i = e.to_event(2)
    assert i.batch_shape == (3,) and i.log_prob(i.rsample((6,))).shape == (6, 3)
    probs = torch.full((4,) + event, 1 / 3 if event else 0.3, dtype=dtype)
    p = _make(cls, 0.5, probs=probs)
    assert p.batch_shape == (4,) and p.logits.dtype == dtype
    torch.testing.assert_close(p.probs, probs)
    assert p.expand((2, 4)).rsample().shape == (2, 4) + event
    torch.testing.assert_close(p.mean, probs)


@pytest.mark.parametrize("cls", ALL)
def test_temperature_gets_a_gradient(cls):
    temperature = torch.tensor(0.5, requires_grad=True)
    torch.manual_seed(10)
    x = _make(cls, temperature, logits=_logits(cls, torch.float32)).rsample((100,))
    (g,) = torch.autograd.grad((x * torch.randn_like(x)).sum(), temperature)
    assert torch.isfinite(g) and g != 0


@pytest.mark.parametrize("cls", ALL)
def test_bad_arguments(cls):
    logits = _logits(cls, torch.float32)
    for bad in (0.0, -1.0, torch.tensor(0.0), torch.tensor([0.5, -0.5]).reshape(2, 1)):
        with pytest.raises(ValueError, match="temperature"):
            _make(cls, bad, logits=logits)
    with pytest.raises(ValueError, match="temperature"):
        _make(cls, 0.0, logits=logits, validate_args=False)  # numbers are always checked
    with pytest.raises(ValueError, match="logits.*probs"):
        _make(cls, 0.5)
    with pytest.raises(ValueError, match="logits.*probs"):
        _make(cls, 0.5, logits=logits, probs=torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="temperature"):
        _make(cls, torch.ones(5, 7), logits=logits)  # does not broadcast with the batch
    if cls in (GumbelRaoBernoulli, GumbelRaoOneHotCategorical):
        for bad in (0, -2, 2.5, True, "3"):
            with pytest.raises(ValueError, match="num_samples"):
                cls(0.5, logits=logits, num_samples=bad)


def test_used_in_a_pyro_model():
    def model():
        with pyro.plate("data", 5):
            b = pyro.sample(
                "b", StraightThroughBernoulli(0.5, logits=torch.zeros(5, 3)).to_event(1)
            )
            c = pyro.sample(
                "c", GumbelRaoOneHotCategorical(0.5, logits=torch.zeros(5, 4), num_samples=3)
            )
        return b, c

    trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["b"]["value"].shape == (5, 3)
    assert trace.nodes["c"]["value"].shape == (5, 4)
    assert trace.nodes["b"]["fn"].has_rsample and trace.nodes["c"]["fn"].has_rsample
    torch.testing.assert_close(
        trace.log_prob_sum(), torch.tensor(-5 * 3 * 0.6931472 - 5 * 1.3862944)
    )


# ---------------------------------------------------------------------------------------
# decoupled straight-through: the tempered law with a straight-through gradient
# ---------------------------------------------------------------------------------------

DECOUPLED = {
    StraightThroughBernoulli: DecoupledStraightThroughBernoulli,
    StraightThroughOneHotCategorical: DecoupledStraightThroughOneHotCategorical,
}


@pytest.mark.parametrize("st_cls", list(DECOUPLED))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forward_temperature", [1.0, 2.5, 0.4])
def test_decoupled_is_straight_through_of_the_tempered_law(st_cls, dtype, forward_temperature):
    cls = DECOUPLED[st_cls]
    logits = _logits(st_cls, dtype).requires_grad_()
    weights = torch.randn((30,) + logits.shape, dtype=dtype)
    torch.manual_seed(11)
    x = cls(0.6, logits=logits, forward_temperature=forward_temperature).rsample((30,))
    torch.manual_seed(11)
    ref = st_cls(0.6, logits=logits / forward_temperature).rsample((30,))
    assert _is_hard(st_cls, x) and torch.equal(x.detach(), ref.detach())
    (g,) = torch.autograd.grad((x * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    if forward_temperature == 1.0:  # exactly straight-through, bit for bit
        assert torch.equal(g, g_ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("st_cls", list(DECOUPLED))
def test_decoupled_samples_follow_the_tempered_law(st_cls):
    torch.manual_seed(12)
    logits = _logits(st_cls, torch.float64)
    d = DECOUPLED[st_cls](0.5, logits=logits, forward_temperature=2.0)
    tempered = logits / 2.0
    expected = torch.sigmoid(tempered) if st_cls in BERNOULLI else torch.softmax(tempered, -1)
    assert_frequencies(d.rsample((NUM_DRAWS // 4,)).detach(), expected)
    torch.testing.assert_close(d.probs, expected)
    x = d.sample((10,))
    torch.testing.assert_close(d.log_prob(x), st_cls(0.5, logits=tempered).log_prob(x))
    e = d.expand((3,) + d.batch_shape)
    assert type(e) is type(d) and e.forward_temperature == 2.0
    torch.testing.assert_close(e.probs[0], expected)
    p = DECOUPLED[st_cls](0.5, probs=expected, forward_temperature=2.0)  # probs: tempered too
    expected_2 = (
        torch.sigmoid(tempered / 2) if st_cls in BERNOULLI else torch.softmax(tempered / 2, -1)
    )
    torch.testing.assert_close(p.probs, expected_2)
    for bad in (0.0, -1.0, torch.tensor(2.0)):
        with pytest.raises(ValueError, match="forward_temperature"):
            DECOUPLED[st_cls](0.5, logits=logits, forward_temperature=bad)
