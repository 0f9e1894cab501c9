"""The objectives: name → config, data, conditioning format, example builder, collator and trainer.

Every objective trains on the same studio data through the same ``run.train`` (launchers, checkpoints,
saving, model versions); what differs is listed in its ``Objective`` entry, and its own code lives in
its own module next to this one (``quark.py``, ``steerlm.py``, ``cut.py``, ``cnr.py``). Adding an
objective = its module + one line in ``OBJECTIVES``.

=========  ==============================================================================================
alt        conditional SFT on (feedback, prompt) → response, entropy bonus, optional KL (``AltTrainConfig``)
quark      ALT's loss with one control token per reward quantile instead of text; the pool accumulates
steerlm    ALT's loss with the category as a linearised attribute string (the task's mapping)
sft        plain SFT on the best category's samples, unconditioned — the baseline
cut        MLE on y | (x, judgment) + token-level unlikelihood on y | x where the judgment raised p (``cut.py``)
cnr        SFT from (prompt, response) to critique + revision; iterative revision at inference (``cnr.py``)
=========  ==============================================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import conditioning
from ..pool import build_pool
from .collator import AltCollator
from .config import AltTrainConfig, TrainConfig
from .examples import build_examples
from .objective import Items, Objective, feedback_items  # noqa: F401  (Objective, feedback_items: re-exported)


def _sft_format(task) -> conditioning.Format:
    return conditioning.Format("none")


def _sft_items(db: str, task, **pool_kw) -> Items:
    """Only the best category's samples (the task's exemplar) — for free-text feedback, those scored 3 (the top of
    ALT-LMU's 0–3) — trained on without feedback."""
    best = task.exemplar_category
    if best is None:
        return [it for it in build_pool(db, task.id, **pool_kw) if it.score is not None and it.score >= 3]
    return [it for it in build_pool(db, task.id, **pool_kw) if (it.category or it.feedback) == best]


def _sft_check(items: Items) -> None:
    if not items:
        raise ValueError("no samples of the best category in the pool: SFT has nothing to train on")


def _sft_examples(tokenizer, items: Items, config, fmt) -> list[dict]:
    return build_examples(tokenizer, items, config, conditioning.Format("none"))


def _sft_kwargs(config, load_reference) -> dict:
    return {"alpha": 0.0, "beta": 0.0}


@dataclass
class SFTTrainConfig(TrainConfig):
    """Plain SFT (the baseline): NLL of the best category's responses given the plain prompt. ``TrainConfig``'s
    options, nothing else."""


def _registry() -> dict[str, Objective]:
    from . import cnr, cut, quark, steerlm

    objectives = [
        Objective("alt", AltTrainConfig, "conditional SFT on the feedback text (ALT)"),
        quark.OBJECTIVE,
        steerlm.OBJECTIVE,
        Objective("sft", SFTTrainConfig, "plain SFT on the best category's samples (baseline)",
                  collator=lambda tokenizer, config: AltCollator(tokenizer.pad_token_id),
                  trainer_kwargs=_sft_kwargs, build_examples=_sft_examples, task_format=_sft_format,
                  format=lambda tokenizer, items, config, fmt: conditioning.Format("none"),
                  items=_sft_items, check_items=_sft_check),
        cut.OBJECTIVE,
        cnr.OBJECTIVE,
    ]
    return {o.name: o for o in objectives}


_OBJECTIVES: dict[str, Objective] = {}


def objectives() -> dict[str, Objective]:
    """Every objective by name (built on first use: the modules import each other)."""
    if not _OBJECTIVES:
        _OBJECTIVES.update(_registry())
    return _OBJECTIVES


def names() -> list[str]:
    return list(objectives())


def get(name: str) -> Objective:
    found = objectives().get(name)
    if found is None:
        raise ValueError(f"unknown objective {name!r} ({' | '.join(objectives())})")
    return found


# --------------------------------------------------------------------------- options (CLI, jobs, experiment)


def _configs() -> list[type[TrainConfig]]:
    """Each objective's config class, a subclass before its parents (a consistent MRO for the union)."""
    classes = list(dict.fromkeys(o.config for o in objectives().values()))
    leaves = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
    return sorted(leaves, key=lambda c: -len(c.__mro__))


_UNION: list[type] = []


def options_dataclass() -> type:
    """One dataclass with every objective's options (each once), for one ``HfArgumentParser``; never built."""
    if not _UNION:
        _UNION.append(dataclasses.dataclass(type("TrainOptions", tuple(_configs()), {"__annotations__": {}})))
    return _UNION[0]


def _defaults_of(cls: type) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls) if f.init and (f.default is not dataclasses.MISSING
                                                          or f.default_factory is not dataclasses.MISSING)}


_PARSED_DEFAULTS: list[dict] = []


def changed_options(options: dict) -> dict:
    """The training options in ``options`` (e.g. ``vars(args)``) that differ from their defaults (as the
    dataclass and as ``HfArgumentParser`` gives them: it parses some defaults, e.g. "no" → False)."""
    from transformers import HfArgumentParser

    if not _PARSED_DEFAULTS:
        _PARSED_DEFAULTS.append(vars(HfArgumentParser(options_dataclass()).parse_args([])))
    defaults, parsed = _defaults_of(options_dataclass()), _PARSED_DEFAULTS[0]
    return {k: options[k] for k in defaults
            if k in options and options[k] != defaults[k] and options[k] != parsed.get(k, defaults[k])}


def config_from_options(name: str, options: dict) -> TrainConfig:
    """``name``'s config from parsed options; a changed option ``name``'s config does not have is refused."""
    cls = get(name).config
    mine = {f.name for f in dataclasses.fields(cls) if f.init}
    changed = changed_options(options)
    foreign = sorted(set(changed) - mine)
    if foreign:
        raise ValueError(f"objective {name!r} has no option {', '.join('--' + f for f in foreign)}")
    return cls(**{k: v for k, v in changed.items() if k in mine})


def make_config(name: str, **options) -> TrainConfig:
    """``name``'s config from keyword options (``TrainConfig.to_dict()`` round-trips through here). Options
    of other objectives' configs (e.g. ALT's alpha for ``sft`` in a comparison) are left out; unknown ones
    raise ``TypeError``."""
    cls = get(name).config
    mine = {f.name for f in dataclasses.fields(cls) if f.init}
    known = {f.name for f in dataclasses.fields(options_dataclass()) if f.init}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(sorted(unknown))}")
    return cls(**{k: v for k, v in options.items() if k in mine})


def defaults(name: str) -> dict:
    """``name``'s config defaults by field (no config built: a form can show them cheaply)."""
    return _defaults_of(get(name).config)


def own_options(name: str) -> list[dict]:
    """``name``'s own options, for a form: its config's fields that ``TrainConfig`` lacks, and those whose default
    it changes (CUT's learning rate): ``{"name", "default", "help"}`` each, in declaration order."""
    base, out = _defaults_of(TrainConfig), []
    for key, default in _defaults_of(get(name).config).items():
        if key not in base or default != base[key]:
            field_ = get(name).config.__dataclass_fields__[key]
            out.append({"name": key, "default": default, "help": field_.metadata.get("help", "")})
    return out


def config_from_args(name: str, argv: list[str]) -> TrainConfig:
    """``name``'s config from command-line style options (``["--learning_rate", "1e-4", "--lora", "true"]``),
    parsed by ``HfArgumentParser`` from the objective's own config dataclass; an option it does not have, or a
    bad value, raises ``ValueError`` (the parser's message)."""
    import contextlib
    import io

    from transformers import HfArgumentParser

    cls = get(name).config
    parser = HfArgumentParser(cls)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed, unknown = parser.parse_known_args(argv)
            defaults = vars(parser.parse_args([]))
    except SystemExit:
        message = errors.getvalue().strip().splitlines()
        raise ValueError(message[-1].split(": error: ", 1)[-1] if message else "bad training options") from None
    if unknown:
        raise ValueError(f"objective {name!r} has no option {' '.join(unknown)}")
    changed = {k: v for k, v in vars(parsed).items() if v != defaults.get(k)}
    return cls(**changed)
