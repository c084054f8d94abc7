"""The rule book ``docs/pricing-rules.md`` and the references to it.

* No file of the tree names the old external spec, or a path outside the repository (an absolute
  path under the home or work directories of a development machine). Only the frozen image of the
  released API (proto/baseline) is exempt from the old-spec check: its comments are as released.
* Every ``docs/pricing-rules.md §N`` citation anywhere in the tree, ``proto/`` included, names a
  section that exists in the rule book.
* Every rule id the engine and the service record for ``rules_doc.json`` has a heading in the rule
  book, and every rule id a heading names is one the code records. The ids are collected from the
  code (``RuleApplication(...)`` calls and the ``PRC-<n>`` lines of ``pricing.py``), and pricing every
  acceptance case checks that the collection misses none.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kis_estimator.server.acceptance.cases import build_request, load_cases
from kis_estimator.server.api.status import status_code_of
from kis_estimator.server.engine.catalog import Catalog, load_catalog
from kis_estimator.server.engine.errors import ErrorCode, kind_of
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.messages import TEMPLATES
from kis_estimator.server.engine.model import Quote, Resolution
from kis_estimator.server.engine.request import request_from_dict
from kis_estimator.server.engine.validation import validate_request

ROOT = Path(__file__).resolve().parents[2]
RULES_DOC = ROOT / "docs" / "pricing-rules.md"
RULES_DOC_NAME = "docs/pricing-rules.md"

# Spelled in parts so that this file does not itself mention what it looks for.
OLD_SPEC = "DOMAIN" + ".md"
OLD_SPEC_EXEMPT = ("proto/baseline/",)
OUTSIDE_STYLE_GUIDE = "STYLE" + ".md"  # the team's style guide lives outside the repository
CONVENTIONS_DOC = ROOT / "docs" / "conventions.md"
CONVENTIONS_CITATION = re.compile(re.escape("docs/conventions.md") + r"\s*§\s*(\d+)")
# An absolute path under the work or home directory of a machine: a slash not preceded by a path
# or word character, then "work" or "home", then a slash.
OUTSIDE_PATH = re.compile(r"(?<![\w.~-])/(?:wo" + r"rk|ho" + r"me)/")
SKIPPED_DIRS = frozenset({".git", ".venv", "node_modules", "build", "dist", "gen", "__pycache__"})

CITATION = re.compile(re.escape(RULES_DOC_NAME) + r"((?:\s*(?:,|/|-|–|—|and)?\s*§\s*\d+(?:\.\d+)*)+)")
SECTION_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
NUMBERED_HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
HEADING = re.compile(r"^#{2,6}\s+(.*)$", re.MULTILINE)
RULE_ID = re.compile(r"\[([A-Z]+-[A-Z0-9]+)\]")


# --------------------------------------------------------------------------- the files of the tree


def _tree_files() -> list[str]:
    """Repository-relative paths of tracked and not-ignored files (git), else a walk of the tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return sorted(
            path.relative_to(ROOT).as_posix()
            for path in ROOT.rglob("*")
            if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts[:-1])
        )
    return sorted({name for name in out.decode("utf-8").split("\0") if name})


def _texts() -> Iterator[tuple[str, str]]:
    """(path, text) of every UTF-8 text file of the tree; binary files are skipped."""
    for name in _tree_files():
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    found = dict(_texts())
    assert RULES_DOC_NAME in found, "docs/pricing-rules.md is not part of the tree"
    return found


def _lines_matching(text: str, needle: re.Pattern[str] | str) -> list[int]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        hit = needle.search(line) if isinstance(needle, re.Pattern) else needle in line
        if hit:
            out.append(number)
    return out


def _citing(texts: dict[str, str], outside_doc: str) -> list[str]:
    """``name:line`` of every line naming ``outside_doc``, outside the released proto baseline."""
    return [
        f"{name}:{line}"
        for name, text in texts.items()
        if not name.startswith(OLD_SPEC_EXEMPT)
        for line in _lines_matching(text, outside_doc)
    ]


def test_no_file_outside_proto_cites_the_old_spec(texts: dict[str, str]) -> None:
    offenders = _citing(texts, OLD_SPEC)
    assert offenders == [], f"cite {RULES_DOC_NAME} instead of {OLD_SPEC}: {offenders}"


def test_conventions_are_cited_from_the_repository_and_name_existing_sections(texts: dict[str, str]) -> None:
    outside = _citing(texts, OUTSIDE_STYLE_GUIDE)
    assert outside == [], f"cite docs/conventions.md instead of {OUTSIDE_STYLE_GUIDE}: {outside}"
    sections = set(NUMBERED_HEADING.findall(CONVENTIONS_DOC.read_text(encoding="utf-8")))
    cited = [(name, n) for name, text in texts.items() for n in CONVENTIONS_CITATION.findall(text)]
    assert len(cited) >= 30, "the conventions citation pattern finds almost nothing: is it broken?"
    missing = sorted({f"{name}: §{n}" for name, n in cited if n not in sections})
    assert missing == [], f"citations of sections docs/conventions.md does not have: {missing}"


def test_no_file_names_a_path_outside_the_repository(texts: dict[str, str]) -> None:
    offenders = [
        f"{name}:{line}" for name, text in texts.items() for line in _lines_matching(text, OUTSIDE_PATH)
    ]
    assert offenders == [], f"paths outside the repository: {offenders}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see /wo" + "rk/shared/seed", 1),
        ("HOME=/ho" + "me/kim", 1),
        ("sqlite:////ho" + "me/kim/kis.db", 1),
        ("COPY workflows ./workflows", 0),
        ("deploy/ho" + "me/x and https://example.com/wo" + "rk/y", 0),
    ],
    ids=["work", "home", "url-path", "relative", "inside-words"],
)
def test_outside_path_pattern(text: str, expected: int) -> None:
    assert len(OUTSIDE_PATH.findall(text)) == expected


# --------------------------------------------------------------------------- citations → sections


def _sections() -> set[str]:
    return set(NUMBERED_HEADING.findall(RULES_DOC.read_text(encoding="utf-8")))


def _cited_sections(text: str) -> list[str]:
    return [number for group in CITATION.findall(text) for number in SECTION_NUMBER.findall(group)]


def test_the_rule_book_keeps_its_twenty_sections() -> None:
    sections = _sections()
    assert {str(n) for n in range(1, 21)} <= sections
    assert {"5.4", "6.2", "7.1", "16.3", "16.4"} <= sections


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"({RULES_DOC_NAME} §16.3).", ["16.3"]),
        (f"{RULES_DOC_NAME} §17-§19 cases", ["17", "19"]),
        (f"{RULES_DOC_NAME} §12, §15, §16.2", ["12", "15", "16.2"]),
        (f"{RULES_DOC_NAME} §17/§18", ["17", "18"]),
        (f"{RULES_DOC_NAME} §6–§14", ["6", "14"]),
        (f"{RULES_DOC_NAME} (the rules)", []),
    ],
    ids=["one", "range", "list", "slash", "en-dash", "none"],
)
def test_citation_pattern(text: str, expected: list[str]) -> None:
    assert _cited_sections(text) == expected


def test_every_citation_names_an_existing_section(texts: dict[str, str]) -> None:
    sections = _sections()
    cited = [(name, number) for name, text in texts.items() for number in _cited_sections(text)]
    assert len(cited) >= 100, "the citation pattern finds almost nothing: is it broken?"
    missing = sorted({f"{name}: §{number}" for name, number in cited if number not in sections})
    assert missing == [], f"citations of sections {RULES_DOC_NAME} does not have: {missing}"


# --------------------------------------------------------------------------- rule ids → headings


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _literal_rule_id(node: ast.Call) -> str | None:
    candidates = [*node.args[:1], *(kw.value for kw in node.keywords if kw.arg == "rule_id")]
    for arg in candidates:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def _int_constants(node: ast.AST) -> list[int]:
    return [node.value] if isinstance(node, ast.Constant) and type(node.value) is int else []


def _loop_values(loop: ast.For, name: str) -> list[int]:
    """The ints ``name`` takes in ``for name, ... in ((16, ...), (17, ...))`` (or ``for name in (...)``)."""
    target, items = loop.target, loop.iter
    if not isinstance(items, ast.Tuple | ast.List):
        return []
    if isinstance(target, ast.Name) and target.id == name:
        return [n for item in items.elts for n in _int_constants(item)]
    if isinstance(target, ast.Tuple):
        positions = [i for i, elt in enumerate(target.elts) if isinstance(elt, ast.Name) and elt.id == name]
        return [
            n
            for item in items.elts
            if isinstance(item, ast.Tuple)
            for i in positions
            if i < len(item.elts)
            for n in _int_constants(item.elts[i])
        ]
    return []


def _pricing_rule_ids(tree: ast.Module) -> set[str]:
    """``PRC-<n>`` for every line number ``n`` pricing.py adds (``out.add(n, ...)``, ``add_kg``).

    The number is a literal, or a loop variable over literal tuples (the two busbar lines).
    """
    prefixed = any(
        isinstance(node, ast.JoinedStr)
        and node.values
        and isinstance(node.values[0], ast.Constant)
        and node.values[0].value == "PRC-"
        for node in ast.walk(tree)
    )
    assert prefixed, 'pricing.py no longer builds its rule ids as f"PRC-{rule}"; update this test'
    numbers: set[int] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _call_name(node) in ("add", "add_kg") and node.args):
            continue
        numbers.update(_int_constants(node.args[0]))
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For):
            continue
        for node in ast.walk(loop):
            if (
                isinstance(node, ast.Call)
                and _call_name(node) in ("add", "add_kg")
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                numbers.update(_loop_values(loop, node.args[0].id))
    return {f"PRC-{n}" for n in numbers}


@pytest.fixture(scope="module")
def recorded_rule_ids() -> set[str]:
    """Every rule id the code can write to ``rules_doc.json``, read from the source."""
    found: set[str] = set()
    for path in sorted((ROOT / "server").rglob("*.py")):
        if "gen" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) == "RuleApplication":
                rule_id = _literal_rule_id(node)
                if rule_id is not None:
                    found.add(rule_id)
        if path == ROOT / "server" / "engine" / "pricing.py":
            found |= _pricing_rule_ids(tree)
    return found


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _acceptance_quotes(catalog: Catalog) -> Iterator[Quote]:
    """The quote of every valid CreateEstimate request of the acceptance cases, and S19 reviewed."""
    cases = {case.id: case for case in load_cases()}
    for case in cases.values():
        for step in case.steps:
            if step.rpc != "CreateEstimate":
                continue
            request = request_from_dict(build_request(step, cases))
            if validate_request(request, catalog):
                continue
            quote = price_estimate(request, catalog)
            yield quote
            if quote.review_reasons:
                answers = {r.reason_id: Resolution(r.reason_id, 1000, "SIE-32") for r in quote.review_reasons}
                yield price_estimate(request, catalog, answers)


def test_rule_id_collection_misses_nothing_the_engine_records(
    recorded_rule_ids: set[str], catalog: Catalog
) -> None:
    applied: set[str] = set()
    for quote in _acceptance_quotes(catalog):
        applied |= {rule.rule_id for rule in quote.rules}
        applied |= {line.rule_id for line in quote.lines}
    assert len(applied) >= 40, "the acceptance cases priced almost nothing"
    assert applied - recorded_rule_ids == set()


def _heading_rule_ids() -> set[str]:
    headings = HEADING.findall(RULES_DOC.read_text(encoding="utf-8"))
    return {rule_id for heading in headings for rule_id in RULE_ID.findall(heading)}


def test_every_recorded_rule_id_has_a_heading(recorded_rule_ids: set[str]) -> None:
    assert len(recorded_rule_ids) >= 40
    missing = sorted(recorded_rule_ids - _heading_rule_ids())
    assert missing == [], f"rule ids without a heading in {RULES_DOC_NAME}: {missing}"


def test_every_rule_id_heading_is_one_the_code_records(recorded_rule_ids: set[str]) -> None:
    assert sorted(_heading_rule_ids() - recorded_rule_ids) == []


# --------------------------------------------------------------------------- the error tables of §4

ERROR_ROW = re.compile(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \| (.*) \| `([^`]*)`.*\|$", re.MULTILINE)


def _section(text: str, number: str) -> str:
    start = re.search(rf"^#+ {re.escape(number)}\.? ", text, re.MULTILINE)
    assert start is not None, f"no section {number}"
    end = re.search(r"^#{2,3} \d", text[start.end() :], re.MULTILINE)
    return text[start.start() : start.end() + (end.start() if end else len(text))]


def test_every_error_code_is_in_the_tables_of_section_4_with_its_status_and_message(
    texts: dict[str, str],
) -> None:
    text = texts[RULES_DOC_NAME]
    rows = {m[1]: (m[2], m[4]) for m in ERROR_ROW.finditer(_section(text, "4.2") + _section(text, "4.3"))}
    assert sorted(rows) == sorted(code.value for code in ErrorCode)
    for code in ErrorCode:
        status, message = rows[code.value]
        assert (status, message) == (status_code_of(kind_of(code)).name, TEMPLATES[code][0]), code
