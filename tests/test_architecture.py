"""The house's conventions, enforced (each rule is also run on a planted violation).

1. Imports go one way: ``figures -> sims -> theory`` (``benchmarks`` and ``examples`` may use
   ``theory`` and ``sims``; nothing imports ``tests``). Inside ``theory`` the subpackages are
   layered: ``core`` < ``problems``, ``engine``, ``analysis`` < ``flows`` < ``optim``; a module
   imports its own subpackage or a lower layer only.
2. No private module (a path component starting with ``_``, other than ``__init__`` and
   ``__main__``) is imported from outside its own top-level package.
3. No Hessian, eigen solve or Lanczos call in ``sims/`` or ``figures/`` outside
   :data:`CURVATURE_ALLOWED` (each entry with its reason): curvature is mathematics and lives in
   ``theory``. The names are :data:`CURVATURE_NAMES`, each with why it is curvature.
4. No public name of a package is both a submodule and something else (``import theory.x as m``
   must bind the module).
5. ``tests/`` mirrors ``theory/``: every subpackage of ``theory`` has a ``tests/<name>/`` folder.
6. A test that CI skips says which CI-run test covers its path: ``pytest.mark.heavy`` (run by
   ``make test-heavy``, not by ``make test`` or ``make test-slow``) always carries
   ``covered_by="tests/<file>.py::<test>"`` naming a test function that exists and is not itself
   heavy, and a heavy test is not also ``slow`` (docs/conventions.md item 14); the exact case is
   checked on collection (``tests/_markers.py``, run from ``tests/conftest.py``).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._markers import heavy_cover_problems

ROOT = Path(__file__).resolve().parent.parent

TOP_ALLOWED: dict[str, set[str]] = {
    "theory": {"theory"},
    "sims": {"theory", "sims"},
    "figures": {"theory", "sims", "figures"},
    "benchmarks": {"theory", "sims", "benchmarks"},
    "examples": {"theory", "sims", "examples"},
}

# Layers inside theory: a subpackage may import its own modules and those of lower layers.
THEORY_LAYERS: dict[str, int] = {
    "core": 0,
    "problems": 1,
    "engine": 1,
    "analysis": 1,
    "flows": 2,
    "optim": 3,
}

# The names whose call (or, for the raw JAX/NumPy routines, whose mere reference) is curvature
# computed in place, each with what makes it so. A call is matched by its last name
# (``jax.hessian(f)``, ``hessian(f)``, ``jnp.linalg.eigh(h)`` and ``linalg.eigh(h)`` alike), so a
# theory routine of the same name is caught too: sims/ calls the routines that *use* these
# (``spherical_sharpness``, ``curvature_along``, ``top_hessian_eigenvalues``, the trackers, ...).
# Gradients (``jax.grad``, ``value_and_grad``) are not curvature: a study may take a GD step.
CURVATURE_NAMES: dict[str, str] = {
    "hessian": "jax.hessian: the dense Hessian",
    "jacfwd": "jax.jacfwd: forward-mode Jacobian, of the gradient a dense Hessian",
    "jacrev": "jax.jacrev: reverse-mode Jacobian, of the gradient a dense Hessian",
    "jvp": "jax.jvp: a directional derivative, of the gradient a Hessian-vector product",
    "vjp": "jax.vjp: a reverse directional derivative, of the gradient a Hessian-vector product",
    "linearize": "jax.linearize: the tangent map, of the gradient the Hessian operator",
    "eigh": "symmetric eigen-decomposition (jnp/np/scipy.linalg, theory.core.linalg)",
    "eigvalsh": "symmetric eigenvalues (jnp/np/scipy.linalg, theory.core.linalg)",
    "eig": "general eigen-decomposition",
    "eigvals": "general eigenvalues",
    "eigh_tridiagonal": "eigenvalues of a Lanczos tridiagonal (jax.scipy.linalg)",
    "eigsh": "scipy.sparse.linalg's Lanczos/ARPACK eigensolver",
    "lobpcg_standard": "jax.experimental.sparse.linalg's block eigensolver",
    "svd": "singular values: eigenvalues of a Gram matrix",
    "lanczos": "theory.core.lanczos.lanczos: the Krylov eigensolver on a matvec",
    "slq": "theory.core.slq.slq: stochastic Lanczos quadrature on a matvec",
    "tridiagonalize": "theory.core.slq.tridiagonalize: the Lanczos recursion on a matvec",
    "gauss_rule": "theory.core.slq.gauss_rule: the eigen-decomposition of a tridiagonal",
    "hvp": "theory.core.curvature.hvp: a Hessian-vector product",
    "grad_and_hvp": "theory.core.curvature.grad_and_hvp: a Hessian-vector product",
    "linearize_grad": "theory.core.curvature.linearize_grad: the Hessian operator",
    "second_directional": "theory.core.curvature.second_directional: v^T H v",
    "mixed_third": "theory.core.curvature.mixed_third: third derivatives",
    "grad_lambda1": "theory.core.curvature.grad_lambda1: third derivatives",
}
CURVATURE_CALLS = frozenset(CURVATURE_NAMES)
# Objects whose attribute of a name above is the raw routine: a reference without a call (e.g.
# ``jax.vmap(jax.hessian(loss))`` or passing ``jnp.linalg.eigh`` on) is caught as well.
CURVATURE_OWNERS = frozenset(
    {
        "jax",
        "jnp.linalg",
        "np.linalg",
        "numpy.linalg",
        "linalg",
        "jax.scipy.linalg",
        "jsp.linalg",
        "scipy.linalg",
        "sla",
        "scipy.sparse.linalg",
    }
)

# (file relative to the repository, called name) -> why it is allowed there.
CURVATURE_ALLOWED: dict[tuple[str, str], str] = {
    ("sims/checks/identities.py", "grad_lambda1"): (
        "the check compares theory's third-derivative route with the problems' closed-form "
        "gradient of log lambda_1: calling it is what is checked"
    ),
}


def _modules(root: Path, top: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((root / top).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = list(path.relative_to(root).with_suffix("").parts)[:-1]  # the module's package
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(path: Path, tree: ast.Module, root: Path) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import, with ``from a import b`` also giving ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            mod = _absolute(node, path, root)
            yield node.lineno, mod
            for alias in node.names:
                yield node.lineno, f"{mod}.{alias.name}"


def import_direction_violations(root: Path) -> list[str]:
    """Imports against rule 1."""
    out = []
    for top, allowed in TOP_ALLOWED.items():
        if not (root / top).is_dir():
            continue
        for path, tree in _modules(root, top):
            rel = path.relative_to(root)
            for line, mod in _imports(path, tree, root):
                head = mod.split(".")[0]
                if (head in TOP_ALLOWED and head not in allowed) or head == "tests":
                    out.append(f"{rel}:{line} imports {mod} ({top} may import {sorted(allowed)})")
                if top == "theory" and head == "theory" and len(rel.parts) > 2:
                    own = rel.parts[1]
                    parts = mod.split(".")
                    if len(parts) > 1 and parts[1] in THEORY_LAYERS:
                        if parts[1] != own and THEORY_LAYERS[parts[1]] >= THEORY_LAYERS[own]:
                            out.append(
                                f"{rel}:{line} imports {mod}: theory.{own} (layer "
                                f"{THEORY_LAYERS[own]}) may import only lower layers"
                            )
                    elif len(parts) == 2:
                        # `from theory import x` inside a subpackage reaches the facade
                        out.append(
                            f"{rel}:{line} imports {mod} through the facade `theory`; "
                            "import it from its subpackage"
                        )
    return sorted(set(out))


def _private(mod: str) -> bool:
    return any(p.startswith("_") and p not in ("__init__", "__main__") for p in mod.split("."))


def private_import_violations(root: Path) -> list[str]:
    """Imports against rule 2."""
    out = []
    for top in TOP_ALLOWED:
        if not (root / top).is_dir():
            continue
        for path, tree in _modules(root, top):
            for line, mod in _imports(path, tree, root):
                head = mod.split(".")[0]
                if head in TOP_ALLOWED and head != top and _private(mod):
                    out.append(f"{path.relative_to(root)}:{line} imports private {mod}")
    return sorted(set(out))


def _called_name(call: ast.Call) -> str | None:
    fn = call.func
    if isinstance(fn, ast.Attribute):
        return fn.attr
    if isinstance(fn, ast.Name):
        return fn.id
    return None


def curvature_violations(root: Path, allowed: dict[tuple[str, str], str]) -> list[str]:
    """Curvature computed in sims/ or figures/ (rule 3)."""
    out = []
    for top in ("sims", "figures"):
        if not (root / top).is_dir():
            continue
        for path, tree in _modules(root, top):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = _called_name(node)
                    if name in CURVATURE_CALLS and (rel, name) not in allowed:
                        out.append(f"{rel}:{node.lineno} calls {name}")
                # jax.hessian(f) passed around without being called here is still curvature
                elif (
                    isinstance(node, ast.Attribute)
                    and node.attr in CURVATURE_CALLS
                    and ast.unparse(node.value) in CURVATURE_OWNERS
                    and (rel, node.attr) not in allowed
                ):
                    out.append(f"{rel}:{node.lineno} uses {ast.unparse(node)}")
    return sorted(set(out))


# docs/conventions.md rule 13: one module calls the dense symmetric eigen-solvers directly.
EIGH_NAMES = frozenset({"eigh", "eigvalsh"})
EIGH_OWNERS = frozenset({"jnp.linalg", "jax.numpy.linalg", "jsp_la", "jax.scipy.linalg", "jla"})
EIGH_HOME = "theory/core/linalg.py"


def direct_eigh_violations(root: Path) -> list[str]:
    """``jnp.linalg.eigh``/``eigvalsh`` (or jax.scipy's) called in library code outside
    theory/core/linalg.py (rule 13: under ``vmap`` it is one batched LAPACK call that can hang on
    a 2-core CPU). NumPy's ``np.linalg.eigh`` on host arrays is not covered."""
    out = []
    for top in ("theory", "sims", "figures"):
        if not (root / top).is_dir():
            continue
        for path, tree in _modules(root, top):
            rel = path.relative_to(root).as_posix()
            if rel == EIGH_HOME:
                continue
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in EIGH_NAMES
                    and ast.unparse(node.value) in EIGH_OWNERS
                ):
                    out.append(f"{rel}:{node.lineno} uses {ast.unparse(node)}")
                elif isinstance(node, ast.ImportFrom) and node.module in (
                    "jax.numpy.linalg",
                    "jax.scipy.linalg",
                ):
                    hits = [a.name for a in node.names if a.name in EIGH_NAMES]
                    if hits:
                        out.append(
                            f"{rel}:{node.lineno} imports {', '.join(hits)} from {node.module}"
                        )
    return sorted(set(out))


HEAVY = "pytest.mark.heavy"
COVER_RE = re.compile(r"^(tests/[\w/]+\.py)::(\w+)(\[[^\]]+\])?$")


def _decorator_marks(fn: ast.FunctionDef) -> set[str]:
    """The ``pytest.mark.<name>`` names among a function's decorators (called or bare)."""
    out = set()
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        text = ast.unparse(target)
        if text.startswith("pytest.mark."):
            out.add(text.removeprefix("pytest.mark."))
    return out


def heavy_marker_violations(root: Path) -> list[str]:
    """``pytest.mark.heavy`` uses against rule 6, in every test module under ``root/tests``."""
    out = []
    tests = root / "tests"
    if not tests.is_dir():
        return out
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root).as_posix()
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        # covered_by may name a module-level string constant (HVP_CI = "tests/...")
        consts = {
            t.id: n.value.value
            for n in tree.body
            if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and {"heavy", "slow"} <= _decorator_marks(node):
                out.append(f"{rel}:{node.lineno} {node.name} is both slow and heavy")
            if not (isinstance(node, ast.Attribute) and ast.unparse(node) == HEAVY):
                continue
            if id(node) not in called:
                out.append(f"{rel}:{node.lineno} heavy without covered_by")
                continue
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if ast.unparse(call.func) != HEAVY:
                continue
            kw = {k.arg: k.value for k in call.keywords}
            node_cover = kw.get("covered_by")
            if isinstance(node_cover, ast.Name) and node_cover.id in consts:
                cover = consts[node_cover.id]
            elif isinstance(node_cover, ast.Constant) and isinstance(node_cover.value, str):
                cover = node_cover.value
            else:
                out.append(f"{rel}:{call.lineno} heavy without covered_by")
                continue
            match = COVER_RE.match(cover)
            if match is None:
                out.append(f"{rel}:{call.lineno} covered_by {cover!r} is not file.py::test")
                continue
            file, name, _ = match.groups()  # the case is checked on collection (tests/_markers.py)
            target = root / file
            if not target.is_file():
                out.append(f"{rel}:{call.lineno} covered_by names a missing file {file}")
                continue
            source = target.read_text()
            fns = [
                n
                for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == name
            ]
            if not fns:
                out.append(f"{rel}:{call.lineno} covered_by names a missing test {file}::{name}")
            elif "heavy" in _decorator_marks(fns[0]):
                out.append(f"{rel}:{call.lineno} covered_by names a heavy test {file}::{name}")
    return sorted(set(out), key=lambda v: (v.split(":")[0], int(v.split(":")[1].split()[0])))


def shadowing_violations(packages: list[str]) -> list[str]:
    """Public attributes of a package that hide a submodule of the same name (rule 4)."""
    out = []
    for name in packages:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
            mod = importlib.import_module(info.name)
            parent_name, _, leaf = info.name.rpartition(".")
            parent = importlib.import_module(parent_name)
            value = getattr(parent, leaf, mod)
            if value is not mod:
                out.append(f"{parent_name}.{leaf} is {type(value).__name__}, hiding the module")
    return sorted(set(out))


# --------------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------------


def test_imports_go_one_way():
    assert import_direction_violations(ROOT) == []


def test_no_private_module_imported_across_packages():
    assert private_import_violations(ROOT) == []


def test_curvature_lives_in_theory():
    assert curvature_violations(ROOT, CURVATURE_ALLOWED) == []


def test_symmetric_eigensolvers_go_through_theory_core_linalg():
    assert direct_eigh_violations(ROOT) == []


def test_planted_direct_eigh_is_caught(tmp_path):
    root = _plant(
        tmp_path,
        {
            "theory/__init__.py": "",
            "theory/core/__init__.py": "",
            "theory/core/linalg.py": (
                "import jax.numpy as jnp\ndef eigh(a):\n    return jnp.linalg.eigh(a)\n"
            ),
            "theory/engine/__init__.py": "",
            "theory/engine/x.py": (
                "import jax.numpy as jnp\ndef f(a):\n    return jnp.linalg.eigh(a)\n"
            ),
            "theory/engine/y.py": "from jax.numpy.linalg import eigvalsh\n",
            "theory/engine/z.py": "import numpy as np\ndef f(a):\n    return np.linalg.eigh(a)\n",
            "sims/__init__.py": "",
            "sims/s.py": "import jax\ndef f(a):\n    return jax.numpy.linalg.eigvalsh(a)\n",
        },
    )
    assert direct_eigh_violations(root) == [
        "sims/s.py:3 uses jax.numpy.linalg.eigvalsh",
        "theory/engine/x.py:3 uses jnp.linalg.eigh",
        "theory/engine/y.py:1 imports eigvalsh from jax.numpy.linalg",
    ]


def test_curvature_allow_list_is_used_and_reasoned():
    # A stale entry would let a new call in unseen: every entry must match a call and say why.
    unused = set(CURVATURE_ALLOWED)
    for top in ("sims", "figures"):
        for path, tree in _modules(ROOT, top):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    unused.discard((rel, _called_name(node) or ""))
    assert unused == set()
    assert all(len(reason) > 20 for reason in CURVATURE_ALLOWED.values())
    assert all(name in CURVATURE_CALLS for _, name in CURVATURE_ALLOWED)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_no_public_name_hides_a_module():
    assert shadowing_violations(["theory", "sims", "figures"]) == []


def test_tests_ci_skips_name_their_ci_run_sibling():
    assert heavy_marker_violations(ROOT) == []


def test_tests_mirror_theory():
    subpackages = sorted(
        p.name for p in (ROOT / "theory").iterdir() if (p / "__init__.py").is_file()
    )
    assert set(subpackages) == set(THEORY_LAYERS)
    missing = [s for s in subpackages if not (ROOT / "tests" / s / "__init__.py").is_file()]
    assert missing == []


# --------------------------------------------------------------------------------------------
# Planted violations: each rule catches one
# --------------------------------------------------------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_planted_upward_import_is_caught(tmp_path):
    root = _plant(
        tmp_path,
        {
            "theory/__init__.py": "",
            "theory/core/__init__.py": "",
            "theory/core/a.py": "from theory.flows.b import x\n",
            "theory/flows/__init__.py": "",
            "theory/flows/b.py": "from theory.core.a import y\nx = 1\n",
            "sims/__init__.py": "",
            "sims/s.py": "import figures.f\n",
            "figures/__init__.py": "",
            "figures/f.py": "from sims import s\nfrom theory import flows\n",
        },
    )
    found = import_direction_violations(root)
    assert any("theory/core/a.py:1 imports theory.flows.b" in v for v in found)
    assert any("sims/s.py:1 imports figures.f" in v for v in found)
    assert not any("theory/flows/b.py" in v for v in found)
    assert not any("figures/f.py" in v for v in found)


def test_planted_private_import_is_caught(tmp_path):
    root = _plant(
        tmp_path,
        {
            "sims/__init__.py": "",
            "sims/_store.py": "",
            "sims/ok.py": "from sims._store import x\nfrom . import _store\n",
            "figures/__init__.py": "",
            "figures/f.py": "from sims._store import ResultStore\n",
        },
    )
    found = private_import_violations(root)
    assert found == [
        "figures/f.py:1 imports private sims._store",
        "figures/f.py:1 imports private sims._store.ResultStore",
    ]


def test_planted_curvature_in_sims_is_caught(tmp_path):
    root = _plant(
        tmp_path,
        {
            "sims/__init__.py": "",
            "sims/study.py": (
                "import jax\nimport jax.numpy as jnp\n"
                "def f(loss, w):\n    return jnp.linalg.eigvalsh(jax.hessian(loss)(w))\n"
            ),
        },
    )
    found = curvature_violations(root, {})
    assert "sims/study.py:4 calls eigvalsh" in found
    assert "sims/study.py:4 calls hessian" in found
    allowed = {("sims/study.py", "eigvalsh"): "x" * 30, ("sims/study.py", "hessian"): "y" * 30}
    assert curvature_violations(root, allowed) == []


def test_planted_shadowing_is_caught(tmp_path, monkeypatch):
    _plant(
        tmp_path,
        {
            "plantpkg/__init__.py": "from .thing import thing\n",
            "plantpkg/thing.py": "def thing():\n    return 1\n",
            "plantpkg/other.py": "",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shadowing_violations(["plantpkg"]) == ["plantpkg.thing is function, hiding the module"]


def test_planted_directional_derivatives_and_solvers_are_caught(tmp_path):
    # Each listed route to curvature, called or passed on, in sims/ and figures/; a gradient,
    # a theory routine that uses curvature, and a name in a comment or string are not.
    root = _plant(
        tmp_path,
        {
            "sims/__init__.py": "",
            "sims/hvp.py": (
                "import jax\nimport jax.scipy.linalg as jsp_la\nfrom jax import jvp\n"
                "def hv(loss, w, v):\n    return jax.jvp(jax.grad(loss), (w,), (v,))[1]\n"
                "def hv2(loss, w, v):\n    return jvp(jax.grad(loss), (w,), (v,))[1]\n"
                "def lin(loss, w):\n    return jax.linearize(jax.grad(loss), w)\n"
                "def jac(loss, w):\n    return jax.jacrev(jax.grad(loss))(w)\n"
                "def tri(d, e):\n    return jsp_la.eigh_tridiagonal(d, e)\n"
                "SOLVER = jax.scipy.linalg.eigh\n"
            ),
            "sims/fine.py": (
                "import jax\nfrom theory.analysis.midpoint import top_hessian_eigenvalues\n"
                "def g(loss, w):\n    return jax.grad(loss)(w)  # not jax.hessian\n"
                "def s(loss, ws):\n    return top_hessian_eigenvalues(loss, ws)\n"
                "NOTE = 'jnp.linalg.eigh is not called here'\n"
            ),
            "figures/__init__.py": "",
            "figures/f.py": "import numpy as np\ndef f(m):\n    return np.linalg.svd(m)\n",
        },
    )
    found = curvature_violations(root, {})
    assert set(found) == {
        "figures/f.py:3 calls svd",
        "figures/f.py:3 uses np.linalg.svd",
        "sims/hvp.py:5 calls jvp",
        "sims/hvp.py:5 uses jax.jvp",
        "sims/hvp.py:7 calls jvp",
        "sims/hvp.py:9 calls linearize",
        "sims/hvp.py:9 uses jax.linearize",
        "sims/hvp.py:11 calls jacrev",
        "sims/hvp.py:11 uses jax.jacrev",
        "sims/hvp.py:13 calls eigh_tridiagonal",
        "sims/hvp.py:14 uses jax.scipy.linalg.eigh",
    }


def test_planted_heavy_markers_are_caught(tmp_path):
    # A heavy test without covered_by (bare, called, or naming no module constant), naming a
    # missing file or test, or a heavy test; one both slow and heavy; three correct uses (a
    # function, a param, a module-level constant). The missing case
    # (test_f) is left to the collection check (tests/_markers.py).
    ok = (
        "import pytest\n"
        "@pytest.mark.slow\n"
        "@pytest.mark.parametrize('n', ['a', pytest.param('b', marks=pytest.mark.heavy("
        "covered_by='tests/t_ok.py::test_small[a]'))])\n"
        "def test_small(n):\n    pass\n"
        "@pytest.mark.heavy(covered_by='tests/t_ok.py::test_small')\n"
        "def test_big():\n    pass\n"
        "CI = 'tests/t_ok.py::test_small[a]'\n"
        "@pytest.mark.heavy(covered_by=CI)\n"
        "def test_big2():\n    pass\n"
    )
    bad = (
        "import pytest\n"
        "@pytest.mark.heavy\n"
        "def test_a():\n    pass\n"
        "@pytest.mark.heavy()\n"
        "def test_b():\n    pass\n"
        "@pytest.mark.heavy(covered_by='tests/nope.py::test_x')\n"
        "def test_c():\n    pass\n"
        "@pytest.mark.heavy(covered_by='tests/t_ok.py::test_nope')\n"
        "def test_d():\n    pass\n"
        "@pytest.mark.heavy(covered_by='tests/t_ok.py::test_big')\n"
        "def test_e():\n    pass\n"
        "@pytest.mark.heavy(covered_by='tests/t_ok.py::test_small[zz]')\n"
        "def test_f():\n    pass\n"
        "@pytest.mark.heavy(covered_by='test_small')\n"
        "def test_g():\n    pass\n"
        "@pytest.mark.slow\n"
        "@pytest.mark.heavy(covered_by='tests/t_ok.py::test_small')\n"
        "def test_h():\n    pass\n"
        "@pytest.mark.heavy(covered_by=UNDEFINED)\n"
        "def test_i():\n    pass\n"
    )
    root = _plant(tmp_path, {"tests/t_ok.py": ok, "tests/t_bad.py": bad})
    assert heavy_marker_violations(root) == [
        "tests/t_bad.py:2 heavy without covered_by",
        "tests/t_bad.py:5 heavy without covered_by",
        "tests/t_bad.py:8 covered_by names a missing file tests/nope.py",
        "tests/t_bad.py:11 covered_by names a missing test tests/t_ok.py::test_nope",
        "tests/t_bad.py:14 covered_by names a heavy test tests/t_ok.py::test_big",
        "tests/t_bad.py:20 covered_by 'test_small' is not file.py::test",
        "tests/t_bad.py:25 test_h is both slow and heavy",
        "tests/t_bad.py:27 heavy without covered_by",
    ]


def test_heavy_cover_problems_on_collected_ids():
    covers = {
        "tests/a.py::test_x[f64]": None,
        "tests/a.py::test_x[f32]": "tests/a.py::test_x[f64]",  # fine
        "tests/a.py::test_y": "tests/a.py::test_x[f16]",  # no such case
        "tests/a.py::test_z": "tests/a.py::test_x[f32]",  # a heavy case
        "tests/a.py::test_w": "tests/b.py::test_v",  # b.py not collected: not judged
    }
    assert heavy_cover_problems(covers) == [
        "tests/a.py::test_y: covered_by tests/a.py::test_x[f16] was not collected",
        "tests/a.py::test_z: covered_by tests/a.py::test_x[f32] is heavy itself",
    ]
