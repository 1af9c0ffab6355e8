"""Bad values on every public function and command: a clear error, and no partial output.

Each case names the call, the bad value, the exception and a fragment of its message; the ids
make the table readable in pytest's output (``pytest tests/test_bad_inputs.py -v``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

import figures.__main__ as figures_cli
import sims.__main__ as sims_cli
import theory
from sims import data as sims_data
from sims._store import MissingResultsError, ResultStore
from tests._losses import random_loss
from theory.engine.sweep import gd_wd_sweep
from theory.problems.analytic import PROBLEMS

P = PROBLEMS["great_circle"]()
L = P.loss
W = jnp.asarray(P.start)
NAN = jnp.array([jnp.nan, 1.0, 0.0])
Z = jnp.zeros(3)


PARAMS = {"dense": {"kernel": jnp.ones((2, 2))}, "out": jnp.ones(3)}
LEAVES = [jnp.ones(2), jnp.ones(3)]
FROZEN = FrozenDict(PARAMS)
L3, _ = random_loss(3, (1, 2), 0)


def _mixed(w_dtype: str, data_dtype: str) -> tuple[Any, Any]:
    """A loss whose data (Partial leaves) have one dtype, and a start of the other."""
    loss, w = random_loss(12, None, 0, jnp.dtype(data_dtype))
    return loss, w.astype(w_dtype)


def _not_invariant(w):
    return jnp.sum(w**2)


CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "gd_wd loss promotes float32 w0 to float64",
        lambda: theory.gd_wd(
            lambda w: L(w.astype(jnp.float64)), W.astype(jnp.float32), eta=0.1, wd=0.1, steps=5
        ),
        TypeError,
        "returns float64 but w0 is float32",
    ),
    (
        "gd_wd_sweep loss promotes float32 w0",
        lambda: gd_wd_sweep(
            lambda w: L(w.astype(jnp.float64)),
            W.astype(jnp.float32),
            eta=[0.1, 0.2],
            wd=0.1,
            steps=5,
        ),
        TypeError,
        "returns float64 but w0 is float32",
    ),
    (
        "gd_wd loss not scalar",
        lambda: theory.gd_wd(lambda w: w / jnp.linalg.norm(w), W, eta=0.1, wd=0.1, steps=5),
        ValueError,
        "must return a scalar, got ShapeDtypeStruct of shape",
    ),
    (
        "gd_wd eta=0",
        lambda: theory.gd_wd(L, W, eta=0.0, wd=0.1, steps=5),
        ValueError,
        "eta must be a positive",
    ),
    (
        "gd_wd eta=inf",
        lambda: theory.gd_wd(L, W, eta=np.inf, wd=0.1, steps=5),
        ValueError,
        "eta must be a positive",
    ),
    (
        "gd_wd eta='a'",
        lambda: theory.gd_wd(L, W, eta="a", wd=0.1, steps=5),
        TypeError,
        "eta must be a positive float",
    ),
    (
        "gd_wd wd<0",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=-1.0, steps=5),
        ValueError,
        "wd must be a non-negative",
    ),
    (
        "gd_wd steps=0",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=0.1, steps=0),
        ValueError,
        "steps must be >= 1",
    ),
    (
        "gd_wd steps=1.5",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=0.1, steps=1.5),
        TypeError,
        "steps must be a positive int",
    ),
    (
        "gd_wd w0=0",
        lambda: theory.gd_wd(L, Z, eta=0.1, wd=0.1, steps=5),
        ValueError,
        "w0 must be nonzero",
    ),
    (
        "gd_wd w0 NaN",
        lambda: theory.gd_wd(L, NAN, eta=0.1, wd=0.1, steps=5),
        ValueError,
        "w0 must be finite",
    ),
    (
        "gd_wd w0 2-D",
        lambda: theory.gd_wd(L, jnp.ones((2, 3)), eta=0.1, wd=0.1, steps=5),
        ValueError,
        "w0 must be a flat vector",
    ),
    (
        "gd_wd w0 int",
        lambda: theory.gd_wd(L, jnp.arange(1, 4), eta=0.1, wd=0.1, steps=5),
        TypeError,
        "w0 must be a floating-point vector",
    ),
    (
        "gd_wd groups sum",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=0.1, steps=5, groups=(1, 1)),
        ValueError,
        "add up to 2",
    ),
    (
        "gd_wd not invariant",
        lambda: theory.gd_wd(_not_invariant, W, eta=0.1, wd=0.1, steps=5),
        theory.ScaleInvarianceError,
        "not scale-invariant",
    ),
    (
        "gd_wd tracker not a tracker",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=0.1, steps=5, tracker="lanczos"),
        TypeError,
        "tracker must be a theory.engine.AbstractTracker",
    ),
    (
        "gd_wd saveat not a SaveAt",
        lambda: theory.gd_wd(L, W, eta=0.1, wd=0.1, steps=5, saveat=10),
        TypeError,
        "saveat must be a theory.engine.SaveAt, got int",
    ),
    (
        "gd_wd tracker period does not divide the recording period",
        lambda: theory.gd_wd(
            L,
            W,
            eta=0.1,
            wd=0.1,
            steps=5,
            tracker=theory.LanczosTracker(every=3),
            saveat=theory.SaveAt(every=4),
        ),
        ValueError,
        r"tracker's period \(every=3\) must divide SaveAt.every \(4\)",
    ),
    (
        "LanczosTracker v0=0",
        lambda: theory.LanczosTracker(v0=jnp.zeros(3)),
        ValueError,
        "LanczosTracker.v0 must be nonzero",
    ),
    (
        "engine run with a function as method",
        lambda: theory.run(L, lambda w, g: w - g, W, steps=5, groups=(3,)),
        TypeError,
        "method must be a theory.engine.AbstractMethod",
    ),
    (
        "gd_wd resume other run",
        lambda: theory.gd_wd(
            L,
            W,
            eta=0.1,
            wd=0.1,
            steps=5,
            resume=theory.engine.gd.GDSnapshot({}, {}, 0, {"eta": 0.3}),
        ),
        ValueError,
        "cannot resume",
    ),
    (
        "spherical_sharpness w=0",
        lambda: theory.spherical_sharpness(L, Z),
        ValueError,
        "w must be nonzero",
    ),
    (
        "spherical_sharpness tol<0",
        lambda: theory.spherical_sharpness(L, W, tol=-1.0),
        ValueError,
        "tol must be a positive",
    ),
    (
        "eos_quantity eta<0",
        lambda: theory.eos_quantity(L, W, -1.0),
        ValueError,
        "eta must be a positive",
    ),
    (
        "lanczos v0=0",
        lambda: theory.lanczos(lambda v: v, jnp.zeros(4)),
        ValueError,
        "v0 must be finite and nonzero",
    ),
    (
        "lanczos k>D",
        lambda: theory.lanczos(lambda v: v, jnp.ones(4), k=5),
        ValueError,
        "k must be in",
    ),
    (
        "make_scale_invariant non-callable",
        lambda: theory.make_scale_invariant(3),
        TypeError,
        "fn must be callable",
    ),
    ("normalize bad groups", lambda: theory.normalize(W, (2, 2)), ValueError, "add up to 4"),
    (
        "predicted_eos_onset eos0<0",
        lambda: theory.predicted_eos_onset(0.1, 0.1, -1.0),
        ValueError,
        "eos0 must be a positive",
    ),
    (
        "project_to_manifold w=0",
        lambda: theory.project_to_manifold(L, Z),
        ValueError,
        "w must be nonzero",
    ),
    (
        "project_to_manifold 3-D",
        lambda: theory.project_to_manifold(L, jnp.ones((1, 1, 3))),
        ValueError,
        "shape",
    ),
    (
        "sharpness_flow tau<0",
        lambda: theory.sharpness_flow(L, W, -1.0),
        ValueError,
        "SaveTimes.t1 must be",
    ),
    (
        "sharpness_flow form",
        lambda: theory.sharpness_flow(L, W, 1.0, form="F3"),
        ValueError,
        "form must be",
    ),
    (
        "sharpness_flow rtol<0",
        lambda: theory.sharpness_flow(
            L, W, 1.0, stepsize_controller=diffrax.PIDController(rtol=-1.0, atol=1e-9)
        ),
        ValueError,
        "stepsize_controller.rtol must be a positive",
    ),
    (
        "sharpness_flow geometry string",
        lambda: theory.sharpness_flow(L, W, 1.0, geometry="dense"),
        TypeError,
        "geometry must be a geometry object",
    ),
    (
        "cluster_flow geometry string",
        lambda: theory.cluster_flow(L, W, 1.0, geometry="least_squares"),
        TypeError,
        "geometry must be a geometry object",
    ),
    (
        "tangent_projector method",
        lambda: theory.tangent_projector(L, W, rank=1, method="qr"),
        ValueError,
        "method must be",
    ),
    (
        "gauss_newton_project w NaN",
        lambda: theory.gauss_newton_project(P.residuals, NAN),
        ValueError,
        "w must be finite",
    ),
    (
        "eos_equilibrium_start wd=0",
        lambda: theory.eos_equilibrium_start(L, W, eta=0.1, wd=0.0),
        ValueError,
        "wd must be a positive",
    ),
    (
        "compare_with_flow shapes",
        lambda: theory.compare_with_flow(L, np.arange(3), np.ones((2, 3)), eta=0.1, wd=0.1, t0=0),
        ValueError,
        "w must have shape",
    ),
    (
        "central_flow geometry string",
        lambda: theory.central_flow(L, W, eta=0.1, wd=0.1, saveat=10.0, geometry="dense"),
        TypeError,
        "geometry must be a geometry object",
    ),
    (
        "central_flow saveat<0",
        lambda: theory.central_flow(L, W, eta=0.1, wd=0.1, saveat=-1.0),
        ValueError,
        "SaveTimes.t1 must be a positive",
    ),
    (
        "central_flow eta*wd>=1",
        lambda: theory.central_flow(L, W, eta=0.1, wd=10.0, saveat=10.0),
        ValueError,
        "eta \\* wd must be < 1",
    ),
    (
        "central_flow not invariant",
        lambda: theory.central_flow(_not_invariant, W, eta=0.1, wd=0.1, saveat=10.0),
        theory.ScaleInvarianceError,
        "scale",
    ),
    (
        "EdgeSettings kappa<0",
        lambda: theory.EdgeSettings(kappa=-1.0),
        ValueError,
        "EdgeSettings.kappa must be",
    ),
    (
        "predict_from_init geometry string",
        lambda: theory.predict_from_init(L, W, eta=0.1, wd=0.1, steps=10, geometry="dense"),
        TypeError,
        "geometry must be a geometry object",
    ),
    (
        "predict_from_init wd=0",
        lambda: theory.predict_from_init(L, W, eta=0.1, wd=0.0, steps=10),
        ValueError,
        "wd must be a positive",
    ),
    (
        "Phase1Model equation",
        lambda: theory.Phase1Model(equation="euler"),
        ValueError,
        "Phase1Model.equation must be among",
    ),
    (
        "Phase3Flow saves=1",
        lambda: theory.Phase3Flow(saves=1),
        ValueError,
        "Phase3Flow.saves must be >= 2",
    ),
    (
        "gd_wd_sweep sizes",
        lambda: gd_wd_sweep(L, W, eta=[0.1, 0.2], wd=[1e-3] * 3, steps=5),
        ValueError,
        "disagree",
    ),
    (
        "gd_wd_sweep w0 3-D",
        lambda: gd_wd_sweep(L, jnp.ones((1, 1, 3)), eta=0.1, wd=0.1, steps=5),
        ValueError,
        "w0 must have shape",
    ),
    ("data digits n_train=0", lambda: sims_data.digits(n_train=0), ValueError, "n_train"),
    ("data unknown name", lambda: sims_data.load("imagenet"), ValueError, "imagenet"),
    (
        "data cifar10 missing dir",
        lambda: sims_data.cifar10("/nonexistent/cifar"),
        FileNotFoundError,
        "/nonexistent/cifar",
    ),
    (
        "problems unknown name",
        lambda: theory.problems.analytic.get_problem("nope"),
        ValueError,
        "valid names",
    ),
    # A parameter pytree where a flat vector is expected: which argument, how many leaves, and
    # how to flatten it.
    *[
        (
            f"{what} given a {type(tree).__name__} pytree",
            call,
            TypeError,
            re.escape(
                f"{arg} must be a flat vector of shape (D,), got a parameter pytree "
                f"({type(tree).__name__}) with {n} leaves: flatten it with "
                "`theory.flatten_loss(loss_fn, params)` (it returns the flat loss, w0 and the "
                "groups)"
            ),
        )
        for what, arg, tree, n, call in [
            ("gd_wd", "w0", PARAMS, 2, lambda: theory.gd_wd(L, PARAMS, eta=0.1, wd=0.1, steps=5)),
            (
                "gd_wd_sweep",
                "w0",
                PARAMS,
                2,
                lambda: gd_wd_sweep(L, PARAMS, eta=0.1, wd=0, steps=5),
            ),
            ("spherical_sharpness", "w", LEAVES, 2, lambda: theory.spherical_sharpness(L, LEAVES)),
            ("eos_quantity", "w", FROZEN, 2, lambda: theory.eos_quantity(L, FROZEN, 0.1)),
            (
                "check_scale_invariance",
                "w",
                PARAMS,
                2,
                lambda: theory.check_scale_invariance(L, PARAMS),
            ),
            ("edge_at_init", "w0", FROZEN, 2, lambda: theory.edge_at_init(L, FROZEN)),
            ("sharpness_flow", "theta0", PARAMS, 2, lambda: theory.sharpness_flow(L, PARAMS, 1.0)),
        ]
    ],
    # A zero group: which one (index, size, entries), and what to do.
    (
        "gd_wd zero group",
        lambda: theory.gd_wd(
            L3, jnp.asarray([0.0, 1.0, 2.0]), eta=0.1, wd=0.1, steps=5, groups=(1, 2)
        ),
        ValueError,
        re.escape(
            "w0 must be nonzero in every group: a scale-invariant loss is undefined at 0, but "
            "group 0 (size 1, entries 0:1) is all zeros. A zero-initialized parameter (a bias, or "
            "a norm layer's scale or offset) cannot be a scale-invariant group: remove it from "
            "the model (use_bias=False / use_scale=False) or initialize it nonzero"
        ),
    ),
    (
        "spherical_sharpness zero group",
        lambda: theory.spherical_sharpness(L3, jnp.asarray([1.0, 0.0, 0.0]), groups=(1, 2)),
        ValueError,
        re.escape("but group 1 (size 2, entries 1:3) is all zeros"),
    ),
    # Mixed precision, both ways, in every entry point: both dtypes named, and what to do.
    # Data less precise than the weights are refused by their leaf; data more precise are
    # allowed if the loss casts them (the project's problems do), and a loss that promotes is
    # refused by its output's dtype.
    *[
        (
            f"{what} {w_dtype} weights with {data_dtype} data",
            call,
            TypeError,
            re.escape(
                f"mixed precision: {arg} is {w_dtype} but loss's data leaf fn/1/a "
                f"(shape (24, 12)) is {data_dtype}; use one dtype for both: cast the weights "
                f"({arg}.astype(jnp.{data_dtype})) or the data (jax.tree.map(lambda x: "
                f"x.astype(jnp.{w_dtype}), data)) before flattening"
            )
            if w_dtype == "float64"
            else re.escape(f"(w) returns float64 but {arg} is float32 (mixed precision)"),
        )
        for w_dtype, data_dtype in [("float32", "float64"), ("float64", "float32")]
        for what, arg, call in [
            (
                "gd_wd",
                "w0",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: theory.gd_wd(
                    *_mixed(w_dtype, data_dtype), eta=0.1, wd=0.1, steps=5
                ),
            ),
            (
                "gd_wd_sweep",
                "w0",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: gd_wd_sweep(
                    *_mixed(w_dtype, data_dtype), eta=0.1, wd=0.1, steps=5
                ),
            ),
            (
                "spherical_sharpness",
                "w",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: theory.spherical_sharpness(
                    *_mixed(w_dtype, data_dtype)
                ),
            ),
            (
                "eos_quantity",
                "w",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: theory.eos_quantity(
                    *_mixed(w_dtype, data_dtype), 0.1
                ),
            ),
            (
                "check_scale_invariance",
                "w",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: theory.check_scale_invariance(
                    *_mixed(w_dtype, data_dtype)
                ),
            ),
            (
                "edge_at_init",
                "w0",
                lambda w_dtype=w_dtype, data_dtype=data_dtype: theory.edge_at_init(
                    *_mixed(w_dtype, data_dtype), eta=0.1
                ),
            ),
        ]
    ],
    (
        "edge_at_init eos0 at the edge",
        lambda: theory.edge_at_init(L, W, eos0=2.0),
        ValueError,
        re.escape("eos0 must be in (0, 2), got 2.0"),
    ),
]


@pytest.mark.parametrize(("call", "exc", "msg"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_gets_clear_error(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


COMMANDS = [
    (["phases", "--eta", "-1"], "eta must be a positive"),
    (["phases", "--steps", "many"], "invalid int value"),
    (["phases", "--problems", "nope"], "problems must be among"),
    (["phases", "--dtype", "float16"], "invalid choice"),
    (["phases", "--scale", "huge"], "invalid choice"),
    (["gd_vs_flow", "--eta-wd", "0.5"], "eta_wd values must be in"),
    (["gd_vs_flow", "--starts", "random"], "starts must be among"),
    (["check", "no_such_check"], "unknown check"),
]


@pytest.mark.parametrize(("argv", "msg"), COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_bad_command_line(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sims_cli.main([*argv, "--results-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_commands(tmp_path, capsys):
    assert sims_cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        figures_cli.main(["nonexistent", "--results-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_figures_refuse_missing_and_corrupted_results(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MissingResultsError, match="python -m sims phases"):
        figures_cli.main(["phases", "--results-dir", str(tmp_path), "--out-dir", str(out)])
    store = ResultStore(tmp_path)
    path = store.save("phases", {"x": 1}, {"a": np.ones(3)}, {})
    (path / "arrays.npz").write_bytes(b"\x00garbage")
    with pytest.raises(MissingResultsError, match="damaged"):
        figures_cli.main(["phases", "--results-dir", str(tmp_path), "--out-dir", str(out)])
    (path / "meta.json").write_text("{not json")
    with pytest.raises(MissingResultsError, match=r"damaged|no complete run"):
        store.load(path)
    assert not out.exists() or not any(out.iterdir())  # no partial figure


def test_shared_validators_name_the_bad_value():
    # theory/core/validate.py: the one place a config's numbers are validated (sims use it too).
    import dataclasses

    from theory.core import validate as check

    @dataclasses.dataclass
    class Cfg:
        eta: float = 0.1
        wd: float = float("nan")
        steps: int = 0
        gamma: float = 1.5

    cfg = Cfg()
    check.positive_fields(cfg, "eta")
    with pytest.raises(ValueError, match="wd must be a positive finite float, got nan"):
        check.positive_fields(cfg, "eta", "wd")
    with pytest.raises(ValueError, match="wd must be finite"):
        check.finite_fields(cfg, "wd")
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        check.int_fields_at_least(cfg, 1, "steps")
    with pytest.raises(TypeError, match="gamma must be an int"):
        check.int_fields_at_least(cfg, 1, "gamma")
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\), got 1.5"):
        check.in_interval(cfg.gamma, "gamma", 0, 1)
    assert check.all_in_interval((1e-3, 2e-3), "eta_wd", 0, 0.1) == (1e-3, 2e-3)
    for bad in ((), (0.5,), (float("inf"),)):
        with pytest.raises(ValueError, match=r"eta_wd values must be in \(0, 0.1\)"):
            check.all_in_interval(bad, "eta_wd", 0, 0.1)
    with pytest.raises(ValueError, match=r"eta_wd values must be in .*at least 2 of them"):
        check.all_in_interval((1e-3,), "eta_wd", 0, 0.1, min_len=2)
    assert check.all_in_interval((), "eta_wd", 0, 0.1, min_len=0) == ()
    assert check.decreasing((3, 2.0, 1), "eta_wd") == (3.0, 2.0, 1.0)
    for bad in ((1.0, 2.0), (1.0, 1.0)):
        with pytest.raises(ValueError, match="eta_wd must be strictly decreasing"):
            check.decreasing(bad, "eta_wd")
    assert check.all_ints_at_least((2, 3), "widths", 2) == (2, 3)
    for bad in ((2, 1), (2, 2.0), (True,)):
        with pytest.raises(ValueError, match="widths must be ints >= 2"):
            check.all_ints_at_least(bad, "widths", 2)
    check.nonnegative_fields(cfg, "eta")
    with pytest.raises(ValueError, match="wd must be a non-negative finite float, got nan"):
        check.nonnegative_fields(cfg, "wd")
    with pytest.raises(ValueError, match="kappas must be finite and >= 0"):
        check.all_nonnegative((1.0, -1.0), "kappas")
    with pytest.raises(ValueError, match="kappas must be positive and finite"):
        check.all_positive((1.0, 0.0), "kappas")
    check.among((), "ablations", ("no_wd",), empty=True)
    with pytest.raises(ValueError, match="problems must be among"):
        check.among((), "problems", ("a",))
    with pytest.raises(ValueError, match="problems must be among"):
        check.among(("b",), "problems", ("a",))
