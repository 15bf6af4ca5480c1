"""The study prunes with the same pre-launch checks as `vtune validate` (vtune._checks), before any launch."""

from __future__ import annotations

from pathlib import Path

import optuna

from tests.study.test_worker import fake_trial, make_settings
from vtune._checks import first_error, precheck
from vtune._model_shape import load_model_shape
from vtune._serve_config import parse_serve_args
from vtune.study import run_study

# vLLM refuses both at config time (SchedulerConfig.verify_max_model_len); validate said OK to the second before.
REFUSED = {
    "--max-num-seqs 256 --max-num-batched-tokens 128": "batched_tokens_below_seqs",
    "--max-num-batched-tokens 256 --no-enable-chunked-prefill": "batched_tokens_below_model_len",
}


def test_refused_configs_are_pruned_with_the_checks_code_and_never_launched(tmp_path: Path) -> None:
    launched: list[str] = []

    def trial_fn(cfg, *a, **kw):  # type: ignore[no-untyped-def]
        launched.append(cfg.to_flags_line())
        return fake_trial(cfg, *a, **kw)

    settings = make_settings(tmp_path, enqueue=[f.split() for f in REFUSED])
    run_study(settings, n_trials=5, trial_fn=trial_fn, quiet=True, export=False, max_concurrent_trials=1)
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'studies' / 'w.db'}")
    by_baseline = {t.user_attrs.get("baseline"): t for t in study.trials}
    shape = load_model_shape(settings.model)
    for i, (flags, code) in enumerate(REFUSED.items()):
        t = by_baseline[f"enqueued-{i}"]
        assert t.state == optuna.trial.TrialState.PRUNED, flags
        assert t.user_attrs["pruned_by"] == "invalid_config" and t.user_attrs["reason_code"] == code
        assert not any(flags.split()[1] in line and flags.split()[-1] in line for line in launched)
        # The same verdict as `validate` for the same configuration.
        cfg = parse_serve_args(flags.split(), base=settings.base)
        found = first_error(precheck(cfg, shape=shape, gpu=None, device="cpu"))
        assert found is not None and found.code == code
