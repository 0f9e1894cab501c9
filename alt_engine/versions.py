"""Model versions: register, train (the rows around ``training.run.train``), list, promote, roll back.

The one owner of ``ModelVersion`` rows; exactly one version is served. Training itself never touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session, select

from . import conditioning
from .db import ModelVersion, ObjectiveName, TrainingExample, VersionStatus, session_scope
from .pool import PoolItem

if TYPE_CHECKING:
    from .settings import Settings
    from .training.config import TrainConfig

Progress = Callable[[float, dict], None]  # (fraction done, latest logs), as ``training.run.train`` reports it


def served_version(session: Session) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.SERVED)).first()


def ensure_base_version(session: Session, model: str, path: str) -> ModelVersion:
    """The served version; if none exists yet, register ``model`` as the base and serve it."""
    served = served_version(session)
    if served is not None:
        return served
    version = session.exec(select(ModelVersion).where(ModelVersion.path == path,
                                                      ModelVersion.objective == ObjectiveName.BASE)).first()
    if version is None:
        n = len(session.exec(select(ModelVersion.id)).all())
        version = ModelVersion(name="v0-base" if n == 0 else f"v0-base-{n}", path=path, objective="base",
                               hyperparameters={"model": model})
        session.add(version)
    version.status = "served"
    session.flush()
    return version


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.exec(select(ModelVersion).order_by(ModelVersion.id)))


def promote(session: Session, version_id: int) -> ModelVersion:
    """Serve ``version_id``; the previously served version goes back to ``ready``."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ValueError(f"no model version {version_id}")
    if version.status not in (VersionStatus.READY, VersionStatus.SERVED, VersionStatus.RETIRED):
        raise ValueError(f"version {version.name} is {version.status}; only a ready version can be served")
    for other in session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.SERVED)):
        other.status = "ready"
    version.status = "served"
    close_trained_rounds(session, version)
    session.flush()
    return version


def trained_on_rounds(session: Session, version: ModelVersion) -> list[int]:
    """The rounds whose feedback ``version`` was trained on."""
    from .db import Feedback, Generation, TrainingExample

    ids = set(session.exec(select(Generation.round_id).join(Feedback, Feedback.generation_id == Generation.id)
                           .join(TrainingExample, TrainingExample.feedback_id == Feedback.id)
                           .where(TrainingExample.model_version_id == version.id).distinct()))
    if (version.hyperparameters or {}).get("round_id"):
        ids.add(version.hyperparameters["round_id"])
    return sorted(i for i in ids if i is not None)


def close_trained_rounds(session: Session, version: ModelVersion) -> None:
    """Serving a version closes the rounds it was trained on: their work is done."""
    from .db import Round, RoundStatus

    for rid in trained_on_rounds(session, version):
        rnd = session.get(Round, rid)
        if rnd is not None and rnd.status == RoundStatus.TRAINED:
            rnd.status = RoundStatus.CLOSED


def rollback(session: Session) -> ModelVersion:
    """Serve the parent of the served version."""
    served = served_version(session)
    if served is None or served.parent_id is None:
        raise ValueError("nothing to roll back to: the served version has no parent")
    return promote(session, served.parent_id)


# --------------------------------------------------------------------------- a trained version


def _resumable(session, parent_id: int, objective: str, round_id: int | None, feedback_ids: list[int]):
    """The newest failed version of the same parent, round and data that left a checkpoint, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    failed = session.exec(select(ModelVersion).where(ModelVersion.parent_id == parent_id,
                                                     ModelVersion.objective == objective,
                                                     ModelVersion.status == VersionStatus.FAILED)
                               .order_by(ModelVersion.id.desc()))
    for version in failed:
        if (version.hyperparameters or {}).get("round_id") != round_id or not Path(version.path).is_dir():
            continue
        if get_last_checkpoint(version.path) is None:
            continue
        trained_on = sorted(session.exec(select(TrainingExample.feedback_id).where(
            TrainingExample.model_version_id == version.id)))
        if trained_on == feedback_ids:
            return version
    return None


def train_model_version(db: str, settings: Settings, items: list[PoolItem], config: TrainConfig,
                        parent_version_id: int, objective: str | None = None, round_id: int | None = None,
                        job_id: int | None = None, fmt: conditioning.Format | None = None,
                        progress: Progress | None = None) -> int:
    """Train a child of ``parent_version_id`` as a new ModelVersion; returns its id. Never changes serving.

    The row is "training" while it runs, then "ready" with metrics, or "failed" (the error re-raised).
    With ``config.resume``, a failed run of the same parent, round and data continues from its newest
    checkpoint, in its own version row and directory. ``objective`` names the version (default: the config's).
    """
    from .modeling import resolve_model
    from .training.objectives import get
    from .training.run import train

    get(config.objective).check_items(items)
    objective = objective or config.objective
    feedback_ids = sorted(item.feedback_id for item in items)
    with session_scope(db) as session:
        parent = session.get(ModelVersion, parent_version_id)
        if parent is None:
            raise ValueError(f"no model version {parent_version_id}")
        version = _resumable(session, parent.id, objective, round_id, feedback_ids) if config.resume else None
        if version is None:
            names = set(session.exec(select(ModelVersion.name)))
            number = len(names)
            while f"v{number}-{objective}" in names:
                number += 1
            name = f"v{number}-{objective}"
            path = str((Path(settings.models_dir) / name).resolve())
            version = ModelVersion(name=name, parent_id=parent.id, path=path, objective=objective)
            session.add(version)
            session.flush()
            session.add_all(TrainingExample(model_version_id=version.id, feedback_id=f) for f in feedback_ids)
        version.status, version.metrics = "training", {}
        fmt = fmt or conditioning.Format()
        version.conditioning = fmt.to_dict()
        version.hyperparameters = {**config.to_dict(), "base": parent.path,
                                   "round_id": round_id, "job_id": job_id, "examples": len(items)}
        version_id, parent_path, path = version.id, parent.path, version.path
    try:
        model_path = resolve_model(parent_path, settings.cache_dir)
        metrics = train(model_path, items, config, path, fmt, progress)
    except BaseException as exc:
        with session_scope(db) as session:
            failed = session.get(ModelVersion, version_id)
            failed.status, failed.metrics = "failed", {"error": f"{type(exc).__name__}: {exc}"}
        raise
    with session_scope(db) as session:
        done = session.get(ModelVersion, version_id)
        resolved = metrics.pop("config")
        done.hyperparameters = {**done.hyperparameters, **resolved}
        done.metrics, done.status = metrics, "ready"
        done.conditioning = metrics.pop("conditioning", done.conditioning)  # as it applied to the tokenizer
    return version_id
