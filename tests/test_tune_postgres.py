"""`mlrun tune --storage postgresql://...`: two worker processes share one study on a real PostgreSQL server.

The server is Debian's PostgreSQL started by scripts/postgres/start.sh; the tests skip without it.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import run_cli, start_cli, tiny_config, write_config
from tests.postgres import postgres  # noqa: F401 - the fixture


def tune_config(epochs: int, trials: int) -> dict:
    return tiny_config(
        name="pg",
        train={"epochs": epochs, "log_every": "8st", "eval_every": "1ep", "checkpoint_every": None},
        tune={
            "metric": "val/accuracy",
            "direction": "maximize",
            "trials": trials,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "space": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        },
    )


def load(url: str, name: str):
    import optuna

    from mlrun.tuning.storage import with_driver

    return optuna.load_study(study_name=name, storage=with_driver(url))


@pytest.mark.e2e  # two worker processes and a server
def test_two_workers_fill_one_study_without_duplicates_and_it_resumes(postgres, tmp_path):  # noqa: F811
    import optuna

    config = write_config(tmp_path, tune_config(epochs=30, trials=6))  # trials outlast a worker's start-up
    result = run_cli(
        "tune", config, "--workers", "2", "--storage", postgres.url, "--study", "two", "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    study = load(postgres.url, "two")
    trials = study.get_trials()
    assert len(trials) == 6 and summary["trials"] == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # every trial recorded, finished
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # no parameter set twice
    for trial in trials:  # run_dir is relative to where mlrun ran
        assert (tmp_path / trial.user_attrs["run_dir"] / "summary.json").is_file()
    before = {t.number: t.params for t in trials}
    again = run_cli(
        "tune", config, "--trials", "7", "--storage", postgres.url, "--study", "two", cwd=tmp_path, subprocess=False
    )
    assert again.returncode == 0, again.stderr
    resumed = load(postgres.url, "two").get_trials()
    assert len(resumed) == 7 and {t.number: t.params for t in resumed[:6]} == before


@pytest.mark.e2e  # a worker process runs while the server restarts
def test_a_server_restart_mid_study_fails_the_trial_not_the_study(postgres, tmp_path):  # noqa: F811
    import optuna

    config = write_config(tmp_path, tune_config(epochs=100, trials=3))  # long enough to be caught training
    process = start_cli("tune", config, "--storage", postgres.url, "--study", "restart", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until the second trial is training
            time.sleep(0.5)
            try:
                running = [t for t in load(postgres.url, "restart").get_trials() if t.number == 1]
            except KeyError:  # the study is not created yet
                continue
            if running and running[0].state == optuna.trial.TrialState.RUNNING:
                metrics = tmp_path / "runs" / "pg" / "tune-restart" / "trial-0001" / "metrics.jsonl"  # its study
                if metrics.is_file() and metrics.read_text().strip():
                    break
        else:
            pytest.fail("the second trial never started")
        postgres.stop()  # the database goes away while trial 1 trains and reports
        time.sleep(4)
        postgres.start()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    trials = load(postgres.url, "restart").get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 3 and optuna.trial.TrialState.RUNNING not in states
    assert states[1] == optuna.trial.TrialState.FAIL, (states, err)
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert "lost the study database" in err


@pytest.mark.e2e  # a server
def test_workers_asking_together_never_create_more_trials_than_the_target(postgres):  # noqa: F811
    """Counting the trials and creating the next one happen under one lock: eight workers asking at the
    same instant for a 3-trial study create exactly 3 (without the lock each sees fewer than 3 and asks)."""
    import threading

    import optuna

    from mlrun.tuning.storage import StudyFilled, ask_within_target, database_storage

    optuna.create_study(study_name="race", storage=database_storage(postgres.url))
    start, created, filled = threading.Barrier(8), [], []

    def worker() -> None:
        study = optuna.load_study(study_name="race", storage=database_storage(postgres.url))
        ask_within_target(study, 3)
        start.wait()
        try:
            created.append(study.ask().number)
        except StudyFilled:
            filled.append(True)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(created) == [0, 1, 2] and len(filled) == 5
    assert len(load(postgres.url, "race").get_trials()) == 3
