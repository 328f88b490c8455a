"""``gated bench``: the tables it prints are consistent with their own columns (tiny shapes, so
the times themselves mean nothing here; speed is never asserted in a test)."""

from __future__ import annotations

import pytest

from gated.harness.cli import main


def _table(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| shape") and not line.startswith("| T ")
            and not line.startswith("| B ")]


def _quotient_ok(shown: float, num: float, den: float, step: float = 0.05) -> bool:
    """``shown`` (printed to 2 decimals) is num / den, where both were printed to 0.1 ms."""
    lo = max(num - step, 0.0) / (den + step)
    hi = (num + step) / max(den - step, 1e-9)
    return lo - 0.005 <= shown <= hi + 0.005


@pytest.mark.parametrize("flag,unit", [("--sweep-t", "step"), ("--sweep-b", "sequence")])
def test_sweeps_print_one_row_per_size_with_consistent_ratios(flag, unit, capsys):
    assert main(["bench", "--shapes", "6x3x4x8", "--cores", "gru", "--variants", "UR", flag, "2", "5",
                 "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"fused ms per {unit}" in out
    rows = _table(out)
    assert [int(r[0]) for r in rows] == [2, 5]
    for size, torch_ms, fused_ms, ratio, per in ((int(r[0]), *map(float, r[1:])) for r in rows):
        assert _quotient_ok(ratio, fused_ms, torch_ms)
        assert abs(per - fused_ms / size) <= 0.05 / size + 5e-4


def test_grid_row_ratios_match_their_times(capsys):
    assert main(["bench", "--shapes", "5x2x3x8", "--cores", "lstm", "--variants", "UR", "--layers", "1",
                 "--directions", "2", "--no-reference", "--repeats", "1", "--threads", "1"]) == 0
    (row,) = _table(capsys.readouterr().out)
    assert row[:5] == ["5x2x3x8", "lstm", "UR", "1", "2"]
    torch_train, fused_train, train_ratio = float(row[5]), float(row[7]), float(row[8])
    torch_infer, fused_infer, infer_ratio = float(row[9]), float(row[10]), float(row[11])
    assert _quotient_ok(train_ratio, fused_train, torch_train)
    assert _quotient_ok(infer_ratio, fused_infer, torch_infer)


def test_columns_are_timed_in_alternation(monkeypatch):
    """The anchor and the timed module run in rounds (one call each, the order reversed every other
    round) after a warm-up each, and each keeps its fastest call: a fake clock charges "a" 1 s on
    its second call, 3 s on every other, and "b" always 2 s."""
    from gated.harness import bench_common

    calls, now, cost = [], [0.0], {"a": [3, 3, 1, 3], "b": [2, 2, 2, 2]}
    fns = {name: (lambda name=name: calls.append(name) or now.__setitem__(0, now[0] + cost[name].pop(0)))
           for name in ("a", "b")}
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: now[0])
    best = bench_common._time_together(fns, 3, "cpu")
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert best == {"a": 1.0, "b": 2.0}


def test_stream_rows_and_header(capsys):
    """--stream: one row per core, variant and batch with the per-step times' ratio; the header
    names torch's and the extension's instruction sets and whether the tiled kernel ran."""
    assert main(["bench", "--shapes", "6x4x3x8", "--cores", "gru", "lstm", "--variants", "UR", "--stream", "1", "3",
                 "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("# torch CPU capability"))
    from gated.backends import _build

    ops = _build.load()
    if ops is not None:
        assert f"extension built for {ops.isa()}" in header
        assert ("tiled kernel ran" in header) == (4 in ops.gemm_kinds())
    rows = [r for r in _table(out) if r[0] in ("gru", "lstm")]
    assert [(r[0], r[2]) for r in rows] == [("gru", "1"), ("gru", "3"), ("lstm", "1"), ("lstm", "3")]
    for r in rows:
        torch_us, fused_us, ratio = float(r[3]), float(r[4]), float(r[5])
        assert abs(ratio - fused_us / torch_us) <= 0.01 + 0.5 * (1 / torch_us + fused_us / torch_us**2)


def test_cells_rows_ratios_match_their_times(capsys):
    """--cells: one row per core, variant, batch and kind (the cells, T = 1 calls of the sequence
    modules); each ratio is its row's gated time over torch's."""
    assert main(["bench", "--shapes", "6x4x3x8", "--cores", "mgu", "lstm", "--variants", "-", "UR", "--cells", "2",
                 "--repeats", "1", "--threads", "1"]) == 0
    rows = [r for r in _table(capsys.readouterr().out) if r[0] in ("mgu", "lstm")]
    assert [tuple(r[:4]) for r in rows] == [(core, kind, v, "2") for core in ("mgu", "lstm") for v in ("-", "UR")
                                            for kind in ("cell", "layer")]
    for r in rows:
        for theirs, ours, ratio in ((r[4], r[5], r[6]), (r[7], r[8], r[9])):
            t, o = float(theirs), float(ours)
            assert abs(float(ratio) - o / t) <= 0.01 + 0.5 * (1 / t + o / t**2)


def test_gemm_pin(capsys):
    from gated.backends import _build

    ops = _build.load()
    if ops is None:
        pytest.skip("no extension")
    try:
        assert main(["bench", "--shapes", "5x8x3x8", "--cores", "gru", "--variants", "UR", "--layers", "1",
                     "--directions", "1", "--no-reference", "--repeats", "1", "--threads", "1", "--gemm", "addmm"]) == 0
    finally:
        ops.set_gemm(0)
    assert "GEMM path addmm; tiled kernel did not run" in capsys.readouterr().out


def test_scan_core_tables_match_their_times(capsys):
    """--cores mingru: the bare scan against its memory floor, one row per core and variant against
    torch.nn.GRU, and the T sweep, each ratio the quotient of its own columns."""
    assert main(["bench", "--cores", "mingru", "--shapes", "12x2x4x8", "--variants", "UR", "--sweep-t", "3", "12",
                 "--no-reference", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# gated bench (scan cores)")
    import torch

    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()};" in out.splitlines()[0]
    scan_row, layer_row = (r for r in _table(out) if r[0].startswith("12x2"))
    floor, fused, ratio = float(scan_row[2]), float(scan_row[4]), float(scan_row[5])
    assert _quotient_ok(ratio, fused, floor)
    assert layer_row[:3] == ["12x2x4x8", "mingru", "UR"]
    assert _quotient_ok(float(layer_row[6]), float(layer_row[5]), float(layer_row[3]))
    sweep = [line for line in out.splitlines() if line.startswith(("| 3 |", "| 12 |"))]
    assert len(sweep) == 2
    for line in sweep:
        t, ms, per = (float(c) for c in line.strip("|").split("|"))
        assert abs(per - ms / t) <= 0.05 / t + 5e-4


def test_rglru_and_hgrn_have_rows_against_torch_nn_gru(capsys):
    """--cores rglru hgrn: one row per core and variant, its ratio the quotient of its own columns."""
    assert main(["bench", "--cores", "rglru", "hgrn", "--shapes", "12x2x4x8", "--variants", "UR", "--sweep-t", "3",
                 "--no-reference", "--repeats", "1", "--threads", "1"]) == 0
    rows = [r for r in _table(capsys.readouterr().out) if r[0].startswith("12x2x4x8")]
    assert [r[1] for r in rows] == ["rglru", "hgrn"]
    for r in rows:
        assert _quotient_ok(float(r[6]), float(r[5]), float(r[3]))


def test_cell_option_rows_against_the_python_loop_and_torch_nn(capsys):
    """--cell-options: train and inference rows per core, each ratio the quotient of its own columns."""
    assert main(["bench", "--cell-options", "--no-compile", "--shapes", "6x2x4x8", "--repeats", "1",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# gated bench (cell options")
    rows = [r for r in _table(out) if r[0] == "6x2x4x8"]
    assert [(r[1], r[2]) for r in rows] == [("lstm", "train"), ("lstm", "infer"), ("gru", "train"), ("gru", "infer")]
    for r in rows:
        assert _quotient_ok(float(r[7]), float(r[3]), float(r[4]))
        assert _quotient_ok(float(r[9]), float(r[3]), float(r[6]))


@pytest.mark.parametrize("mode,gemm", [("on", "bfloat16"), ("off", "float32")])
def test_autocast_header_names_the_matmul_dtype(mode, gemm, capsys):
    """Under --autocast bfloat16 the header says which dtype gated's recurrent matmuls ran in, as
    --bf16-gemm chose it, and the run leaves the process's mode as it found it."""
    from gated import precision

    before = precision.get_bf16_gemm()
    assert main(["bench", "--shapes", "4x2x3x8", "--cores", "gru", "--variants", "UR", "--layers", "1",
                 "--directions", "1", "--no-reference", "--repeats", "1", "--threads", "1",
                 "--autocast", "bfloat16", "--bf16-gemm", mode]) == 0
    out = capsys.readouterr().out
    assert f"gated's recurrent matmuls in {gemm} (bf16 GEMM mode '{mode}')" in out
    assert precision.get_bf16_gemm() == before
    assert len(_table(out)) == 1
