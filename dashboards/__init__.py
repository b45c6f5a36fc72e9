"""The ssmlens dashboard: a multi-page Dash app over the run stores under a directory.

``ssmlens.dashboards.app.create_app(runs_dir)`` builds it; ``ssmlens dash --runs DIR`` (or
``ssmlens.dashboards.serve.serve``) serves it on 127.0.0.1. Pages live in
``ssmlens.dashboards.pages`` (Runs, Tokens, Gating, States, Attention & memory,
Interventions, Compare); they read runs only through ``ssmlens.dashboards.reader`` (validated
run ids, memoized zarr slices) and draw with ``ssmlens.dashboards.figures`` /
``ssmlens.dashboards.figures_model`` / ``ssmlens.dashboards.results``. Nothing here builds a torch
model at request time; ``ssmlens.dashboards.sample_store`` (test and benchmark tooling) does.
"""
