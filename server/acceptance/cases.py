"""Loader of the acceptance case files in ``cases/`` (format: ``README.md`` beside this file).

Pure stdlib, no I/O beyond reading the JSON files. Loading checks the shape strictly (unknown
keys of a case or a step are errors, the file name must be ``<id>.json``), so a typo never turns
into a silently skipped expectation. ``expect`` is passed through as written.

Besides the README's keys a step may carry ``"role"``: a role name (``"VIEWER"``) for the
caller, or ``null`` for a call without credentials. Without the key the runner uses its default
caller. :attr:`Step.role` holds the name and :attr:`Step.anonymous` is true for ``null``.

Requests: :func:`build_request` resolves ``base`` (``"BASE"`` = ``base.json``, or another case's
id = that case's first CreateEstimate request) and applies ``patch`` (dotted paths, list indexes
as numbers, ``null`` deletes). ``"{run}"`` and ``"{month}"`` stay in place; the caller replaces
them with :func:`substitute` (in requests and in ``expect``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

__all__ = [
    "BASE_FILE",
    "CASES_DIR",
    "Case",
    "CaseError",
    "Step",
    "apply_patch",
    "build_request",
    "load_base",
    "load_cases",
    "substitute",
]

ACCEPTANCE_DIR = Path(__file__).resolve().parent
CASES_DIR = ACCEPTANCE_DIR / "cases"
BASE_FILE = ACCEPTANCE_DIR / "base.json"
BASE = "BASE"
SUITES = ("regression", "supplementary")
DEFAULT_RPC = "CreateEstimate"

_CASE_KEYS = frozenset({"id", "suite", "title", "requires", "steps"})
_STEP_KEYS = frozenset({"rpc", "request", "base", "patch", "expect", "role"})

JsonObject = dict[str, Any]
_J = TypeVar("_J")


class CaseError(ValueError):
    """A case file is malformed, or a base/patch cannot be resolved."""


@dataclass(frozen=True, slots=True)
class Step:
    """One call of a case; ``request`` and ``base`` are mutually exclusive."""

    rpc: str
    request: Mapping[str, Any] | None
    base: str | None
    patch: Mapping[str, Any]
    expect: Mapping[str, Any]
    role: str | None = None
    anonymous: bool = False


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    suite: str
    title: str
    requires: tuple[str, ...]
    steps: tuple[Step, ...]
    path: Path = field(compare=False)

    @property
    def number(self) -> int:
        """The id's number (``F22`` → 22); cases run in (suite, number) order."""
        return int(self.id[1:])


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CaseError(f"{where}: must be an object")
    return value


def _opt_str(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CaseError(f"{where}: must be a string or null")


def _step(raw: object, where: str) -> Step:
    obj = _mapping(raw, where)
    unknown = obj.keys() - _STEP_KEYS
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    request = obj.get("request")
    base = _opt_str(obj.get("base"), f"{where}.base")
    if request is not None:
        request = _mapping(request, f"{where}.request")
    if request is not None and base is not None:
        raise CaseError(f"{where}: give either request or base, not both")
    rpc = _opt_str(obj.get("rpc"), f"{where}.rpc") or DEFAULT_RPC
    if rpc == DEFAULT_RPC and request is None and base is None:
        raise CaseError(f"{where}: CreateEstimate needs a request or a base")
    return Step(
        rpc=rpc,
        request=request,
        base=base,
        patch=_mapping(obj.get("patch") or {}, f"{where}.patch"),
        expect=_mapping(obj.get("expect") or {}, f"{where}.expect"),
        role=_opt_str(obj.get("role"), f"{where}.role"),
        anonymous="role" in obj and obj["role"] is None,
    )


def _case(path: Path) -> Case:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseError(f"{path.name}: {exc}") from None
    obj = _mapping(raw, path.name)
    unknown = obj.keys() - _CASE_KEYS
    if unknown:
        raise CaseError(f"{path.name}: unknown key(s) {', '.join(sorted(unknown))}")
    case_id = obj.get("id")
    if not isinstance(case_id, str) or path.stem != case_id or not case_id[1:].isdigit():
        raise CaseError(f"{path.name}: id must be the file name, a letter and a number")
    suite = obj.get("suite")
    if suite not in SUITES:
        raise CaseError(f"{path.name}: suite must be one of {', '.join(SUITES)}")
    requires = obj.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise CaseError(f"{path.name}: requires must be a list of strings")
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CaseError(f"{path.name}: steps must be a non-empty list")
    return Case(
        id=case_id,
        suite=suite,
        title=_opt_str(obj.get("title"), f"{path.name}.title") or "",
        requires=tuple(requires),
        steps=tuple(_step(s, f"{path.name}.steps[{k}]") for k, s in enumerate(steps)),
        path=path,
    )


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """All cases of ``directory``, regression first, each suite in id-number order."""
    cases = [_case(p) for p in sorted(directory.glob("*.json"))]
    return sorted(cases, key=lambda c: (SUITES.index(c.suite), c.number, c.id))


def load_base(path: Path = BASE_FILE) -> JsonObject:
    """The §17 footnote base request (a fresh copy)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseError(f"{path.name}: {exc}") from None
    return dict(_mapping(raw, path.name))


def _resolve_base(name: str, cases: Mapping[str, Case] | None, seen: frozenset[str]) -> JsonObject:
    if name == BASE:
        return load_base()
    if name in seen:
        raise CaseError(f"base cycle through {name}")
    index = cases if cases is not None else {c.id: c for c in load_cases()}
    case = index.get(name)
    if case is None:
        raise CaseError(f"unknown base case {name}")
    for step in case.steps:
        if step.rpc == DEFAULT_RPC:
            return _build(step, index, seen | {name})
    raise CaseError(f"base case {name} has no CreateEstimate step")


def _build(step: Step, cases: Mapping[str, Case] | None, seen: frozenset[str]) -> JsonObject:
    if step.base is not None:
        request = _resolve_base(step.base, cases, seen)
    else:
        request = copy.deepcopy(dict(step.request or {}))
    return apply_patch(request, step.patch)


def build_request(step: Step, cases: Mapping[str, Case] | None = None) -> JsonObject:
    """The step's request: its own, or its base with its patch applied (a new object).

    ``cases`` (id → case) resolves a base naming another case; loaded from disk when omitted.
    """
    return _build(step, cases, frozenset())


def _index(token: str, container: list[Any], path: str, *, append: bool) -> int:
    limit = len(container) if append else len(container) - 1
    if not token.isascii() or not token.isdigit() or int(token) > limit:
        raise CaseError(f"patch {path}: bad list index {token}")
    return int(token)


def apply_patch(request: Mapping[str, Any], patch: Mapping[str, Any]) -> JsonObject:
    """A copy of ``request`` with each dotted path of ``patch`` set (``None`` deletes it).

    Missing objects on the way are created; a list index may equal the length (append).
    """
    out: JsonObject = copy.deepcopy(dict(request))
    for path, value in patch.items():
        tokens = path.split(".")
        node: Any = out
        for k, token in enumerate(tokens[:-1]):
            if isinstance(node, list):
                node = node[_index(token, node, path, append=False)]
                continue
            if not isinstance(node, dict):
                raise CaseError(f"patch {path}: {'.'.join(tokens[:k])} is not an object or list")
            if node.get(token) is None:
                if value is None:
                    break  # deleting below an absent object: nothing to do
                node[token] = {}
            node = node[token]
        else:
            last = tokens[-1]
            if isinstance(node, list):
                i = _index(last, node, path, append=True)
                if value is None:
                    if i < len(node):
                        del node[i]
                elif i == len(node):
                    node.append(copy.deepcopy(value))
                else:
                    node[i] = copy.deepcopy(value)
            elif isinstance(node, dict):
                if value is None:
                    node.pop(last, None)
                else:
                    node[last] = copy.deepcopy(value)
            else:
                raise CaseError(f"patch {path}: parent is not an object or list")
    return out


def substitute(obj: _J, run: str, month: str) -> _J:
    """A copy of a JSON value with ``{run}`` and ``{month}`` replaced in every string."""
    out: object = obj
    if isinstance(obj, str):
        out = obj.replace("{run}", run).replace("{month}", month)
    elif isinstance(obj, list):
        out = [substitute(v, run, month) for v in obj]
    elif isinstance(obj, dict):
        out = {k: substitute(v, run, month) for k, v in obj.items()}
    return cast(_J, out)
