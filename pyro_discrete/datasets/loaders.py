"""Minibatch iterators with reproducible, resumable order and optional fresh binarisation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["MinibatchIterator", "DynamicBinarizer"]


def _child_seed(*entropy: int) -> int:
    # SeedSequence mixes the tuple properly, so (seed, epoch) = (0, 1) and (1, 0) give
    # unrelated streams, which naive ``seed + epoch`` would not.
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)


class MinibatchIterator:
    r"""Shuffled minibatches of the rows of a tensor, epoch after epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so the position
    ``(epoch, batch)`` is the whole state: :meth:`state_dict` / :meth:`load_state_dict` resume
    a run on exactly the minibatch it would have seen next.

    Iterating (``for batch in loader``) yields the rest of the current epoch and then moves on
    to the next one; :meth:`next_batch` crosses epoch boundaries itself, which suits training
    loops that count steps rather than epochs.

    :param torch.Tensor data: tensor of shape ``(N, ...)``; rows are examples.
    :param int batch_size: rows per minibatch.
    :param bool shuffle: draw a fresh permutation each epoch (else keep the stored order).
    :param bool drop_last: drop the final short minibatch of an epoch, so every minibatch has
        ``batch_size`` rows (estimators with running statistics then see a fixed shape).
    :param int seed: seed of the permutations (and of the binarisations in subclasses).
    :param device: device the minibatches are moved to.

    Example::

        >>> loader = MinibatchIterator(torch.arange(10.).unsqueeze(-1), batch_size=4, seed=0)
        >>> len(loader)
        2
        >>> [b.shape for b in loader]
        [torch.Size([4, 1]), torch.Size([4, 1])]
        >>> loader.epoch
        1
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = data.shape[0]
        if n < batch_size and drop_last:
            raise ValueError(f"batch_size {batch_size} exceeds the number of examples ({n})")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.device = device
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        n = self.data.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        cached = getattr(self, "_cached_order", None)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n = self.data.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(_child_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        self._cached_order = (epoch, order)
        return order

    def _transform(self, batch: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        return batch

    def _batch(self, order: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self._transform(self.data[rows], epoch, index)
        return batch.to(self.device) if self.device is not None else batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch, order = self.epoch, self._order(self.epoch)
        while self.epoch == epoch and self.position < len(self):
            index = self.position
            self.position += 1
            if self.position == len(self):
                self.epoch, self.position = epoch + 1, 0
            yield self._batch(order, epoch, index)

    def next_batch(self) -> torch.Tensor:
        """The next minibatch, starting a new epoch when the current one is used up."""
        index, epoch = self.position, self.epoch
        batch = self._batch(self._order(epoch), epoch, index)
        self.position += 1
        if self.position == len(self):
            self.epoch, self.position = epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"loader state was saved with seed {state['seed']}, this loader has {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class DynamicBinarizer(MinibatchIterator):
    r"""Minibatches of *fresh* Bernoulli draws ``x ~ Bernoulli(p)`` from grey-level images ``p``.

    Dynamic binarisation (used e.g. by DisARM) draws a new binary image every time an
    example is visited, which acts as data augmentation; static binarisation (REBAR, RELAX)
    fixes one draw for the whole run. The draw for minibatch ``i`` of epoch ``e`` depends only
    on ``(seed, e, i)``, so runs are reproducible and resumable, and two epochs differ.

    :param torch.Tensor probs: grey levels in ``[0, 1]`` of shape ``(N, D)``, e.g.
        :func:`~pyro_discrete.datasets.mnist_probabilities`.

    Other arguments as for :class:`MinibatchIterator`.

    Example::

        >>> p = torch.full((8, 5), 0.5)
        >>> loader = DynamicBinarizer(p, batch_size=8, shuffle=False, seed=1)
        >>> a, b = loader.next_batch(), loader.next_batch()   # epochs 0 and 1
        >>> bool(((a == 0) | (a == 1)).all()), bool((a != b).any())
        (True, True)
    """

    def __init__(self, probs: torch.Tensor, batch_size: int, **kwargs) -> None:
        if probs.min() < 0 or probs.max() > 1:
            raise ValueError("DynamicBinarizer expects probabilities in [0, 1]")
        super().__init__(probs, batch_size, **kwargs)

    def _transform(self, batch: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_child_seed(self.seed, epoch, index, 1))
        return (torch.rand(batch.shape, generator=g) < batch).to(batch.dtype)
