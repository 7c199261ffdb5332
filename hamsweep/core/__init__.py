"""The science: torch, numpy and scipy only, never Ray, Optuna, submitit or DuckDB (a test says so).

``attacks`` (PGD, FGSM, TRADES' KL attack), ``methods/`` (one module per training method),
``models``, ``data`` and ``folders`` (datasets, the validation split, the device loader),
``metrics`` (per-class counts -> summaries), ``evaluation`` (class-wise evaluation), ``train`` (one
trial's loop, with an injected ``report``), ``stats`` (intervals over seeds).
"""
