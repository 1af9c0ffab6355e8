"""The AdamW-vs-AdmIRE study (sims/studies/admire.py), its checks and figure, on a tiny config."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sims.studies import admire


def test_config_validates_and_presets() -> None:
    assert admire.Config.preset("quick") == admire.Config()
    assert admire.Config.preset("full").steps > admire.Config().steps
    assert admire.SIM.name == admire.NAME
    with pytest.raises(ValueError, match=r"every \(7\) must divide steps \(600\)"):
        admire.Config(every=7)
    with pytest.raises(ValueError, match=r"n_heads \(3\) must divide d_model \(32\)"):
        admire.Config(n_heads=3)
    with pytest.raises(ValueError, match="gamma"):
        admire.Config(gamma=1.0)
    with pytest.raises(ValueError, match=r"warmup \(600\) must be < steps \(600\)"):
        admire.Config(warmup=600)
    with pytest.raises(ValueError, match="falls before the first row"):
        admire.Config(other_fractions=(0.01,))
    with pytest.raises(ValueError, match="scale"):
        admire.Config.preset("huge")


def test_steps_to_target_interpolates_log_loss() -> None:
    step = np.array([0, 10, 20, 30])
    loss = np.array([1.0, 0.1, 0.01, 0.001])
    # log-linear between rows: 10^-1.5 is reached half-way from step 10 to 20
    assert admire.steps_to_target(step, loss, 10**-1.5) == pytest.approx(15.0, rel=1e-12)
    assert admire.steps_to_target(step, loss, 0.1) == 10.0  # exactly at a row
    assert admire.steps_to_target(step, loss, 2.0) == 0.0  # already there
    assert math.isnan(admire.steps_to_target(step, loss, 1e-4))  # never
    # the first crossing counts, not a later one after a spike
    spiky = np.array([1.0, 0.05, 0.5, 0.001])
    assert admire.steps_to_target(step, spiky, 0.1) < 10.0 + 1e-12


@pytest.mark.slow  # compiles IRE's Fisher mask and AdamW on the transformer (~40 s under load)
def test_kappa_scales_the_masked_update_of_the_same_adamw() -> None:
    """AdmIRE's first step after its warm-up is AdamW's step times 1 + kappa n (n the 0/1
    mask), from the same state: the optimizers are the paper's construction."""
    import jax
    import jax.numpy as jnp

    from sims import sequences
    from theory.problems import transformer as tf

    cfg = admire.Config(p=5, d_model=8, n_heads=2, d_mlp=8, warmup=0, kappa=2.0, steps=40, every=2)
    ds = sequences.modular_addition(5, seed=0)
    args = tuple(
        jnp.asarray(a) for a in (ds.tokens_train, ds.targets_train, ds.tokens_test, ds.targets_test)
    )
    loss, _, _ = admire._functions(cfg.spec())
    params = tf.init(cfg.spec(), jax.random.PRNGKey(0), jnp.float64)
    base, amp = admire.make_optimizer(cfg, "adamw", 0), admire.make_optimizer(cfg, "admire", 0)

    @jax.jit
    def first_updates(params: Any) -> tuple[Any, Any, Any]:
        g = jax.grad(loss)(params, *args)
        u, _ = base.update(g, base.init(params), params, loss_args=args)
        v, st = amp.update(g, amp.init(params), params, loss_args=args)
        return u, v, st

    u, v, st = first_updates(params)
    uf, vf = (jax.flatten_util.ravel_pytree(x)[0] for x in (u, v))
    mask = np.asarray(st.flat.mask)
    assert mask.sum() == round(cfg.gamma * uf.shape[0])
    np.testing.assert_allclose(np.asarray(vf), np.asarray(uf) * (1 + cfg.kappa * mask), rtol=1e-12)


@pytest.mark.slow  # four engine programs (two optimizers, with Lanczos), checks, a figure
def test_tiny_run_checks_and_figure(tmp_path) -> None:
    import figures.admire
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    cfg = admire.Config(
        p=7, d_model=8, n_heads=2, d_mlp=8, steps=60, every=10, warmup=10, seeds=(0, 1),
        lanczos_iters=8, other_fractions=(0.5,),
    )  # fmt: skip
    stored = admire.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]
    o = s["overall"]
    arrays = stored.arrays
    assert arrays["s0_adamw.step"].tolist() == list(range(0, 61, 10))
    for seed in (0, 1):
        a, b = f"s{seed}_adamw", f"s{seed}_admire"
        assert arrays[f"{a}.loss"][0] == arrays[f"{b}.loss"][0]  # same start
        at = int(np.flatnonzero(arrays[f"{a}.step"] == 50)[0])
        assert s[a]["target"] == pytest.approx(float(np.min(arrays[f"{a}.loss"][: at + 1])))
        assert s[a]["steps_to_target"] <= 50
        assert np.isfinite(arrays[f"{a}.precond_eos"]).all()
    assert [f["fraction"] for f in o["by_fraction"]] == [0.5, 0.8]
    sp = [
        s[f"s{x}_adamw"]["steps_to_target"] / s[f"s{x}_admire"]["steps_to_target"] for x in (0, 1)
    ]
    np.testing.assert_allclose(o["speedups"], sp, rtol=1e-12)
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[admire.NAME] = stored
    results = run_checks(ctx, ["admire"])
    assert len(results) == 5 and all(np.isfinite(r.measured) for r in results)
    paths = figures.admire.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 5_000
