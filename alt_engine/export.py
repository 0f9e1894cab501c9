"""Exports: annotations with full provenance, and training-ready datasets in TRL's formats.

- ``annotation_rows`` / ``export_annotations``: one row per feedback row, joined to its generation,
  prompt, round, model version and user (CSV, JSONL, parquet, a ``datasets`` folder, or the Hub);
  ``read_annotations`` reads any of them back to the same rows.
- ``sft_rows``: conditional SFT as TRL's prompt/completion — the prompt is the conditioned input built by
  ``conditioning.build_training_example`` (what ``training.run.build_examples`` feeds the trainer), decoded
  to text, for the data pool ``pool.build_pool`` selects (the rows training would use).
- ``dpo_rows``: preference pairs within a prompt from the task's category order (best → worst):
  ``prompt`` / ``chosen`` / ``rejected`` in TRL's conversational format, the plain prompt (no feedback).
- ``kto_rows``: unpaired ``prompt`` / ``completion`` / ``label``: the better half of the categories is
  desirable, the worse half undesirable (the middle one of an odd count is left out).
- ``round_snapshot``: a folder with a round's rows, its pool as SFT rows, the training config and the
  parent version, so the round can be reproduced.
- ``push_to_hub``: any of them also pushed to a Hugging Face Hub dataset repo (``Dataset.push_to_hub``; a snapshot
  folder with ``HfApi.upload_folder``), with the token from the settings (``ALT_HUB_TOKEN``, else ``HF_TOKEN`` or a
  saved login). The file is written first; a Hub that cannot be reached (offline mode, no network, a refused token)
  is a ``HubError`` that says so and where the local copy is.

Every export is a list of plain dicts first (testable), then written by ``write_rows``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

from sqlmodel import select

from . import conditioning
from .db import Feedback, Generation, ModelVersion, Prompt, Round, Task, User, session_scope
from .feedback.store import effective_feedback

FORMATS = ("jsonl", "csv", "parquet", "datasets")
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


def _rounds_filter(session, task: Task | None, rounds: list[int] | None) -> list[int] | None:
    """Round numbers (of ``task``) → round ids; None = every round."""
    if rounds is None:
        return None
    q = select(Round.id).where(Round.number.in_(rounds))
    if task is not None:
        q = q.where(Round.task_id == task.id)
    return list(session.exec(q))


def _task(session, name: str | None) -> Task | None:
    if name is None:
        return None
    task = session.exec(select(Task).where(Task.name == name)).first()
    if task is None:
        raise ValueError(f"no task {name!r}")
    return task


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


# --------------------------------------------------------------------------- writing and reading


def format_of_path(path: str | Path, fmt: str | None = None) -> str:
    """The export format: given, else from the file's suffix (a folder without one: ``datasets``)."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r} ({' | '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "csv", "parquet"):
        return suffix
    if suffix == "json":
        return "jsonl"
    if suffix == "":
        return "datasets"
    raise ValueError(f"cannot tell the format of {path!r} from its suffix: give --format ({' | '.join(FORMATS)})")


class HubError(RuntimeError):
    """The Hub cannot be reached or refused the push (the local export is written all the same)."""


def check_hub(token: str | None, written: str | Path) -> str:
    """The token to push with, after checking the Hub answers to it (``whoami``); else a ``HubError`` naming why
    and ``written`` (the local copy, to push later)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    later = f"The export was written to {written}; push it once the Hub can be reached."
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE). {later}")
    token = token or get_token()
    if not token:
        raise HubError(f"cannot push to the Hub: no token (set ALT_HUB_TOKEN or HF_TOKEN, or run `hf auth login`). "
                       f"{later}")
    try:
        HfApi(endpoint=constants.ENDPOINT, token=token).whoami()
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        why = "the token was refused" if status in (401, 403) else f"it answered {status}"
        raise HubError(f"cannot push to the Hub at {constants.ENDPOINT}: {why}. {later}") from e
    except Exception as e:  # no network, DNS, refused connection, timeout
        raise HubError(f"the Hub at {constants.ENDPOINT} cannot be reached ({type(e).__name__}: {e}). {later}") from e
    return token


def push_folder(folder: str | Path, repo: str, token: str | None) -> None:
    """A folder (a round's snapshot) into the dataset repo ``repo``, after ``check_hub``."""
    from huggingface_hub import HfApi, constants

    token = check_hub(token, folder)
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset",
                          commit_message="ALT Studio round snapshot")
    except Exception as e:
        raise HubError(f"pushing {folder} to {repo} failed ({type(e).__name__}: {e})") from e


def write_rows(rows: list[dict], path: str | Path, fmt: str | None = None, columns: list[str] | None = None,
               push_to_hub: str | None = None, token: str | None = None) -> str:
    """Write ``rows`` to ``path`` as jsonl | csv | parquet | datasets (``save_to_disk``); returns the format.

    ``push_to_hub``: then also ``Dataset.push_to_hub(repo, token=token)`` (``check_hub`` first: a clear
    ``HubError`` when the Hub cannot be reached; the file at ``path`` is written either way).
    """
    import pandas as pd

    fmt = format_of_path(path, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=columns or (list(rows[0]) if rows else None))
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    if fmt == "datasets" or push_to_hub:
        from datasets import Dataset

        ds = Dataset.from_list(rows) if rows else Dataset.from_pandas(frame)
        if fmt == "datasets":
            ds.save_to_disk(str(path))
        if push_to_hub:
            token = check_hub(token, path)
            try:
                ds.push_to_hub(push_to_hub, token=token, commit_message="ALT Studio export")
            except Exception as e:
                raise HubError(f"pushing to {push_to_hub} failed ({type(e).__name__}: {e}); the export was "
                               f"written to {path}") from e
    return fmt


def _coerce(value, kind: type):
    """A value read back from CSV/parquet as its column's type (empty / NaN → None)."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    if kind is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
    if kind is int:
        return int(float(value))
    return kind(value)


def read_rows(path: str | Path, fmt: str | None = None) -> list[dict]:
    """Rows as written by ``write_rows`` (CSV values are strings: see ``read_annotations``)."""
    import pandas as pd

    fmt = format_of_path(path, fmt)
    if fmt == "jsonl":
        with Path(path).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    if fmt == "parquet":
        return pd.read_parquet(path).to_dict("records")
    from datasets import load_from_disk

    return load_from_disk(str(path)).to_list()


def read_annotations(path: str | Path, fmt: str | None = None) -> list[dict]:
    """An annotations export read back, each value with its column's type (equal to ``annotation_rows``)."""
    return [{c: _coerce(row.get(c), kind) for c, kind in ANNOTATION_COLUMNS.items()} for row in read_rows(path, fmt)]


def export_annotations(db: str, path: str | Path, fmt: str | None = None, task: str | None = None,
                       rounds: list[int] | None = None, push_to_hub: str | None = None,
                       token: str | None = None) -> int:
    rows = annotation_rows(db, task, rounds)
    write_rows(rows, path, fmt, columns=list(ANNOTATION_COLUMNS), push_to_hub=push_to_hub, token=token)
    return len(rows)


# --------------------------------------------------------------------------- training datasets (TRL formats)


def _round_ids(db: str, task: Task, rounds: list[int] | None) -> list[int]:
    with session_scope(db) as s:
        ids = _rounds_filter(s, task, rounds)
        return ids if ids is not None else list(s.exec(select(Round.id).where(Round.task_id == task.id)))


def _load_task(db: str, name: str | None) -> Task:
    with session_scope(db) as s:
        if name is None:
            tasks = list(s.exec(select(Task)))
            if len(tasks) != 1:
                raise ValueError(f"the database holds {len(tasks)} tasks: choose one with --task")
            return tasks[0]
        return _task(s, name)


def sft_rows(db: str, tokenizer, task: str | None = None, rounds: list[int] | None = None,
             fmt: conditioning.Format | None = None, config=None, **pool_kw) -> list[dict]:
    """The data pool as TRL prompt/completion rows, the prompt conditioned exactly as training conditions it.

    ``prompt`` = the decoded ``input_ids`` of ``build_training_example`` (feedback where ``fmt`` puts it,
    chat template applied); ``completion`` = the response (TRL appends EOS; ``truncated`` rows have none in
    our trainer). ``rounds`` None: the pool's own choice (latest round for flush).
    """
    from .pool import build_pool
    from .training.config import AltTrainConfig

    t = _load_task(db, task)
    config = config or AltTrainConfig()
    fmt = (fmt or conditioning.format_of(None, t)).for_tokenizer(tokenizer)
    round_ids = _round_ids(db, t, rounds) if rounds is not None else None
    rows = []
    for item in build_pool(db, t.id, round_ids, **pool_kw):
        ex = conditioning.build_training_example(tokenizer, item.prompt, item.feedback, item.response, item.truncated,
                                                 fmt, config.max_response_tokens, config.max_prompt_tokens)
        eos = tokenizer.eos_token_id
        response_ids = ex.response_ids[:-1] if ex.response_ids and ex.response_ids[-1] == eos else ex.response_ids
        rows.append({"prompt": tokenizer.decode(ex.input_ids), "completion": tokenizer.decode(response_ids),
                     "feedback": item.feedback, "truncated": item.truncated, "prompt_id": item.prompt_id,
                     "generation_id": item.generation_id, "feedback_id": item.feedback_id})
    return rows


def _ranked(db: str, task: Task, rounds: list[int] | None, include_truncated: bool) -> dict[int, list[dict]]:
    """prompt id → its labelled generations with the category's rank (0 = best); flagged ones left out."""
    order = {c: i for i, c in enumerate(task.categories)}
    if not order:
        raise ValueError(f"task {task.name!r} has no categories: preference exports need an order")
    round_ids = _round_ids(db, task, rounds)
    with session_scope(db) as s:
        found = s.exec(select(Generation, Prompt).join(Prompt, Generation.prompt_id == Prompt.id)
                       .where(Prompt.task_id == task.id, Generation.round_id.in_(round_ids))
                       .order_by(Generation.id)).all()
        chosen = effective_feedback(s, [g.id for g, _ in found], kinds=("category",))
        flagged = set(s.exec(select(Feedback.generation_id).where(
            Feedback.generation_id.in_([g.id for g, _ in found]), Feedback.kind == "flag")))
        per_prompt: dict[int, list[dict]] = defaultdict(list)
        for g, p in found:
            fb = chosen.get(g.id)
            if fb is None or fb.category not in order or g.id in flagged or (g.truncated and not include_truncated):
                continue
            per_prompt[p.id].append({"prompt": conditioning.as_messages(conditioning.prompt_of(p)),
                                     "response": g.response, "rank": order[fb.category], "category": fb.category,
                                     "generation_id": g.id, "feedback_id": fb.id, "prompt_id": p.id})
    return per_prompt


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def dpo_rows(db: str, task: str | None = None, rounds: list[int] | None = None, include_truncated: bool = False,
             max_pairs_per_prompt: int | None = None) -> list[dict]:
    """Every pair within a prompt whose categories differ: the better-ranked one is ``chosen``."""
    t = _load_task(db, task)
    rows = []
    for prompt_id, gens in sorted(_ranked(db, t, rounds, include_truncated).items()):
        pairs = [(a, b) for a in gens for b in gens if a["rank"] < b["rank"]]
        pairs.sort(key=lambda ab: (ab[0]["rank"] - ab[1]["rank"], ab[0]["generation_id"], ab[1]["generation_id"]))
        for a, b in pairs[:max_pairs_per_prompt]:  # widest gaps first
            rows.append({"prompt": a["prompt"], "chosen": _assistant(a["response"]),
                         "rejected": _assistant(b["response"]), "chosen_category": a["category"],
                         "rejected_category": b["category"], "prompt_id": prompt_id,
                         "chosen_generation_id": a["generation_id"], "rejected_generation_id": b["generation_id"]})
    return rows


def kto_rows(db: str, task: str | None = None, rounds: list[int] | None = None,
             include_truncated: bool = False) -> list[dict]:
    """Unpaired rows: the better half of the categories desirable, the worse half not, an odd middle left out."""
    t = _load_task(db, task)
    k = len(t.categories)
    rows = []
    for prompt_id, gens in sorted(_ranked(db, t, rounds, include_truncated).items()):
        for g in gens:
            if k % 2 and g["rank"] == k // 2:
                continue
            rows.append({"prompt": g["prompt"], "completion": _assistant(g["response"]),
                         "label": g["rank"] < k / 2, "category": g["category"], "prompt_id": prompt_id,
                         "generation_id": g["generation_id"], "feedback_id": g["feedback_id"]})
    return rows


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


def training_pool(db: str, task: Task, version: ModelVersion | None = None):
    """The pool options training counts with: those ``version``'s training job used, else the planner's defaults
    for ``task`` (``plan.pool_options``: the same as ``alt train`` and the console's Training)."""
    from .db import Job
    from .plan import TrainSpec, pool_options

    if version is not None:
        with session_scope(db) as s:
            job = s.exec(select(Job).where(Job.kind == "train", Job.version_id == version.id)).first()
        if job is not None and job.params.get("task_id") == task.id:
            return TrainSpec.from_params(job.params).pool
    return pool_options(task)


def _pool_rounds(db: str, task: Task, pool) -> list[int]:
    """The rounds a pool with no explicit rounds draws from (flush: the latest; accumulate: all)."""
    ids = _round_ids(db, task, None)
    return ids[-1:] if pool.policy == "flush" else ids


def left_out(db: str, task: Task, round_ids: list[int], used: set[int], kind: str, pool) -> dict[str, int]:
    """Why the rounds' generations that made no ``kind`` row were left out: reason → how many."""
    with session_scope(db) as s:
        gens = s.exec(select(Generation).where(Generation.round_id.in_(round_ids))).all()
        ids = [g.id for g in gens]
        labelled = effective_feedback(s, ids, kinds=("category",) if kind != "sft" else ("category", "text"))
        flagged = set(s.exec(select(Feedback.generation_id).where(Feedback.generation_id.in_(ids),
                                                                  Feedback.kind == "flag")))
    by_prompt: dict[int, set] = defaultdict(set)
    for g in gens:
        if g.id in labelled and g.id not in flagged and (pool.truncated != "exclude" or not g.truncated):
            by_prompt[g.prompt_id].add(labelled[g.id].category)
    reasons: dict[str, int] = defaultdict(int)
    for g in gens:
        if g.id in used:
            continue
        if g.id in flagged:
            reasons["flagged"] += 1
        elif g.id not in labelled:
            reasons["unlabelled"] += 1
        elif g.truncated and pool.truncated == "exclude":
            reasons["truncated (no EOS; truncated = exclude)"] += 1
        elif kind == "dpo" and len(by_prompt[g.prompt_id]) < 2:
            reasons["in prompts with one category only (no pair)"] += 1
        elif kind == "kto" and len(task.categories) % 2 and labelled[g.id].category == \
                task.categories[len(task.categories) // 2]:
            reasons["of the middle category (neither desirable nor not)"] += 1
        elif kind == "sft":
            cap = f"at most {pool.max_per_prompt} per prompt, " if pool.max_per_prompt else ""
            reasons[f"not drawn ({cap}{pool.k_per_category} per category)"] += 1
        else:
            reasons["not used"] += 1
    return dict(reasons)
