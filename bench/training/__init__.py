"""Training: config, trainer and the training-attack glue (imports core, data, models, attacks)."""
