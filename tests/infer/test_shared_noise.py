"""SharedNoise: REBAR's two relaxed passes see the same value-free draws, eager or compiled."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pyro_discrete.infer.shared_noise import SharedNoise, compiling


def _draws(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    normal = torch.empty(4).normal_()  # Normal.rsample's noise
    uniform = torch.rand(3)
    coin = torch.bernoulli(probs)  # depends on its input's values
    return normal, uniform, coin


@pytest.mark.parametrize("compiled", [False, True])
def test_second_pass_reuses_value_free_draws(compiled):
    torch.manual_seed(0)
    with compiling() if compiled else contextlib.nullcontext():
        noise = SharedNoise(torch.zeros(()))
        with noise.first():
            first = _draws(torch.full((200,), 0.5))
        with noise.again():
            second = _draws(torch.full((200,), 0.5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    if compiled:  # value-dependent draws are fresh (independent, hence still unbiased)
        assert not torch.equal(first[2], second[2])
    else:  # eagerly the state is restored: the generator advanced by one pass
        after = torch.rand(3)
        torch.manual_seed(0)
        _draws(torch.full((200,), 0.5))
        assert torch.equal(after, torch.rand(3))


def test_diverging_passes_draw_independently():
    with compiling():
        noise = SharedNoise(torch.zeros(()))
        with noise.first():
            a = torch.rand(3)
        with noise.again():
            b = torch.rand(5)  # another shape: not the recorded draw
    assert b.shape == (5,) and not torch.equal(a, b[:3])
