"""The ssmlens dashboard: a multi-page Dash app over the run stores under a directory.

``dashboards.app.create_app(runs_dir)`` builds it; ``ssmlens dash --runs DIR`` (or
``dashboards.serve.serve``) serves it on 127.0.0.1. Pages live in
``dashboards.pages`` (Runs, Tokens, Gating, States, Attention & memory,
Interventions, Compare); they read runs only through ``dashboards.reader`` (validated
run ids, memoized zarr slices) and draw with ``dashboards.figures`` /
``dashboards.figures_model`` / ``dashboards.results``. Nothing here builds a torch
model at request time; ``dashboards.sample_store`` (test and benchmark tooling) does.
"""
