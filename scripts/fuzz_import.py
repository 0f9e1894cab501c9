"""Fuzz the prompt importer: thousands of generated malformed (and some valid) files, then counts.

Each file goes through ``alt_engine.prompts.import_prompts`` into one scratch database and is counted as
  * clear error — an ``ImportError_`` whose message starts with the file's name, names the line (JSONL, CSV) or
    row (parquet) when the problem is in one, and names the *first* bad line where the generator planted it;
    the database is unchanged;
  * imported — no error, and exactly ``report.added`` prompts more in the database;
  * crash — anything else: another exception, a message without the file or line, the wrong line, a partial
    import.
Kinds: JSONL (bad JSON, deep nesting, not UTF-8, lone surrogates, BOMs, wrong types, huge numbers, lists where
text belongs, random byte mutations), CSV (bad encoding, wrong field counts, quotes, NUL, duplicate headers),
parquet (lists and numbers in text columns, nested messages, not parquet at all), folders that are not
datasets, unsupported suffixes.

    .venv/bin/python scripts/fuzz_import.py                 # 3000 files, seed 0
    .venv/bin/python scripts/fuzz_import.py --n 10000 --seed 7 --show 5
Exits 1 if any file crashed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func  # noqa: E402
from sqlmodel import select  # noqa: E402

from alt_engine.db import Prompt, init_db, session_scope  # noqa: E402
from alt_engine.prompts import MAX_PROMPT_CHARS, ImportError_, import_prompts  # noqa: E402

GOOD = [
    lambda r: {"prompt": f"Question {r.random():.6f}?"},
    lambda r: {"prompt": f"Write about {r.randrange(10**6)}.", "split": r.choice(["train", "probe"])},
    lambda r: {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": f"Hi {r.randrange(10**6)}"}]},
]
BAD_JSONL: list = [  # (why, line bytes)
    ("truncated", lambda r: b'{"prompt": "ok"'),
    ("deep nesting", lambda r: b"[" * r.choice([1000, 50_000, 200_000])),
    ("deep object nesting", lambda r: b'{"prompt": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"),
    ("not utf-8", lambda r: b'{"prompt": "caf\xe9 ' + bytes([r.randrange(0x80, 0x100)]) + b'"}'),
    ("latin-1 file line", lambda r: '{"prompt": "Ünïcödé"}'.encode("latin-1")),
    ("lone surrogate", lambda r: b'{"prompt": "x \\ud800 y"}'),
    ("lone surrogate in chat", lambda r: b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
    ("surrogate role", lambda r: b'{"messages": [{"role": "\\ud83d", "content": "hi"}]}'),
    ("number", lambda r: b'{"prompt": 42}'),
    ("null", lambda r: b'{"prompt": null}'),
    ("NaN", lambda r: b'{"prompt": NaN}'),
    ("huge int", lambda r: b'{"prompt": ' + b"9" * 5000 + b"}"),
    ("list prompt", lambda r: b'{"prompt": ["a", "b"]}'),
    ("array line", lambda r: b"[1, 2, 3]"),
    ("string line", lambda r: b'"just a string"'),
    ("empty prompt", lambda r: b'{"prompt": "  "}'),
    ("too long", lambda r: json.dumps({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}).encode()),
    ("no prompt column", lambda r: b'{"question": "wrong column"}'),
    ("list split", lambda r: b'{"prompt": "ok", "split": ["train"]}'),
    ("number split", lambda r: b'{"prompt": "ok", "split": 3}'),
    ("unknown split", lambda r: b'{"prompt": "ok", "split": "test"}'),
    ("empty chat", lambda r: b'{"messages": []}'),
    ("chat without content", lambda r: b'{"messages": [{"role": "user"}]}'),
    ("chat number role", lambda r: b'{"messages": [{"role": 5, "content": "x"}]}'),
    ("chat number content", lambda r: b'{"messages": [{"role": "user", "content": 5}]}'),
    ("chat as object", lambda r: b'{"messages": {"role": "user", "content": "x"}}'),
    ("chat as bad json text", lambda r: b'{"messages": "[{\\"role\\": \\"user\\""}'),
    ("chat as deep json text", lambda r: json.dumps({"messages": "[" * 100_000}).encode()),
    ("BOM mid-file", lambda r: b"\xef\xbb\xbf" + json.dumps(GOOD[0](r)).encode()),
    ("NUL bytes", lambda r: b'{"prompt": "a"}\x00\x00'),
    ("utf-16", lambda r: '{"prompt": "hi"}'.encode("utf-16")),
]
BAD_CSV: list = [
    ("wrong field count", lambda r: 'a,"b",c'),
    ("empty prompt", lambda r: '""'),
    ("not utf-8", lambda r: b"caf\xe9"),
    ("unknown split", None),  # filled with a split column below
]


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # outcome -> [(kind, message)]

    def add(self, outcome: str, kind: str, message: str) -> None:
        self.counts[outcome] += 1
        self.examples.setdefault(outcome, []).append((kind, message))


def _count(db: str) -> int:
    with session_scope(db) as s:
        return s.exec(select(func.count()).select_from(Prompt)).one()


def _line(r: random.Random, good: bool) -> bytes:
    return json.dumps(r.choice(GOOD)(r)).encode() if good else b""


def make_jsonl(r: random.Random, path: Path) -> tuple[str, int | None]:
    """A JSONL file; (kind, the first planted bad line or None when unknown/none)."""
    n = r.randint(1, 8)
    lines: list[bytes] = [json.dumps(r.choice(GOOD)(r)).encode() for _ in range(n)]
    mode = r.random()
    kind = "jsonl"
    if mode < 0.55:  # plant 1-3 bad lines
        spots = sorted(r.sample(range(n + 2), k=min(n + 2, r.randint(1, 3))))
        whys = []
        for spot in spots:
            why, make = r.choice(BAD_JSONL)
            lines.insert(min(spot, len(lines)), make(r))
            whys.append(why)
        kind = "jsonl " + " + ".join(whys)
    elif mode < 0.8:  # random byte mutations of a good file: expectation unknown
        blob = bytearray(b"\n".join(lines))
        for _ in range(r.randint(1, 6)):
            op, i = r.random(), r.randrange(len(blob) + 1)
            if op < 0.4 and blob:
                blob[min(i, len(blob) - 1)] = r.randrange(256)
            elif op < 0.7:
                blob[i:i] = bytes([r.randrange(256)])
            elif blob:
                del blob[min(i, len(blob) - 1)]
        path.write_bytes(bytes(blob))
        return "jsonl mutated", None
    elif mode < 0.9:  # BOM at the start, CRLF, blank lines: valid
        path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines + [b""]) + b"\n\n")
        return "jsonl bom+crlf (valid)", None
    elif mode < 0.95:
        path.write_bytes(r.choice([b"", b"\n\n", b"   \n", b"\xef\xbb\xbf"]))
        return "jsonl empty", None
    else:
        path.write_bytes(b"\n".join(lines))
        return "jsonl valid", None
    path.write_bytes(b"\n".join(lines))
    bom = b"\xef\xbb\xbf"  # accepted at the very start of the file only
    bad = [i for i, line in enumerate(lines, 1)
           if not _is_good_jsonl(line[len(bom):] if i == 1 and line.startswith(bom) else line)]
    first_bad = bad[0] if bad else None
    return kind, first_bad


def _is_good_jsonl(line: bytes) -> bool:
    try:
        obj = json.loads(line.decode("utf-8"))
    except Exception:  # noqa: BLE001
        return False
    return isinstance(obj, dict) and _looks_valid(obj)


def _looks_valid(obj: dict) -> bool:
    """Mirrors only the generator's own GOOD rows (anything planted is bad)."""
    if set(obj) == {"prompt"} or set(obj) == {"prompt", "split"}:
        return (isinstance(obj["prompt"], str) and obj["prompt"].strip() != ""
                and len(obj["prompt"]) <= MAX_PROMPT_CHARS
                and obj.get("split", "train") in ("train", "probe") and _encodable(obj["prompt"]))
    if set(obj) == {"messages"} and isinstance(obj["messages"], list) and obj["messages"]:
        return all(isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str)
                   and m["content"].strip() and isinstance(m["role"], str) and _encodable(m["content"] + m["role"])
                   for m in obj["messages"])
    return False


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def make_csv(r: random.Random, path: Path) -> tuple[str, int | None]:
    header = r.choice([["prompt"], ["prompt", "split"], ["prompt", "topic"], ["question"], ["prompt", "prompt"]])
    rows = [[f"Q{r.randrange(10**6)} \"quoted\", comma" if c == "prompt" else
             (r.choice(["train", "probe"]) if c == "split" else "x") for c in header] for _ in range(r.randint(1, 6))]

    def enc(fields):
        return ",".join('"' + f.replace('"', '""') + '"' for f in fields)

    lines = [enc(header).encode()] + [enc(f).encode() for f in rows]
    kind = "csv"
    first_bad = None
    known = header in (["prompt"], ["prompt", "split"], ["prompt", "topic"])
    if r.random() < 0.6 and known:
        spot = r.randint(2, len(lines) + 1)
        why = r.choice(["wrong field count", "empty prompt", "not utf-8", "unknown split", "nul"])
        if why == "wrong field count":
            bad = b'"a","b","c","d"'
        elif why == "empty prompt":
            bad = enc([""] + ["train"] * (len(header) - 1)).encode()
        elif why == "not utf-8":
            bad = b'"caf\xe9"' + b',"train"' * (len(header) - 1)
        elif why == "unknown split" and "split" in header:
            bad = enc(["ok", "test"]).encode()
        else:
            why, bad = "wrong field count", b'"a"' + b',"b"' * len(header)
        spot = min(spot, len(lines) + 1)
        lines.insert(spot - 1, bad)
        kind, first_bad = f"csv {why}", spot
    elif not known:
        kind = f"csv header {header}"
    elif r.random() < 0.3:
        blob = bytearray(b"\n".join(lines))
        for _ in range(r.randint(1, 4)):
            blob[r.randrange(len(blob))] = r.choice([0, 34, 44, 10, 13, 0xFF, r.randrange(256)])
        path.write_bytes(bytes(blob))
        return "csv mutated", None
    prefix = b"\xef\xbb\xbf" if r.random() < 0.3 else b""
    path.write_bytes(prefix + b"\n".join(lines) + b"\n")
    return kind, first_bad


def make_parquet(r: random.Random, path: Path) -> tuple[str, int | None]:
    import pandas as pd

    n = r.randint(1, 5)
    choice = r.randrange(7)
    if choice == 0:
        df, kind = pd.DataFrame({"prompt": [f"Q{i}" for i in range(n)], "split": [["train"]] * n}), "list split"
    elif choice == 1:
        df, kind = pd.DataFrame({"prompt": list(range(n))}), "int prompt"
    elif choice == 2:
        df, kind = pd.DataFrame({"prompt": [None] * n}), "null prompt"
    elif choice == 3:
        df, kind = pd.DataFrame({"messages": [[{"role": "user", "content": [1, 2]}]] * n}), "nested content"
    elif choice == 4:
        df, kind = pd.DataFrame({"prompt": [["a", "b"]] * n}), "list prompt"
    elif choice == 5:
        df, kind = pd.DataFrame({"prompt": [f"Q{i}" for i in range(n)], "split": [1.5] * n}), "float split"
    else:
        path.write_bytes(bytes(r.randrange(256) for _ in range(r.randint(0, 300))))
        return "parquet garbage", None
    df.to_parquet(path)
    return f"parquet {kind}", 1


def make_folder(r: random.Random, path: Path) -> tuple[str, int | None]:
    path.mkdir()
    for i in range(r.randint(0, 3)):
        (path / r.choice(["state.json", "dataset_info.json", f"data-{i}.arrow", "x.txt"])).write_bytes(
            bytes(r.randrange(256) for _ in range(r.randint(0, 64))))
    return "folder not a dataset", None


def run(n: int, seed: int, show: int = 3, quiet: bool = False) -> Tally:
    work = Path(tempfile.mkdtemp(prefix="fuzz-import-"))
    db = str(work / "fuzz.db")
    init_db(db)
    tally = Tally()
    r = random.Random(seed)
    try:
        for i in range(n):
            pick = r.random()
            if pick < 0.55:
                path = work / f"f{i}.jsonl"
                kind, first_bad = make_jsonl(r, path)
            elif pick < 0.8:
                path = work / f"f{i}.csv"
                kind, first_bad = make_csv(r, path)
            elif pick < 0.93:
                path = work / f"f{i}.parquet"
                kind, first_bad = make_parquet(r, path)
            elif pick < 0.97:
                path = work / f"d{i}"
                kind, first_bad = make_folder(r, path)
            else:
                path = work / f"f{i}{r.choice(['.json', '.txt', '.tsv', ''])}"
                path.write_bytes(b'{"prompt": "hi"}')
                kind, first_bad = "unsupported", None
            before = _count(db)
            try:
                report = import_prompts(db, str(path), task="default")
            except ImportError_ as e:
                msg = str(e)
                unchanged = _count(db) == before
                names_file = msg.startswith((path.name, str(path)))
                where = re.search(r"\b(line|row) (\d+)\b", msg)
                right_line = first_bad is None or (where is not None and int(where[2]) == first_bad)
                if unchanged and names_file and right_line:
                    tally.add("clear error", kind, msg)
                else:
                    problem = ("partial import" if not unchanged else "file not named" if not names_file
                               else f"wrong line (expected {first_bad})")
                    tally.add("crash", kind, f"{problem}: {msg[:300]}")
            except Exception as e:  # noqa: BLE001 - that is what we count
                tally.add("crash", kind, "".join(traceback.format_exception_only(e)).strip()[:300])
            else:
                if _count(db) - before == report.added:
                    tally.add("imported", kind, str(report))
                else:
                    tally.add("crash", kind, f"counted {_count(db) - before} rows, report says {report.added}")
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        for outcome in ("clear error", "imported", "crash"):
            print(f"{outcome:12s} {tally.counts[outcome]}")
            for kind, message in tally.examples.get(outcome, [])[:show]:
                print(f"    {kind}: {message[:160]}")
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="example messages per outcome")
    args = ap.parse_args()
    start = time.perf_counter()
    tally = run(args.n, args.seed, args.show)
    print(f"{args.n} files in {time.perf_counter() - start:.1f} s (seed {args.seed})")
    return 1 if tally.counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
