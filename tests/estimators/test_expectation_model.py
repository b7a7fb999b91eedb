"""The expectation model's formulas: the regression target is unbiased for the logit
gradient, the regression's minimiser is that gradient, and the surrogate hands the
prediction to the logits unchanged."""

from __future__ import annotations

import torch

from pyro_discrete import estimators as E


def _exact_bernoulli_gradient(logits, f):
    # d/dl E[f(b)] for independent Bernoulli(sigmoid(l)) bits and f(b) = sum_i f_i(b_i)
    p = logits.sigmoid()
    return (f(torch.ones_like(p)) - f(torch.zeros_like(p))) * p * (1 - p)


def test_target_is_unbiased_and_its_regression_minimiser_is_the_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([-1.0, 0.3, 2.0])

    def f(b):
        return (b - torch.tensor([0.2, 0.7, 0.45])) ** 2

    exact = _exact_bernoulli_gradient(logits, f)
    n = 200_000
    b = torch.bernoulli(logits.sigmoid().expand(n, 3))
    targets = E.score_function_logit_gradient(E.logit_score(logits, b, one_hot=False), f(b))
    se = targets.std(0) / n**0.5
    assert ((targets.mean(0) - exact).abs() / se).max() < 4.5
    # the least-squares fit of a constant to the targets is their mean: the gradient
    prediction = torch.zeros(3, requires_grad=True)
    optim = torch.optim.SGD([prediction], lr=0.5)
    for _ in range(100):
        optim.zero_grad()
        (E.expectation_model_loss(prediction.expand(n, 3), targets) / n).backward()
        optim.step()
    torch.testing.assert_close(prediction.detach(), targets.mean(0), atol=1e-5, rtol=0)
    # a target without the score (f alone) regresses to E[f], not the gradient
    assert (f(b).mean(0) - exact).abs().max() > 0.1


def test_loss_reaches_only_the_prediction_and_surrogate_passes_it_to_the_logits():
    logits = torch.randn(4, 3, requires_grad=True)
    prediction = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3, requires_grad=True)
    loss = E.expectation_model_loss(prediction, target)
    g_pred, g_target = torch.autograd.grad(loss, [prediction, target], allow_unused=True)
    torch.testing.assert_close(g_pred, 2 * (prediction - target).detach())
    assert g_target is None
    (g_logits, g_pred) = torch.autograd.grad(
        E.expectation_model_surrogate(logits, prediction), [logits, prediction],
        allow_unused=True,
    )
    torch.testing.assert_close(g_logits, prediction.detach())
    assert g_pred is None  # the guide's step does not train the network
