"""Sweeps: vmapped, sharded grids equal the one-by-one runs."""

import json
import os
import subprocess
import sys
import textwrap

import jax
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
