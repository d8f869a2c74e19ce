"""A study file: models (with revisions) x corpora, one scan each, with shared scan settings.

.. code-block:: toml

    [scan]                          # any `scan` setting, as in config.json (n_seqs, seq_len, k, ...)
    n_seqs = 100

    [[models]]
    model = "EleutherAI/pythia-410m"
    revisions = ["step1000", "step143000"]   # optional: each is one scan (default: the model as is)
    label = "pythia-410m"                    # optional: default, the model's last path part
    dtype = "bfloat16"                       # optional: any scan setting, for this model only

    [[corpora]]                     # optional: default, the scan's default corpus
    dataset = "NeelNanda/pile-10k"
    label = "pile"                  # optional; also split, text_field, seed, unigrams

Every (model, revision, corpus) is one :class:`ScanTask`: a ScanConfig and a folder name.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from confidence_neurons.errors import ConfigError
from confidence_neurons.studies.options import from_dict
from confidence_neurons.studies.scan import ScanConfig

#: Scan settings a study decides itself, per task.
TASK_FIELDS = ("model", "revision", "dataset")
#: Keys of a [[models]] entry besides scan settings.
MODEL_KEYS = ("model", "revisions", "label")
#: Keys of a [[corpora]] entry: its label and the scan settings that say which text.
CORPUS_KEYS = ("dataset", "label", "split", "text_field", "seed", "unigrams")


@dataclass(frozen=True)
class ScanTask:
    """One scan of a study: ``model_label`` at ``revision`` on ``corpus_label``, in ``folder``."""

    model_label: str
    revision: str | None
    corpus_label: str
    config: ScanConfig

    @property
    def label(self) -> str:
        rev = f"@{self.revision}" if self.revision is not None else ""
        return f"{self.model_label}{rev} / {self.corpus_label}"

    @property
    def folder(self) -> str:
        """The scan's folder name inside the study's ``scans/`` (a plain file name)."""
        rev = f"@{self.revision}" if self.revision is not None else ""
        return _safe(f"{self.model_label}{rev}--{self.corpus_label}")


@dataclass(frozen=True)
class Study:
    """The parsed study file: its tasks in file order (models outer, then corpora, then revisions)."""

    path: Path
    tasks: tuple[ScanTask, ...]
    raw: dict[str, Any]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=+-]+", "_", name).strip("._") or "scan"


def _where(path: Path, part: str) -> str:
    return f"{path} {part}"


def _table_list(data: dict, key: str, path: Path, required: bool) -> list[dict]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"{path}: {key} must be an array of tables ([[{key}]] entries)", field="study")
    if required and not items:
        raise ConfigError(f"{path} names no model; add at least one [[models]] entry with model = ...", field="study")
    return items


def read_study(path: Path) -> Study:
    """Parse and check a study file; every problem is one sentence naming the file and the entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"study file {path} does not exist; pass an existing .toml file", field="study") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"study file {path} cannot be read ({exc})", field="study") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {path} is not valid TOML ({exc})", field="study") from None
    unknown = sorted(set(data) - {"scan", "models", "corpora"})
    if unknown:
        raise ConfigError(
            f"{path} has sections a study does not know: {', '.join(unknown)}; use [scan], [[models]], [[corpora]]",
            field="study",
        )
    shared = data.get("scan", {})
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: [scan] must be a table of scan settings", field="study")
    decided = sorted(set(shared) & set(TASK_FIELDS))
    if decided:
        raise ConfigError(
            f"{path}: [scan] sets {', '.join(decided)}, which the study decides per scan; "
            "put models in [[models]] and datasets in [[corpora]]",
            field="study",
        )
    models = _table_list(data, "models", path, required=True)
    corpora = _table_list(data, "corpora", path, required=False) or [{"label": "default"}]
    scan_fields = {f.name for f in fields(ScanConfig)}
    tasks = []
    for i, m in enumerate(models):
        where = _where(path, f"[[models]] entry {i + 1}")
        if not isinstance(m.get("model"), str) or not m["model"]:
            raise ConfigError(f'{where} has no model = "..." (a hub id or a model directory)', field="study")
        extra = sorted(set(m) - set(MODEL_KEYS) - scan_fields)
        if extra:
            raise ConfigError(
                f"{where} has keys that are neither model keys nor scan settings: {', '.join(extra)}", field="study"
            )
        revisions = m.get("revisions")
        if revisions is None:
            revisions = [None]  # the model as it is
        elif not isinstance(revisions, list) or not revisions or not all(isinstance(r, str) for r in revisions):
            raise ConfigError(f"{where}: revisions must be a non-empty list of strings", field="study")
        label = str(m.get("label") or Path(m["model"]).name or m["model"])
        own = {k: v for k, v in m.items() if k not in MODEL_KEYS}
        for j, c in enumerate(corpora):
            cwhere = _where(path, f"[[corpora]] entry {j + 1}")
            extra = sorted(set(c) - set(CORPUS_KEYS))
            if extra:
                raise ConfigError(
                    f"{cwhere} has keys a corpus does not take: {', '.join(extra)} (it takes {', '.join(CORPUS_KEYS)})",
                    field="study",
                )
            clabel = str(c.get("label") or (Path(str(c["dataset"])).name if c.get("dataset") else "default"))
            text = {k: v for k, v in c.items() if k != "label"}
            for rev in revisions:
                settings = {**shared, **own, **text, "model": m["model"], "revision": rev}
                try:
                    config = from_dict(ScanConfig, settings, where=f"{where} x {cwhere}")
                except ConfigError as exc:
                    if str(path) in str(exc):
                        raise
                    raise ConfigError(f"{where}: {exc}", field="study") from None
                tasks.append(ScanTask(label, rev, clabel, config))
    folders = [t.folder for t in tasks]
    repeated = sorted({f for f in folders if folders.count(f) > 1})
    if repeated:
        raise ConfigError(
            f"{path} gives two scans the same folder ({', '.join(repeated)}); "
            "give the models or corpora distinct labels",
            field="study",
        )
    return Study(path=path, tasks=tuple(tasks), raw=data)
