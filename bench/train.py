"""`timm-moe train`: standard, PGD (Madry) and TRADES adversarial training from timm's components.

timm gives the optimizer (`create_optimizer_v2`), the schedule (`create_scheduler_v2`, stepped per update),
the weight EMA (`ModelEmaV3`) and the distributed set-up (`timm.utils.distributed`); this module adds the
adversarial inner loop, the MoE aux loss, idle experts that stay still, upcycling from a dense run and the
bookkeeping that makes a run resumable bit for bit. AMP loss scaling is torch's `GradScaler` itself:
timm's `NativeScaler` steps the optimizer inside its backward call, leaving no point between the last
backward and the step at which to drop the idle experts' gradients.

Every random draw is keyed, not streamed: augmentation by (seed, epoch, image), attack starts by
(seed, epoch, step, shard), where a shard is one rank's or one micro-batch's slice of the global batch.
So a run killed and resumed, a run split into micro-batches and a DDP run over N processes all see the
same numbers, and `tests/test_train.py` checks exactly that.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

import timm
import timm_moe
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from timm.utils.distributed import init_distributed_device_so

from bench import models as ckpt
from bench.config import (TORCHCOMPILE_DEFAULT, TrainConfig, load_config, read_yaml_mapping, save_config,
                          torchcompile_settings)
from bench.data import build_dataset, dataset_info, eval_tensors, load_tensors
from bench.core.errors import UserError
from bench.models import normalized
from bench.training.adversarial import InputGradScaler, madry_examples, trades_examples
from bench.core.progress import progress_bar
from bench.core.provenance import sha256_file
from bench.core.rng import forked_rng, key_seed


class ShardedBatches(Sampler[List[int]]):
    """This rank's share of each global batch of one epoch, from a permutation seeded by (seed, epoch).

    Global batch i is perm[i*B:(i+1)*B]; rank r takes every world_size-th image of it, starting at r.
    Micro-batches split a rank's batch the same way, so N ranks and N micro-batches agree image for image.

    Args:
        n: Images in the data set.
        batch_size: Global batch size B (the last incomplete batch is dropped).
        seed: Run seed.
        epoch: Epoch whose order to draw.
        rank: This process's rank.
        world_size: Number of processes.
        start: First global batch to yield (resuming mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(key_seed(self.seed, self.epoch, -1))
        perm = torch.randperm(self.n, generator=g).tolist()
        for i in range(self.start, self.n // self.batch_size):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world_size]


class Trainer:
    """One training run: model, optimisation state, data and the loop.

    Args:
        cfg: The run's configuration.
        resume: Continue the run in `cfg.out`.
        overwrite: Replace whatever is in `cfg.out`.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg.validate()
        if not timm.is_model(cfg.model):  # before any directory is made
            raise UserError(f'unknown model {cfg.model!r}; `timm-moe models` lists ours, '
                            'timm.list_models() all of timm\'s')
        self.info = dataset_info(cfg.dataset)
        self.model_kwargs = dict(num_classes=self.info['num_classes'], in_chans=self.info['in_chans'],
                                 **cfg.model_kwargs)
        device = cfg.device if cfg.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
        dist = init_distributed_device_so(device=device)
        self.device = torch.device(dist['device'])
        self.rank, self.world_size, self.distributed = dist['global_rank'], dist['world_size'], dist['distributed']
        if cfg.batch_size % (self.world_size * cfg.accum_steps):
            raise UserError(f'batch_size={cfg.batch_size} must divide into {self.world_size} processes x '
                            f'{cfg.accum_steps} micro-batches')
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        # the model first: a bad upcycling source or kwargs must fail before the run directory is made
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.upcycled_from: Optional[Dict[str, Any]] = None
        if cfg.upcycle_from and not resume:  # a resumed run's weights come from its own checkpoint
            self.model, self.upcycled_from = upcycle_model(cfg, self.model_kwargs)
        else:
            self.model = _create_model(cfg.model, self.model_kwargs)
        self.run_dir = Path(cfg.out)
        if self.primary:
            ckpt.prepare_run_dir(self.run_dir, resume, overwrite)
        self._barrier()
        self.net = normalized(self.model, self.info['mean'], self.info['std']).to(self.device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum, filter_bias_and_bn=cfg.filter_bias_and_bn)
        self.train_set = build_dataset(cfg.dataset, 'train', cfg.data_dir, cfg.download, augment=cfg.augment,
                                       seed=cfg.seed, limit=cfg.train_limit)
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f'batch_size={cfg.batch_size} is larger than the {len(self.train_set)} training images')
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_rate=cfg.poly_power, min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema else None
        self.amp_dtype = (torch.float16 if self.device.type == 'cuda' else torch.bfloat16) if cfg.amp else None
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        # bfloat16 has float32's exponent range: only float16 underflows, so only it needs the attack's scaling
        self.attack_scaler = InputGradScaler() if fp16 and cfg.attack_precision == 'amp' else None
        self.ddp = (nn.parallel.DistributedDataParallel(self.net, device_ids=[self.device.index]
                                                        if self.device.type == 'cuda' else None)
                    if self.distributed else self.net)
        self.step_net, self.local_net = self._compiled()
        self.eval_set = self._eval_set() if cfg.eval_limit and self.primary else None
        self.epoch, self.step_in_epoch, self.global_step, self.history = 0, 0, 0, []
        if resume:
            self._load(ckpt.load_train_state(self.run_dir))
        elif self.primary:
            if self.upcycled_from is not None:  # config.yaml pins the dense source by content
                cfg.upcycle_sha256 = self.upcycled_from['sha256']
            save_config(cfg, self.run_dir / 'config.yaml')

    def _compiled(self) -> tuple:
        """(step_net, local_net): the training forward (through DDP) and the attack's and clean accuracy's
        forward (without DDP), compiled by `--torchcompile` as timm's train.py does it: after the DDP wrap,
        with the EMA and the checkpoints on the raw module (so no `_orig_mod.` key reaches a state_dict)."""
        cfg = self.cfg
        if not cfg.torchcompile:
            return self.ddp, self.net
        torch._dynamo.reset()  # as timm's validate.py: nothing compiled earlier in this process counts
        step_net = torch.compile(self.ddp, backend=cfg.torchcompile, mode=cfg.torchcompile_mode)
        # without DDP the attack's backward must not all-reduce: a distributed run compiles the bare net too
        local_net = torch.compile(self.net, backend=cfg.torchcompile, mode=cfg.torchcompile_mode) \
            if self.distributed else step_net
        return step_net, local_net

    def _compile_settings(self) -> contextlib.AbstractContextManager:
        if not self.cfg.torchcompile:
            return contextlib.nullcontext()
        return torchcompile_settings(timm_moe.num_experts(self.model))

    # -- small helpers
    def _eval_set(self) -> tuple:
        n_test = len(load_tensors(self.cfg.dataset, 'test', self.cfg.data_dir, self.cfg.download)[1])
        return eval_tensors(self.cfg.dataset, min(self.cfg.eval_limit, n_test), self.cfg.data_dir, self.cfg.download)

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _attack_autocast(self) -> contextlib.AbstractContextManager:
        # 'fp32': the input gradient is the one a float32 run takes, whatever the training precision
        return self._autocast() if self.cfg.attack_precision == 'amp' else contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # -- one optimizer step
    def _adversarial(self, x: torch.Tensor, y: torch.Tensor, shard: int) -> torch.Tensor:
        cfg = self.cfg
        # crafted on the unwrapped module: DDP expects a parameter backward after each of its forwards
        was_training = self.net.training
        self.net.train(cfg.attack_mode == 'train')
        # the attack's forwards are not the data's: keep them out of the epoch's routing statistics
        # (and so cannot make an expert count as used in this step: see `train_step`)
        with forked_rng(self.device, key_seed(cfg.seed, self.epoch, self.global_step, shard)), \
                self._attack_autocast(), timm_moe.paused_routing_stats(self.model):
            if cfg.method == 'pgd':
                x_adv = madry_examples(self.local_net, x, y, cfg.eps, cfg.attack_step, cfg.attack_steps, cfg.random_start,
                                       scaler=self.attack_scaler)
            else:
                x_adv = trades_examples(self.local_net, x, cfg.eps, cfg.attack_step, cfg.attack_steps,
                                        scaler=self.attack_scaler)
        self.net.train(was_training)
        return x_adv

    def _loss(self, x: torch.Tensor, y: torch.Tensor, shard: int) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.method == 'normal':
            with self._autocast():
                logits = self.step_net(x)
                task = F.cross_entropy(logits, y)
            aux = timm_moe.aux_loss(self.model)
        elif cfg.method == 'pgd':
            x_adv = self._adversarial(x, y, shard)
            with self._autocast():
                logits = self.step_net(x_adv)
                task = F.cross_entropy(logits, y)
            aux = timm_moe.aux_loss(self.model)
        else:  # TRADES: clean and adversarial images in one forward, so DDP sees one pass
            x_adv = self._adversarial(x, y, shard)
            with self._autocast():
                both = self.step_net(torch.cat([x, x_adv]))
                logits, logits_adv = both.float().chunk(2)
                robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction='batchmean')
                task = F.cross_entropy(logits, y) + cfg.trades_beta * robust
            aux = timm_moe.aux_loss(self.model)
        return dict(loss=task + aux.to(task.dtype), task=task.detach(), aux=aux.detach(),
                    correct=(logits.argmax(1) == y).sum().detach())

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        cfg, accum = self.cfg, self.cfg.accum_steps
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        keys = ('loss', 'task', 'aux', 'correct')
        sums = torch.zeros(len(keys), device=self.device)  # on the device: one host sync per step, not four
        for micro in range(accum):
            xs, ys = self._to_device(x[micro::accum]), y[micro::accum].to(self.device)
            sync = micro == accum - 1 or not self.distributed
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                out = self._loss(xs, ys, shard=self.rank * accum + micro)
                loss = out['loss'] / accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            scale = torch.tensor([1 / accum] * 3 + [1.0], device=self.device)
            sums += torch.stack([out[k].detach().float() for k in keys]) * scale
        # An expert no image reached in any micro-batch on any rank has a zero grad (BlockMoE's idle anchor);
        # momentum and weight decay would still move it. With grad None, SGD leaves weights and momentum
        # as they were, as in the paper's code. Every rank calls this: it all-reduces the routing counts.
        idle = timm_moe.drop_idle_expert_grads(self.model)
        self._optimizer_step()
        self.global_step += 1
        self.scheduler.step_update(self.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        totals = dict(zip(keys, sums.tolist()))
        totals['acc'] = 100.0 * totals.pop('correct') / len(y)
        totals['idle_experts'] = sum(len(v) for v in idle.values())
        return totals

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if self.scaler is not None:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)  # skipped when the scaled backward overflowed
            self.scaler.update()
        else:
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()

    # -- state
    def state(self) -> Dict[str, Any]:
        rng = dict(torch=torch.get_rng_state())
        if self.device.type == 'cuda':
            rng['cuda'] = torch.cuda.get_rng_state(self.device)
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), ema=self.ema.state_dict() if self.ema else None,
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    attack_scaler=self.attack_scaler.state_dict() if self.attack_scaler else None, epoch=self.epoch,
                    step_in_epoch=self.step_in_epoch, global_step=self.global_step, rng=rng,
                    history=self.history, config=self.cfg.to_dict(), model_name=self.cfg.model,
                    model_kwargs=self.model_kwargs, upcycled_from=self.upcycled_from)

    def _load(self, state: Dict[str, Any]) -> None:
        if state.get('model_name') != self.cfg.model:
            raise UserError(f'--resume: {self.run_dir} trains {state.get("model_name")!r}, not {self.cfg.model!r}')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.ema is not None and state.get('ema') is not None:
            self.ema.load_state_dict(state['ema'])
        if self.scaler is not None and state.get('scaler') is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.attack_scaler is not None and state.get('attack_scaler') is not None:
            self.attack_scaler.load_state_dict(state['attack_scaler'])
        self.upcycled_from = state.get('upcycled_from')
        self.epoch, self.step_in_epoch = state['epoch'], state['step_in_epoch']
        self.global_step, self.history = state['global_step'], state['history']
        torch.set_rng_state(state['rng']['torch'])
        if 'cuda' in state['rng'] and self.device.type == 'cuda':
            torch.cuda.set_rng_state(state['rng']['cuda'], self.device)

    def save(self) -> None:
        if not self.primary:
            return
        ckpt.atomic_save(self.state(), self.run_dir / ckpt.TRAIN_STATE)
        ckpt.atomic_save(self.model.state_dict(), self.run_dir / ckpt.WEIGHTS)
        ckpt.atomic_save_safetensors(self.model.state_dict(), self.run_dir / ckpt.SAFE_WEIGHTS)
        if self.ema is not None:
            ckpt.atomic_save(self.ema.module.state_dict(), self.run_dir / ckpt.EMA_WEIGHTS)
            ckpt.atomic_save_safetensors(self.ema.module.state_dict(), self.run_dir / ckpt.SAFE_EMA_WEIGHTS)

    def _log(self, record: Dict[str, Any]) -> None:
        if self.primary:
            with open(self.run_dir / 'metrics.jsonl', 'a') as f:
                f.write(json.dumps(record, sort_keys=True) + '\n')

    # -- the loop
    @torch.no_grad()
    def clean_accuracy(self) -> Optional[float]:
        if self.eval_set is None:
            return None
        self.net.eval()
        x, y = self.eval_set
        correct = sum(int((self.local_net(self._to_device(xb)).argmax(1).cpu() == yb).sum())
                      for xb, yb in zip(x.split(256), y.split(256)))
        return 100.0 * correct / len(y)

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        total = cfg.epochs * self.steps_per_epoch if cfg.max_steps is None else min(
            cfg.max_steps, cfg.epochs * self.steps_per_epoch)
        images_seen, train_seconds = 0, 0.0
        with progress_bar(enabled=cfg.progress and self.primary) as bar, self._compile_settings():
            task = bar.add_task(f'{cfg.method} {cfg.model}', total=total, completed=self.global_step, ips='')
            while self.epoch < cfg.epochs and self.global_step < total:
                self.train_set.set_epoch(self.epoch)
                sampler = ShardedBatches(len(self.train_set), cfg.batch_size, cfg.seed, self.epoch, self.rank,
                                         self.world_size, start=self.step_in_epoch)
                # more loader processes than cores only adds switching (results do not depend on the count)
                loader = DataLoader(self.train_set, batch_sampler=sampler,
                                    num_workers=min(cfg.workers, os.cpu_count() or 1),
                                    pin_memory=self.device.type == 'cuda')
                timm_moe.reset_routing_stats(self.model)
                sums, n_steps, t_epoch = dict(loss=0.0, task=0.0, aux=0.0, acc=0.0), 0, time.perf_counter()
                for x, y in loader:
                    t0 = time.perf_counter()
                    out = self.train_step(x, y)
                    dt = time.perf_counter() - t0
                    train_seconds += dt
                    images_seen += len(y) * self.world_size
                    self.step_in_epoch += 1
                    n_steps += 1
                    for k in sums:
                        sums[k] += out[k]
                    ips = images_seen / max(train_seconds, 1e-9)
                    bar.update(task, advance=1, ips=f'{ips:.0f} img/s', loss=out['loss'])
                    if cfg.log_every and self.global_step % cfg.log_every == 0:
                        self._log(dict(kind='step', epoch=self.epoch, step=self.global_step,
                                       lr=self.optimizer.param_groups[0]['lr'], img_per_s=ips, **out))
                    if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                        self.save()
                    if self.global_step >= total:
                        break
                epoch_done = self.step_in_epoch >= self.steps_per_epoch
                record = dict(kind='epoch', epoch=self.epoch, step=self.global_step, complete=epoch_done,
                              seconds=time.perf_counter() - t_epoch,
                              img_per_s=images_seen / max(train_seconds, 1e-9),
                              clean_acc=self.clean_accuracy(), routing=_routing_summary(self.model),
                              **{f'train_{k}': v / max(n_steps, 1) for k, v in sums.items()})
                self.history.append(record)
                self._log(record)
                if epoch_done:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.save()
        result = dict(run_dir=str(self.run_dir), checkpoint=str(self.run_dir / ckpt.WEIGHTS), model=cfg.model,
                      model_kwargs=self.model_kwargs, history=self.history, steps=self.global_step,
                      img_per_s=images_seen / train_seconds if train_seconds else None,
                      safetensors=str(self.run_dir / ckpt.SAFE_WEIGHTS), config_sha256=cfg.sha256(),
                      world_size=self.world_size, upcycled_from=self.upcycled_from)
        if self.primary:
            (self.run_dir / 'result.json').write_text(json.dumps(result, indent=2, default=str) + '\n')
        return result

    def close(self) -> None:
        torch.use_deterministic_algorithms(self._was_deterministic)
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _create_model(name: str, model_kwargs: Dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, **model_kwargs)
    except TypeError as e:
        raise UserError(f'model_kwargs {model_kwargs} do not fit {name}: {e}') from None


# kwargs that only shape the MoE layers: the dense source was built without them
_MOE_ONLY_KWARGS = ('gate', 'moe_blocks', 'aux_loss', 'aux_weight', 'noisy_gating', 'expert_width')


def _read_dense_source(source: Path) -> tuple:
    """The weights file of `--upcycle-from` (a run directory or a weights file) and its state_dict."""
    if not source.exists():
        raise UserError(f'--upcycle-from {source} does not exist; give a dense run directory or its model.pth')
    file = source / ckpt.WEIGHTS if source.is_dir() else source
    if not file.is_file():
        raise UserError(f'--upcycle-from {source} holds no {ckpt.WEIGHTS}; is it a finished training run?')
    if file.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            state = load_file(file)
        except Exception as e:  # noqa: BLE001 - a foreign or truncated file fails in several ways
            raise UserError(f'--upcycle-from {file} is not a readable safetensors file ({type(e).__name__})') from None
    else:
        state = ckpt.read_torch_file(file, '--upcycle-from')
    if isinstance(state, dict) and isinstance(state.get('model'), dict):  # a last.pth.tar training state
        state = state['model']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f'--upcycle-from {file} does not hold a state_dict of tensors')
    return file, state


def _check_source_run(source: Path, cfg: TrainConfig, dense: str) -> None:
    """Name what differs when the source is a run directory whose config.yaml says what it trained."""
    config = source / 'config.yaml' if source.is_dir() else None
    if config is None or not config.is_file():
        return
    # read as plain YAML, not as a TrainConfig: a run made by another version may hold other keys
    src = read_yaml_mapping(config, 'config')
    if src.get('model') != dense:
        raise UserError(f'--upcycle-from {source} trained {src.get("model")}; {cfg.model} upcycles from {dense}')
    if src.get('dataset') != cfg.dataset:
        raise UserError(f'--upcycle-from {source} trained on {src.get("dataset")}, this run uses {cfg.dataset}')
    ours = {k: v for k, v in cfg.model_kwargs.items() if k not in _MOE_ONLY_KWARGS}
    theirs = {k: v for k, v in (src.get('model_kwargs') or {}).items() if k not in _MOE_ONLY_KWARGS}
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        k = differ[0]
        raise UserError(f'--upcycle-from {source}: model_kwargs {k}={theirs.get(k, "default")!r} there, '
                        f'{ours.get(k, "default")!r} here; the MoE must have the dense model\'s architecture')


def _check_state(state: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor], file: Path, dense: str) -> None:
    """The dense checkpoint must have exactly the keys and shapes of `dense` built with this run's kwargs."""
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if extra:
        raise UserError(f'--upcycle-from {file} has {len(extra)} keys {dense} lacks, e.g. {extra[0]!r}: '
                        f'is it a dense {dense.split("_")[0]} checkpoint?')
    if missing:
        raise UserError(f'--upcycle-from {file} lacks {len(missing)} keys of {dense}, e.g. {missing[0]!r}')
    for k, v in reference.items():
        if state[k].shape != v.shape:
            raise UserError(f'--upcycle-from {file}: {k} has shape {tuple(state[k].shape)} there, {tuple(v.shape)} '
                            f'for {dense} with this run\'s model_kwargs and data set (width, classes, channels?)')


def upcycle_model(cfg: TrainConfig, model_kwargs: Dict[str, Any]) -> tuple:
    """The MoE of `cfg` started from the dense checkpoint `cfg.upcycle_from` through `timm_moe.upcycle`.

    Every weight outside the MoE layers is the dense one; each expert is a copy of the dense block it
    replaces plus `cfg.upcycle_noise` relative noise drawn from `cfg.seed`; gates start fresh.

    Args:
        cfg: The run's configuration.
        model_kwargs: The MoE's timm kwargs (num_classes and in_chans included).

    Returns:
        (model, {'path', 'sha256', 'noise', 'seed'}) describing the source.
    """
    try:
        dense = timm_moe.dense_name(cfg.model)
    except ValueError:
        dense = cfg.model
    if dense == cfg.model:
        raise UserError(f'--upcycle-from needs a timm-moe BlockMoE model such as resnet18_blockmoe_e4_k1, '
                        f'not {cfg.model}')
    if model_kwargs.get('expert_width', 'full') != 'full':
        raise UserError("--upcycle-from needs expert_width='full': each expert copies the dense block's shapes")
    source = Path(cfg.upcycle_from)
    _check_source_run(source, cfg, dense)
    file, state = _read_dense_source(source)
    digest = sha256_file(file)
    if cfg.upcycle_sha256 is not None and cfg.upcycle_sha256 != digest:
        raise UserError(f'--upcycle-from {file} has sha256 {digest}, not the upcycle_sha256 {cfg.upcycle_sha256} '
                        'this config pins')
    dense_kwargs = {k: v for k, v in model_kwargs.items() if k not in _MOE_ONLY_KWARGS}
    _check_state(state, _create_model(dense, dense_kwargs).state_dict(), file, dense)
    model = timm_moe.upcycle(state, cfg.model, noise=cfg.upcycle_noise, seed=cfg.seed, **model_kwargs)
    return model, dict(path=str(file), sha256=digest, noise=cfg.upcycle_noise, seed=cfg.seed)


def _routing_summary(model: nn.Module) -> Dict[str, Any]:
    return {name: dict(load=[round(v, 4) for v in s['load']], collapse=round(s['collapse'], 4))
            for name, s in timm_moe.routing_stats(model).items()}


def run_training(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Train one model as `cfg` says; returns the run directory, checkpoint path, history and throughput.

    Args:
        cfg: The run's configuration.
        resume: Continue the run in `cfg.out` from its last checkpoint.
        overwrite: Replace whatever is in `cfg.out`.
    """
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# -- command line
_FIELDS = dataclasses.fields(TrainConfig)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('train', help='train a model (normal, PGD or TRADES adversarial training)',
                              description='Train with timm components. Every config key is an option; '
                                          '--config loads a YAML recipe first (e.g. cifar100_resnet18_pgd).')
    p.add_argument('--config', help='YAML file or shipped recipe name (bench/configs)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    p.add_argument('--overwrite', action='store_true', help='delete --out first if it holds a run')
    for f in _FIELDS:
        flag = '--' + f.name.replace('_', '-')
        if f.type in ('bool', bool):
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const='true', default=None, metavar='BOOL')
        elif f.name == 'torchcompile':  # timm's flag: an optional backend, inductor when bare
            p.add_argument(flag, dest=f'cfg_{f.name}', nargs='?', const=TORCHCOMPILE_DEFAULT, default=None,
                           metavar='BACKEND', help=f'compile with torch.compile (bare: {TORCHCOMPILE_DEFAULT})')
        else:
            p.add_argument(flag, dest=f'cfg_{f.name}', default=None, metavar=f.name.upper(),
                           help='k=v,k=v or a YAML mapping' if f.name == 'model_kwargs' else None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = []
    for f in _FIELDS:
        value = getattr(args, f'cfg_{f.name}')
        if value is not None:
            overrides += [f'--{f.name}', value]
    cfg = load_config(args.config, overrides)
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    last = result['history'][-1] if result['history'] else {}
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'done: {result["steps"]} steps, {result["img_per_s"] or 0:.1f} img/s, '
              f'clean acc {last.get("clean_acc")}, weights {result["checkpoint"]}')
    return 0
