"""`python -m engines.bench` says what it will do and how long it should take before it starts, then a line as each
row starts and is ready (it used to print nothing for minutes). Rows here are fakes: what is checked is the order
and content of the lines and that a failing row costs only itself."""
from __future__ import annotations

from types import SimpleNamespace

import engines.bench as bench
from tests.support import FakeEngine


def test_the_estimate_comes_first_then_a_line_as_each_row_starts_and_ends(monkeypatch, deterministic_engine):
    def broken():
        raise RuntimeError("no OpenVINO CPU plugin\nlong trace")

    planned = [bench.Planned("cpu fake [default]", lambda: (FakeEngine(), ["a notice"]), (1.0, 1.0)),
               bench.Planned("openvino int8", broken, (5.0, 90.0)),
               bench.Planned("tensorrt (not benchmarked: no CUDA GPU)", lambda: None, (0.0, 0.0))]
    monkeypatch.setattr(bench, "planned_rows", lambda base, args: planned)
    monkeypatch.setattr(bench, "_baseline_frame_ms", lambda base: 400.0)
    args = SimpleNamespace(warmup=2, frames=10, no_full=False)
    lines = []
    rows, notices = bench.build_rows(deterministic_engine, args, say=lines.append)
    estimate, *per_row = lines
    assert estimate.startswith("bench: 4 rows (baseline + cpu fake [default], openvino int8, tensorrt")
    assert "expected about" in estimate and "6 s to build the rows, up to 91 s with empty caches" in estimate
    assert "12 rounds" in estimate and "takes 400 ms" in estimate
    assert per_row[0] == "bench: row 1/3: cpu fake [default] ..."
    assert per_row[1].startswith("bench: row 1/3: cpu fake [default] ready in ")
    assert per_row[2] == "bench: row 2/3: openvino int8 ..."
    assert per_row[3] == "bench: row 2/3: openvino int8 failed (RuntimeError: no OpenVINO CPU plugin)"
    assert per_row[4] == "bench: row 3/3: tensorrt (not benchmarked: no CUDA GPU) ..."
    assert [row.name for row in rows] == ["torch eager fp32 (baseline)", "cpu fake [default]"]
    assert "cpu fake [default]: a notice" in notices and "tensorrt (not benchmarked: no CUDA GPU)" in notices
    assert any(n.startswith("openvino int8 not benchmarked: RuntimeError") for n in notices)


def test_a_row_s_label_comes_from_its_engine_and_its_report(deterministic_engine):
    from engines.backends.common import AcceleratedEngine

    report = deterministic_engine.report()
    int8 = AcceleratedEngine(deterministic_engine, name="openvino-int8",
                             report=report.__class__(backend="openvino", device="cpu", detector="bf16",
                                                     renderer="int8"))
    assert bench.label_of(bench.Planned("openvino int8", None), int8) == "openvino openvino-int8 (+bf16 detector)"
    assert bench.label_of(bench.Planned("openvino fp32 [auto float]", None), int8).endswith("[auto float]")
    assert bench.label_of(bench.Planned("auto", None), int8) == "auto -> openvino-int8"
