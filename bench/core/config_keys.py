"""The training-config keys that do not change the model a run trains: one list, read by the config's hash and
resume check (`bench.training.config`) and by the grouping of a configuration's seeds (`bench.core.stats`).

It lives here, in the layer both may import: the results layer reads stored configs without the training layer.
"""

# Where a run reads and writes, how it executes and what it reports along the way: the same weights either way (to
# the rounding of another device, kernel layout or compiled graph; tests/test_torchcompile_cli.py checks compile's).
NOT_THE_RESULT = (
    'out', 'progress', 'log_every',  # where it is written and how it is shown
    'workers',  # loader processes: augmentation is keyed by (seed, epoch, image), not by worker
    'torchcompile', 'torchcompile_mode',  # the same computation, compiled
    'device', 'deterministic', 'channels_last',  # where and how the kernels run
    'data_dir', 'download',  # where the same data set is read from
    'eval_limit', 'checkpoint_every',  # what is measured and saved along the way, not what is trained
)
