"""Planning a job: what a user chose (``None`` = the default) → the typed spec the job runs.

One spec per job kind (``SampleSpec``, ``FeedbackSpec``, ``TrainSpec``, ``EvalSpec``, ``RoundSpec``; the pool's
options are ``pool.PoolOptions``) and one ``plan_<kind>`` function that makes it. The CLI (``app/cli``), the console
(``app/console``) and rounds (``rounds.run_round``, through ``RoundConfig.pool``) all go through these, so the same
choices give the same spec and the same pool wherever a job starts. The defaults are the measured ones and live
here (``defaults``): 160 new tokens, the demo task's truncation policy, at most 2 examples per prompt, the
objective's own epochs and pool policy. A spec's ``params()`` is the job row's JSON; ``from_params`` reads it back.

Convention for counts a user may switch off: ``None`` = the default, ``0`` = none (no cap, every prompt).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from .db import ObjectiveName, Round, Task, session_scope
from .evaluation import METRICS, EvalConfig
from .pool import POLICIES, TRUNCATION, PoolOptions, check_pool
from .sampling import SamplingParams
from .tasks import DEMOS

PROMOTE = ("always", "if_better", "unless_worse", "never")


@dataclass
class RoundConfig:
    """Everything about a round except the provider and the training options."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    limit: int | None = 32  # train prompts sampled per round, a window that moves each round (None = all)
    k_per_category: int = 2
    policy: str = "flush"  # flush (ALT) | accumulate (Quark)
    truncated: str = "exclude"  # truncated generations in the pool: exclude | last | worst (see pool.py)
    max_per_prompt: int | None = 2  # the pool's cap per prompt: the most different pair (README, Efficacy)
    holdout: str | None = None  # attribute levels kept out of the pool, e.g. "length=short,subject=off" (pool.py)
    promote: str = "unless_worse"  # always | if_better (CI above the parent) | unless_worse (CI not below) | never
    metric: str = "auto"  # compared for promotion; auto: mean_score for scored feedback, else exemplar_share
    eval: EvalConfig = field(default_factory=EvalConfig)
    background_training: bool = False  # train in a subprocess job (the CLI's foreground runs it in-process)
    # exploration (round >= 2): this share of each prompt's n samples is drawn under ``explore_with`` (worst |
    # plain | a feedback text), unguided, instead of under the exemplar — so the pool keeps both ends of the
    # feedback scale when the model has learned to answer the exemplar (docs/guidance.md, "Steering that lasts")
    explore: float = 0.0
    explore_with: str = "worst"

    def __post_init__(self):
        if not 0 <= self.explore < 1:
            raise ValueError(f"explore is a share of each prompt's samples in [0, 1), got {self.explore}")
        if self.promote not in PROMOTE:
            raise ValueError(f"promote must be one of {', '.join(PROMOTE)}, got {self.promote!r}")
        if self.metric != "auto" and self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r} for promotion ({', '.join(METRICS)})")
        if self.policy not in POLICIES:
            raise ValueError(f"pool policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.truncated not in TRUNCATION:
            raise ValueError(f"truncation policy must be one of {', '.join(TRUNCATION)}, got {self.truncated!r}")
        if self.holdout:
            from .feedback.free_text import parse_combination

            parse_combination(self.holdout)  # a bad combination fails before a round exists

    def pool(self, round_ids=None, seed: int = 0) -> PoolOptions:
        """The pool a round of this config trains on: ``round_ids`` (its own for flush; None = every round)."""
        return PoolOptions(round_ids=round_ids, k_per_category=self.k_per_category, policy=self.policy,
                           max_per_prompt=self.max_per_prompt, truncated=self.truncated, seed=seed,
                           holdout=self.holdout)




@dataclass(frozen=True)
class Defaults:
    """What a job gets for every choice left empty: the console's forms show these, the CLI's options default
    to them (``defaults(task)``)."""

    n: int = SamplingParams.n
    limit: int = 32  # train prompts a round samples (a window that moves each round)
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    max_new_tokens: int = SamplingParams.max_new_tokens  # enough that few answers of a small chat model truncate
    k_per_category: int = 2
    max_per_prompt: int = 2  # the most different pair per prompt: every prompt contrasts, half the cost of n = 4
    truncated: str = "exclude"  # a demo task's own (concise: worst)
    provider: str | None = None  # a demo task's own
    promote: str = "unless_worse"
    metric: str = "auto"
    eval_n: int = EvalConfig.n


def defaults(task: Task | str | None = None) -> Defaults:
    """The defaults for ``task`` (a demo task brings its provider and truncation policy)."""
    name = task.name if isinstance(task, Task) else task
    demo = DEMOS.get(name or "")
    return Defaults(truncated=demo.truncated, provider=demo.provider) if demo else Defaults()


def _count(value: int | None, default: int | None) -> int | None:
    """None → the default; 0 → None (no cap / all)."""
    return default if value is None else (int(value) or None)


def _objective(name: str | None):
    from .training.objectives import get

    return get(name or "alt")


def pool_options(task: Task | str, objective: str = "alt", *, round_ids=None, k_per_category: int | None = None,
                 policy: str | None = None, max_per_prompt: int | None = None, truncated: str | None = None,
                 seed: int = 0) -> PoolOptions:
    """The pool for these choices: the one place the pool's defaults are filled in."""
    d = defaults(task)
    return PoolOptions(round_ids=round_ids, k_per_category=int(k_per_category or d.k_per_category),
                       policy=policy or _objective(objective).pool_policy,
                       max_per_prompt=_count(max_per_prompt, d.max_per_prompt), truncated=truncated or d.truncated,
                       seed=seed)


# --------------------------------------------------------------------------- the specs


@dataclass(frozen=True)
class SampleSpec:
    """A sampling round: ``sampling.n`` generations per prompt of ``split`` from a version (None: the served)."""

    kind: ClassVar[str] = "sample"
    task_id: int
    sampling: SamplingParams
    version_id: int | None = None
    split: str = "train"
    limit: int | None = None
    condition: str | None = "auto"  # auto (exemplar once trained) | exemplar | none | a feedback text
    backend: str | None = None

    def params(self) -> dict:
        return dict(task_id=self.task_id, version_id=self.version_id, split=self.split, limit=self.limit,
                    sampling=asdict(self.sampling), condition=self.condition, backend=self.backend)

    @classmethod
    def from_params(cls, p: dict) -> SampleSpec:
        return cls(task_id=p["task_id"], sampling=SamplingParams(**p.get("sampling", {})),
                   version_id=p.get("version_id"), split=p.get("split", "train"), limit=p.get("limit"),
                   condition=p.get("condition", "auto"), backend=p.get("backend"))


@dataclass(frozen=True)
class FeedbackSpec:
    """A provider on a round's generations (``all``: every one, skipping what it labelled; else the unlabelled)."""

    kind: ClassVar[str] = "feedback"
    round_id: int
    provider: str
    all: bool = False

    def params(self) -> dict:
        return dict(round_id=self.round_id, provider=self.provider, all=self.all)

    @classmethod
    def from_params(cls, p: dict) -> FeedbackSpec:
        return cls(round_id=p["round_id"], provider=p["provider"], all=bool(p.get("all")))


@dataclass(frozen=True)
class TrainSpec:
    """Train a child of ``parent_version_id`` with ``objective`` on the pool ``pool`` selects."""

    kind: ClassVar[str] = "train"
    task_id: int
    parent_version_id: int
    objective: str
    config: dict  # the objective's config, ``TrainConfig.to_dict()``
    conditioning: dict  # the format the version is trained and served with (``Format.to_dict()``)
    pool: PoolOptions
    round_id: int | None = None  # the round recorded on the version

    def params(self) -> dict:  # the pool's keywords flat, as ``jobs._train`` has always read them
        return dict(task_id=self.task_id, round_id=self.round_id, parent_version_id=self.parent_version_id,
                    objective=self.objective, config=self.config, conditioning=self.conditioning,
                    **self.pool.kwargs())

    @classmethod
    def from_params(cls, p: dict) -> TrainSpec:
        return cls(task_id=p["task_id"], parent_version_id=p["parent_version_id"], objective=p.get("objective", "alt"),
                   config=p.get("config", {}), conditioning=p.get("conditioning") or {},
                   pool=PoolOptions.from_kwargs(p), round_id=p.get("round_id"))


@dataclass(frozen=True)
class EvalSpec:
    """Evaluate a version on the task's probe prompts, judged by ``provider``."""

    kind: ClassVar[str] = "eval"
    task_id: int
    version_id: int
    provider: str | None
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: str | None = None

    def params(self) -> dict:
        return dict(task_id=self.task_id, version_id=self.version_id, provider=self.provider, eval=asdict(self.eval),
                    reference=self.reference)

    @classmethod
    def from_params(cls, p: dict) -> EvalSpec:
        return cls(task_id=p["task_id"], version_id=p.get("version_id"), provider=p.get("provider"),
                   eval=EvalConfig(**p.get("eval", {})), reference=p.get("reference"))


@dataclass(frozen=True)
class RoundSpec:
    """A whole round (sample → feedback → train → evaluate → promote) from the served version."""

    kind: ClassVar[str] = "round"
    task_id: int
    provider: str
    round: RoundConfig
    objective: str
    config: dict

    def params(self) -> dict:
        return dict(task_id=self.task_id, provider=self.provider, round=asdict(self.round), objective=self.objective,
                    config=self.config)

    @classmethod
    def from_params(cls, p: dict) -> RoundSpec:
        rc = dict(p.get("round", {}))
        cfg = RoundConfig(sampling=SamplingParams(**rc.pop("sampling", {})), eval=EvalConfig(**rc.pop("eval", {})),
                          **rc)
        return cls(task_id=p["task_id"], provider=p["provider"], round=cfg, objective=p.get("objective") or "alt",
                   config=p.get("config", {}))

    def pool(self, round_ids=None) -> PoolOptions:
        """The pool this round trains on once its round exists."""
        return self.round.pool(round_ids, self.config.get("seed", 0))


# --------------------------------------------------------------------------- planning


def _served_id(db: str) -> int:
    from .versions import served_version

    with session_scope(db) as s:
        served = served_version(s)
    if served is None:
        raise ValueError("no served model version: run `alt init` (or `alt serve`) first")
    return served.id


def _latest_round(db: str, task: Task) -> int:
    from sqlmodel import select

    with session_scope(db) as s:
        rid = s.exec(select(Round.id).where(Round.task_id == task.id).order_by(Round.number.desc())).first()
    if rid is None:
        raise ValueError(f"task {task.name!r} has no rounds yet: sample one first (Rounds → Start sampling, or a "
                         "whole round: Rounds → Run a round)")
    return rid


def _sampling(d: Defaults, n, temperature, top_p, max_new_tokens, seed, batch_size, mask_control_tokens=False,
              guidance: float = 0.0, negative: str | None = None):
    """SamplingParams from the choices, the defaults ``d`` where they are None (0 tokens / n: the default too)."""
    return SamplingParams(n=int(n or d.n), temperature=d.temperature if temperature is None else float(temperature),
                          top_p=d.top_p if top_p is None else float(top_p),
                          max_new_tokens=int(max_new_tokens or d.max_new_tokens), seed=int(seed),
                          batch_size=int(batch_size or 0), mask_control_tokens=bool(mask_control_tokens),
                          guidance=float(guidance or 0.0), negative=negative or "worst")


def plan_sample(task: Task, *, version_id: int | None = None, split: str = "train", limit: int | None = None,
                n: int | None = None, temperature: float | None = None, top_p: float | None = None,
                max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 0,
                condition: str | None = "auto", backend: str | None = None, guidance: float | None = None,
                negative: str | None = None, objective: str | None = None) -> SampleSpec:
    """A sampling job; ``limit``: None or 0 = every prompt of the split. ``guidance`` (γ, None = 0) is refused
    for a version whose ``objective`` reads no feedback."""
    from .guidance import check_objective

    if guidance:
        check_objective(objective or "alt", guidance)
    sampling = _sampling(defaults(task), n, temperature, top_p, max_new_tokens, seed, batch_size,
                         guidance=guidance or 0.0, negative=negative)
    return SampleSpec(task.id, sampling, version_id, split, int(limit) if limit else None, condition, backend)


def plan_train(db: str, task: Task, config=None, *, objective: str | None = None, round_ids=None,
               k_per_category: int | None = None, policy: str | None = None, max_per_prompt: int | None = None,
               truncated: str | None = None, parent_version_id: int | None = None, check: bool = True) -> TrainSpec:
    """A training job on ``round_ids`` (None: the latest round for flush, every round for accumulate).

    ``config``: the objective's built config (the CLI's and the console's parsers make it; None: the defaults).
    ``check``: refuse now, with cause and fix, a pool the objective cannot learn from (no job is made)."""
    from .training.objectives import make_config

    obj = _objective(objective or (config.objective if config is not None else None))
    config = config if config is not None else make_config(obj.name)
    pool = pool_options(task, obj.name, round_ids=round_ids, k_per_category=k_per_category, policy=policy,
                        max_per_prompt=max_per_prompt, truncated=truncated, seed=config.seed)
    if pool.round_ids is None and pool.policy == "flush":
        pool = dataclasses.replace(pool, round_ids=(_latest_round(db, task),))
    if check:
        check_pool(db, task, obj, pool)
    return TrainSpec(task_id=task.id, parent_version_id=parent_version_id or _served_id(db), objective=obj.name,
                     config=config.to_dict(), conditioning=obj.task_format(task).to_dict(), pool=pool,
                     round_id=pool.round_ids[-1] if pool.round_ids else None)


def default_eval(objective: str) -> EvalConfig:
    """The evaluation a version of ``objective`` gets by default: guided (``guidance.EVAL_GUIDANCE``) where it reads
    feedback, plain where it does not — the CLI's and the console's alike."""
    from .guidance import EVAL_GUIDANCE, resolve

    objective = ObjectiveName.ALT if objective == ObjectiveName.BASE else objective
    return EvalConfig(guidance=resolve(objective, None, EVAL_GUIDANCE))


def plan_eval(db: str, task: Task, *, version_id: int | None = None, provider: str | None = None,
              eval: EvalConfig | None = None, reference: str | None = None) -> EvalSpec:
    """An evaluation of ``version_id`` (None: the served one), judged by ``provider`` (None: the demo task's)."""
    from .db import ModelVersion

    version_id = version_id or _served_id(db)
    if eval is None:
        with session_scope(db) as s:
            eval = default_eval(s.get(ModelVersion, version_id).objective)
    return EvalSpec(task.id, version_id, provider or defaults(task).provider, eval, reference)


def round_config(task: Task | str, objective: str = "alt", *, n: int | None = None, limit: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, max_new_tokens: int | None = None,
                 sample_seed: int = 0, sample_batch_size: int = 0, mask_control_tokens: bool = False,
                 k_per_category: int | None = None, policy: str | None = None, max_per_prompt: int | None = None,
                 truncated: str | None = None, holdout: str | None = None, promote: str | None = None,
                 metric: str | None = None, eval: EvalConfig | None = None, guidance: float | None = None,
                 negative: str | None = None, explore: float | None = None,
                 explore_with: str | None = None) -> RoundConfig:
    """A round's configuration for these choices (``limit`` 0 = every prompt); also what an experiment's arms run.
    Guidance (γ, round sampling under the exemplar and evaluation) and exploration default to the measured values
    (``guidance.py``) for an objective that reads feedback, to none for one that does not."""
    from .guidance import EXPLORE, FEEDBACK_FREE, ROUND_GUIDANCE, resolve

    d = defaults(task)
    pool = pool_options(task, objective, k_per_category=k_per_category, policy=policy, max_per_prompt=max_per_prompt,
                        truncated=truncated)
    sampling = _sampling(d, n, temperature, top_p, max_new_tokens, sample_seed, sample_batch_size, mask_control_tokens,
                         guidance=resolve(objective, guidance, ROUND_GUIDANCE), negative=negative)
    explore = (0.0 if objective in FEEDBACK_FREE else EXPLORE) if explore is None else float(explore)
    return RoundConfig(sampling=sampling, limit=_count(limit, d.limit), k_per_category=pool.k_per_category,
                       policy=pool.policy, truncated=pool.truncated, max_per_prompt=pool.max_per_prompt,
                       holdout=holdout or None, promote=(promote or d.promote).replace("-", "_"),
                       metric=metric or d.metric, eval=eval or default_eval(objective), explore=explore,
                       explore_with=explore_with or "worst")


def plan_round(db: str, task: Task, config=None, *, provider: str | None = None, objective: str | None = None,
               settings=None, **choices) -> RoundSpec:
    """A round job: ``provider`` None = the demo task's (else refused: give one); ``choices``: ``round_config``'s."""
    from .feedback import make_provider
    from .settings import Settings
    from .training.objectives import make_config

    provider = (provider or "").strip() or defaults(task).provider
    if not provider:
        raise ValueError(f"give a feedback provider (--provider; e.g. rule:concise:auto, llm:categorical): task "
                         f"{task.name!r} has no default one (demo tasks: {', '.join(DEMOS)})")
    make_provider(provider, settings or Settings(db=db), task)  # an unknown provider is refused before a job exists
    obj = _objective(objective or (config.objective if config is not None else None))
    config = config if config is not None else make_config(obj.name)
    return RoundSpec(task.id, provider, round_config(task, obj.name, **choices), obj.name, config.to_dict())
