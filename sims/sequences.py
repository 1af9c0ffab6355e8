"""Token-sequence tasks for the transformer studies: generated, deterministic, offline.

:func:`modular_addition` is the task of Power et al. ("Grokking", 2022): for a prime ``p`` every
pair ``(a, b)`` in ``[0, p)^2`` gives the sequence ``[a, b, =]`` (``=`` is token ``p``, so the
vocabulary has ``p + 1`` tokens) and the target ``(a + b) mod p``, the token that follows. The
``p^2`` pairs are shuffled by ``seed`` and split into a training set of ``round(train_fraction *
p^2)`` pairs and a held-out set of the rest. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int32]


@dataclass(frozen=True)
class TokenDataset:
    """A train/held-out split of token sequences with one next-token target each.

    Attributes:
        name: the generator's name.
        tokens_train: ``(n_train, T)`` int32 tokens in ``[0, vocab)``.
        targets_train: ``(n_train,)`` int32 next tokens in ``[0, vocab)``.
        tokens_test, targets_test: the same for the held-out split.
        vocab: vocabulary size.
        meta: JSON-able provenance (generator settings).
    """

    name: str
    tokens_train: IntArray
    targets_train: IntArray
    tokens_test: IntArray
    targets_test: IntArray
    vocab: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        """Tokens per sequence ``T``."""
        return int(self.tokens_train.shape[1])


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def modular_addition(p: int = 23, *, train_fraction: float = 0.5, seed: int = 0) -> TokenDataset:
    """Sequences ``[a, b, p]`` with target ``(a + b) mod p``, split at random (module docstring).

    Args:
        p: the modulus, a prime ``>= 3``.
        train_fraction: fraction of the ``p^2`` pairs in the training set, in ``(0, 1)``; both
            splits must be non-empty.
        seed: the shuffle's seed (``>= 0``; NumPy's ``default_rng``).
    """
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 3 or not _is_prime(p):
        raise ValueError(f"p must be a prime >= 3 (the modulus), got {p!r}")
    try:
        frac = float(train_fraction)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"train_fraction must be a float in (0, 1), got {train_fraction!r}"
        ) from err
    if not 0.0 < frac < 1.0:
        raise ValueError(f"train_fraction must be in the open interval (0, 1), got {frac!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    p = int(p)
    n_train = round(frac * p * p)
    if not 0 < n_train < p * p:
        raise ValueError(
            f"train_fraction={frac} leaves an empty split of the {p * p} pairs (n_train={n_train})"
        )
    a, b = np.divmod(np.arange(p * p), p)
    order = np.random.default_rng(int(seed)).permutation(p * p)
    a, b = a[order], b[order]
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)
    targets = ((a + b) % p).astype(np.int32)
    return TokenDataset(
        name="modular_addition",
        tokens_train=tokens[:n_train],
        targets_train=targets[:n_train],
        tokens_test=tokens[n_train:],
        targets_test=targets[n_train:],
        vocab=p + 1,
        meta={"p": p, "train_fraction": frac, "seed": int(seed), "n_train": n_train},
    )
