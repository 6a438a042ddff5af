"""The RADI trainer: ``python -m radi_fast.train`` (or ``radi-fast-train``) runs the paper's
two-stage pipeline end to end.

    python -m radi_fast.train                                   # synthetic benchmark, default schemes
    python -m radi_fast.train --schemes baseline,kd,dkd,radi_p,radi_p:margin_mode=uniform --out_dir runs/t2
    python -m radi_fast.train --dataset ivqa --data_dir data/iVQA --student_epochs 5 --out_dir runs/ivqa
    python -m radi_fast.train --model mypkg.models:build --data mypkg.data:load   # your own model and data
    python -m radi_fast.train --config my.json --resume          # flags override the file
    python -m radi_fast.train --help
    torchrun --standalone --nproc_per_node 4 -m radi_fast.train  # DDP, one process per GPU (docs/training.md)

Stage 1 trains a teacher with eq. 2 on the (insufficient) training labels. Stage 2 trains one
student per scheme with ``L_cls + alpha * L_rank`` (or the compared scheme's loss), each from the
same initialisation (``--student_init``: ``individual`` = a second model trained like the teacher
with another seed, the paper's default; ``teacher``; ``scratch``). After every epoch the model is
scored on the validation split, at the end on the test split (Acc@1, Hit@5, nDCG@5 against the
full answer sets), and a table comparing the schemes is printed.

Before any work the whole configuration is checked (:func:`radi_fast.config.check_config`),
then ``--out_dir`` (a used one is refused without ``--resume`` or ``--overwrite``:
:mod:`radi_fast.rundir`), then the data is loaded; only then is anything written. The run's
folder gets ``config.json``, ``train.log``, and after every stage ``results.json`` (accumulated
over resumes) and ``curves.png`` (:mod:`radi_fast.plot`). Checkpoints (:mod:`radi_fast.checkpoint`:
verified, loaded with ``weights_only=True``, the previous one kept) are written after every
epoch (and every ``--save_every`` steps); ``--resume`` continues every stage exactly where it
stopped, from the previous checkpoint when the newest is damaged.

Under ``torchrun`` every process runs this same pipeline on its shard of each global batch
(``--batch_size`` is per process) with DistributedDataParallel (:mod:`radi_fast.distributed`);
rank 0 alone logs, shows progress bars and writes files.

The file reads top to bottom: the pipeline (the stages themselves are :mod:`radi_fast.stage`:
start, resume, one epoch of steps, end of epoch, checkpoint, halt), the command line. The settings are in
:mod:`radi_fast.config`, the run's folder in :mod:`radi_fast.rundir`, the files in
:mod:`radi_fast.checkpoint`, the scoring in :mod:`radi_fast.evaluation`; docs/training.md
explains the whole.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
import time
from typing import Callable, List, Optional

import torch

from . import distributed as D
from .checkpoint import stage_fingerprint, student_fingerprint
from .config import Config, check_config, parse_args, resolve_auto, scheme_specs
from .data import VideoQAData
from .evaluation import evaluate, fmt_metrics, results_table
from .frozenbilm import load_frozenbilm
from .model import RadiModel, build_model
from .plugins import load_factory
from .rundir import (RunLog, clear_run, environment, inspect_out_dir, merge_results, resolved_dict,
                     union_schemes, write_json)
from .schemes import build_scheme
from .stage import Halted, RunContext, log, train_stage, warn  # noqa: F401  (Halted: part of the API)
from .synthetic import make_synthetic


# --------------------------------------------------------------------------------------------
# The pipeline: data -> teacher -> student initialisation -> one student per scheme -> table
# --------------------------------------------------------------------------------------------
def setup(cfg: Config) -> torch.device:
    """This process's device; sets the CPU threads and, under ``torchrun``, joins the process group."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    return D.init(cfg.run.device)


def load_data(cfg: Config) -> VideoQAData:
    """The data: ``--data``'s factory (``factory(cfg)``), else the synthetic benchmark or a
    FrozenBiLM dataset as ``--dataset`` says."""
    d = cfg.data
    if d.data:
        data = load_factory(d.data, "--data")(cfg)
        if not isinstance(data, VideoQAData):
            raise ValueError(f"--data {d.data} returned {type(data).__name__}; it must return a "
                             "radi_fast.data.VideoQAData (train, val, test, answers, ...)")
        return data
    if d.dataset == "synthetic":
        return make_synthetic(dataclasses.replace(cfg.synthetic, num_frames=d.num_frames), train_labels=d.train_labels)
    return load_frozenbilm(d.dataset, d.data_dir or None, features=d.features or None, vocab=d.vocab or None,
                           train_csv=d.train_csv or None, val_csv=d.val_csv or None, test_csv=d.test_csv or None,
                           num_frames=d.num_frames, max_question_len=cfg.model.max_question_len,
                           train_labels=d.train_labels, cache_dir=d.cache_dir or None,
                           allow_missing_features=d.allow_missing_features)


def new_model(data: VideoQAData, cfg: Config, seed: int) -> RadiModel:
    """A freshly initialised model, torch seeded with ``seed``: ``--model``'s factory
    (``factory(data, cfg)``), else the default :class:`~radi_fast.model.VideoQATransformer`."""
    torch.manual_seed(seed)
    if cfg.model.model:
        model = load_factory(cfg.model.model, "--model")(data, cfg)
        if not isinstance(model, RadiModel):
            raise ValueError(f"--model {cfg.model.model} returned {type(model).__name__}; it must return a "
                             "radi_fast.model.RadiModel (encode / decode)")
        return model
    return build_model(data, dataclasses.replace(cfg.model, max_frames=cfg.data.num_frames))


def stage_result(ctx: RunContext, name: str, model: RadiModel, data: VideoQAData, trained: dict, t0: float,
                 part: str) -> dict:
    """A trained stage's entry in ``results.json``: its validation and test metrics, history and
    seconds (for a stage reused on ``--resume``: the seconds the earlier run recorded)."""
    test = evaluate(model, data.test, data.n_answers, ctx.cfg, ctx.device)
    log(f"[{name}] test {fmt_metrics(test)}")
    seconds = time.time() - t0
    key = name[len("student-"):] if part == "schemes" else name
    earlier = ((ctx.previous or {}).get(part) or {}).get(key) or {}
    if trained["reused"] and "seconds" in earlier:
        seconds = earlier["seconds"]
    return {"val": trained["val"], "test": test, "history": trained["history"], "seconds": seconds}


def on_main(fn: Callable[[], dict]) -> Optional[dict]:
    """``fn()`` on rank 0 (None on the others); a ``ValueError`` (or ``OSError``) it raises is
    raised on every rank as a ``ValueError``."""
    result, error = None, None
    if D.is_main():
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = str(e)
    error = D.all_gather_object(error)[0]
    if error:
        raise ValueError(error)
    return result


class Publisher:
    """Rank 0's ``results.json`` (merged with the earlier results of a resumed run) and
    ``curves.png``, rewritten after every stage."""

    def __init__(self, ctx: RunContext, results: dict):
        self.ctx, self.results, self.warned = ctx, results, False

    def merged(self) -> dict:
        return merge_results(self.ctx.previous, self.results)

    def __call__(self, curves: bool = True) -> dict:
        merged = self.merged()
        if not D.is_main():
            return merged
        out = self.ctx.cfg.run.out_dir
        write_json(os.path.join(out, "results.json"), merged)
        if curves and self.ctx.cfg.run.curves:
            from . import plot
            try:
                plot.draw([(os.path.basename(os.path.normpath(out)) or out, merged)], os.path.join(out, "curves.png"))
            except ImportError as e:
                if not self.warned:
                    warn(f"curves.png is not drawn: matplotlib is missing ({e}); pip install matplotlib, "
                         "or pass --no-curves")
                    self.warned = True
            except Exception as e:  # a picture must never stop a training run
                warn(f"curves.png is not drawn ({type(e).__name__}: {e})")
        return merged


# stage seeds: the teacher uses --seed, the individual initialisation and the students these
# offsets from it, so that runs with nearby --seed values never share a stage's seed
INDIVIDUAL_SEED, STUDENT_SEED = 1000, 2000


def run(cfg: Config) -> dict:
    """Run the whole pipeline; returns (and writes, on rank 0) the results dict, merged with the
    earlier results of a resumed run.

    The whole configuration is checked first, then ``--out_dir`` (:func:`radi_fast.rundir.inspect_out_dir`),
    then the data is loaded; only then is anything written. Raises ``ValueError`` /
    ``FileNotFoundError`` for bad settings, a refused ``--out_dir`` or bad data files,
    :class:`~radi_fast.checkpoint.CheckpointError` for a damaged checkpoint with no good previous one,
    :class:`Halted` after ``--halt_after_steps`` steps.
    """
    cfg = resolve_auto(cfg)
    check_config(cfg)
    ctx = RunContext(cfg, setup(cfg))
    runlog = RunLog(enabled=D.is_main())
    try:
        return _run(ctx, runlog)
    except Halted as e:
        runlog.to_file_only(logging.INFO, str(e))
        raise
    except BaseException as e:
        runlog.to_file_only(logging.ERROR, f"{type(e).__name__}: {e}")
        raise
    finally:
        runlog.close()


def _run(ctx: RunContext, runlog: RunLog) -> dict:
    cfg, out = ctx.cfg, ctx.cfg.run.out_dir
    t_start, cpu_start = time.time(), time.process_time()
    found = on_main(lambda: inspect_out_dir(cfg)) or {"results": None, "config": None}
    data = load_data(cfg)
    teacher = new_model(data, cfg, cfg.run.seed)  # here, so that a --model plug-in's error writes nothing
    ctx.previous = found["results"]
    specs = scheme_specs(cfg)
    resolved = resolved_dict(cfg, union_schemes(found["config"], found["results"], specs))
    if D.is_main():  # the settings are accepted: from here on the run's folder is written
        if cfg.run.overwrite and os.path.isdir(out):
            removed, left = clear_run(out)
            if removed:
                log(f"--overwrite: deleted the earlier run's {removed} file(s) in {out}"
                    + (f" (left alone: {', '.join(left)})" if left else ""))
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, "config.json"), resolved)
        runlog.open_file(os.path.join(out, "train.log"))
    D.barrier()
    world = D.world_size()
    log(f"data: {'--data ' + cfg.data.data if cfg.data.data else cfg.data.dataset}  "
        f"train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}  "
        f"answers {data.n_answers}  device {ctx.device}  precision {cfg.run.precision}"
        + (f"  processes {world} (global batch {world * cfg.optim.batch_size})" if world > 1 else "")
        + (f"  (resuming {out})" if cfg.run.resume else ""))
    base_fp = stage_fingerprint(cfg)
    results = {"config": resolved, "environment": environment(ctx.device, world) if D.is_main() else {},
               "stages": {}, "schemes": {}, "finished": False}
    publish = Publisher(ctx, results)

    # stage 1: the teacher, trained with eq. 2 on the insufficient labels
    t0 = time.time()
    trained = train_stage(ctx, "teacher", teacher, data, build_scheme("baseline"), seed=cfg.run.seed,
                       epochs=cfg.optim.teacher_epochs, fingerprint=base_fp)
    results["stages"]["teacher"] = stage_result(ctx, "teacher", teacher, data, trained, t0, "stages")
    publish()
    teacher.eval().requires_grad_(False)

    # the student initialisation shared by every scheme
    init_state = None
    if cfg.run.student_init == "individual":
        t0, individual = time.time(), new_model(data, cfg, INDIVIDUAL_SEED + cfg.run.seed)
        trained = train_stage(ctx, "individual", individual, data, build_scheme("baseline"),
                           seed=INDIVIDUAL_SEED + cfg.run.seed,
                           epochs=cfg.optim.individual_epochs or cfg.optim.teacher_epochs, fingerprint=base_fp)
        results["stages"]["individual"] = stage_result(ctx, "individual", individual, data, trained, t0, "stages")
        publish()
        init_state = copy.deepcopy(individual.state_dict())
        del individual
    elif cfg.run.student_init == "teacher":
        init_state = copy.deepcopy(teacher.state_dict())

    # stage 2: one student per scheme, all from the same initialisation, data order and seed
    for spec in specs:
        scheme = build_scheme(spec, cfg.scheme)
        t0, student = time.time(), new_model(data, cfg, STUDENT_SEED + cfg.run.seed)
        if init_state is not None:
            student.load_state_dict(init_state)
        trained = train_stage(ctx, f"student-{spec}", student, data, scheme, seed=STUDENT_SEED + cfg.run.seed,
                           epochs=cfg.optim.student_epochs,
                           fingerprint=student_fingerprint(cfg, base_fp, spec, scheme), teacher=teacher)
        results["schemes"][spec] = stage_result(ctx, f"student-{spec}", student, data, trained, t0, "schemes")
        publish()
        del student

    results["wall_seconds"] = time.time() - t_start
    # CPU time of all threads of all processes (summed over the ranks)
    results["cpu_seconds"] = float(D.all_reduce_sum(torch.tensor([time.process_time() - cpu_start],
                                                                 dtype=torch.float64))[0])
    results["world_size"] = world
    results["finished"] = True
    merged = publish(curves=False)  # adds the timings; the curves are already drawn
    log(f"results in {os.path.join(out, 'results.json')}" + (f", curves in {os.path.join(out, 'curves.png')}"
                                                             if cfg.run.curves else ""))
    return merged


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """The command line; under ``torchrun`` every rank runs it and rank 0 alone prints the table.

    Returns the exit code: 0 done (also ``--help``, ``--version``), 2 bad settings, a refused
    ``--out_dir``, bad data files or a damaged checkpoint (``error: ...`` on stderr, naming the
    flag or the file), 3 halted by ``--halt_after_steps``.
    """
    try:
        cfg = parse_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's own error (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        results = run(cfg)
        is_main = D.is_main()  # asked before cleanup() leaves the process group
    except Halted as e:
        if D.is_main():
            print(str(e), file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if not is_main:
        return 0
    deltas = "; deltas vs. baseline" if "baseline" in results["schemes"] else ""
    print(f"\ntest metrics (%) on the full answer sets{deltas}; "
          f"results in {os.path.join(cfg.run.out_dir, 'results.json')}\n")
    print(results_table(results))
    print(f"\nwall time {results['wall_seconds']:.0f}s (CPU time {results['cpu_seconds']:.0f}s)")
    return 0


def cli() -> None:
    """The ``radi-fast-train`` console script: ``python -m radi_fast.train``'s command line."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
