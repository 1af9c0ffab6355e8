"""The regime map's configuration: convolutional networks only, and their validation."""

from __future__ import annotations

import pytest

from sims.studies import regime_map as rm


def test_a_map_of_resnets_only_needs_no_mlp_pairing() -> None:
    # No datasets: the MLP widths are not paired with the normalization-loss pairs, and every
    # pair runs on the ResNet.
    cfg = rm.Config(datasets=(), resnet_channels=(4, 8, 16), norm_loss=("batch-ce",))
    names = [a["name"] for a in rm.architectures(cfg)]
    assert names == ["digits_resnet4-8-16x1_bn_ce"]
    with pytest.raises(ValueError, match=r"datasets must be among .*got \(\)"):
        rm.Config(datasets=())
    with pytest.raises(ValueError, match=r"resnet_channels .*got .*1"):
        rm.Config(datasets=(), resnet_channels=(4, 1))
    with pytest.raises(ValueError, match=r"they need equal lengths"):
        rm.Config(norm_loss=("batch-ce",))


def test_solver_tolerances_and_the_new_full_preset() -> None:
    for name in ("mid_tol", "track_tol"):
        with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\) .*got -0.1"):
            rm.Config(**{name: -0.1})
    new, old = rm.Config.preset("full"), rm.Config.preset("full", tracking="old")
    assert (new.pre_rows, new.mid_tol, new.track_tol) == (0, 0.0, rm.NEW_TOL)
    assert (old.pre_rows, old.mid_tol, old.track_tol) == (12, 0.0, 0.0)
    tracker = rm.make_tracker(new)
    assert tracker.config()["solve_period"] == 45
    assert tracker.config()["stop"] == "error" and tracker.config()["lanczos_tol"] == rm.NEW_TOL
    # The new path solves one run at a time; the old one in lockstep, as first run.
    assert tracker.config()["sequential"] is True
    assert "sequential" not in rm.make_tracker(old).config()
    # The convolutional networks at a laptop's size (both paths): VGG 8-16 on 256 images,
    # while the MLPs keep their 1024 samples.
    for cfg in (new, old):
        assert (cfg.cnn_channels, cfg.cnn_train, cfg.n_train) == ((8, 16), 256, 1024)
    vgg = [a for a in rm.architectures(new) if a["model"] == "vgg"]
    assert len(vgg) == 4 and vgg[0]["name"] == "digits_vgg8-16_bn_ce"
    with pytest.raises(ValueError, match=r"cnn_train must be 0 \(n_train\) or a multiple of 8"):
        rm.Config(cnn_train=12)
    with pytest.raises(ValueError, match=r"cnn_train must be >= 0, got -8"):
        rm.Config(cnn_train=-8)
    with pytest.raises(TypeError, match=r"cnn_train must be an int >= 0, got 16.0"):
        rm.Config(cnn_train=16.0)  # type: ignore[arg-type]
    small = rm.Config(datasets=(), cnn_channels=(2, 2), cnn_train=32, n_train=64)
    assert rm.make_network(small, rm.architectures(small)[0]).config["num_train"] == 32


@pytest.mark.slow  # default-suite budget (17 s); analysis/test_midpoint.py keeps its oracle
def test_midpoint_columns_match_dense_eigenvalues_run_by_run() -> None:
    """The sweep's midpoint columns (one run at a time, ``lax.map``) against an independent
    oracle per run: the GD+WD midpoint recomputed by an explicit step, NumPy ``eigvalsh`` of
    ``jax.hessian`` there (times ``eta``) and of ``M H M`` (``M`` the per-layer norms), on a
    float64 MLP of 272 parameters. The Lanczos solves stop at a relative residual of
    ``3 sqrt(eps)``; rtol 1e-6 on the eigenvalues is far above that. Rows not asked for are
    NaN."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from theory.core.invariance import expand_groups, group_norms
    from theory.engine import NoTracking, SaveAt
    from theory.engine.sweep import gd_wd_sweep

    cfg = rm.Config(
        datasets=("digits",), widths=(4,), norm_loss=("batch-ce",), n_train=16, dtype="float64"
    )
    arch = rm.architectures(cfg)[0]
    prob = rm.make_network(cfg, arch)
    etas, wds = np.array([0.5, 2.0, 8.0]), np.array([0.01, 0.002, 0.001])
    sweep = gd_wd_sweep(
        prob.loss,
        prob.w0,
        eta=etas,
        wd=wds,
        steps=20,
        groups=prob.groups,
        seeds=np.zeros(3, int),
        tracker=NoTracking(),
        saveat=SaveAt(every=5, iterates=True),
        chunk_steps=20,
        check_invariance=False,
        warn_above_edge=False,
    )
    idx = np.array([[0, 1, 2], [1, 3, 4], [0, 0, 4]])
    eos_mid, sharp_mid = rm.midpoint_columns(prob.loss, sweep, idx)
    hess = jax.jit(jax.hessian(prob.loss))
    for i in range(3):
        for r in range(eos_mid.shape[1]):
            if r not in idx[i]:
                assert np.isnan(eos_mid[i, r]) and np.isnan(sharp_mid[i, r])
                continue
            w = jnp.asarray(sweep.w[i, r])
            mid = w - 0.5 * etas[i] * (wds[i] * w + jax.grad(prob.loss)(w))
            h = np.asarray(hess(mid))
            m = np.asarray(expand_groups(group_norms(mid, prob.groups), prob.groups))
            lam = np.linalg.eigvalsh(h)[-1]
            sph = np.linalg.eigvalsh(m[:, None] * h * m[None, :])[-1]
            np.testing.assert_allclose(eos_mid[i, r], etas[i] * lam, rtol=1e-6)
            np.testing.assert_allclose(sharp_mid[i, r], sph, rtol=1e-6)
