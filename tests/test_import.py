"""Prompt import: all rows or none, with a message naming the bad line."""

import json

import pandas as pd
import pytest
from sqlalchemy import func
from sqlmodel import select

from alt_engine.db import Prompt, session_scope
from alt_engine.prompts import MAX_PROMPT_CHARS, ColumnMap, ImportError_, import_prompts


def count(db):
    with session_scope(db) as s:
        return s.exec(select(func.count()).select_from(Prompt)).one()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_good(db, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Q{i}"} for i in range(5)] + [
        {"messages": [{"role": "user", "content": "Hi"}], "split": "probe"}])
    report = import_prompts(db, f)
    assert report.added == 6 and count(db) == 6
    with session_scope(db) as s:
        chat = s.exec(select(Prompt).where(Prompt.messages.is_not(None))).one()
        assert chat.messages == [{"role": "user", "content": "Hi"}] and chat.split == "probe"
        assert chat.source == "p.jsonl"


@pytest.mark.parametrize("bad_line, expect", [
    ('{"prompt": "ok"', "line 3: invalid JSON"),
    ('{"prompt": ""}', "line 3: empty prompt"),
    ('{"prompt": "   "}', "line 3: empty prompt"),
    ('{"prompt": "' + "x" * (MAX_PROMPT_CHARS + 1) + '"}', "line 3: prompt too long"),
    ('{"text": "wrong column"}', "line 3: no 'prompt' column"),
    ('{"prompt": 42}', "line 3: 'prompt' must be text"),
    ('{"prompt": "ok", "split": "test"}', "line 3: split 'test'"),
    ('{"messages": []}', "line 3: 'messages' must be a non-empty list"),
    ('[1, 2]', "line 3: expected a JSON object"),
])
def test_jsonl_bad_row_imports_nothing(db, tmp_path, bad_line, expect):
    import_prompts(db, write_jsonl(tmp_path / "before.jsonl", [{"prompt": "existing"}]))
    f = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b"}, bad_line, {"prompt": "c"}])
    with pytest.raises(ImportError_, match=expect):
        import_prompts(db, f)
    assert count(db) == 1  # unchanged


def test_duplicates_reported(db, tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}])
    report = import_prompts(db, f)
    assert report.added == 2 and report.duplicates == ["line 3"]
    again = import_prompts(db, f)
    assert again.added == 0 and len(again.duplicates) == 3 and "duplicates skipped" in str(again)


def test_csv_parquet_and_datasets_with_column_map(db, tmp_path):
    from datasets import Dataset

    df = pd.DataFrame({"question": ["one", "two"], "topic": ["a", "b"]})
    df.to_csv(tmp_path / "p.csv", index=False)
    df.assign(question=["three", "four"]).to_parquet(tmp_path / "p.parquet")
    Dataset.from_pandas(df.assign(question=["five", "six"])).save_to_disk(str(tmp_path / "ds"))
    cols = ColumnMap(text="question", meta=["topic"])
    for name in ("p.csv", "p.parquet", "ds"):
        assert import_prompts(db, str(tmp_path / name), columns=cols).added == 2
    with session_scope(db) as s:
        rows = s.exec(select(Prompt).order_by(Prompt.id)).all()
    assert [r.text for r in rows] == ["one", "two", "three", "four", "five", "six"]
    assert rows[0].meta == {"topic": "a"}


def test_csv_bad_line_named(db, tmp_path):
    (tmp_path / "p.csv").write_text("prompt\nfine\n\"\"\n", encoding="utf-8")
    with pytest.raises(ImportError_, match="p.csv line 3: empty prompt"):
        import_prompts(db, str(tmp_path / "p.csv"))
    assert count(db) == 0


def test_unsupported_and_missing(db, tmp_path):
    (tmp_path / "p.txt").write_text("hello")
    with pytest.raises(ImportError_, match="unsupported format"):
        import_prompts(db, str(tmp_path / "p.txt"))
    with pytest.raises(ImportError_, match="no such file"):
        import_prompts(db, str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------- malformed files (issue 12)


def test_bom_jsonl_is_accepted(db, tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "first"}\r\n{"prompt": "second"}\r\n')
    assert import_prompts(db, str(f)).added == 2


@pytest.mark.parametrize("lines, expect", [
    ([b'{"prompt": "a"}', b'{"prompt": "b"}', b'{"prompt": ""}', b'{"prompt": "c"}', b'{"prompt": "d"'],
     r"bad.jsonl line 3: empty prompt"),  # the first bad line, not the JSON error further down
    ([b'{"prompt": "a"}', b'{"prompt": "caf\xe9"}'], r"bad.jsonl line 2: not UTF-8 \(byte 0xe9"),
    ([b'{"prompt": "a"}', b'[' * 100_000], r"bad.jsonl line 2: invalid JSON \(nested too deeply\)"),
    ([b'{"prompt": "x \\ud800"}'], r"bad.jsonl line 1: 'prompt' has an unpaired surrogate \(\\ud800\)"),
    ([b'{"messages": [{"role": "user", "content": "\\udfff"}]}'], r"bad.jsonl line 1: message 1 has an unpaired"),
    ([b'{"prompt": "ok", "split": ["train"]}'], r"bad.jsonl line 1: 'split' must be text"),
    ([b'{"prompt": ' + b"9" * 5000 + b"}"], r"bad.jsonl line 1: invalid JSON"),
])
def test_every_rejection_names_file_line_and_problem(db, tmp_path, lines, expect):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ImportError_, match=expect):
        import_prompts(db, str(f))
    assert count(db) == 0


def test_csv_and_parquet_and_folder_rejections_are_named(db, tmp_path):
    (tmp_path / "enc.csv").write_bytes(b"prompt\nfine\ncaf\xe9\n")
    (tmp_path / "fields.csv").write_text('prompt\nfine\n"a","b"\n""\n', encoding="utf-8")
    pd.DataFrame({"prompt": ["a", "b"], "split": [["train"], ["probe"]]}).to_parquet(tmp_path / "list.parquet")
    (tmp_path / "notads").mkdir()
    (tmp_path / "notads" / "state.json").write_text("{}")
    for name, expect in (("enc.csv", r"enc.csv line 3: not UTF-8"), ("fields.csv", r"fields.csv line 3: 2 fields"),
                         ("list.parquet", r"list.parquet row 1: 'split' must be text"),
                         ("notads", r"notads: a folder, but not a dataset")):
        with pytest.raises(ImportError_, match=expect):
            import_prompts(db, str(tmp_path / name))
    assert count(db) == 0


def test_fuzzed_files_never_crash_the_importer():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from fuzz_import import run

    tally = run(300, seed=12, quiet=True)
    assert tally.counts["crash"] == 0, tally.examples.get("crash", [])[:5]
    assert tally.counts["clear error"] > 150 and tally.counts["imported"] > 20
