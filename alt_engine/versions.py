"""Model versions: register, list, promote, roll back. Exactly one version is served."""

from __future__ import annotations

from sqlmodel import Session, select

from .db import ModelVersion


def served_version(session: Session) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.status == "served")).first()


def ensure_base_version(session: Session, model: str, path: str) -> ModelVersion:
    """The served version; if none exists yet, register ``model`` as the base and serve it."""
    served = served_version(session)
    if served is not None:
        return served
    version = session.exec(select(ModelVersion).where(ModelVersion.path == path,
                                                      ModelVersion.objective == "base")).first()
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
    if version.status not in ("ready", "served", "retired"):
        raise ValueError(f"version {version.name} is {version.status}; only a ready version can be served")
    for other in session.exec(select(ModelVersion).where(ModelVersion.status == "served")):
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
