"""The search on Ray Tune: hpo's adapter to Ray, and the only package that imports it (and
only once a search starts). The study's life around it (options, folder, record, views) is
Ray-free, in hpo.plan, hpo.study, hpo.record and hpo.views.

    driver      one run of a study: Ray up, one Tune experiment fed by the record, Ray down
    searcher    Tune's searcher over the record: Optuna's ask/tell, draws checked first
    scheduler   ASHA over epochs, seeded with what the record holds of earlier runs
    trainable   Ray's side of one trial: run_trial reporting to Tune, checkpoints
    callbacks   the driver's Tune callback: views, best weights, live view, timings
    placement   what each trial asks Ray for, and whether a config fits at all
    cluster     joining a running cluster, waiting for a node a trial fits on
    trackers    Ray Tune's MLflow and W&B callbacks (--log)
"""
