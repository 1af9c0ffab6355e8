"""Sweeps: vmapped, sharded grids equal the one-by-one runs."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from theory.engine import LanczosTracker, NoTracking, SaveAt
from theory.engine.gd import gd_wd
from theory.engine.sweep import gd_wd_sweep
from theory.problems.analytic import PROBLEMS

PROB = PROBLEMS["curved_manifold"]()
W0 = jnp.asarray(PROB.start) * 0.6
ETAS = np.array([0.05, 0.1, 0.2, 0.1, 0.1])
WDS = np.array([0.01, 0.01, 0.005, 0.02, 0.0])


def _compare(sweep, kw):
    """Max relative deviation from one-by-one runs before the EoS onset (where rounding is not
    amplified by the oscillation), and whether onsets agree."""
    worst, onsets = 0.0, []
    for i in range(len(sweep)):
        ref = gd_wd(
            PROB.loss, W0, eta=ETAS[i], wd=WDS[i], key=jax.random.PRNGKey(i),
            warn_above_edge=False, **kw,
        )  # fmt: skip
        got = sweep.run(i)
        cut = ref.onset_step if ref.onset_step is not None else ref.step[-1] + 1
        rows = ref.step < max(cut, 200)  # at least the first 200 steps
        worst = max(
            worst, float(np.max(np.abs(got.w[rows] - ref.w[rows]) / np.abs(ref.w[rows]).max()))
        )
        worst = max(
            worst,
            float(np.max(np.abs(got.sharpness[rows] - ref.sharpness[rows]) / ref.sharpness[rows])),
        )
        onsets.append((got.onset_step, ref.onset_step))
    return worst, onsets


@pytest.mark.slow
def test_sweep_equals_one_by_one():
    kw = {"steps": 1500, "tracker": LanczosTracker(every=1), "saveat": SaveAt(every=10)}
    kw |= {"perturbation": 1e-10}
    # one configuration deliberately starts above the edge (a catapult run is compared too)
    sweep = gd_wd_sweep(PROB.loss, W0, eta=ETAS, wd=WDS, warn_above_edge=False, **kw)
    assert len(sweep) == 5 and sweep.w.shape == (5, 151, 6)
    worst, onsets = _compare(sweep, kw)
    assert worst < 1e-11, worst  # float64: rounding only (vmapped programs reassociate)
    assert all(a == b for a, b in onsets), onsets
    assert sweep.onset_step[4] == -1  # wd = 0: no EoS


def test_sweep_arguments():
    with pytest.raises(ValueError, match="disagree on the number of configurations"):
        gd_wd_sweep(PROB.loss, W0, eta=[0.1, 0.2], wd=[0.1, 0.2, 0.3], steps=5)
    with pytest.raises(ValueError, match="eta must be a positive"):
        gd_wd_sweep(PROB.loss, W0, eta=[0.1, -0.2], wd=0.1, steps=5)
    with pytest.raises(ValueError, match=r"w0\[1\] must be nonzero"):
        gd_wd_sweep(PROB.loss, jnp.stack([W0, 0 * W0]), eta=0.1, wd=0.1, steps=5)
    # Per-configuration starts and seeds.
    sw = gd_wd_sweep(
        PROB.loss,
        jnp.stack([W0, 2 * W0]),
        eta=0.1,
        wd=0.01,
        steps=5,
        seeds=[3, 4],
        tracker=NoTracking(),
    )
    np.testing.assert_allclose(sw.w[1, 0], 2 * sw.w[0, 0], rtol=1e-15)
    assert sw.config["seeds"] == [3, 4]


_SCRIPT = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from tests.engine.test_sweep import ETAS, WDS, PROB, W0, _compare
    from theory.engine import LanczosTracker, SaveAt
    from theory.engine.sweep import gd_wd_sweep
    kw = {"steps": 1500, "tracker": LanczosTracker(every=1), "saveat": SaveAt(every=10)}
    kw |= {"perturbation": 1e-10}
    sweep = gd_wd_sweep(PROB.loss, W0, eta=ETAS, wd=WDS, **kw)
    worst, onsets = _compare(sweep, kw)
    print(json.dumps({"devices": len(jax.devices()), "worst": worst,
                      "onsets": [[a, b] for a, b in onsets], "pad_to": sweep.config["devices"]}))
    """
)


@pytest.mark.slow
def test_sharded_over_eight_forced_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8 and res["pad_to"] == 8  # 5 configurations padded to 8
    assert res["worst"] < 1e-11
    assert all(a == b for a, b in res["onsets"])


# --------------------------------------------------------------------------------------------
# Sequential tracker solves (LanczosTracker(sequential=True)): same trajectories, same curvature
# --------------------------------------------------------------------------------------------


def _seq_sweep(objective, sequential: bool, etas: np.ndarray, groups, w0, keys, steps=40):
    from theory.engine import GDWD, run_batch

    tracker = LanczosTracker(every=2, tol=1e-12, max_iters=8, sequential=sequential)
    n = len(etas)
    method = GDWD(jnp.asarray(etas), jnp.full(n, 0.05), jnp.zeros(n), groups)
    return run_batch(
        objective, method, np.stack([np.asarray(w0)] * n), keys, steps=steps, groups=groups,
        tracker=tracker, saveat=SaveAt(every=2, iterates=True),
    )  # fmt: skip


@pytest.mark.parametrize(
    "groups", [(8,), pytest.param((3, 5), marks=pytest.mark.slow)]
)  # default-suite budget: several groups (the spherical operator solved too) in make test-slow
def test_sequential_solves_keep_the_trajectories_and_match_dense_eigenvalues(groups) -> None:
    """Three configurations: the iterates and losses are bitwise those of the lockstep tracker,
    and the EoS quantity and the spherical sharpness equal dense ``eigvalsh`` at the recorded
    iterates to 1e-9."""
    from tests._losses import random_loss
    from theory.core.invariance import expand_groups, group_norms
    from theory.core.objective import FullBatch

    loss, w0 = random_loss(8, None if len(groups) == 1 else groups, 2)
    etas = np.array([0.1, 0.4, 1.2])
    keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in range(3)])
    steps = 40 if len(groups) > 1 else 16
    lock = _seq_sweep(FullBatch(loss), False, etas, groups, w0, keys, steps)
    seq = _seq_sweep(FullBatch(loss), True, etas, groups, w0, keys, steps)
    np.testing.assert_array_equal(seq.w, lock.w)
    np.testing.assert_array_equal(seq.loss, lock.loss)
    np.testing.assert_allclose(seq.eos, lock.eos, rtol=1e-9)
    np.testing.assert_allclose(seq.sharpness, lock.sharpness, rtol=1e-9)
    hess = jax.jit(jax.hessian(loss))
    for i in range(3):
        for r in range(0, seq.w.shape[1], 5):
            w = jnp.asarray(seq.w[i, r])
            h = np.asarray(hess(w))
            m = np.asarray(expand_groups(group_norms(w, groups), groups))
            lam = np.linalg.eigvalsh(h)[-1]
            sph = np.linalg.eigvalsh(m[:, None] * h * m[None, :])[-1]
            assert abs(seq.eos[i, r] - etas[i] * lam) <= 1e-9 * abs(etas[i] * lam)
            assert abs(seq.sharpness[i, r] - sph) <= 1e-9 * abs(sph)


@pytest.mark.slow  # two compiled minibatch sweeps (~10 s of CPU)
def test_sequential_solves_with_per_configuration_minibatches() -> None:
    """A minibatch objective draws a different batch per configuration (its arrays are batched
    inside the sweep): the sequential solves take them as mapped arguments. Bitwise iterates,
    EoS quantity equal to the lockstep one to 1e-9."""
    from theory.core.minibatch import Minibatch

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20,))

    def lsq(w, x, y):
        return jnp.mean((jnp.tanh(2.0 * (x @ (w / jnp.linalg.norm(w)))) - y) ** 2)

    mb = Minibatch(lsq, (x, y), 6)
    w0 = jnp.asarray(rng.normal(size=5))
    etas = np.array([0.3, 0.3])
    keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in (3, 4)])
    lock = _seq_sweep(mb, False, etas, (5,), w0, keys)
    seq = _seq_sweep(mb, True, etas, (5,), w0, keys)
    assert not np.array_equal(seq.w[0], seq.w[1])  # the two draws differ
    np.testing.assert_array_equal(seq.w, lock.w)
    np.testing.assert_allclose(seq.eos, lock.eos, rtol=1e-9)


def test_sequential_solves_are_a_loop_over_the_configurations() -> None:
    """Under ``vmap`` the sequential tracker's solve is a loop of length B over the
    configurations (``lax.map``), which the lockstep one does not have."""
    from tests._losses import random_loss
    from theory.core.objective import FullBatch
    from theory.engine.trackers import StepContext

    loss, w0 = random_loss(6, None, 0)
    b = 3
    ws = jnp.stack([w0 * (1 + 0.1 * i) for i in range(b)])
    lrs = jnp.asarray([0.1, 0.2, 0.3])

    def loops_inside_a_map(sequential: bool) -> int:
        """While loops (Lanczos iterations) nested in a scan of length ``b`` (a map over the
        configurations)."""
        tr = LanczosTracker(every=1, sequential=sequential).for_batch()
        obj = FullBatch(loss)

        def one(w, lr):
            state = tr.init(obj, w, lr, (6,), jax.random.PRNGKey(0))
            ctx = StepContext(obj, None, None)
            obs, _ = tr.observe(
                obj, w, lr, (6,), state, jnp.asarray(0), jax.random.PRNGKey(0),
                jnp.asarray(True), True, ctx,
            )  # fmt: skip
            return obs.eos

        def count(jaxpr, mapped: bool) -> int:
            n = 0
            for eqn in jaxpr.eqns:
                name = eqn.primitive.name
                n += mapped and name == "while"
                inner = mapped or (name == "scan" and eqn.params["length"] == b)
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    n += count(sub, inner)
            return n

        return count(jax.make_jaxpr(jax.vmap(one))(ws, lrs).jaxpr, False)

    # (The small eigen-decompositions are loops over the batch either way:
    # theory.core.linalg.eigh; they contain no while loop.)
    assert loops_inside_a_map(False) == 0
    assert loops_inside_a_map(True) >= 1
    assert LanczosTracker(sequential=True).config()["sequential"] is True
    assert "sequential" not in LanczosTracker().config()
