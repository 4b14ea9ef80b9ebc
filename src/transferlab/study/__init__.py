"""Studies: many seeds and recipes from one file, fair comparisons, statistics.

    spec.py       StudySpec: base recipe, arms, grid axes, seeds, tasks, few-sample sizes, LR search
    expand.py     a study -> planned runs (arm, cell, seed, RunSpec) with stable run ids
    fewshot.py    class-balanced downsampling of train; dev split into validation and test halves
    degenerate.py constant-prediction baselines and the degenerate-run flag
    lr_select.py  per-cell learning rate chosen on validation
    executors.py  inline, processes (EXECUTORS registry); ray_executor.py: ray
    jobs.py       a claimed run as plain data, run against a recorder; its outcome carries the record
    runner.py     run_study: resume, progress and ETA, Ctrl-C
    stats.py      per-cell statistics and tests against a baseline arm
    tables.py     the report's tables; plots.py its figures
    (live TensorBoard / MLflow / W&B logging of the runs: train/track.py, the study's logging: section)

Kept import-free so that the loop can import ``degenerate`` without pulling in the rest.
"""
