"""Defaults and names: ``--threads 0`` (automatic), ``gated bench --quick``, variant names stored
as the registry's labels (and the tables' model names accepted), ``gated --version``, and
subcommand usage on a mistyped flag."""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest
import torch

import gated
from gated.harness import bench, config
from gated.harness.cli import COMMANDS, build_parser, main, version

QUIET = ["--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "2", "--log-every", "1",
         "--no-progress"]


# --- threads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("default,cpus,load,expected", [
    (2, 2, 0.1, 2),    # idle: torch's default
    (2, 2, 0.6, 1),    # more than half a core busy: 1 free core (rounded)
    (2, 2, 1.3, 1),
    (2, 2, 6.0, 1),    # overloaded: never below 1
    (8, 8, 3.0, 5),    # 5 cores free
    (4, 16, 2.0, 4),   # never above torch's default (OMP_NUM_THREADS, the cores)
    (2, 2, None, 2),   # no load average (Windows): torch's default
    (2, None, 1.5, 2),
    (1, 2, 0.0, 1),
])
def test_auto_threads_rule(default, cpus, load, expected):
    assert config.auto_threads(default, cpus, load) == expected


def test_choose_threads_notes():
    assert config.choose_threads(0, 2, 2, 0.2) == (2, None)
    assert config.choose_threads(0, 2, 2, 1.9) == (
        1, "--threads 0 (automatic): 1 thread(s), not torch's 2: the other cores are busy (load 1.9 on 2 cores)")
    assert config.choose_threads(2, 2, 2, 1.9) == (
        2, "the other cores are busy (load 1.9 on 2 cores): a small model runs faster with --threads 1")
    assert config.choose_threads(1, 2, 2, 1.9) == (1, None)  # nothing lower to suggest
    assert config.choose_threads(3, 2, 2, None) == (3, None)


@pytest.mark.parametrize("threads,load,during,note", [
    ("0", 1.9, 1, "--threads 0 (automatic): 1 thread(s), not torch's 2"),
    ("0", 0.1, 2, None),
    ("2", 1.9, 2, "a small model runs faster with --threads 1"),
])
def test_train_applies_the_thread_rule_and_restores_the_count(threads, load, during, note, tmp_path, monkeypatch,
                                                              capsys):
    from gated.harness import train as train_module

    monkeypatch.setattr(os, "getloadavg", lambda: (load, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    seen = []
    real_batch = train_module.build_task

    def build_task(*a, **k):  # record the thread count the loop runs with
        seen.append(torch.get_num_threads())
        return real_batch(*a, **k)

    monkeypatch.setattr(train_module, "build_task", build_task)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["train", *QUIET, "--steps", "1", "--threads", threads, "--out", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    assert seen == [during]
    out = capsys.readouterr().out
    assert (note in out) if note else ("--threads" not in out)


def test_threads_help_documents_the_rule(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0: automatic: torch's default (the cores, or OMP_NUM_THREADS), lowered to the cores the 1-minute " \
           "load average leaves free, at least 1" in text


# --- gated bench --quick -----------------------------------------------------------------------

def _bench_args(*flags: str):
    return bench.plan(build_parser("bench").parse_args(["bench", *flags]))


def test_bench_quick_selects_the_quick_plan():
    args = _bench_args("--quick")
    assert (args.shapes, args.cores, args.variants, args.layers, args.directions, args.repeats, args.no_reference) == (
        bench.QUICK["shapes"], bench.QUICK["cores"], bench.QUICK["variants"], [1], [1], 2, True)
    full = _bench_args()
    assert (full.shapes, full.cores, full.variants, full.layers, full.directions, full.repeats, full.no_reference) == (
        bench.SHAPES, ["lstm", "gru", "mgu"], ["-", "C", "U", "R", "UR"], [1, 2], [1, 2], 3, False)
    assert full.shapes is not bench.SHAPES  # a copy: the module's default is never mutated


def test_bench_flags_given_with_quick_win_and_variants_are_labels():
    args = _bench_args("--quick", "--cores", "mgu", "--repeats", "5", "--variants", "ur", "UR", "uniform")
    assert (args.shapes, args.cores, args.repeats, args.variants) == (bench.QUICK["shapes"], ["mgu"], 5, ["UR", "U"])
    with pytest.raises(ValueError, match="--repeats must be >= 1, got 0"):
        _bench_args("--repeats", "0")


def test_bench_quick_runs_the_quick_grid(monkeypatch, capsys):
    """Through ``gated bench --quick`` with the measurements replaced: which rows, with which settings."""
    calls = []

    def measure(core, variant, shape, layers, dirs, args, dtype):
        calls.append((args.repeats, args.no_reference))
        return {"shape": "x".join(map(str, shape)), "core": core, "variant": variant, "layers": layers, "dirs": dirs,
                "torch_train": 2.0, "fused_train": 1.0, "torch_infer": 2.0, "fused_infer": 1.0, "gflops_train": 1.0,
                "gflops_infer": 1.0}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a: 1e10)
    monkeypatch.setattr(bench, "_kernel_info", lambda *a: "kernels")
    assert main(["bench", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "--quick plan" in out.splitlines()[0]
    rows = [[c.strip() for c in line.strip("|").split("|")][:5] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| shape")]
    assert rows == [[s, c, v, "1", "1"] for s in bench.QUICK["shapes"] for c in ["lstm", "gru"] for v in ["-", "UR"]]
    assert set(calls) == {(2, True)}


# --- variant names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,hint", [
    ("UX", "; did you mean 'U', 'UR' or 'UM'?"),
    ("uniform-refin", "; did you mean 'uniform-refine', 'uniform' or 'uniform-master'?"),
    ("chrno", "; did you mean 'chrono'?"),
    ("UR-LSTM", "; did you mean 'UR'? ('UR-LSTM' is a model: the lstm core with variant UR)"),
    ("GRU", "; did you mean '-'? ('GRU' is a model: the gru core with variant -)"),
    ("banana", "')"),  # nothing close: the message ends with the list of choices
])
def test_get_variant_suggests_the_closest_names(name, hint):
    with pytest.raises(ValueError, match=f"^unknown variant '{name}'; choose one of '-', 'C'") as e:
        gated.get_variant(name)
    assert str(e.value).endswith(hint)
    assert "did you mean" not in str(e.value) or hint.startswith("; did")


@pytest.mark.parametrize("variant,core,expected", [
    ("ur", None, ("lstm", "UR")),
    ("uniform-refine", "gru", ("gru", "UR")),
    ("UR-", "mgu", ("mgu", "UR")),
    ("UR-LSTM", "lstm", ("lstm", "UR")),
    ("ur-lstm", None, ("lstm", "UR")),
    ("UR-GRU", None, ("gru", "UR")),      # a model name sets the core when --core is not given
    ("LSTM", None, ("lstm", "-")),
    ("GRU", "gru", ("gru", "-")),
    ("C-MGU", "mgu", ("mgu", "C")),
    ("UR-minGRU", None, ("mingru", "UR")),
])
def test_config_stores_the_registry_label(variant, core, expected):
    cfg = config.build({"task": "copy", "variant": variant} | ({"core": core} if core else {}))
    assert (cfg.model.core, cfg.model.variant) == expected


def test_every_model_name_the_tables_print_is_accepted():
    from gated.harness.model import CORE_MODULES
    from gated.harness.report import label

    for core in CORE_MODULES:
        for variant in gated.CORES[core].variants:
            for given in ({"core": core}, {}):
                cfg = config.build({"task": "copy", "variant": label(core, variant), **given})
                assert (cfg.model.core, cfg.model.variant) == (core, variant), label(core, variant)


@pytest.mark.parametrize("args,message", [
    (["--core", "gru", "--variant", "UR-LSTM"],
     "--variant 'UR-LSTM' names the lstm core, but --core is 'gru'; use --variant UR (or UR-GRU) with --core gru, "
     "or --core lstm"),
    (["--variant", "UX"], "unknown variant 'UX' for core 'lstm'; choose from -, C, O, U, R, OM, OR, UM, UR; "
                          "did you mean 'U', 'UR' or 'UM'?"),
    (["--core", "mgu", "--variant", "UR-MUG"], "unknown variant 'UR-MUG' for core 'mgu'; choose from -, C, U, R, UR; "
                                               "did you mean 'UR-MGU'"),
    (["--core", "mgu", "--variant", "OM-MGU"], "unknown variant 'OM-MGU' for core 'mgu'; choose from -, C, U, R, UR"),
])
def test_bad_variant_names_are_one_line_errors(args, message, tmp_path, capsys):
    assert main(["train", *QUIET, *args, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gated train: error: {message}")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_config_json_holds_the_label(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUIET, "--variant", "uniform-refine", "--steps", "1", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["variant"] == "UR"
    assert "lstm variant UR," in capsys.readouterr().out


def test_a_run_configured_with_an_old_spelling_still_loads_and_resumes(tmp_path):
    """A run written before labels were stored holds ``"ur"`` in config.json, and its checkpoints'
    fingerprint was computed from that: it resumes, keeps its spelling, and reads back as ``UR``."""
    from gated.harness import checkpoint
    from gated.harness.train import train

    run = tmp_path / "old"
    cfg = config.build({"task": "copy", "delay": 3, "hidden_size": 4, "batch_size": 2, "steps": 2, "ckpt_every": 2,
                        "log_every": 1, "progress": False, "out": str(run)})
    cfg.model.variant = "ur"  # as the previous version stored it
    train(cfg, log=lambda *a, **k: None)
    assert json.loads((run / "config.json").read_text())["model"]["variant"] == "ur"
    assert main(["train", "--resume", str(run), "--steps", "3", "--variant", "UR", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["variant"] == "ur"
    assert checkpoint.load(run, saved).step == 3
    assert config.from_dict(saved).model.variant == "UR"  # every reader sees the label
    assert config.from_dict(saved, canonical=False).model.variant == "ur"
    assert main(["train", "--resume", str(run), "--steps", "4", "--variant", "U"]) == 2


# --- gated --version ---------------------------------------------------------------------------

def test_version_prints_the_installed_version(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"gated {importlib.metadata.version('gated')}\n"

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(gated, "__version__", "9.9.9-checkout")
    assert version() == "9.9.9-checkout"


# --- usage on a mistyped flag ------------------------------------------------------------------

@pytest.mark.parametrize("argv,prog", [
    (["train"], "gated train"),
    (["data", "list"], "gated data list"),
    (["compare"], "gated compare"),
    (["plot", "curves", "runs"], "gated plot curves"),
    (["plot", "gates", "run"], "gated plot gates"),
    (["bench"], "gated bench"),
    (["demo", "highway"], "gated demo highway"),
    (["reproduce", "--quick"], "gated reproduce"),
    (["rl", "train"], "gated rl train"),
    (["rl", "compare"], "gated rl compare"),
])
def test_an_unknown_flag_shows_the_subcommands_usage(argv, prog, capsys):
    assert argv[0] in COMMANDS
    with pytest.raises(SystemExit) as e:
        main([*argv, "--no-such-flag-anywhere", "7"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ")
    assert err.endswith(f"\n{prog}: error: unrecognized arguments: --no-such-flag-anywhere 7\n")


@pytest.mark.parametrize("argv,message", [
    (["train", "--hiden-size", "5"], "gated train: error: unrecognized arguments: --hiden-size 5 "
                                     "(did you mean --hidden-size?)"),
    (["train", "--hiden-size", "5", "--stpes=3"], "gated train: error: unrecognized arguments: --hiden-size 5 "
                                                  "--stpes=3 (did you mean --hidden-size for --hiden-size, --steps "
                                                  "for --stpes?)"),
    (["data", "fetch", "mnist", "--forse"], "gated data fetch: error: unrecognized arguments: --forse "
                                            "(did you mean --force?)"),
    (["bench", "--quik"], "gated bench: error: unrecognized arguments: --quik (did you mean --quick?)"),
    (["trian", "--steps", "3"], "gated: error: unknown command 'trian' (did you mean 'train'?); choose from train, "
                                "data, compare, plot, bench, demo, reproduce, rl"),
])
def test_a_mistyped_flag_or_command_gets_the_closest_name(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message


def test_tables_and_plots_read_old_runs_typed_names_as_one_series(tmp_path):
    """Runs written before labels were stored (``ur``, ``uniform-refine``) are one series, ``UR``."""
    from gated.harness.report import find_runs

    for seed, typed in enumerate(("ur", "uniform-refine", "UR")):
        run = tmp_path / "default" / typed / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": {"variant": typed, "core": "lstm"},
                                                     "train": {"seed": seed}}))
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert [r["variant"] for r in find_runs(tmp_path)] == ["UR", "UR", "UR"]


@pytest.mark.slow
def test_cell_options_train_resume_exactly_and_old_runs_keep_their_fingerprint(tmp_path):
    """--layer-norm --zoneout --recurrent-dropout --weight-dropout reach the model; a run resumed from
    its checkpoint equals an uninterrupted one (the masks come from the restored generator); a
    config saved before these fields existed keeps its checkpoint fingerprint."""
    from gated.harness import checkpoint, config
    from gated.harness.cli import main
    from gated.harness.files import read_jsonl

    tiny = ["train", "--task", "copy", "--delay", "3", "--hidden-size", "4", "--batch-size", "2", "--no-progress",
            "--layer-norm", "--zoneout", "0.1", "--recurrent-dropout", "0.2", "--weight-dropout", "0.3",
            "--log-every", "2", "--ckpt-every", "2", "--threads", "1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*tiny, "--steps", "4", "--out", str(whole)]) == 0
    assert main([*tiny, "--steps", "2", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--steps", "4", "--no-progress"]) == 0
    losses = lambda run: [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl")]  # noqa: E731
    assert losses(part) == losses(whole)
    saved = json.loads((whole / "config.json").read_text())
    assert saved["model"]["layer_norm"] is True and saved["model"]["zoneout"] == 0.1
    from gated.harness.model import SequenceModel
    from gated.harness.tasks import build_task

    cfg = config.from_dict(saved)
    rnn = SequenceModel(cfg.model, build_task(cfg.task, 0)).rnn
    assert rnn.opts.layer_norm and rnn.opts.zoneout == (0.1, 0.1) and rnn.opts.weight_dropout == 0.3
    plain = config.build({"task": "copy"}).to_dict()
    old = {k: dict(v) for k, v in plain.items()}
    for name in config.LATER_FIELDS["model"]:
        del old["model"][name]  # a config.json written before the cell options
    assert checkpoint.fingerprint(old) == checkpoint.fingerprint(plain)
    assert checkpoint.fingerprint(saved) != checkpoint.fingerprint(plain)


@pytest.mark.parametrize("core", ["rglru", "hgrn"])
def test_gated_train_runs_the_rglru_and_hgrn_cores(core, tmp_path):
    """--core rglru|hgrn builds the library's module (no chrono t_max for them) and trains."""
    from gated.harness.cli import main
    from gated.harness.files import read_jsonl

    run = tmp_path / core
    assert main(["train", "--task", "copy", "--delay", "3", "--hidden-size", "8", "--batch-size", "4", "--core", core,
                 "--variant", "U", "--steps", "4", "--log-every", "2", "--threads", "1", "--no-progress",
                 "--out", str(run)]) == 0
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r][-1] == 4 and all(r["loss"] == r["loss"] for r in records)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["core"] == core and saved["model"]["variant"] == "U"
