"""Training, evaluation, checkpointing and export (`python -m etcjax.main`).

    from etcjax.training import train
    results = train.train_and_evaluate(config, workdir)

Modules: `default_config` (every config field), `train` (the loop),
`steps` (pure jitted train/eval steps), `sharding` (device mesh and
batch placement), `optimizers`, `checkpointing`, `metrics` and `export`.
"""
