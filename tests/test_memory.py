"""The memory document: template, merge of changed sections, validation, storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemark.memory import (
    HEADINGS,
    MemoryDocument,
    MemoryStore,
    MemoryUpdateError,
    RuntimeRecord,
    merge_update,
    parse_sections,
    render_template,
    validate_document,
)
from tidemark.tokens import chars_estimate


def _check(sections: dict[str, str]) -> None:
    validate_document(sections, estimate=chars_estimate, max_tokens=12_000, section_tokens=2_000)


def test_the_template_has_every_heading_in_order_each_with_an_italic_description() -> None:
    lines = render_template().splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("# ")]
    assert [lines[i][2:] for i in headings] == list(HEADINGS)
    for i in headings:
        assert lines[i + 1].startswith("_") and lines[i + 1].endswith("_")


def test_a_reply_with_only_changed_sections_is_merged_into_the_current_document() -> None:
    current = MemoryDocument(sections={h: f"old {h}" for h in HEADINGS})
    merged = merge_update(current, "# Current State\nDone: parser.\n\n# Worklog\n- fixed parser")
    assert merged["Current State"] == "Done: parser."
    assert merged["Worklog"] == "- fixed parser"
    assert merged["Learnings"] == "old Learnings"
    _check(merged)


def test_an_append_section_adds_its_lines_after_the_current_ones() -> None:
    current = MemoryDocument(sections={h: f"old {h}" for h in HEADINGS})
    merged = merge_update(
        current,
        "# Current State\nDone: parser.\n\n# Worklog (append)\n- step 2\n- step 3\n\n"
        "# Key results (append)\n- PORT is 8042",
    )
    assert merged["Worklog"] == "old Worklog\n- step 2\n- step 3"
    assert merged["Key results"] == "old Key results\n- PORT is 8042"
    assert merged["Current State"] == "Done: parser."
    assert merged["Learnings"] == "old Learnings"


def test_appending_to_an_empty_section_starts_it() -> None:
    merged = merge_update(MemoryDocument.empty(), "# Worklog (append)\n- read config.py")
    assert merged["Worklog"] == "- read config.py"


def test_an_append_under_an_unknown_heading_is_not_a_section() -> None:
    with pytest.raises(MemoryUpdateError, match="none of the memory's headings"):
        merge_update(MemoryDocument.empty(), "# Notes (append)\n- something")


def test_appends_do_not_count_as_a_whole_rewrite_that_drops_headings() -> None:
    current = MemoryDocument(sections={h: f"old {h}" for h in HEADINGS})
    reply = "\n\n".join(f"# {h} (append)\n- more" for h in HEADINGS[:8])
    merged = merge_update(current, reply)
    assert merged[HEADINGS[0]] == f"old {HEADINGS[0]}\n- more"
    assert merged[HEADINGS[9]] == f"old {HEADINGS[9]}"


def test_appends_that_push_a_section_over_its_limit_are_rejected() -> None:
    current = MemoryDocument(
        sections={h: "x" * 7_000 if h == "Worklog" else "ok" for h in HEADINGS}
    )
    merged = merge_update(current, "# Worklog (append)\n" + "- step\n" * 300)
    with pytest.raises(MemoryUpdateError, match="Worklog"):
        _check(merged)


def test_the_whole_document_in_a_code_fence_is_accepted() -> None:
    whole = "\n\n".join(f"# {h}\n_desc_\nnew {h}" for h in HEADINGS)
    merged = merge_update(MemoryDocument.empty(), f"```markdown\n{whole}\n```")
    assert all(merged[h] == f"new {h}" for h in HEADINGS)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I updated the memory.", "none of the memory's headings"),
        ("# Current State\n" + "word " * 12_000, "over the limit"),
    ],
)
def test_a_bad_update_is_rejected_with_a_reason(reply: str, reason: str) -> None:
    with pytest.raises(MemoryUpdateError, match=reason):
        _check(merge_update(MemoryDocument.empty(), reply))


def test_an_update_that_leaves_every_section_empty_is_rejected() -> None:
    with pytest.raises(MemoryUpdateError, match="empty"):
        _check(merge_update(MemoryDocument.empty(), "# Current State\n\n"))


def test_a_document_missing_a_heading_is_rejected() -> None:
    sections = {h: "x" for h in HEADINGS[:-1]}
    with pytest.raises(MemoryUpdateError, match="drops headings: Worklog"):
        _check(sections)


def test_the_runtime_keeps_the_users_words_and_files_whatever_the_model_writes() -> None:
    record = RuntimeRecord(user_messages=["Fix the parser. Never touch setup.py."])
    record.note_file("src/parser.py", modified=True)
    record.note_file("README.md", modified=False)
    record.last_error = "bash: exit code 1"
    doc = MemoryDocument(
        sections=merge_update(
            MemoryDocument.empty(),
            "# Task specification\n## The user's words (kept by tidemark)\nforged",
        )
    )
    text = doc.render(record)
    assert "Never touch setup.py." in text
    assert "forged" not in text
    assert "modified: src/parser.py" in text and "read: README.md" in text
    assert "bash: exit code 1" in text
    # Parsing the rendered file and rendering again changes nothing.
    again = MemoryDocument(sections=parse_sections(text)).render(record)
    assert again == text


def test_the_store_round_trips_the_document_and_what_it_covers(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "session-memory.md")
    assert store.load() is None
    doc = MemoryDocument(
        sections=merge_update(MemoryDocument.empty(), "# Current State\nDone."),
        covers_message_id="msg_abc",
        update=3,
    )
    store.save(doc, None)
    loaded = store.load()
    assert loaded is not None
    assert loaded.covers_message_id == "msg_abc" and loaded.update == 3
    assert loaded.sections["Current State"] == "Done."
    assert store.path.read_text().startswith("# Session Title\n_")


def test_a_heading_inside_a_code_block_does_not_cut_the_section() -> None:
    reply = "# Workflow\nRun:\n```bash\n# from the root\npytest\n```\nThen read.\n# Learnings\nx"
    merged = merge_update(MemoryDocument.empty(), reply)
    assert merged["Workflow"] == "Run:\n```bash\n# from the root\npytest\n```\nThen read."
    assert merged["Learnings"] == "x"


def test_an_explicit_no_changes_reply_keeps_the_document() -> None:
    current = MemoryDocument(sections=merge_update(MemoryDocument.empty(), "# Worklog\n- a"))
    assert merge_update(current, "NO CHANGES.") == current.sections


def test_a_whole_document_rewrite_that_drops_a_heading_is_rejected_not_refilled() -> None:
    current = MemoryDocument(sections={h: f"old {h}" for h in HEADINGS})
    rewrite = "\n\n".join(f"# {h}\nnew {h}" for h in HEADINGS if h != "Learnings")
    with pytest.raises(MemoryUpdateError, match="drops headings: Learnings"):
        merge_update(current, rewrite)


def test_a_section_one_token_over_its_limit_is_rejected() -> None:
    empty = {h: "" for h in HEADINGS}
    head = MemoryDocument(sections=empty | {"Learnings": "x"}).section_texts()["Learnings"]
    # With its heading and description line the section is 8,001 chars: 2,001 tokens.
    sections = empty | {"Learnings": "x" * (8_001 - len(head) + 1)}
    with pytest.raises(
        MemoryUpdateError, match="'Learnings' is 2001 tokens, over the limit of 2000"
    ):
        _check(sections)
    sections["Learnings"] = sections["Learnings"][:-2]
    _check(sections)


def test_the_limits_count_what_the_runtime_adds_to_the_file() -> None:
    record = RuntimeRecord(
        user_messages=["Fix the parser. " * 200], kept_chars=4_000, last_error="boom " * 100
    )
    for n in range(60):
        record.note_file(f"src/module_{n:03d}.py", modified=n % 2 == 0)
    body = "y" * (4 * 2_000 - 300)  # fits alone; not next to the user's words
    sections = {h: "" for h in HEADINGS} | {"Task specification": body}
    _check(sections)
    with pytest.raises(MemoryUpdateError, match="Task specification"):
        validate_document(
            sections,
            estimate=chars_estimate,
            max_tokens=12_000,
            section_tokens=2_000,
            record=record,
        )
    # What the runtime keeps stays within half a section each, so the model has room.
    for heading, text in record.subsections().items():
        assert len(text) <= 4_000, heading
    # And the whole file as written is what the total limit applies to.
    small = {h: "z" * 4_000 for h in HEADINGS}  # 10 x 1,000 tokens: 10,000 + the file's own
    validate_document(
        small, estimate=chars_estimate, max_tokens=12_000, section_tokens=2_000, record=record
    )
    with pytest.raises(
        MemoryUpdateError, match=r"the memory is \d+ tokens, over the limit of 11000"
    ):
        validate_document(
            small, estimate=chars_estimate, max_tokens=11_000, section_tokens=2_000, record=record
        )


def test_the_last_error_keeps_its_head_and_its_decisive_last_line() -> None:
    traceback = (
        "bash: Traceback (most recent call last):\n"
        + "".join(f'  File "src/m{n}.py", line {n}, in f{n}\n    g{n}()\n' for n in range(300))
        + "ValueError: the restock level went negative\n[exit code: 1]"
    )
    record = RuntimeRecord(kept_chars=2_000)
    record.note_error(traceback)
    kept = record.subsections()["Errors & Corrections"]
    assert len(kept) <= 2_000
    assert "bash: Traceback (most recent call last):" in kept
    assert "ValueError: the restock level went negative\n[exit code: 1]" in kept
    assert "chars cut" in kept
