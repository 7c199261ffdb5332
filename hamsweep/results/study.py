"""The sweep's Optuna study: its journal file, its name, and opening it. Ray-free, so that readers
(``hamsweep report``, ``status``) open the study without starting Ray.

The study is a first-class Optuna study: ``optuna-dashboard optuna.journal`` opens it as it is. Its
name is the spec's name and a random suffix (two sweeps of one spec never share a name; a folder
keeps the name it has), its objective carries its metric's name (``set_metric_names``), and each
Optuna trial carries the Tune trial it ran as (user attributes ``tune_trial``, ``role``,
``checkpoint``, ``status``, ``status_reason``, ``best_objective``; see ``search.Searcher``). Trunks
and confirm trials are not Optuna trials (they would teach the sampler numbers of another
objective): the study's user attributes ``trunks`` and ``confirm`` name them.

Two numbers per trial, told apart. hamsweep ranks a trial by its best epoch's objective (the
Parquet column ``trials.best_objective``); every finished Optuna trial carries that number as the
user attribute ``best_objective``. A COMPLETE trial's value is that number too. A PRUNED trial's
value is Optuna's own rule: its last intermediate value (``study.tell`` takes no value with PRUNED),
the objective of the epoch it was stopped at. TPE ranks a PRUNED trial by its intermediate values,
never by its value or user attributes, so what the sampler learns is what it learnt before.

The PGD-AT baseline (the search's trunks) is in the journal twice, and TPE sees neither: the study's
user attributes ``baseline_objective`` (the highest ``best_objective`` of its trunks: what a search
trial has to beat) and ``baselines`` (trunk key -> Tune trial, ``best_objective``, ``best_epoch``),
and a second study, ``<study>-baseline``, with each trunk as a trial (COMPLETE with its best
objective as value, FAIL if it failed), so that optuna-dashboard lists the baseline beside the
search. A journal written before the baseline study has only the search's study; both open.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamsweep.errors import SpecError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "BASELINE_SUFFIX",
    "JOURNAL",
    "baseline_study_name",
    "journal_storage",
    "new_study_name",
    "open_baseline_study",
    "open_study",
    "record_baseline",
    "study_name",
    "tell_stopped",
]

JOURNAL = "optuna.journal"  # the study's journal file in the sweep folder
BASELINE_SUFFIX = "-baseline"  # the PGD-AT baseline's study: the search study's name and this


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
    # the search's study; never its baseline study (a search study's name ends in a hex suffix)
    return next((n for n in names if not n.endswith(BASELINE_SUFFIX)), None)


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


def baseline_study_name(name: str) -> str:
    """The name of the baseline study next to the search study ``name``."""
    return f"{name}{BASELINE_SUFFIX}"


def open_baseline_study(folder: Path) -> optuna.Study | None:
    """The PGD-AT baseline's study in ``folder``'s journal; None before a trunk ended (or in a
    folder from before it existed)."""
    import optuna

    name = study_name(folder)
    if name is None:
        return None
    storage = journal_storage(Path(folder) / JOURNAL)
    if baseline_study_name(name) not in {
        s.study_name for s in optuna.get_all_study_summaries(storage)
    }:
        return None
    return optuna.load_study(study_name=baseline_study_name(name), storage=storage)


def record_baseline(
    study: optuna.Study, key: str, attrs: dict[str, Any], values: list[float] | None
) -> None:
    """A PGD-AT baseline (trunk ``key``, its Tune trial in ``attrs["tune_trial"]``) that ended: in
    the search study's user attribute ``baselines`` and as a trial of the baseline study (COMPLETE
    with ``values``, or FAIL without). Once per Tune trial: a trunk Tune re-runs
    after a resume is there."""
    import optuna

    baseline = optuna.create_study(
        study_name=baseline_study_name(study.study_name),
        storage=study._storage,
        directions=study.directions,
        load_if_exists=True,
    )
    if baseline.metric_names is None and study.metric_names is not None:
        baseline.set_metric_names(study.metric_names)
    if any(
        t.user_attrs.get("tune_trial") == attrs["tune_trial"]
        for t in baseline.get_trials(deepcopy=False)
    ):
        return
    if values is not None:
        baselines = {**study.user_attrs.get("baselines", {}), key: attrs}
        study.set_user_attr("baselines", baselines)
        # one number beside the dashboard's "Best Trial": what a search trial has to beat
        study.set_user_attr(
            "baseline_objective", max(b["best_objective"] for b in baselines.values())
        )
    state = optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.FAIL
    baseline.add_trial(
        optuna.trial.create_trial(
            state=state, values=values, user_attrs={"role": "trunk", "trunk": key, **attrs}
        )
    )


def tell_stopped(study: optuna.Study, number: int, attrs: dict[str, Any]) -> None:
    """Search trial ``number``, stopped by the budget (Tune tells the searcher nothing then), as
    PRUNED with its user attributes (``best_objective``, ``status``, ...) set first: a finished
    trial takes none. A trial already finished in the journal stays as it is."""
    import optuna

    try:
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        for key, value in attrs.items():
            if value is not None:
                study._storage.set_trial_user_attr(trial_id, key, value)
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    except (ValueError, RuntimeError, KeyError):
        # already finished (UpdateFinishedTrialError is a RuntimeError)
        pass
