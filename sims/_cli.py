"""Command lines generated from a simulation's ``Config`` dataclass (thin CLI, fat library).

Every field becomes ``--field-name`` with the field's type; ``--scale quick|full`` picks the
preset (``Config.preset(scale)``) that the other flags then override.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

SCALES = ("quick", "full")


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _arg_spec(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _arg_spec(args[0])
    if origin is tuple:
        (inner, *_) = typing.get_args(tp)
        return {"type": _arg_spec(inner)["type"], "nargs": "*"}
    if tp is bool:
        return {"type": _parse_bool, "metavar": "{true,false}"}
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return {"type": type(choices[0]), "choices": choices}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"no command-line type for field annotation {tp!r}")


def build_parser(config_cls: Any, prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``config_cls``, plus run options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--scale", choices=SCALES, default="quick", help="preset (default quick)")
    parser.add_argument("--results-dir", default="results", help="results root (default results)")
    parser.add_argument("--force", action="store_true", help="recompute even if stored")
    hints = typing.get_type_hints(config_cls)
    quick = config_cls.preset("quick")
    for f in dataclasses.fields(config_cls):
        spec = _arg_spec(hints[f.name])
        doc = f.metadata.get("help", "")
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            help=f"{doc} (quick: {getattr(quick, f.name)!r})".strip(),
            **spec,
        )
    return parser


def config_from_args(config_cls: Any, ns: argparse.Namespace) -> Any:
    """The preset of ``ns.scale`` with every given flag applied (validated by the dataclass)."""
    base = config_cls.preset(ns.scale)
    changes = {}
    for f in dataclasses.fields(config_cls):
        val = getattr(ns, f.name)
        if val is not None:
            changes[f.name] = tuple(val) if isinstance(val, list) else val
    return dataclasses.replace(base, **changes)


def simple_main(
    config_cls: Any,
    run_and_store: Callable[..., Any],
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
) -> Any:
    """Parse ``argv``, build the config and call ``run_and_store(cfg, results_dir, force)``."""
    parser = build_parser(config_cls, prog, description)
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_args(config_cls, ns)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    return run_and_store(cfg, results_dir=ns.results_dir, force=ns.force)
