"""The command line, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import HAMSWEEP, REPO

from hamsweep.results import store as results

TINY = """
name: tiny
data: {name: synthetic, num_classes: 4, image_size: 8, train_size: %(n)d, test_size: 64, \
val_fraction: 0.25}
model: {name: small_cnn, width: 4}
train: {epochs: %(epochs)d, batch_size: 32, lr: 0.05, attack_steps: 3, device: cpu}
ham: {warmup_epochs: 1, drop_step: 1}
eval: {attack_steps: 3, batch_size: 128, test: true}
search:
  params:
    ham.discard_threshold: {uniform: [0.0, 0.9], default: 0.0}
"""


def hamsweep(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    return subprocess.run(
        [HAMSWEEP, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % {"n": 256, "epochs": 2})
    return path


def _assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("hamsweep: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_cli_import_pulls_in_neither_torch_nor_ray():
    code = (
        "import sys, hamsweep, hamsweep.cli; bad = {'torch', 'ray', 'optuna'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_science_core_never_imports_ray_optuna_or_submitit():
    code = (
        "import sys\n"
        "import hamsweep.core.attacks, hamsweep.core.methods.ham, hamsweep.core.models, "
        "hamsweep.core.data, hamsweep.core.folders, hamsweep.core.metrics, hamsweep.core.train\n"
        "bad = {'ray', 'optuna', 'submitit'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_and_validate():
    assert hamsweep("--help").returncode == 0
    proc = hamsweep("validate", REPO / "search_spaces" / "smoke.yaml")
    assert proc.returncode == 0 and "ok" in proc.stdout


@pytest.mark.parametrize(
    "make_args,pattern",
    [
        (lambda p, t: ["validate", t / "nope.yaml"], r"nope\.yaml: no such spec file"),
        (
            lambda p, t: ["train", p, "--set", "ham.drop_step=12"],
            r"ham\.drop_step: 12 is larger than train\.attack_steps \(3\)",
        ),
        (lambda p, t: ["train", p, "--set", "train.eps=8"], r"did you mean 8/255\?"),
        (lambda p, t: ["train", p, "--set", "model.name=vgg"], r"model\.name: .*'small_cnn'"),
        (
            lambda p, t: ["train", p, "--set", "ham.temperature=0"],
            r"ham\.temperature: temperature must be > 0",
        ),
        (
            lambda p, t: ["train", p, "--set", "ham.keep_easy_fraction=2"],
            r"keep_easy_fraction must be in \[0, 1\]",
        ),
        (lambda p, t: ["train", p, "--set", "ham.bogus=1"], r"ham\.bogus: unknown key"),
        (lambda p, t: ["train", p, "--set", "noequals"], r"--set: expected KEY=VALUE"),
        (lambda p, t: ["train", p, "--resume"], r"--resume: needs --out"),
        (lambda p, t: ["train", p, "--out", t / "none", "--resume"], r"nothing to resume"),
        (
            lambda p, t: [
                "train",
                p,
                "--set",
                "data.name=cifar10",
                "--set",
                f"data.root={t / 'nodata'}",
            ],
            r"cifar10: .*cifar-10-batches-py",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_spec, make_args, pattern):
    out = tmp_path / "run"
    args = make_args(tiny_spec, tmp_path)
    if args[0] == "train" and "--out" not in args and "--resume" not in args:
        args += ["--out", out]
    _assert_user_error(hamsweep(*args), pattern)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    _assert_user_error(hamsweep("validate", bad), r"bad\.yaml: is not valid YAML at line")


def test_existing_out_is_refused(tmp_path, tiny_spec):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _assert_user_error(
        hamsweep("train", tiny_spec, "--out", out),
        r"already exists and is not empty; pass --resume",
    )
    assert (out / "precious.txt").read_text() == "keep me"


def test_train_writes_parquet_that_duckdb_and_pyarrow_read(tmp_path, tiny_spec):
    out = tmp_path / "run"
    proc = hamsweep("train", tiny_spec, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2 ham" in proc.stdout and "worst" in proc.stdout
    epochs = pq.read_table(out / "epochs")
    classes = pq.read_table(out / "classes")
    assert (
        epochs.schema.metadata[b"hamsweep.schema_version"] == str(results.SCHEMA_VERSION).encode()
    )
    assert sorted(epochs.column("epoch").to_pylist()) == [1, 2]
    assert set(classes.column("split").to_pylist()) == {"val", "test"}
    con = duckdb.connect()
    mismatches = con.execute(f"""
        WITH per_class AS (
            SELECT epoch, min(correct / n) AS worst FROM read_parquet('{out}/classes/*.parquet')
            WHERE split = 'val' AND attack = 'pgd3' GROUP BY epoch)
        SELECT e.epoch, e.robust_worst, p.worst FROM read_parquet('{out}/epochs/*.parquet') e
        JOIN per_class p USING (epoch) WHERE abs(e.robust_worst - p.worst) > 1e-12
    """).fetchall()
    assert mismatches == []
    n_rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}/epochs/*.parquet')").fetchone()[
        0
    ]
    assert n_rows == 2
    # the run folder reproduces itself: its spec is a valid spec
    assert hamsweep("validate", out / "spec.yaml").returncode == 0
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["packages"]["torch"] and manifest["command"][1] == "train"


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    spec = tmp_path / "slow.yaml"
    spec.write_text(TINY % {"n": 2048, "epochs": 4})
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [HAMSWEEP, "train", spec, "--out", out],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not list((out / "epochs").glob("part-*.parquet")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "epochs").glob("part-*.parquet")))
    assert 1 <= done < 4, "the kill should land mid-run"
    resumed = hamsweep("train", spec, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        "--resume" not in manifest["command"]
        and manifest["resumes"][0]["command"][-1] == "--resume"
    )
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT epoch, count(*) FROM read_parquet('{out}/epochs/*.parquet') "
        "GROUP BY epoch ORDER BY epoch"
    ).fetchall()
    assert rows == [(1, 1), (2, 1), (3, 1), (4, 1)]
    dup = con.execute(
        f"""SELECT count(*) FROM (SELECT epoch, split, attack, class_id, count(*) c
        FROM read_parquet('{out}/classes/*.parquet') GROUP BY ALL HAVING c > 1)"""
    ).fetchone()[0]
    assert dup == 0
    # a resume with a different config is refused rather than mixed into the same run
    _assert_user_error(
        hamsweep("train", spec, "--out", out, "--resume", "--set", "train.lr=0.1"),
        r"differs from .*spec\.yaml in train\.lr",
    )
