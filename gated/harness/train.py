"""``gated train``: one run, read top to bottom: build -> (resume) -> loop -> log/eval -> checkpoint.

The data of step ``s`` is ``task.batch("train", s - 1, batch_size)``, a function of the seed and
the step alone; the loop state that is not (optimizer, schedule, RNG, the carried LM state, the
partial logging window) goes into each checkpoint, so a resumed run reproduces an uninterrupted
one exactly. A run stopped before its first checkpoint starts again from step 0.

Validation metrics (``val_*``) are logged at every evaluation; test metrics (``test_*``) once, in
the last step's record, on the whole test split, so that nothing can be selected on them.
``--keep-best`` also keeps the checkpoint of the best validation main metric (``checkpoints/best/``);
``--tensorboard`` also writes the records, and gate histograms at evaluations, for TensorBoard.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import torch

from gated.harness import checkpoint as ckpt
from gated.harness import distributed
from gated.harness.config import RunConfig, choose_threads, machine_load
from gated.harness.evaluate import Window, evaluate, fmt
from gated.harness.files import append_jsonl, read_json, truncate_jsonl, write_json
from gated.harness.model import SequenceModel, count_parameters, detach_state, resolve_device
from gated.harness.tasks import build_task, get_task_spec


def make_optimizer(cfg, model: torch.nn.Module, total_steps: int):
    """Adam or AdamW, and a LambdaLR: linear warm-up, then constant, cosine or linear decay."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    opt = cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:  # step = updates done so far
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
        progress = min(1.0, step / max(1, total_steps))
        decay = {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                 "linear": 1.0 - progress}[cfg.schedule]
        return warm * decay

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def prepare_run_dir(cfg: RunConfig, task, resume: bool) -> Path:
    run = ckpt.open_run(cfg, resume, "gated train")
    info = {"task": cfg.task.task, "main_metric": task.main_metric, "higher_is_better": task.higher_is_better,
            "baseline": task.baseline, "seq_len": task.seq_len, "threshold": get_task_spec(cfg.task.task).threshold}
    write_json(run / "task.json", info)
    for name, value in task.artifacts().items():  # e.g. pMNIST's permutation, saved with the run
        path = run / f"{name}.json"
        if path.exists() and read_json(path, None) != value:
            raise ckpt.CheckpointError(f"{path} differs from the one this config and seed produce (incompatible)")
        write_json(path, value, indent=None)
    return run


def train(cfg: RunConfig, resume: bool = False, log=print) -> dict:
    """Run (or continue) the experiment ``cfg`` describes; returns the last logged record."""
    d = distributed.setup(resolve_device(cfg.train.device))  # under torchrun on CUDA: this rank's GPU
    sink = []  # the TensorBoard writer, once opened
    threads = torch.get_num_threads()  # restored at the end: --threads holds for this run only
    try:
        return _train(cfg, resume, log if d.main else (lambda *a, **k: None), d.device, d, sink)
    finally:
        torch.set_num_threads(threads)
        for tb in sink:
            tb.close()
        ckpt.close_run(cfg.train.out)
        distributed.teardown(d)


def restore_rng(state: dict, rank: int, device: torch.device) -> None:
    """Set torch's CPU generator and, on CUDA, this process's device generator from a checkpoint
    (``cuda_rng`` is absent in checkpoints of CPU runs and of versions before it was saved)."""
    torch.set_rng_state(state["rng"][rank])
    cuda = state.get("cuda_rng")
    if device.type == "cuda" and cuda and cuda[rank] is not None:
        torch.cuda.set_rng_state(cuda[rank], device)


def _train(cfg: RunConfig, resume: bool, log, device, d, sink: list) -> dict:
    tc, oc = cfg.train, cfg.optim
    threads, note = choose_threads(tc.threads, torch.get_num_threads(), *machine_load())  # 0: automatic
    torch.set_num_threads(threads)
    if note:
        log(note)
    if oc.batch_size % d.world:
        raise ValueError(f"--batch-size {oc.batch_size} must be divisible by the {d.world} processes")
    task = build_task(cfg.task, tc.seed)  # stops here, with the fetch command, if data is missing
    if tc.tensorboard and d.main:  # before the run directory is written: a missing package leaves nothing
        from gated.harness.tensorboard import require

        require()
    run = prepare_run_dir(cfg, task, resume) if d.main else Path(cfg.train.out)
    d.barrier()
    torch.manual_seed(tc.seed)  # the same initial weights in every process
    model = SequenceModel(cfg.model, task).to(device)
    opt, sched = make_optimizer(oc, model, tc.steps)
    step, carry, window = 0, None, Window()
    if resume and ckpt.has_checkpoint(run):
        c = ckpt.load(run, read_json(run / "config.json"))
        ckpt.load_model_state(model, c.model, str(run))
        try:
            opt.load_state_dict(c.state["optimizer"])
            sched.load_state_dict(c.state["scheduler"])
            step, window, world = c.step, Window(**c.state["window"]), c.state["world"]
            if world == d.world:
                restore_rng(c.state, d.rank, device)
                carry = _to(c.state["carry"][d.rank], device)
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise ckpt.CheckpointError(f"checkpoint in {run} has an incompatible or corrupted state: "
                                       f"{e.__class__.__name__}: {e}") from None
        if world != d.world:
            raise ckpt.CheckpointError(f"{run} was trained with {world} process(es); resume it with "
                                       f"the same number (got {d.world})")
    else:  # a new run, or one stopped before its first checkpoint: from step 0
        if resume:
            log(f"{run}: no checkpoint yet; starting from step 0")
        torch.manual_seed(tc.seed * 7919 + d.rank + 1)  # dropout masks differ between processes
    if d.main:  # drop what an interrupted run logged past its checkpoint (and a torn last line)
        truncate_jsonl(run / "metrics.jsonl", "step", step)
    if step >= tc.steps:
        log(f"{run}: already at step {step} (asked for --steps {tc.steps}); nothing to do")
        return {"step": step}
    tb = None
    if tc.tensorboard and d.main:
        from gated.harness.tensorboard import TensorBoard

        tb = TensorBoard(run, step)
        sink.append(tb)
    best = ckpt.best_record(run) if tc.keep_best and d.main else None
    best_key = f"val_{task.main_metric}"
    log(f"{task.__class__.__name__} ({cfg.task.task}): {count_parameters(model):,} parameters, "
        f"{cfg.model.core} variant {cfg.model.variant}, T = {task.seq_len}, baseline "
        + ", ".join(f"{k} {v:.4g}" for k, v in task.baseline.items()) + f"; device {device}, {d.world} process(es)")
    net = d.wrap(model)
    # --autocast: the forward passes in mixed precision (the parameters and optimizer stay float32)
    amp = (functools.partial(torch.autocast, torch.device(device).type, dtype=getattr(torch, tc.autocast))
           if tc.autocast != "off" else contextlib.nullcontext)
    bar = _progress(tc, step) if d.main else None
    last: dict = {"step": step}
    tic, tic_step = time.perf_counter(), step
    while step < tc.steps:
        step += 1
        batch = task.batch("train", step - 1, oc.batch_size)
        x = d.shard(batch.x, oc.batch_size, 1).to(device)
        y = d.shard(batch.y, oc.batch_size, batch.y.ndim - 1).to(device)
        if not task.stateful or batch.reset:
            carry = None
        with amp():
            out, carry = net(x, carry)
            loss = task.loss(out, y)
        carry = detach_state(carry) if task.stateful else None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip if oc.clip > 0 else float("inf"))
        opt.step()
        sched.step()
        window.add(task.metrics(out.detach(), y), float(norm), y.numel() * d.world)
        is_eval = step == tc.steps or (tc.eval_every and step % tc.eval_every == 0)
        if step % tc.log_every == 0 or is_eval:
            elapsed = time.perf_counter() - tic
            rate = (step - tic_step) / max(elapsed, 1e-9)
            record = {"step": step, **task.derived(d.mean(window.means())), "lr": sched.get_last_lr()[0],
                      "steps_per_s": rate, "samples_per_s": rate * oc.batch_size,
                      "tokens_per_s": rate * oc.batch_size * task.seq_len}
            window = Window()
            if is_eval and d.main:
                with amp():
                    res = evaluate(model, task, "val", oc.batch_size, tc.eval_batches, device)
                record |= {f"val_{k}": v for k, v in res.items()}
                if step == tc.steps:  # test once, at the end, on the whole test split
                    with amp():
                        res = evaluate(model, task, "test", oc.batch_size, 0, device)
                    record |= {f"test_{k}": v for k, v in res.items()}
                (bar.write if bar is not None else log)(fmt(record, task.main_metric))
                if tb is not None:
                    tb.gates(step, model, task.batch("val", 0, oc.batch_size).x.to(device))
            d.barrier()
            if d.main:
                append_jsonl(run / "metrics.jsonl", record)
                if tb is not None:
                    tb.record(record)
            last, tic, tic_step = record, time.perf_counter(), step
            if tc.keep_best and is_eval and d.gather(_better(record.get(best_key), best, task))[0]:
                best = {"metric": best_key, "value": record[best_key], "higher_is_better": task.higher_is_better}
                _save(run, step, model, opt, sched, window, carry, cfg, d, best=best)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(fmt(last, task.main_metric, short=True), refresh=False)
        if step == tc.steps or (tc.ckpt_every and step % tc.ckpt_every == 0):
            _save(run, step, model, opt, sched, window, carry, cfg, d)
    if bar is not None:
        bar.close()
    if d.main:  # after the last checkpoint: the results stand without the checkpoints
        ckpt.mark_finished(run, step)
    return last


def _better(value, best: dict | None, task) -> bool:
    """Whether a validation value beats the keep-best checkpoint's (NaN never does)."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best["value"] if task.higher_is_better else value < best["value"])


def _save(run, step, model, opt, sched, window, carry, cfg, d, best: dict | None = None) -> None:
    """Checkpoint every process's state (the latest one, or with ``best`` the keep-best one)."""
    rngs = d.gather(torch.get_rng_state())
    # the CUDA generator of this process's device only (each rank drives one GPU)
    cuda_rngs = d.gather(torch.cuda.get_rng_state(d.device) if d.device.type == "cuda" else None)
    carries = d.gather(_to(carry, "cpu"))
    if d.main:
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rngs, "cuda_rng": cuda_rngs,
                 "carry": carries, "window": window.state(), "world": d.world, "step": step}
        ckpt.save(run, step, model.state_dict(), state, cfg.to_dict(), best)
    d.barrier()


def _to(state, device):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.to(device) for s in state)
    return state.to(device)


def _progress(tc, start: int):
    if not tc.progress:
        return None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in logs and pipes
    return tqdm(total=tc.steps, initial=start, disable=None, unit="step", dynamic_ncols=True)
