"""The mechanistic evaluation of a suite of models (``ssmlens evaluate SUITE.yaml``).

- ``suite``: the YAML format, its checks, cells and config hashes;
- ``cell``: one cell (train or reuse, analyse, write its run store);
- ``analyses``: what is measured on a trained model; ``interventions`` (interchange by
  role, association test), ``memory`` (B'MOJO), ``components`` (sites by hook name);
- ``suite_run``: resume, the cells run on an engine (``ssmlens.interp.engines.run_cells``:
  local or Ray), outcomes, deadlines, the suite store;
- ``summary``: the mechanism table. The report is ``ssmlens.probes.report``.
"""

from ssmlens.probes.evaluation.suite import AnalysisConfig, CellSpec, Suite, SuiteError, load_suite, suite_from_dict
from ssmlens.probes.evaluation.suite_run import SuiteResult, run_suite

__all__ = ["AnalysisConfig", "CellSpec", "Suite", "SuiteError", "SuiteResult", "load_suite", "run_suite",
           "suite_from_dict"]
