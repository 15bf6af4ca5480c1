"""Opening a study: fixed flags checked with vLLM's own parser before anything runs; metric names for the dashboard."""

from __future__ import annotations

import subprocess
import sys
import warnings

import optuna
import pytest

from tests.study.test_worker import fake_trial, make_settings
from vtune._errors import VtuneError
from vtune._objectives import parse_objectives
from vtune._serve_config import ServeConfig
from vtune.study._settings import ATTR
from vtune.study._storage import make_storage
from vtune.study._study import open_study, prepare_study, run_study


def test_fixed_flags_vllm_rejects_stop_the_study_before_anything_is_written(tmp_path):
    settings = make_settings(tmp_path, name="badflag")
    settings.base = ServeConfig(model=settings.model, max_model_len=512, extra_args=["--no-such-flag"])
    with pytest.raises(VtuneError, match=r"rejected by vLLM's own parser: .*--no-such-flag"):
        prepare_study(settings, n_trials=2)  # what run_study does first, with the real vLLM parser
    assert not (tmp_path / "studies").exists()
    # A study of recorded measurements (no engine launched) does not need vLLM's opinion.
    summary = run_study(settings, n_trials=1, trial_fn=fake_trial, quiet=True, export=False)
    assert summary.finished_trials == 1


def test_fixed_flags_vllm_accepts_pass_the_check(tmp_path):
    settings = make_settings(tmp_path, name="goodflag")
    settings.base = ServeConfig(model=settings.model, max_model_len=512, extra_args=["--disable-log-stats"])
    study, *_ = prepare_study(settings, n_trials=2)
    assert study.user_attrs[ATTR]["base"]["max_model_len"] == 512


def test_cli_study_with_a_flag_vllm_rejects_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vtune", "study", "--n-trials", "1", "--studies-dir",
                           str(tmp_path / "s"), "--configs-dir", str(tmp_path / "c"), "--", "--no-such-flag"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vtune: error: the flags fixed for every trial (after --) are "
                                                "rejected by vLLM's own parser")
    assert "--no-such-flag" in err[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "s").glob("*.db")) and "launching" not in proc.stderr


def test_the_study_names_its_metrics_on_creation_and_on_resume(tmp_path):
    settings = make_settings(tmp_path, name="named")
    url = f"sqlite:///{tmp_path}/named.db"
    assert open_study(settings, url).metric_names == ["goodput"]
    assert open_study(settings, url).metric_names == ["goodput"]  # resumed: kept
    pareto = make_settings(tmp_path, name="pareto")
    pareto.objectives = parse_objectives("goodput,ttft_p99")
    assert open_study(pareto, url).metric_names == ["goodput", "ttft_p99"]
    # A study made before vtune named its metrics gets the names when it is resumed.
    old = optuna.create_study(study_name="old", storage=make_storage(url, heartbeat=False), direction="maximize")
    old.set_user_attr(ATTR, {**settings.to_attr()})
    assert old.metric_names is None
    settings.name = "old"
    assert open_study(settings, url).metric_names == ["goodput"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = optuna.load_study(study_name="old", storage=url).trials_dataframe()
    assert frame.empty or "values_goodput" in frame.columns
