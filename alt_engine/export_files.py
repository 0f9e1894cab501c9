"""Export files: rows written as jsonl | csv | parquet | a ``datasets`` folder, read back, pushed to the Hub.

Every export (``alt_engine.export``, ``alt_engine.export_training``) is a list of plain dicts first; ``write_rows``
writes it. ``push_to_hub``: the file is written first; a Hub that cannot be reached (offline mode, no network, a
refused token) is a ``HubError`` that says so and where the local copy is.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("jsonl", "csv", "parquet", "datasets")


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
