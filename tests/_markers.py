"""The heavy tier's cover check on collected items (docs/conventions.md item 14).

``pytest.mark.heavy(covered_by="tests/<file>.py::<test>[<case>]")`` marks a case CI skips; the
named test is the CI-run one taking the same path. ``tests/test_architecture.py`` checks the marks
statically (present, well formed, naming an existing function); this checks the exact case
against what pytest collected, before ``-m`` deselects anything (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Mapping


def heavy_cover_problems(covers: Mapping[str, str | None]) -> list[str]:
    """``covers`` maps every collected node id to its ``covered_by`` (``None`` if not heavy).

    A named test in a file that was collected must itself be collected and not heavy; a name in
    a file that was not collected (a partial run) is not judged here."""
    files = {nodeid.split("::")[0] for nodeid in covers}
    out = []
    for nodeid, cover in covers.items():
        if cover is None or cover.split("::")[0] not in files:
            continue
        if cover not in covers:
            out.append(f"{nodeid}: covered_by {cover} was not collected")
        elif covers[cover] is not None:
            out.append(f"{nodeid}: covered_by {cover} is heavy itself")
    return out
