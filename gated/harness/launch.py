"""Where the runs of a grid (``gated compare``, ``gated rl compare``, ``gated reproduce``) execute.

``--launcher``:

- ``subprocess`` (default): child processes on this machine, ``--jobs`` at a time (default: one
  per core), each with the cores shared between the jobs;
- ``submitit-local``: each run a submitit job on this machine (submitit's local executor): a dry
  run of the cluster path, and what the tests use;
- ``slurm``: each run a Slurm job through submitit's ``AutoExecutor`` (``pip install
  'gated[cluster]'``), with ``--slurm-partition``, ``--slurm-time`` (minutes), ``--slurm-cpus-per-task``
  (also the run's torch threads), ``--slurm-gpus-per-node``, ``--slurm-mem-gb``, ``--slurm-account``
  and ``--slurm-param KEY=VALUE`` for any other ``sbatch`` option submitit knows (``constraint=v100``).
  ``--jobs`` caps the jobs queued at once (default: all of them). The run directories must be
  on a file system the nodes share; submitit's own files go to ``OUT/.submitit``.

A job runs the same ``gated train`` command line a subprocess would, from the same working
directory (:func:`job_command`), so the grid's semantics do not depend on the launcher: finished runs are reused,
unfinished ones resumed, runs in use skipped, and each run's output goes to its ``train.log``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LAUNCHERS = ("subprocess", "submitit-local", "slurm")
SLURM_FLAGS = {  # flag -> (submitit parameter, type, metavar, help)
    "partition": ("slurm_partition", str, "NAME", "Slurm partition"),
    "time": ("timeout_min", int, "MIN", "time limit per run, in minutes"),
    "cpus_per_task": ("cpus_per_task", int, "N", "CPUs per run (also its torch threads; default 1)"),
    "gpus_per_node": ("gpus_per_node", int, "N", "GPUs per run"),
    "mem_gb": ("mem_gb", float, "GB", "memory per run"),
    "account": ("slurm_account", str, "NAME", "Slurm account"),
}


def add_arguments(parser) -> None:
    group = parser.add_argument_group("launcher (where the runs execute)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="subprocess",
                       help="subprocess: processes on this machine (default); submitit-local: submitit jobs on this "
                       "machine; slurm: one Slurm job per run (needs submitit: pip install 'gated[cluster]')")
    for name, (_, tp, metavar, text) in SLURM_FLAGS.items():
        group.add_argument(f"--slurm-{name.replace('_', '-')}", dest=f"slurm_{name}", type=tp, metavar=metavar,
                           help=text)
    group.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                       help="another submitit Slurm parameter, e.g. constraint=v100 (repeatable)")


def job_command(argv: list[str], log: Path, env: dict[str, str]) -> list[str]:
    """What a submitit job runs: ``argv`` with ``env`` added to the node's environment and its
    output appended to ``log``. The job calls ``subprocess.call`` on it, so the job's own Python
    imports nothing of gated (nor torch) and its result is the run's exit status."""
    return ["/bin/sh", "-c", 'log=$1; shift; exec env "$@" >> "$log" 2>&1', "sh", str(log),
            *(f"{k}={v}" for k, v in env.items()), *argv]


class Subprocess:
    """Child processes on this machine (``gated compare``'s default)."""

    def default_jobs(self, runs: int) -> int:
        return min(runs, os.cpu_count() or 1)

    def threads(self, jobs: int) -> int:
        return max(1, (os.cpu_count() or 1) // jobs)

    def start(self, argv: list[str], log: Path, env: dict[str, str], name: str):
        from gated.harness.files import nofollow

        f = open(log, "a", opener=nofollow)  # never through a link planted as train.log
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, **env))
        return _Process(proc, f)


class _Process:
    def __init__(self, proc, f):
        self.proc, self.f = proc, f

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self.f.close()
        return code


class Submitit:
    """submitit jobs: ``cluster`` "local" (this machine) or "slurm"; ``parameters`` go to
    ``AutoExecutor.update_parameters`` (a wrong one is reported before any run starts)."""

    def __init__(self, cluster: str, folder: Path, parameters: dict):
        try:
            import submitit
        except ModuleNotFoundError:
            from gated.harness.status import install_hint

            raise ValueError(f"--launcher {'slurm' if cluster == 'slurm' else 'submitit-local'} needs submitit; "
                             f"{install_hint('cluster')}") from None
        self.cluster, self.cpus = cluster, parameters.get("cpus_per_task") or 1
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            defaults = {"cpus_per_task": self.cpus} if cluster == "slurm" else {}
            self.executor.update_parameters(**(defaults | parameters))
        except (RuntimeError, NameError, AssertionError) as e:  # no srun here, an unknown parameter
            raise ValueError(f"--launcher {cluster}: {e}") from None

    def default_jobs(self, runs: int) -> int:
        return runs if self.cluster == "slurm" else min(runs, os.cpu_count() or 1)

    def threads(self, jobs: int) -> int:
        return self.cpus if self.cluster == "slurm" else max(1, (os.cpu_count() or 1) // jobs)

    def start(self, argv: list[str], log: Path, env: dict[str, str], name: str):
        from gated.harness.files import nofollow

        open(log, "a", opener=nofollow).close()  # the job appends to it: refuse a link planted as train.log
        self.executor.update_parameters(name=name)
        return _Job(self.executor.submit(subprocess.call, job_command(argv, log, env), cwd=os.getcwd()), log)


class _Job:
    def __init__(self, job, log: Path):
        self.job, self.log = job, log

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # the job itself failed: cancelled, timed out, node lost
            with open(self.log, "a") as f:
                f.write(f"\nsubmitit job {self.job.job_id} failed: {e}\n(its own log: {self.job.paths.stderr})\n")
            return -1


def from_args(args, folder: Path):
    """The launcher the parsed flags ask for (``subprocess`` when they name none)."""
    kind = getattr(args, "launcher", None) or "subprocess"
    params = {key: getattr(args, f"slurm_{name}") for name, (key, *_) in SLURM_FLAGS.items()
              if getattr(args, f"slurm_{name}", None) is not None}
    for item in getattr(args, "slurm_param", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. constraint=v100")
        params[f"slurm_{key.strip().replace('-', '_')}"] = int(value) if value.isdigit() else value
    if params and kind != "slurm":
        raise ValueError(f"the --slurm-* flags need --launcher slurm (got --launcher {kind})")
    if kind == "subprocess":
        return Subprocess()
    return Submitit("slurm" if kind == "slurm" else "local", Path(folder) / ".submitit", params)
