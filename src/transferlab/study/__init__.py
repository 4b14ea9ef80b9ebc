"""Studies: many seeds and recipes from one file, planned and executed (the report's statistics: report/).

    spec.py         StudySpec: base recipe, arms, grid axes, seeds, tasks, few-sample sizes, LR search
    expand.py       a study -> planned runs (arm, cell, seed, RunSpec) with stable run ids
    lr_select.py    per-cell learning rate chosen on validation
    executors.py    inline, processes (EXECUTORS registry); ray_executor.py: ray
    jobs.py         a claimed run as plain data, run against a recorder; its outcome carries the record
    seed_groups.py  runs that differ only in seed, grouped for the seed-stacked engine
    runner.py       run_study: resume, progress and ETA, Ctrl-C
    (few-sample draws: data/fewshot.py; the degenerate-run flag: data/degenerate.py)
    (live TensorBoard / MLflow / W&B logging of the runs: train/track.py, the study's logging: section)

Kept import-free: importing one module of the study does not pull in the rest.
"""
