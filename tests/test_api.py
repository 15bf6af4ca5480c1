"""The public API of `import vtune`: exactly these names, each from its home module, loaded lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

import vtune

#: Every public name -> the module it is re-exported from (a subpackage's public __init__
#: for the names that live in a subpackage).
HOME = {
    "Calibration": "vtune._memory",
    "MemoryEstimate": "vtune._memory",
    "Objective": "vtune._objectives",
    "SearchSpace": "vtune._space",
    "ServeConfig": "vtune._serve_config",
    "StudySettings": "vtune.study",
    "StudySummary": "vtune.study",
    "build_settings": "vtune.study",
    "Target": "vtune._target",
    "TrialRecord": "vtune._trial",
    "TrialResult": "vtune.loads",
    "VllmServer": "vtune.engines",
    "VtuneError": "vtune._errors",
    "Workload": "vtune._workload",
    "apply_engine_defaults": "vtune._target",
    "default_space": "vtune._space",
    "estimate_memory": "vtune._memory",
    "load_model_shape": "vtune._model_shape",
    "load_space_file": "vtune._space",
    "load_workload": "vtune._workload",
    "parse_objectives": "vtune._objectives",
    "parse_serve_args": "vtune._serve_config",
    "resolve_gpu": "vtune._memory",
    "resolve_model": "vtune._target",
    "resolve_target": "vtune._target",
    "run_study": "vtune.study",
    "run_trial": "vtune._trial",
    "run_worker": "vtune.study",
}
REPO = Path(__file__).resolve().parent.parent


def test_all_is_exactly_the_public_names() -> None:
    assert vtune.__all__ == sorted(HOME)
    assert set(vtune.__all__) == set(vtune._LAZY) | {"ServeConfig", "VtuneError", "parse_serve_args"}


@pytest.mark.parametrize("name", sorted(HOME))
def test_each_name_comes_from_its_home_module(name: str) -> None:
    home = HOME[name]
    obj = getattr(vtune, name)
    assert obj is getattr(importlib.import_module(home), name)
    # Defined in the home module, or in a private module of the home subpackage.
    assert obj.__module__ == home or obj.__module__.startswith(home + "._"), obj.__module__


@pytest.mark.parametrize("package", ["vtune.study", "vtune.loads", "vtune.engines"])
def test_subpackages_re_export_their_names(package: str) -> None:
    module = importlib.import_module(package)
    names = [n for n, home in HOME.items() if home == package]
    assert set(names) <= set(module.__all__)  # the top-level names come from the subpackage's public list
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        value = getattr(module, name)
        home = getattr(value, "__module__", None)
        if home is not None and isinstance(value, type | types.FunctionType):  # not constants or type aliases
            assert home.startswith(package + "._"), (name, home)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vtune.nope  # noqa: B018


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n"
         "print(' '.join(m for m in ('optuna', 'vllm', 'torch', 'guidellm') if m in sys.modules))"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=120,
    )
    return set(out.stdout.split())


def test_import_vtune_imports_no_heavy_library() -> None:
    assert _imported_after("import vtune") == set()
    assert _imported_after("import vtune; vtune.ServeConfig; vtune.load_workload; vtune.estimate_memory") == set()
    # The subpackages' __init__ files load their modules on first use only.
    assert _imported_after("import vtune.study, vtune.loads, vtune.engines") == set()
    assert _imported_after("import vtune.engines._launcher") == set()


def test_a_study_can_be_set_up_from_public_names_only(tmp_path: Path) -> None:
    target = vtune.Target(device="cpu", cpu_cores=(0, 1))
    base = vtune.apply_engine_defaults(vtune.parse_serve_args([str(tmp_path), "--max-model-len", "512"]), target)
    settings = vtune.StudySettings(
        name="api-study", model=str(tmp_path), workload=vtune.load_workload("chatbot"),
        space=vtune.default_space(device="cpu", num_gpus=0, cpu_cores=2), base=base,
        objectives=vtune.parse_objectives("goodput"), target=target, studies_dir=tmp_path / "studies",
    )
    assert isinstance(settings.space, vtune.SearchSpace)
    assert isinstance(settings.objectives[0], vtune.Objective)
    assert "VLLM_CPU_KVCACHE_SPACE" in settings.base.env


def test_pins_and_dashboard_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert "optuna>=5,<6" in deps
    assert "guidellm>=0.8.1,<0.9" in deps
    assert any(d.startswith("optuna-dashboard") for d in deps)
    assert any(d.startswith("pydantic") for d in deps)
    assert "dashboard" not in project["optional-dependencies"]
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert "dashboard" not in bootstrap.split("EXTRAS=", 1)[1].splitlines()[0]
