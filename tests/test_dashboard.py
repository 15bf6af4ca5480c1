"""`vtune dashboard`: loopback by default, a busy port handled in one line (fake run_server)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest

import vtune._cli as cli


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{studies / 's.db'}")
    return studies


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run_server(storage: str, host: str = "localhost", port: int = 8080, **_: Any) -> None:
        calls.append({"storage": storage, "host": host, "port": port})

    monkeypatch.setattr(optuna_dashboard, "run_server", fake_run_server)
    return calls


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(study_dir: Path, *extra: str) -> int:
    return cli.main(["dashboard", "--study", "s", "--studies-dir", str(study_dir), *extra])


def test_default_host_is_loopback() -> None:
    args = cli.build_parser().parse_args(["dashboard", "--study", "s"])
    assert args.host == "127.0.0.1"
    assert args.port is None  # the first free port from DASHBOARD_PORT


def test_serves_on_loopback_and_the_given_port(study_dir: Path, served: list[dict[str, Any]],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    assert _run(study_dir, "--port", str(port)) == 0
    assert served == [{"storage": f"sqlite:///{(study_dir / 's.db').resolve()}", "host": "127.0.0.1",
                       "port": port}]
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().out


def test_host_opens_it_up(study_dir: Path, served: list[dict[str, Any]]) -> None:
    port = _free_port()
    assert _run(study_dir, "--host", "0.0.0.0", "--port", str(port)) == 0
    assert served[0]["host"] == "0.0.0.0" and served[0]["port"] == port


def test_busy_port_given_fails_with_one_line(study_dir: Path, served: list[dict[str, Any]], busy_port: int,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(study_dir, "--port", str(busy_port)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {busy_port}: already in use" in err[0]
    assert served == []


def test_busy_default_port_takes_the_next_free_one(study_dir: Path, served: list[dict[str, Any]], busy_port: int,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "DASHBOARD_PORT", busy_port)
    assert _run(study_dir) == 0
    port = served[0]["port"]
    assert busy_port < port < busy_port + cli.DASHBOARD_PORT_TRIES
    assert f"port {busy_port} is in use; using {port}" in capsys.readouterr().out


def test_no_free_port_in_the_range(study_dir: Path, served: list[dict[str, Any]], busy_port: int,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "DASHBOARD_PORT", busy_port)
    monkeypatch.setattr(cli, "DASHBOARD_PORT_TRIES", 1)
    assert _run(study_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all in use" in err[0] and served == []


def test_port_taken_between_check_and_bind(study_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def taken(*_: Any, **__: Any) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(optuna_dashboard, "run_server", taken)
    assert _run(study_dir, "--port", str(_free_port())) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Address already in use" in err[0] and "Traceback" not in captured.err


def test_bad_host_and_port(study_dir: Path, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(study_dir, "--port", "70000") == 2
    assert "--port 70000" in capsys.readouterr().err
    assert _run(study_dir, "--host", "no-such-host.invalid", "--port", str(_free_port())) == 2
    assert "--host no-such-host.invalid" in capsys.readouterr().err
    assert served == []


def test_no_study(tmp_path: Path, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dashboard", "--study", "s", "--studies-dir", str(tmp_path)]) == 2
    assert "no study database" in capsys.readouterr().err and served == []
