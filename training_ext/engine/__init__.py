"""The training engine both TULIP stages run on: flags, run set-up, models, optimizer, the epoch loop,
checkpoints and validation. A stage (training_ext.stages) supplies only what differs; see engine.trainer."""
