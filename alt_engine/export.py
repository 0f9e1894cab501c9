"""Exports: annotations with full provenance, and training-ready datasets in TRL's formats.

- ``annotation_rows`` / ``export_annotations``: one row per feedback row, joined to its generation,
  prompt, round, model version and user (CSV, JSONL, parquet, a ``datasets`` folder, or the Hub);
  ``read_annotations`` reads any of them back to the same rows.
- ``sft_rows`` / ``dpo_rows`` / ``kto_rows``: training-ready datasets in TRL's formats (``export_training``).
- ``round_snapshot``: a folder with a round's rows, its pool as SFT rows, the training config and the
  parent version, so the round can be reproduced.
- ``push_to_hub``: any of them also pushed to a Hugging Face Hub dataset repo (``Dataset.push_to_hub``; a snapshot
  folder with ``HfApi.upload_folder``), with the token from the settings (``ALT_HUB_TOKEN``, else ``HF_TOKEN`` or a
  saved login). The file is written first; a Hub that cannot be reached (offline mode, no network, a refused token)
  is a ``HubError`` that says so and where the local copy is.

Every export is a list of plain dicts first (testable), then written by ``write_rows``. This module is the one
entry point (``export_to``) and re-exports the rest: the files and the Hub are ``export_files``, the TRL datasets
and the pool they count ``export_training``; here are the annotation rows and the round snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlmodel import select

from . import conditioning
from .db import Feedback, Generation, ModelVersion, Prompt, Round, Task, User, session_scope
from .export_files import FORMATS, HubError, _coerce, check_hub, format_of_path, push_folder, read_rows, write_rows
from .export_training import (
    _load_task,
    _pool_rounds,
    _round_ids,
    _rounds_filter,
    _task,
    dpo_rows,
    kto_rows,
    left_out,
    sft_rows,
    training_pool,
)
from .feedback.store import effective_feedback

KINDS = ("annotations", "sft", "dpo", "kto", "snapshot")

# column → type; JSON-valued columns are stored as JSON text so every format holds the same values
ANNOTATION_COLUMNS: dict[str, type] = {
    "feedback_id": int, "generation_id": int, "prompt_id": int, "task": str, "split": str,
    "round": int, "round_status": str, "model_version": str, "prompt": str, "messages": str,
    "conditioning": str, "response": str, "prompt_tokens": int, "response_tokens": int, "truncated": bool,
    "sampling_params": str, "seed": int, "source": str, "kind": str, "category": str, "text": str,
    "score": float, "critique": str, "revision": str, "user": str, "raw": str, "effective": bool,
    "feedback_created_at": str, "generation_created_at": str,
}


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def annotation_rows(db: str, task: str | None = None, rounds: list[int] | None = None) -> list[dict]:
    """Every feedback row with its provenance; ``effective`` marks the one that counts for its generation."""
    with session_scope(db) as s:
        t = _task(s, task)
        q = (select(Feedback, Generation, Prompt, Task, Round, ModelVersion, User)
             .join(Generation, Feedback.generation_id == Generation.id)
             .join(Prompt, Generation.prompt_id == Prompt.id)
             .join(Task, Prompt.task_id == Task.id)
             .outerjoin(Round, Generation.round_id == Round.id)
             .outerjoin(ModelVersion, Generation.model_version_id == ModelVersion.id)
             .outerjoin(User, Feedback.user_id == User.id)
             .order_by(Feedback.id))
        if t is not None:
            q = q.where(Task.id == t.id)
        round_ids = _rounds_filter(s, t, rounds)
        if round_ids is not None:
            q = q.where(Generation.round_id.in_(round_ids))
        found = s.exec(q).all()
        effective = {fb.id for fb in effective_feedback(s, {g.id for _, g, *_ in found}).values()}
        rows = []
        for fb, g, p, tk, rnd, mv, user in found:
            rows.append({
                "feedback_id": fb.id, "generation_id": g.id, "prompt_id": p.id, "task": tk.name, "split": p.split,
                "round": rnd.number if rnd else None, "round_status": rnd.status if rnd else None,
                "model_version": mv.name if mv else None, "prompt": conditioning.prompt_text(conditioning.prompt_of(p)),
                "messages": json.dumps(p.messages) if p.messages else None, "conditioning": g.conditioning,
                "response": g.response, "prompt_tokens": g.prompt_tokens, "response_tokens": g.response_tokens,
                "truncated": g.truncated, "sampling_params": json.dumps(g.sampling_params, sort_keys=True),
                "seed": g.seed, "source": fb.source, "kind": fb.kind, "category": fb.category, "text": fb.text,
                "score": fb.score, "critique": fb.critique, "revision": fb.revision,
                "user": user.name if user else None, "raw": fb.raw, "effective": fb.id in effective,
                "feedback_created_at": _iso(fb.created_at), "generation_created_at": _iso(g.created_at),
            })
    return rows


# --------------------------------------------------------------------------- the annotations export, read back


def read_annotations(path: str | Path, fmt: str | None = None) -> list[dict]:
    """An annotations export read back, each value with its column's type (equal to ``annotation_rows``)."""
    return [{c: _coerce(row.get(c), kind) for c, kind in ANNOTATION_COLUMNS.items()} for row in read_rows(path, fmt)]


def export_annotations(db: str, path: str | Path, fmt: str | None = None, task: str | None = None,
                       rounds: list[int] | None = None, push_to_hub: str | None = None,
                       token: str | None = None) -> int:
    rows = annotation_rows(db, task, rounds)
    write_rows(rows, path, fmt, columns=list(ANNOTATION_COLUMNS), push_to_hub=push_to_hub, token=token)
    return len(rows)


# --------------------------------------------------------------------------- a round's snapshot


def round_snapshot(db: str, out: str | Path, round_number: int, task: str | None = None, tokenizer=None) -> dict:
    """A folder that reproduces round ``round_number``: ``annotations.jsonl`` (its rows), ``sft.jsonl`` (the
    feedback rows the trained version was trained on, as training saw them, when a version was trained on
    it and a tokenizer is given), ``snapshot.json`` (round, task with categories and format, the version it
    sampled from, the version trained on it with its training config and parent). Returns the manifest."""
    from .db import TrainingExample
    from .training.config import AltTrainConfig

    t = _load_task(db, task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with session_scope(db) as s:
        rnd = s.exec(select(Round).where(Round.task_id == t.id, Round.number == round_number)).first()
        if rnd is None:
            raise ValueError(f"task {t.name!r} has no round {round_number}")
        sampled_from = s.get(ModelVersion, rnd.model_version_id) if rnd.model_version_id else None
        trained = [v for v in s.exec(select(ModelVersion).order_by(ModelVersion.id))
                   if (v.hyperparameters or {}).get("round_id") == rnd.id]
        trained_on = {v.id: sorted(s.exec(select(TrainingExample.feedback_id).where(
            TrainingExample.model_version_id == v.id))) for v in trained}

        def version(v: ModelVersion | None) -> dict | None:
            if v is None:
                return None
            parent = s.get(ModelVersion, v.parent_id) if v.parent_id else None
            return {"id": v.id, "name": v.name, "path": v.path, "objective": v.objective, "status": v.status,
                    "parent": parent.name if parent else None, "parent_path": parent.path if parent else None,
                    "conditioning": v.conditioning, "hyperparameters": v.hyperparameters,
                    "feedback_ids": trained_on.get(v.id)}

        manifest = {"round": {"id": rnd.id, "number": rnd.number, "status": rnd.status, "notes": rnd.notes,
                              "created_at": _iso(rnd.created_at)},
                    "task": {"name": t.name, "categories": t.categories, "exemplar": t.exemplar_category,
                             "conditioning": conditioning.format_of(None, t).to_dict()},
                    "sampled_from": version(sampled_from), "trained": [version(v) for v in trained]}
    rows = annotation_rows(db, t.name, [round_number])
    write_rows(rows, out / "annotations.jsonl", columns=list(ANNOTATION_COLUMNS))
    manifest["files"] = {"annotations.jsonl": len(rows)}
    if trained and tokenizer is not None:
        v = trained[-1]
        ids = set(trained_on[v.id])
        fmt = conditioning.Format.from_dict(v.conditioning) if v.conditioning else None
        hp = v.hyperparameters or {}
        config = AltTrainConfig(**{k: hp[k] for k in ("max_prompt_tokens", "max_response_tokens") if k in hp})
        sft = [r for r in sft_rows(db, tokenizer, t.name, [round_number], fmt, config, truncated="last",
                                   k_per_category=10**6) if r["feedback_id"] in ids]
        write_rows(sft, out / "sft.jsonl")
        manifest["files"]["sft.jsonl"] = len(sft)
    (out / "snapshot.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


# --------------------------------------------------------------------------- one entry point (CLI and console)


def _version_and_tokenizer(db: str, settings, version: str | None):
    """The version whose tokenizer and format condition SFT rows (named, else the served one) and its tokenizer."""
    from .modeling import load_tokenizer, resolve_model
    from .versions import served_version

    with session_scope(db) as s:
        row = (s.exec(select(ModelVersion).where(ModelVersion.name == version)).first() if version
               else served_version(s))
    if version and row is None:
        raise ValueError(f"no model version {version!r}")
    path = row.path if row is not None else settings.model
    return row, load_tokenizer(resolve_model(path, settings.cache_dir))


def export_to(settings, kind: str, out: str | Path, fmt: str | None = None, task: str | None = None,
              rounds: list[int] | None = None, version: str | None = None, push_to_hub: str | None = None) -> str:
    """Write one export of ``kind`` (annotations | sft | dpo | kto | snapshot) to ``out``; returns a summary line.

    ``push_to_hub``: a dataset repo id to push it to as well ("" = ``settings.hub_repo``), with ``settings.hub_token``.
    """
    db = settings.db
    if push_to_hub == "":
        push_to_hub = settings.hub_repo or None
        if not push_to_hub:
            raise ValueError("no Hub repo: give one (e.g. me/alt-annotations) or set ALT_HUB_REPO")
    token = settings.hub_token or None
    pushed = f"; pushed to the Hub as {push_to_hub}" if push_to_hub else ""
    if kind == "annotations":
        n = export_annotations(db, out, fmt, task, rounds, push_to_hub, token)
        return f"{n} annotation rows → {out} ({format_of_path(out, fmt)}){pushed}"
    if kind == "snapshot":
        if not rounds or len(rounds) != 1:
            raise ValueError("a snapshot is of one round: give --round N")
        t = _load_task(db, task)
        with session_scope(db) as s:
            rnd = s.exec(select(Round).where(Round.task_id == t.id, Round.number == rounds[0])).first()
            trained = rnd is not None and any((v.hyperparameters or {}).get("round_id") == rnd.id
                                              for v in s.exec(select(ModelVersion)))
        tokenizer = _version_and_tokenizer(db, settings, version)[1] if trained else None
        manifest = round_snapshot(db, out, rounds[0], t.name, tokenizer)
        if push_to_hub:
            push_folder(out, push_to_hub, token)
        files = ", ".join(f"{k} ({v} rows)" for k, v in manifest["files"].items())
        return f"round {rounds[0]} snapshot → {out}: {files}, snapshot.json{pushed}"
    if kind not in ("sft", "dpo", "kto"):
        raise ValueError(f"unknown export {kind!r} ({' | '.join(KINDS)})")
    t = _load_task(db, task)
    row, tokenizer = _version_and_tokenizer(db, settings, version) if kind == "sft" else (None, None)
    pool = training_pool(db, t, row)  # what training counts: the version's own pool, else the planner's defaults
    with_truncated = pool.truncated != "exclude"
    if kind == "sft":
        pool_kw = {k: v for k, v in pool.kwargs().items() if k != "round_ids"}
        rows = sft_rows(db, tokenizer, t.name, rounds, conditioning.format_of(row, t), **pool_kw)
        used = {r["generation_id"] for r in rows}
    elif kind == "dpo":
        rows = dpo_rows(db, t.name, rounds, include_truncated=with_truncated)
        used = {r[k] for r in rows for k in ("chosen_generation_id", "rejected_generation_id")}
    else:
        rows = kto_rows(db, t.name, rounds, include_truncated=with_truncated)
        used = {r["generation_id"] for r in rows}
    why = left_out(db, t, _round_ids(db, t, rounds) if rounds is not None or kind != "sft" else
                   _pool_rounds(db, t, pool), used, kind, pool)
    note = (f"; left out: {', '.join(f'{n} {reason}' for reason, n in why.items())}" if why else "; nothing left out")
    if not rows:
        raise ValueError(f"nothing to export: no labelled generation makes a {kind} row{note.replace('; ', ' — ', 1)}")
    written = write_rows(rows, out, fmt, push_to_hub=push_to_hub, token=token)
    counted = f"{len(used)} generations, as training with truncated = {pool.truncated} counts them"
    return f"{len(rows)} {kind} rows → {out} ({written}); from {counted}{note}{pushed}"


__all__ = [
    "FORMATS", "KINDS", "ANNOTATION_COLUMNS", "HubError", "check_hub", "format_of_path", "push_folder", "read_rows",
    "write_rows", "annotation_rows", "read_annotations", "export_annotations", "sft_rows", "dpo_rows", "kto_rows",
    "training_pool", "left_out", "round_snapshot", "export_to", "select",
]
