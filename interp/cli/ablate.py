"""``ssmlens ablate``: run an ablation study (models × tasks × ablations) from a YAML file.

    ssmlens ablate examples/ablation_study.yaml --out runs/a

The format is described in ``ssmlens.probes.ablation_study``. Re-running with the same
``--out`` evaluates only the cells not finished yet. Prints the accuracy table and
where the run store is.
"""

from __future__ import annotations

import argparse

NAME = "ablate"
HELP = "run an ablation study YAML (models x tasks x ablations) into a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", required=True, help="run store to write (local path or fsspec URL)")
    p.add_argument("--overwrite", action="store_true", help="start afresh, replacing finished cells at --out")
    p.add_argument("--device", default=None, help="override the study's device (cpu, cuda, ...)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    import warnings

    from ssmlens.interp.cli._checks import require_input, writable_dir
    from ssmlens.probes.ablation_study import AblationSkipped, load_study, run_study

    require_input(args.study, "study file")
    study = load_study(args.study)  # StudyError (a ValueError) names the file and the field
    writable_dir(args.out, "--out")  # a run there is resumed, not refused
    if args.device:
        study.device = args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AblationSkipped)  # listed below instead
        table = run_study(study, args.out, progress=args.progress, overwrite=args.overwrite)
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
    print(f"\nwrote ablation run store: {args.out}")
    return 0
