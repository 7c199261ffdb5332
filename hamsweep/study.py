"""The sweep's Optuna study: its journal file, its name, and opening it. Ray-free, so that readers
(``hamsweep report``, ``status``) open the study without starting Ray.

The study is a first-class Optuna study: ``optuna-dashboard optuna.journal`` opens it as it is. Its
name is the spec's name and a random suffix (two sweeps of one spec never share a name; a folder
keeps the name it has), its objective carries its metric's name (``set_metric_names``), and each
Optuna trial carries the Tune trial it ran as (user attributes ``tune_trial``, ``role``,
``checkpoint``, ``status``, ``status_reason``; see ``search.Searcher``). Trunks and confirm trials are
not Optuna trials (they would teach the sampler numbers of another objective): the study's user
attributes ``trunks`` and ``confirm`` name them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from hamsweep.errors import SpecError

if TYPE_CHECKING:
    import optuna

__all__ = ["JOURNAL", "journal_storage", "new_study_name", "open_study", "study_name"]

JOURNAL = "optuna.journal"  # the study's journal file in the sweep folder


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's journal file storage: an append-only log, safe on NFS (unlike SQLite)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def study_name(folder: Path) -> str | None:
    """The name of the study in ``folder``'s journal; None without a journal or a study in it."""
    import optuna

    path = Path(folder) / JOURNAL
    if not path.is_file():
        return None
    names = [s.study_name for s in optuna.get_all_study_summaries(journal_storage(path))]
    return names[0] if names else None


def new_study_name(spec_name: str) -> str:
    """A name for a new study: the spec's name and a random suffix."""
    return f"{spec_name}-{secrets.token_hex(4)}"


def open_study(folder: Path) -> optuna.Study:
    """The sweep's Optuna study, read from its journal (also readable by optuna-dashboard)."""
    import optuna

    name = study_name(folder)
    if name is None:
        raise SpecError(str(folder), f"holds no Optuna study ({JOURNAL}); pass a sweep folder")
    return optuna.load_study(study_name=name, storage=journal_storage(Path(folder) / JOURNAL))
