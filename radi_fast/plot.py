"""Training curves: ``<out_dir>/curves.png``, and ``python -m radi_fast.plot RUN_DIR [RUN_DIR...]``.

Four panels per picture, one line per stage (teacher, individual initialisation, every
scheme's student): the training loss and the validation Acc@1, Hit@5 and nDCG@5 after every
epoch, read from the ``history`` of ``results.json``. The students continue from their
initialisation, so their epochs are drawn after its epochs (``--student_init scratch``: from 1).
With several runs the stages keep their colours and each run gets its own line style.

    python -m radi_fast.plot runs/radi                         # redraw runs/radi/curves.png
    python -m radi_fast.plot runs/seed0 runs/seed1 -o seeds.png  # overlay two runs

Drawn with matplotlib's Agg canvas (no display needed, no pyplot state); this module reads only
``results.json`` files and imports nothing else of the package, so it starts quickly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

PANELS = (("train_loss", "training loss"), ("acc1", "validation Acc@1 (%)"), ("hit5", "validation Hit@5 (%)"),
          ("ndcg5", "validation nDCG@5 (%)"))
STYLES = ("-", "--", ":", "-.")


def stage2_start(results: dict) -> int:
    """The epoch after which the students' curves start: the stage-1 epochs when the students
    continue from a stage-1 model (``--student_init individual`` or ``teacher``), else 0."""
    cfg = results.get("config", {})
    if cfg.get("run", {}).get("student_init", "individual") in ("individual", "teacher"):
        return int(cfg.get("optim", {}).get("teacher_epochs", 0))
    return 0


def stage_curves(results: dict) -> List[Tuple[str, List[float], dict]]:
    """``[(stage label, x epochs, {panel key: values})]`` for every stage with a history."""
    offset = stage2_start(results)
    out = []
    for part, shift in (("stages", 0), ("schemes", offset)):
        for name, r in results.get(part, {}).items():
            hist = r.get("history") or []
            if not hist:
                continue
            label = name if part == "stages" else f"student {name}"
            ys = {"train_loss": [h["train_loss"] for h in hist]}
            for key, _ in PANELS[1:]:
                ys[key] = [h["val"].get(key, float("nan")) for h in hist]
            out.append((label, [shift + h["epoch"] for h in hist], ys))
    return out


def draw(runs: Sequence[Tuple[str, dict]], path: str, title: Optional[str] = None) -> None:
    """Draw the curves of ``runs`` (``(name, results dict)`` pairs) into the PNG file ``path``,
    atomically (through ``path.tmp``). Raises ``ImportError`` without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    colours, palette = {}, [f"C{i}" for i in range(10)]
    for i, (_, results) in enumerate(runs):
        for label, xs, ys in stage_curves(results):
            colour = colours.setdefault(label, palette[len(colours) % len(palette)])
            for ax, (key, _) in zip(axes, PANELS):
                ax.plot(xs, ys[key], STYLES[i % len(STYLES)], color=colour, marker="o", markersize=3, linewidth=1.4)
    boundaries = sorted({b for _, results in runs for b in [stage2_start(results)] if b})
    for ax, (_, name) in zip(axes, PANELS):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for b in boundaries:  # stage 2: the students continue from their initialisation
            ax.axvline(b + 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    handles = [Line2D([], [], color=c, marker="o", markersize=3, label=label) for label, c in colours.items()]
    if len(runs) > 1:
        handles += [Line2D([], [], color="black", linestyle=STYLES[i % len(STYLES)], label=name)
                    for i, (name, _) in enumerate(runs)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle(title or " vs. ".join(name for name, _ in runs), fontsize=11)
    rows = -(-len(handles) // 4) if handles else 0
    fig.tight_layout(rect=(0, 0.03 + 0.03 * rows, 1, 0.96))
    tmp = f"{path}.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def load_run(run_dir: str) -> dict:
    """The ``results.json`` of a run folder; raises ``ValueError`` naming it when missing or unreadable."""
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m radi_fast.plot", description=(
        "Draw training curves (loss, validation Acc@1 / Hit@5 / nDCG@5 per epoch) of one or more "
        "radi_fast.train runs."))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a trainer --out_dir (with results.json)")
    p.add_argument("-o", "--out", default="", help="the PNG to write (default: RUN_DIR/curves.png for one run, "
                                                    "curves.png here for several)")
    p.add_argument("--title", default="", help="the picture's title (default: the run folders)")
    args = p.parse_args(argv)
    try:
        runs = [(os.path.basename(os.path.normpath(d)) or d, load_run(d)) for d in args.runs]
        out = args.out or (os.path.join(args.runs[0], "curves.png") if len(runs) == 1 else "curves.png")
        draw(runs, out, args.title or None)
    except ImportError as e:
        print(f"error: drawing needs matplotlib ({e}); pip install matplotlib", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
