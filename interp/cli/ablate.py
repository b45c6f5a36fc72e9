"""``ssmlens ablate``: run an ablation study (models × tasks × ablations) from a YAML file.

    ssmlens ablate examples/ablation_study.yaml --out runs/a
    ssmlens ablate examples/ablation_study.yaml --out runs/a --engine ray --gpus-per-task 0.25

The format is described in ``ssmlens.probes.ablation_study``. Re-running with the same
``--out`` evaluates only the cells not finished yet. Prints the accuracy table and
where the run store is. ``--engine ray`` runs each cell as a Ray task
(``ssmlens.interp.engines``); a cell that still fails after ``--retries`` is listed, its
values are NaN, and the command exits with status 1 (a re-run evaluates it again).
"""

from __future__ import annotations

import argparse
import sys

NAME = "ablate"
HELP = "run an ablation study YAML (models x tasks x ablations) into a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", required=True, help="run store to write (local path or fsspec URL)")
    p.add_argument("--overwrite", action="store_true", help="start afresh, replacing finished cells at --out")
    p.add_argument("--device", default=None, help="override the study's device (cpu, cuda, ...)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from ssmlens.interp.engines.cli import add_engine_arguments

    add_engine_arguments(p)


def run(args) -> int:
    import warnings

    from ssmlens.interp.engines import EngineError
    from ssmlens.interp.engines.cli import engine_options, start_engine
    from ssmlens.probes.ablation_study import AblationSkipped, StudyError, load_study, run_study

    try:
        study = load_study(args.study)
        engine = engine_options(args)
    except (StudyError, ValueError) as e:
        print(f"ssmlens ablate: {e}", file=sys.stderr)
        return 2
    if args.device:
        study.device = args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AblationSkipped)  # listed below instead
        try:
            start_engine(engine)
            table = run_study(study, args.out, progress=args.progress, overwrite=args.overwrite, engine=engine)
        except EngineError as e:
            print(f"ssmlens ablate: {e}", file=sys.stderr)
            return 2
    skipped = table.attrs.get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} cell(s) whose ablation does not apply to the model:")
        for s in skipped:
            print(f"  {s['model']} / {s['task']} / {s['ablation']}: {s['reason']}")
    for metric in study.metrics:
        part = table[table["metric"] == metric]
        if not part.empty:
            wide = part.pivot_table(index="ablation", columns=["model", "task"], values="value", sort=False)
            print(f"\n{metric}:\n{wide.round(4).to_string()}")
    failed = table.attrs.get("failed") or []
    if failed:
        print(f"\n{len(failed)} cell(s) failed (NaN above; re-run the same command to evaluate them again):")
        for f in failed:
            print(f"  {f['model']} / {f['task']} / {f['ablation']}: {f['error']}")
    print(f"\nwrote ablation run store: {args.out}")
    return 1 if failed else 0
