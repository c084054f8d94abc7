"""Document → Jira wiki markup and → Markdown: whole rendered texts, and escaping as a table."""

from __future__ import annotations

import pytest

from kis_estimator.workflows.tracker.protocol import Check, Code, Document, Field, Section, Text
from kis_estimator.workflows.tracker.render import escape_markdown, escape_wiki, render_markdown, render_wiki

DEPLOY = Document(
    (
        Section(
            "Description",
            (
                Field("Version", "GA-1.0.0"),
                Field("Environment", "Production"),
                Field("Artifact SHA", "0de4aaa84955cdda...d451"),
            ),
        ),
        Section(
            "Verification", (Check(True, "Smoke tests: 3/3 passed"), Check(False, "Performance: p95 < 30ms"))
        ),
        Section("Evidence", (Field("Deploy script log", "[attached]"),)),
    )
)

ROLLBACK = Document(
    (
        Section(
            "Issue",
            (Field("Symptom", "5xx > 10/min *and* p95_ms rising"), Text("Root cause: {unknown} | !x!")),
        ),
        Section("Rollback log", (Code("$ rollback --force\nok\n", "bash"),)),
        Section("", (Text("line one\nline two"),)),
    )
)


def test_renders_the_seed_deploy_issue_as_wiki_markup() -> None:
    assert render_wiki(DEPLOY) == (
        "h3. Description\n"
        "* *Version:* GA-1.0.0\n"
        "* *Environment:* Production\n"
        "* *Artifact SHA:* 0de4aaa84955cdda...d451\n"
        "\n"
        "h3. Verification\n"
        "* (/) Smoke tests: 3/3 passed\n"
        "* (x) Performance: p95 < 30ms\n"
        "\n"
        "h3. Evidence\n"
        "* *Deploy script log:* \\[attached\\]\n"
    )


def test_renders_the_seed_deploy_issue_as_markdown() -> None:
    assert render_markdown(DEPLOY) == (
        "## Description\n"
        "\n"
        "- Version: GA-1.0.0\n"
        "- Environment: Production\n"
        "- Artifact SHA: 0de4aaa84955cdda...d451\n"
        "\n"
        "## Verification\n"
        "\n"
        "- [x] Smoke tests: 3/3 passed\n"
        "- [ ] Performance: p95 \\< 30ms\n"
        "\n"
        "## Evidence\n"
        "\n"
        "- Deploy script log: \\[attached\\]\n"
    )


def test_renders_paragraphs_code_and_headless_sections_as_wiki_markup() -> None:
    assert render_wiki(ROLLBACK) == (
        "h3. Issue\n"
        "* *Symptom:* 5xx > 10/min \\*and\\* p95\\_ms rising\n"
        "\n"
        "Root cause: \\{unknown\\} \\| \\!x\\!\n"
        "\n"
        "h3. Rollback log\n"
        "{code:bash}\n"
        "$ rollback --force\n"
        "ok\n"
        "{code}\n"
        "\n"
        "line one\n"
        "line two\n"
    )


def test_renders_paragraphs_code_and_headless_sections_as_markdown() -> None:
    assert render_markdown(ROLLBACK) == (
        "## Issue\n"
        "\n"
        "- Symptom: 5xx \\> 10/min \\*and\\* p95\\_ms rising\n"
        "\n"
        "Root cause: {unknown} \\| !x!\n"
        "\n"
        "## Rollback log\n"
        "\n"
        "```bash\n"
        "$ rollback --force\n"
        "ok\n"
        "```\n"
        "\n"
        "line one\n"
        "line two\n"
    )


def test_an_empty_document_renders_as_nothing() -> None:
    assert (render_wiki(Document(())), render_markdown(Document(()))) == ("", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GA-1.0.0 → 0.9", "GA-1.0.0 → 0.9"),
        ("plain 한국어 text", "plain 한국어 text"),
        ("*bold* _em_ +u+ ^sup^ ~sub~", "\\*bold\\* \\_em\\_ \\+u\\+ \\^sup\\^ \\~sub\\~"),
        ("a -struck- b", "a \\-struck\\- b"),
        ("---- rule", "\\-\\-\\-\\- rule"),
        (
            "{code} [link|http://x] !img.png! |cell|",
            "\\{code\\} \\[link\\|http://x\\] \\!img.png\\! \\|cell\\|",
        ),
        ("# not a list", "\\# not a list"),
        ("C:\\path", "C:&#92;path"),
        ("??cite??", "&#63;?cite&#63;?"),
        ("done (/) fail (x) (on) (*r)", "done &#40;/) fail &#40;x) &#40;on) &#40;\\*r)"),
        ("smile :) wink ;) :D", "smile &#58;) wink &#59;) &#58;D"),
        ("(ADMIN_ONLY)", "(ADMIN\\_ONLY)"),
        ("h1. heading", "&#104;1. heading"),
        ("bq. quote", "&#98;q. quote"),
    ],
    ids=[
        "version",
        "hangul",
        "emphasis",
        "strike",
        "rule",
        "macros-links-images-tables",
        "numbered-list",
        "backslash",
        "citation",
        "emoticons",
        "smileys",
        "parenthesis",
        "heading",
        "blockquote",
    ],
)
def test_escape_wiki(text: str, expected: str) -> None:
    assert escape_wiki(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GA-1.0.0", "GA-1.0.0"),
        ("# title", "\\# title"),
        ("- item", "\\- item"),
        ("1. first", "1\\. first"),
        ("a *b* _c_ `d` [e] <f>", "a \\*b\\* \\_c\\_ \\`d\\` \\[e\\] \\<f\\>"),
    ],
    ids=["version", "heading", "bullet", "ordered", "inline"],
)
def test_escape_markdown(text: str, expected: str) -> None:
    assert escape_markdown(text) == expected


@pytest.mark.parametrize(
    ("block", "wiki", "markdown"),
    [
        (Code("x = 1"), "{noformat}\nx = 1\n{noformat}", "```\nx = 1\n```"),
        (
            Code("{noformat} inside", "text"),
            "{code:text}\n{noformat} inside\n{code}",
            "```text\n{noformat} inside\n```",
        ),
        (Code("{code} inside"), "{noformat}\n{code} inside\n{noformat}", "```\n{code} inside\n```"),
        (Code("``` fence", "bad lang!"), "{noformat}\n``` fence\n{noformat}", "````\n``` fence\n````"),
        (Field("Multi", "one\ntwo"), "* *Multi:* one \\\\ two", "- Multi: one\n  two"),
        (Check(True, ""), "* (/)", "- [x]"),
    ],
    ids=[
        "noformat",
        "code-with-noformat",
        "noformat-with-code",
        "fence-and-bad-language",
        "multiline",
        "empty",
    ],
)
def test_blocks(block: Code | Field | Check, wiki: str, markdown: str) -> None:
    doc = Document((Section("", (block,)),))
    assert (render_wiki(doc), render_markdown(doc)) == (wiki + "\n", markdown + "\n")
