"""Prompt import from CSV, JSONL, parquet or a ``datasets`` dataset, all or nothing.

Every row is validated before anything is written; one bad row aborts the
import with a message naming the row (1-based line for JSONL/CSV) and the
problem, and the database is left unchanged. Duplicates (within the file and
against the task's existing prompts) are skipped and reported. A file with no
``split`` column holds out a deterministic share of its rows as probe prompts
(``probe_share``, at least one; chosen by a hash of each row's index and text,
so a reimport picks the same rows) and the report says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import select

from .db import Prompt, session_scope
from .tasks import get_or_create_task
from .textpolicy import NUL, find_nul

MAX_PROMPT_CHARS = 20_000
SPLITS = ("train", "probe")
DEFAULT_PROBE_SHARE = 0.2


class ImportError_(ValueError):
    """A file that cannot be imported; the message names the row and the problem."""


@dataclass
class ColumnMap:
    """Which source columns hold what. ``messages`` holds a chat (list of {role, content})."""

    text: str = "prompt"
    messages: str = "messages"
    split: str = "split"
    meta: list[str] = field(default_factory=list)  # extra columns copied into Prompt.meta


@dataclass
class ImportReport:
    added: int = 0
    duplicates: list[str] = field(default_factory=list)  # where each skipped duplicate was
    task: str = ""
    held_out: int = 0  # added as probe because the file had no split column

    def __str__(self) -> str:
        dup = f", {len(self.duplicates)} duplicates skipped ({_ranges(self.duplicates)})" if self.duplicates else ""
        held = f"; held out {self.held_out} prompts as probe (no split column)" if self.held_out else ""
        return f"imported {self.added} prompts into task {self.task!r}{dup}{held}"


def _ranges(rows: list[str], limit: int = 10) -> str:
    shown = ", ".join(rows[:limit])
    return shown + (f", … (+{len(rows) - limit})" if len(rows) > limit else "")


def read_rows(path: str) -> list[tuple[str, dict]]:
    """(where, record) pairs: ``line N`` for JSONL and CSV (file lines), ``row N`` otherwise."""
    return list(iter_rows(path))


def iter_rows(path: str) -> Iterator[tuple[str, dict]]:
    """Like ``read_rows``, one row at a time, so a caller validating as it reads reports the first bad line first.

    Every problem is an ``ImportError_`` naming the file and, where there is one, the line or row: bad JSON (too
    deeply nested included), bytes that are not UTF-8, a CSV line with the wrong number of fields. A UTF-8 byte
    order mark at the start of a JSONL or CSV file is accepted.
    """
    p = Path(path)
    if p.is_dir():  # datasets.save_to_disk output
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - any folder that is not a saved dataset
            raise ImportError_(f"{p.name}: a folder, but not a dataset saved with datasets' save_to_disk "
                               f"({type(e).__name__}: {str(e)[:200]})") from e
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        for i, r in enumerate(ds):
            yield f"row {i + 1}", dict(r)
        return
    if not p.exists():
        if p.suffix or "/" not in path:
            raise ImportError_(f"{path}: no such file")
        from datasets import load_dataset  # a hub name, where the hub is reachable

        try:
            ds = load_dataset(path, split="train")
        except Exception as e:  # noqa: BLE001 - report any hub failure plainly
            raise ImportError_(f"{path}: not a file and not loadable from the hub ({e})") from e
        for i, r in enumerate(ds):
            yield f"row {i + 1}", dict(r)
        return
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(p)
    elif suffix == ".csv":
        yield from _csv_rows(p)
    elif suffix in (".parquet", ".pq"):
        import pandas as pd

        try:
            df = pd.read_parquet(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds for a file that is not parquet
            raise ImportError_(f"{p.name}: cannot read as parquet ({type(e).__name__}: {str(e)[:200]})") from e
        for i, r in enumerate(df.to_dict("records")):
            yield f"row {i + 1}", r
    else:
        raise ImportError_(f"{p.name}: unsupported format {suffix!r} (use .jsonl, .csv, .parquet or a datasets "
                           "folder)")


BOM = b"\xef\xbb\xbf"


def _not_utf8(name: str, line: int, e: UnicodeDecodeError, offset: int = 0) -> ImportError_:
    bad = e.object[e.start:e.start + 1].hex()
    return ImportError_(f"{name} line {line}: not UTF-8 (byte 0x{bad} at character {offset + e.start + 1}); "
                        "save the file as UTF-8")


class DuplicateKey(ValueError):
    """A JSON object naming a key twice (``json`` would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _jsonl_rows(p: Path) -> Iterator[tuple[str, dict]]:
    raw = p.read_bytes()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    for n, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(p.name, n, e) from e
        if not text.strip():
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys)
        except DuplicateKey as e:
            raise ImportError_(f"{p.name} line {n}: duplicate key {e.args[0]!r} (name each key once)") from e
        except json.JSONDecodeError as e:
            raise ImportError_(f"{p.name} line {n}: invalid JSON ({e.msg} at character {e.colno})") from e
        except RecursionError as e:
            raise ImportError_(f"{p.name} line {n}: invalid JSON (nested too deeply)") from e
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise ImportError_(f"{p.name} line {n}: invalid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ImportError_(f"{p.name} line {n}: expected a JSON object, got {type(obj).__name__}")
        yield f"line {n}", obj


def _csv_rows(p: Path) -> Iterator[tuple[str, dict]]:
    import csv
    import io

    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start
        line = raw[:start].count(b"\n") + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1)
        raise ImportError_(f"{p.name} line {line}: not UTF-8 (byte 0x{raw[start:start + 1].hex()} at byte "
                           f"{column + 1}); save the file as UTF-8") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header, end = None, 0
    try:
        for fields in reader:
            first, end = end + 1, reader.line_num  # a quoted field may span lines: name the row's first line
            if not fields:  # a blank line
                continue
            if header is None:
                header = [h.strip() for h in fields]
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise ImportError_(f"{p.name} line {first}: duplicate column(s) {', '.join(map(repr, dup))}")
                continue
            if len(fields) != len(header):
                raise ImportError_(f"{p.name} line {first}: {len(fields)} fields, the header has {len(header)}")
            yield f"line {first}", dict(zip(header, fields))
    except csv.Error as e:
        raise ImportError_(f"{p.name} line {end + 1}: {e}") from e


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value)


def _plain_text(where: str, what: str, value: str) -> str:
    """``value`` if it can be stored (no unpaired surrogates, e.g. from a JSON ``"\\ud800"``, no NUL: the same
    refusal on SQLite and PostgreSQL, ``alt_engine.textpolicy``), else a clear error."""
    if NUL in value:
        raise ImportError_(f"{where}: {what} contains a NUL character (\\x00) at character {value.index(NUL) + 1}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ImportError_(f"{where}: {what} has an unpaired surrogate (\\u{ord(value[e.start]):04x}) at "
                           f"character {e.start + 1}") from e
    return value


def _validate(where: str, row: dict, cols: ColumnMap) -> dict:
    messages = row.get(cols.messages)
    if isinstance(messages, str) and messages.strip().startswith("["):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise ImportError_(f"{where}: column {cols.messages!r} is not valid JSON ({e.msg})") from e
        except (RecursionError, ValueError) as e:
            raise ImportError_(f"{where}: column {cols.messages!r} is not valid JSON ({type(e).__name__})") from e
    if messages is not None and not isinstance(messages, str | float | bytes) and hasattr(messages, "__len__"):
        messages = list(messages)
        if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise ImportError_(f"{where}: {cols.messages!r} must be a non-empty list of {{role, content}}")
        if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
            raise ImportError_(f"{where}: a chat message has empty content")
        if any(not isinstance(m["role"], str) or not m["role"].strip() for m in messages):
            raise ImportError_(f"{where}: a chat message's role must be text such as 'user'")
        for i, m in enumerate(messages, 1):
            _plain_text(where, f"message {i}", m["content"])
            _plain_text(where, f"message {i}'s role", m["role"])
        size, text = sum(len(m["content"]) for m in messages), None
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        text = row.get(cols.text)
        if text is None and cols.text in row:
            raise ImportError_(f"{where}: {cols.text!r} is empty (null)")
        if text is None:
            raise ImportError_(f"{where}: no {cols.text!r} column (columns: {', '.join(map(str, row))[:300]}); "
                               f"map one with --text-column")
        if not isinstance(text, str):
            raise ImportError_(f"{where}: {cols.text!r} must be text, got {type(text).__name__}")
        if not text.strip():
            raise ImportError_(f"{where}: empty prompt")
        _plain_text(where, repr(cols.text), text)
        messages, size = None, len(text)
    if size > MAX_PROMPT_CHARS:
        raise ImportError_(f"{where}: prompt too long ({size} characters, limit {MAX_PROMPT_CHARS})")
    split = row.get(cols.split)
    given = not _is_missing(split)
    if given and not isinstance(split, str):
        raise ImportError_(f"{where}: {cols.split!r} must be text ({' or '.join(SPLITS)}), got {type(split).__name__}")
    split = split if given else "train"
    if split not in SPLITS:
        raise ImportError_(f"{where}: split {split[:40]!r} is not one of {', '.join(SPLITS)}")
    meta = {k: row[k] for k in cols.meta if k in row}
    try:
        meta = json.loads(json.dumps(meta, default=str))
        _plain_text(where, "a meta column", json.dumps(meta, ensure_ascii=False))
    except (ValueError, RecursionError) as e:
        raise ImportError_(f"{where}: a meta column cannot be stored ({type(e).__name__})") from e
    if find_nul(meta) is not None:
        raise ImportError_(f"{where}: a meta column contains a NUL character (\\x00)")
    return dict(text=text, messages=messages, split=split, meta=meta, split_given=given)


def _key(rec: dict) -> str:
    return json.dumps(rec["messages"], sort_keys=True) if rec["messages"] else rec["text"]


def probe_rows(keys: list[str], share: float) -> set[int]:
    """Indices of the rows held out as probe: ``share`` of them (at least 1, never all), by hash of index + text."""
    if share <= 0 or len(keys) < 2:
        return set()
    n = min(len(keys) - 1, max(1, round(share * len(keys))))
    rank = sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{i}\0{keys[i]}".encode()).hexdigest())
    return set(rank[:n])


def import_prompts(db: str, path: str, task: str = "default", columns: ColumnMap | None = None,
                   split: str | None = None, probe_share: float = DEFAULT_PROBE_SHARE) -> ImportReport:
    """Validate every row of ``path``, then add all new prompts in one transaction.

    Without ``split`` and without a split column in the file, ``probe_share`` of the rows become probe prompts.
    """
    cols = columns or ColumnMap()
    records = []
    for n, row in iter_rows(path):  # validated as read: the first bad line is the one reported
        rec = _validate(f"{Path(path).name} {n}", row, cols)
        if split:
            rec["split"] = split
        records.append((n, rec))
    if not records:
        raise ImportError_(f"{path}: no rows")
    given = [rec.pop("split_given") for _, rec in records]
    held = set()
    if not split and not any(given):
        held = probe_rows([_key(rec) for _, rec in records], probe_share)
        for i in held:
            records[i][1]["split"] = "probe"
    report = ImportReport(task=task)
    with session_scope(db) as s:
        t = get_or_create_task(s, task)
        existing = s.exec(select(Prompt).where(Prompt.task_id == t.id))
        seen = {_key(dict(text=p.text, messages=p.messages)) for p in existing}
        for n, rec in records:
            key = _key(rec)
            if key in seen:
                report.duplicates.append(n)
                continue
            seen.add(key)
            s.add(Prompt(task_id=t.id, source=Path(path).name, **rec))
            report.added += 1
            if held and rec["split"] == "probe":
                report.held_out += 1
    return report


def task_prompts(session, task, split: str = "train", limit: int | None = None, window: int = 0) -> list[Prompt]:
    """The task's ``split`` prompts in id order (at most ``limit``); a clear error when there are none.

    ``window`` k picks the k-th run of ``limit`` prompts, wrapping around, so successive rounds with a
    prompt budget cover different prompts (the ALT paper sampled a share of its prompts per round).
    """
    q = select(Prompt).where(Prompt.task_id == task.id, Prompt.split == split).order_by(Prompt.id)
    if limit and window:
        every = list(session.exec(q))
        start = (window * limit) % len(every) if every else 0
        rows = (every[start:] + every[:start])[:limit]
    else:
        rows = list(session.exec(q.limit(limit) if limit else q))
    if not rows:
        how = "`alt prompts import FILE --split probe`, or a 'split' column" if split == "probe" else \
            "`alt prompts import FILE`"
        raise ValueError(f"task {task.name!r} has no {split} prompts: import some with {how}")
    return rows
