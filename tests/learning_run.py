"""The run of `tests/test_training_learns.py`: PGD-3 adversarial training and its normally trained twin on the
bundled Fashion-MNIST, both attacked with PGD-20. Run as a script (`python tests/learning_run.py OUT`) in a
process of its own, on the portable kernel path at one thread, so that its numbers are the same on every x86-64
machine; prints them as one JSON object."""
import json
import sys
from pathlib import Path

from timm_moe import ModelSpec

from bench.data import dataset_info, eval_tensors
from bench.evaluation.loop import evaluate_model
from bench.models import build_model
from bench.pipeline.cell import training_config
from bench.training.trainer import run_training

DATASET = 'fashion-mnist-bundled'
# small enough for a CI minute on one core, large enough that adversarial training clearly learns. The attack is
# the default quickstart's (bench/pipeline/quickstart_plans.py): PGD-3 with steps of 2.5 eps / 3, 4 passes per
# image where PGD-7 took 8, which took the test from about 75 to under 60 CPU seconds
SIZES = dict(width=8, train_limit=2048, epochs=2, batch_size=64, lr=0.05, attack_steps=3, attack_step=20 / 765,
             n_eval=200)


def main(out: Path) -> dict:
    spec = ModelSpec(arch='resnet18', width=SIZES['width'])
    info = dataset_info(DATASET)
    x, y = eval_tensors(DATASET, SIZES['n_eval'])
    runs = {}
    for method in ('pgd', 'normal'):
        cfg = training_config(spec, dataset=DATASET, training=method, epochs=SIZES['epochs'],
                              batch_size=SIZES['batch_size'], lr=SIZES['lr'], train_limit=SIZES['train_limit'],
                              eval_limit=0, workers=0, progress=False, out=str(out / method),
                              **(dict(attack_steps=SIZES['attack_steps'], attack_step=SIZES['attack_step'])
                                 if method == 'pgd' else {}))
        train = run_training(cfg, overwrite=True)
        model = build_model(spec, info['num_classes'], info['in_chans'], {}, train.checkpoint)
        res = evaluate_model(model, x, y, attacks='pgd20', eps=8 / 255, batch_size=SIZES['n_eval'],
                             per_expert=False, seed=0, mean=info['mean'], std=info['std'], n_check=8)
        runs[method] = dict(clean=res.counts['clean'], pgd20=res.counts['pgd20'],
                            train_loss=round(train.history[-1]['train_loss'], 6))
    return dict(sizes=SIZES, n_eval=SIZES['n_eval'], runs=runs)


if __name__ == '__main__':
    print(json.dumps(main(Path(sys.argv[1]))))
