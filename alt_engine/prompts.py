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
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import select

from .db import Prompt, session_scope
from .tasks import get_or_create_task

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
    p = Path(path)
    if p.is_dir():  # datasets.save_to_disk output
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(p))
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        return [(f"row {i + 1}", dict(r)) for i, r in enumerate(ds)]
    if not p.exists():
        if p.suffix or "/" not in path:
            raise ImportError_(f"{path}: no such file")
        from datasets import load_dataset  # a hub name, where the hub is reachable

        try:
            ds = load_dataset(path, split="train")
        except Exception as e:  # noqa: BLE001 - report any hub failure plainly
            raise ImportError_(f"{path}: not a file and not loadable from the hub ({e})") from e
        return [(f"row {i + 1}", dict(r)) for i, r in enumerate(ds)]
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ImportError_(f"{p.name} line {n}: invalid JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise ImportError_(f"{p.name} line {n}: expected a JSON object, got {type(obj).__name__}")
                rows.append((f"line {n}", obj))
        return rows
    import pandas as pd

    try:
        if suffix == ".csv":
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            return [(f"line {i + 2}", r) for i, r in enumerate(df.to_dict("records"))]  # line 1: header
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            return [(f"row {i + 1}", r) for i, r in enumerate(df.to_dict("records"))]
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise ImportError_(f"{p.name}: cannot read ({e})") from e
    raise ImportError_(f"{p.name}: unsupported format {suffix!r} (use .jsonl, .csv, .parquet or a datasets folder)")


def _validate(where: str, row: dict, cols: ColumnMap) -> dict:
    messages = row.get(cols.messages)
    if isinstance(messages, str) and messages.strip().startswith("["):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise ImportError_(f"{where}: column {cols.messages!r} is not valid JSON ({e.msg})") from e
    if messages is not None and not isinstance(messages, str | float) and hasattr(messages, "__len__"):
        messages = list(messages)
        if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise ImportError_(f"{where}: {cols.messages!r} must be a non-empty list of {{role, content}}")
        if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
            raise ImportError_(f"{where}: a chat message has empty content")
        size, text = sum(len(m["content"]) for m in messages), None
        messages = [{"role": str(m["role"]), "content": m["content"]} for m in messages]
    else:
        text = row.get(cols.text)
        if text is None:
            raise ImportError_(f"{where}: no {cols.text!r} column (columns: {', '.join(map(str, row))}); "
                               f"map one with --text-column")
        if not isinstance(text, str):
            raise ImportError_(f"{where}: {cols.text!r} must be text, got {type(text).__name__}")
        if not text.strip():
            raise ImportError_(f"{where}: empty prompt")
        messages, size = None, len(text)
    if size > MAX_PROMPT_CHARS:
        raise ImportError_(f"{where}: prompt too long ({size} characters, limit {MAX_PROMPT_CHARS})")
    split = row.get(cols.split) or "train"
    if split not in SPLITS:
        raise ImportError_(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    meta = {k: row[k] for k in cols.meta if k in row}
    return dict(text=text, messages=messages, split=split, meta=json.loads(json.dumps(meta, default=str)))


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
    rows = read_rows(path)
    if not rows:
        raise ImportError_(f"{path}: no rows")
    records = []
    for n, row in rows:
        rec = _validate(f"{Path(path).name} {n}", row, cols)
        if split:
            rec["split"] = split
        records.append((n, rec))
    held = set()
    if not split and not any(row.get(cols.split) for _, row in rows):
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
