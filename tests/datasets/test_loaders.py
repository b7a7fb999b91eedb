import pytest
import torch

from pyro_discrete.datasets import DynamicBinarizer, MinibatchIterator, mnist_probabilities


def test_each_epoch_is_a_permutation():
    data = torch.arange(10.0).unsqueeze(-1)
    loader = MinibatchIterator(data, batch_size=5, seed=0)
    epoch0 = torch.cat(list(loader)).squeeze(-1)
    epoch1 = torch.cat(list(loader)).squeeze(-1)
    assert sorted(epoch0.tolist()) == list(range(10)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    assert loader.epoch == 2


def test_drop_last_and_short_final_batch():
    data = torch.arange(10.0).unsqueeze(-1)
    assert [b.shape[0] for b in MinibatchIterator(data, 4)] == [4, 4]
    assert [b.shape[0] for b in MinibatchIterator(data, 4, drop_last=False)] == [4, 4, 2]
    with pytest.raises(ValueError, match="exceeds"):
        MinibatchIterator(data, 11)


def test_next_batch_crosses_epochs_and_resumes_exactly():
    data = torch.arange(12.0).unsqueeze(-1)
    loader = MinibatchIterator(data, batch_size=5, seed=7)
    seen = [loader.next_batch() for _ in range(3)]  # 2 batches per epoch: crosses into epoch 1
    assert loader.state_dict() == {"epoch": 1, "position": 1, "seed": 7}
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(4)]
    resumed = MinibatchIterator(data, batch_size=5, seed=7)
    resumed.load_state_dict(state)
    again = [resumed.next_batch() for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
    assert not torch.equal(seen[0], seen[2])
    with pytest.raises(ValueError, match="seed"):
        MinibatchIterator(data, 5, seed=8).load_state_dict(state)


def test_dynamic_binarizer_draws_afresh_each_epoch():
    probs = mnist_probabilities("valid")[:48]
    loader = DynamicBinarizer(probs, batch_size=48, shuffle=False, seed=0)
    epoch0, epoch1 = loader.next_batch(), loader.next_batch()
    assert set(epoch0.unique().tolist()) == {0.0, 1.0}
    # same images, fresh pixels: grey pixels disagree between epochs, but pixels with p = 0
    # (the border) never turn on
    grey = (probs > 0.2) & (probs < 0.8)
    assert (epoch0[grey] != epoch1[grey]).float().mean() > 0.3
    assert (epoch0[probs == 0] == 0).all() and (epoch1[probs == 0] == 0).all()
    # reproducible from (seed, epoch, batch)
    again = DynamicBinarizer(probs, batch_size=48, shuffle=False, seed=0)
    assert torch.equal(again.next_batch(), epoch0)
    # unbiased with the Bernoulli variance: the standardised squared error of the average of
    # n epochs is about 1 per grey pixel (a mean over ~3,000 pixels, standard error ~0.03)
    n = 100
    many = torch.stack([again.next_batch() for _ in range(n)]).mean(0)
    grey = (probs > 0.05) & (probs < 0.95)
    var = probs * (1 - probs) / n
    ratio = ((many - probs)[grey] ** 2 / var[grey]).mean()
    assert 0.85 < ratio < 1.15


def test_dynamic_binarizer_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        DynamicBinarizer(torch.full((4, 3), 2.0), batch_size=2)
