"""How long a round will take, before it starts: its stages' sizes times this machine's measured speed.

The speeds come from the database's own history — the newest sampling run (generated tokens per second), the
newest trained version (seconds per example and epoch), the newest round's evaluation (seconds per probe
sequence). Until a run has measured one, the figure is the default model's on 2 CPU cores (DESIGN.md §3) and the
estimate says so; the first round measures them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func
from sqlmodel import select

from .db import Generation, Job, JobKind, JobStatus, ModelVersion, Prompt, Round, Task, VersionStatus, session_scope
from .plan import RoundConfig

# the default model on 2 cores (DESIGN.md §3): ~66 tokens/s for a batch; a step of 8 × 128 tokens ~11 s
UNMEASURED = {"tokens_per_s": 66.0, "train_s_per_example": 11.0 / 8}


@dataclass
class RoundEstimate:
    """Seconds per stage of a round, and what the speeds rest on."""

    seconds: dict[str, float] = field(default_factory=dict)
    measured: list[str] = field(default_factory=list)  # "sampling 180 tokens/s (round 2)", ...
    unmeasured: list[str] = field(default_factory=list)  # the speeds taken from DESIGN.md's figures

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def describe(self) -> str:
        parts = " · ".join(f"{k} {_duration(v)}" for k, v in self.seconds.items() if v >= 0.5)
        basis = ("measured here: " + "; ".join(self.measured)) if self.measured else ""
        if self.unmeasured:
            basis += ("; " if basis else "") + ("not measured on this machine yet: " + ", ".join(self.unmeasured)
                                                + " as for the default model on 2 CPU cores (the first round "
                                                "measures them)")
        return f"about {_duration(self.total)} ({parts}); {basis}"


def _duration(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def _seconds(job: Job) -> float:
    return max((job.finished_at - job.started_at).total_seconds(), 1e-3)


def _sampling_rate(s) -> tuple[float, float, str] | None:
    """(tokens/s, mean response tokens, where) of the newest finished sampling run on this database."""
    import json

    for job in s.exec(select(Job).where(Job.kind.in_((JobKind.SAMPLE, JobKind.ROUND)),
                                        Job.status == JobStatus.SUCCEEDED, Job.round_id.is_not(None))
                      .order_by(Job.id.desc()).limit(5)):
        rnd = s.get(Round, job.round_id)
        tokens, n = s.exec(select(func.sum(Generation.response_tokens), func.count())
                           .where(Generation.round_id == job.round_id)).one()
        if not n or not tokens:
            continue
        wall = (json.loads(rnd.notes or "{}").get("wall_s") or {}).get("sample") if job.kind == JobKind.ROUND else None
        return tokens / (wall or _seconds(job)), tokens / n, f"round {rnd.number}"
    return None


def estimate_round(db: str, task: Task, cfg: RoundConfig, epochs: float = 2.0) -> RoundEstimate:
    """The stages of one round of ``cfg`` on ``task``, in seconds."""
    est = RoundEstimate()
    with session_scope(db) as s:
        train = s.exec(select(func.count()).where(Prompt.task_id == task.id, Prompt.split == "train")).one()
        probes = s.exec(select(func.count()).where(Prompt.task_id == task.id, Prompt.split == "probe")).one()
        rate = _sampling_rate(s)
        trained = next((v for v in s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_not(None))
                                          .order_by(ModelVersion.id.desc()).limit(5))
                        if (v.metrics or {}).get("runtime_s") and (v.metrics or {}).get("examples")), None)
        served_metrics = next(iter(s.exec(select(ModelVersion.metrics)
                                          .where(ModelVersion.status == VersionStatus.SERVED))), {})
    prompts = min(cfg.limit or train, train)
    if rate:
        tokens_per_s, mean_tokens, where = rate
        mean_tokens = min(mean_tokens, cfg.sampling.max_new_tokens)
        est.measured.append(f"sampling {tokens_per_s:.0f} tokens/s ({where})")
    else:
        tokens_per_s, mean_tokens = UNMEASURED["tokens_per_s"], 0.8 * cfg.sampling.max_new_tokens
        est.unmeasured.append(f"sampling {tokens_per_s:.0f} tokens/s")
    est.seconds["sample"] = prompts * cfg.sampling.n * mean_tokens / tokens_per_s
    eval_tokens = cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens
    eval_seqs = (min(cfg.eval.limit or probes, probes)) * cfg.eval.n * (2 if cfg.eval.steer else 1)
    evaluation = eval_seqs * min(mean_tokens, eval_tokens) / tokens_per_s
    if not (served_metrics or {}).get("eval"):  # the parent is evaluated once, the first time
        est.seconds["evaluate_parent"] = evaluation
    per_prompt = cfg.max_per_prompt or cfg.k_per_category * max(len(task.categories), 1)
    examples = prompts * min(per_prompt, cfg.sampling.n)
    if trained is not None:
        m = trained.metrics
        per_example = m["runtime_s"] / (m["examples"] * max(float(m.get("epochs") or 1), 1e-3))
        est.measured.append(f"training {per_example:.2f} s per example and epoch ({trained.name})")
    else:
        per_example = UNMEASURED["train_s_per_example"]
        est.unmeasured.append(f"training {per_example:.1f} s per example and epoch")
    est.seconds["train"] = examples * epochs * per_example
    est.seconds["evaluate"] = evaluation
    return est
