"""Re-evaluate round 0 of an ``alt experiment`` folder made before round 0 was the base evaluated as each
objective evaluates its versions (``experiment.base_as_objective``), and patch its ``record.json``.

    python scripts/base_as_objective.py runs/compare/cut runs/compare/steerlm

Arms already so evaluated, or whose base a round evaluates that way anyway (ALT, Quark), are left alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from alt_engine.db import session_scope
    from alt_engine.experiment import ExperimentConfig, base_as_objective, round_config
    from alt_engine.modeling import set_threads
    from alt_engine.settings import Settings
    from alt_engine.tasks import get_or_create_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args()
    settings = Settings.from_env()
    set_threads(settings.threads)
    for folder in map(Path, args.folders):
        record = json.loads((folder / "record.json").read_text())
        fields = ExperimentConfig.__dataclass_fields__
        cfg = ExperimentConfig(**{k: v for k, v in record["config"].items() if k in fields})
        for objective, arm in record["arms"].items():
            if arm["rounds"][0].get("evaluated_as"):
                continue
            db = str(folder / f"{objective}.db")
            with session_scope(db) as s:
                task = get_or_create_task(s, cfg.task)
            base = base_as_objective(objective, db, settings, task, arm["provider"], round_config(cfg).eval)
            if base is not None:
                arm["rounds"][0].update(metrics=base, evaluated_as=objective)
                (folder / "record.json").write_text(json.dumps(record, indent=2, default=str))
                print(f"{folder}: {objective} round 0 re-evaluated: exemplar share {base.get('exemplar_share')}")


if __name__ == "__main__":
    main()
