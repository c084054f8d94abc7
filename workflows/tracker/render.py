"""Render a :class:`~kis_estimator.workflows.tracker.protocol.Document` as Jira wiki (Server/DC, REST v2) or
Markdown.

Templates build Documents once; each tracker renders them in its own markup. User text (headings,
labels, values, checklist items, paragraphs) is escaped so that a version string, a log line or a
path never turns into markup; only code blocks are passed through verbatim.

Jira wiki escaping (choices where the Jira docs are silent):

- Characters that open markup anywhere (``* _ + ^ ~ { } [ ] | ! #``) get a backslash.
- ``-`` gets a backslash unless it sits between two letters/digits (``GA-1.0.0`` stays readable),
  which is enough to stop ``-strike-``, ``--``/``---`` dashes and ``----`` rules.
- A backslash is written as the entity ``&#92;``: ``\\\\`` would be a forced line break.
- Emoticons (``(x)``, ``(/)``, ``:)`` …), ``??citations??`` and line-leading ``h1.``/``bq.`` are
  broken with an entity (``&#40;``, ``&#58;``, ``&#63;``, ``&#104;``): a backslash before those
  characters is not an escape and would be shown.
"""

from __future__ import annotations

import re

from kis_estimator.workflows.tracker.protocol import Block, Check, Code, Document, Field, Text

__all__ = ["escape_markdown", "escape_wiki", "render_markdown", "render_wiki"]

_WIKI_SPECIAL = frozenset("*_+^~{}[]|!#")
_EMOTICON_BODIES = (
    "/",
    "x",
    "!",
    "?",
    "i",
    "y",
    "n",
    "+",
    "-",
    "on",
    "off",
    "*",
    "*r",
    "*g",
    "*b",
    "*y",
    "flag",
    "flagoff",
)
_PAREN_EMOTICON = re.compile(r"\((?:" + "|".join(re.escape(b) for b in _EMOTICON_BODIES) + r")\)", re.I)
_LINE_MACRO = re.compile(r"^(\s*)(h[1-6]|bq)\.", re.I)
_CODE_LANGUAGE = re.compile(r"^[A-Za-z0-9#+-]{1,20}$")


def escape_wiki(text: str) -> str:
    """Escape one line of user text for Jira wiki markup (newlines are the caller's business)."""
    out: list[str] = []
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch == "(" and (m := _PAREN_EMOTICON.match(text, i)):
            out.append("&#40;" + "".join(_escape_wiki_char(text, j) for j in range(i + 1, m.end())))
            i = m.end()
            continue
        if ch in ":;" and i + 1 < n and text[i + 1] in "()PDpd":
            out.append("&#58;" if ch == ":" else "&#59;")
        elif ch == "?" and i + 1 < n and text[i + 1] == "?":
            out.append("&#63;")
        else:
            out.append(_escape_wiki_char(text, i))
        i += 1
    line = "".join(out)
    macro = _LINE_MACRO.match(line)
    if macro:
        lead = macro.group(1)
        line = lead + "&#" + str(ord(line[len(lead)])) + ";" + line[len(lead) + 1 :]
    return line


def _escape_wiki_char(text: str, i: int) -> str:
    ch = text[i]
    if ch in _WIKI_SPECIAL:
        return "\\" + ch
    if ch == "\\":
        return "&#92;"
    if ch == "-":
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        return "-" if before.isalnum() and after.isalnum() else "\\-"
    return ch


def _wiki_lines(text: str) -> str:
    """Several lines inside one list item or paragraph: Jira's forced line break is ``\\\\``."""
    return " \\\\ ".join(escape_wiki(line) for line in text.splitlines()) if text else ""


def _wiki_code(block: Code) -> str:
    body = block.text.rstrip("\n")
    if block.language and _CODE_LANGUAGE.match(block.language) and "{code}" not in body:
        return f"{{code:{block.language}}}\n{body}\n{{code}}"
    if "{noformat}" not in body:
        return f"{{noformat}}\n{body}\n{{noformat}}"
    if "{code}" not in body:
        return f"{{code}}\n{body}\n{{code}}"
    # Both terminators occur in the text: break the one we use so the block cannot end early.
    return "{noformat}\n" + body.replace("{noformat}", "{noformat\u200b}") + "\n{noformat}"


def _wiki_block(block: Block) -> str:
    match block:
        case Text(text=text):
            return "\n".join(escape_wiki(line) for line in text.splitlines())
        case Field(label=label, value=value):
            return (
                f"* *{escape_wiki(label)}:* {_wiki_lines(value)}".rstrip()
                if label
                else f"* {_wiki_lines(value)}"
            )
        case Check(done=done, text=text):
            return f"* {'(/)' if done else '(x)'} {_wiki_lines(text)}".rstrip()
        case Code():
            return _wiki_code(block)
    raise TypeError(f"unknown block {block!r}")  # pragma: no cover - Block is a closed union


def render_wiki(doc: Document) -> str:
    """Jira wiki markup (Server/DC REST v2 ``description`` and comment bodies)."""
    parts: list[str] = []
    for section in doc.sections:
        lines: list[str] = []
        if section.heading:
            lines.append(f"h3. {escape_wiki(section.heading)}")
        previous: Block | None = None
        for block in section.blocks:
            rendered = _wiki_block(block)
            if not rendered:
                continue
            # Lists stay tight; a paragraph or code block after anything gets a blank line first.
            if previous is not None and not (_is_list(previous) and _is_list(block)):
                lines.append("")
            lines.append(rendered)
            previous = block
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def _is_list(block: Block) -> bool:
    return isinstance(block, Field | Check)


# ---------------------------------------------------------------------------------- markdown

_MD_SPECIAL = frozenset("\\`*_[]<>|")
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def escape_markdown(text: str) -> str:
    """Escape one line of user text for CommonMark (inline specials and line-leading block markers)."""
    line = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    m = _MD_LINE_START.match(line)
    if m:
        marker = m.group(2)
        line = m.group(1) + marker[:-1] + "\\" + marker[-1] + line[m.end() :]
    return line


def _md_lines(text: str) -> str:
    """Continuation lines of a list item are indented so the item does not end."""
    return "\n  ".join(escape_markdown(line) for line in text.splitlines())


def _md_code(block: Code) -> str:
    body = block.text.rstrip("\n")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    language = block.language if _CODE_LANGUAGE.match(block.language or "") else ""
    return f"{fence}{language}\n{body}\n{fence}"


def _md_block(block: Block) -> str:
    match block:
        case Text(text=text):
            return "\n".join(escape_markdown(line) for line in text.splitlines())
        case Field(label=label, value=value):
            return (
                f"- {escape_markdown(label)}: {_md_lines(value)}".rstrip()
                if label
                else f"- {_md_lines(value)}"
            )
        case Check(done=done, text=text):
            return f"- [{'x' if done else ' '}] {_md_lines(text)}".rstrip()
        case Code():
            return _md_code(block)
    raise TypeError(f"unknown block {block!r}")  # pragma: no cover - Block is a closed union


def render_markdown(doc: Document) -> str:
    """Markdown in the seed templates' shape: ``## Heading``, ``- Label: value``, ``- [x] item``."""
    parts: list[str] = []
    for section in doc.sections:
        lines: list[str] = []
        if section.heading:
            lines.append(f"## {escape_markdown(section.heading)}")
        previous: Block | None = None
        for block in section.blocks:
            rendered = _md_block(block)
            if not rendered:
                continue
            if lines and not (previous is not None and _is_list(previous) and _is_list(block)):
                lines.append("")
            lines.append(rendered)
            previous = block
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")
