"""The generated token tasks (sims/sequences.py): contents against the definition, the split,
determinism, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from sims import sequences


def test_modular_addition_is_every_pair_once_with_its_sum() -> None:
    p = 7
    ds = sequences.modular_addition(p, train_fraction=0.4, seed=3)
    assert ds.vocab == p + 1 and ds.seq_len == 3
    assert ds.tokens_train.dtype == np.int32 and ds.targets_train.dtype == np.int32
    assert len(ds.tokens_train) == round(0.4 * 49) == 20 and len(ds.tokens_test) == 29
    toks = np.concatenate([ds.tokens_train, ds.tokens_test])
    ys = np.concatenate([ds.targets_train, ds.targets_test])
    assert np.all(toks[:, 2] == p)  # the "=" token
    pairs = {(int(a), int(b)) for a, b, _ in toks}
    assert pairs == {(a, b) for a in range(p) for b in range(p)}  # each pair exactly once
    for (a, b, _), y in zip(toks, ys, strict=True):
        assert y == (a + b) % p
    assert ds.meta == {"p": 7, "train_fraction": 0.4, "seed": 3, "n_train": 20}


def test_modular_addition_deterministic_and_seed_dependent() -> None:
    a = sequences.modular_addition(11, seed=1)
    b = sequences.modular_addition(11, seed=1)
    c = sequences.modular_addition(11, seed=2)
    np.testing.assert_array_equal(a.tokens_train, b.tokens_train)
    assert not np.array_equal(a.tokens_train, c.tokens_train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 8}, r"p must be a prime >= 3 \(the modulus\), got 8"),
        ({"p": 2}, "prime >= 3"),
        ({"p": 5.0}, "prime >= 3"),
        ({"p": 5, "train_fraction": 1.0}, r"open interval \(0, 1\), got 1.0"),
        ({"p": 5, "train_fraction": 0.01}, "leaves an empty split of the 25 pairs"),
        ({"p": 5, "seed": -1}, "seed must be an int >= 0, got -1"),
    ],
)
def test_modular_addition_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sequences.modular_addition(**kwargs)
