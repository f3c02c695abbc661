"""The trainer behind `timm-moe train`: normal, PGD (Madry), TRADES, Fast-AT and Free-AT training from timm's parts.

timm gives the optimizer (`create_optimizer_v2`), the schedule (`create_scheduler_v2`, stepped per epoch as the
paper's code, or per update with `sched_step: update`),
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

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import timm
import timm_moe
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from timm.utils.distributed import init_distributed_device_so

from bench import checkpoints as ckpt
from bench.core.atomic import atomic_save, atomic_save_safetensors, finite_json, write_json_atomic
from bench.core.compile import compile_for_training, torchcompile_settings
from bench.core.devices import choose_device
from bench.core.errors import UserError
from bench.core.progress import progress_bar
from bench.core.rng import forked_rng, key_seed
from bench.data import build_dataset, dataset_info, eval_tensors, load_tensors, model_kwargs_for
from bench.models import check_input_size, create_model, normalized
from bench.training import free as free_at
from bench.training.adversarial import InputGradScaler, fast_examples, madry_examples, trades_examples
from bench.training.config import TrainConfig, check_resume_config, save_config
from bench.training.record import TrainRecord
from bench.training.sampler import ShardedBatches
from bench.training.upcycle import upcycle_model

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
        self.model_kwargs = model_kwargs_for(cfg.dataset, cfg.model_kwargs)
        dist = init_distributed_device_so(device=str(choose_device(cfg.device, 'device')))
        self.device = torch.device(dist['device'])
        self.rank, self.world_size, self.distributed = dist['global_rank'], dist['world_size'], dist['distributed']
        if cfg.batch_size % (self.world_size * cfg.accum_steps):
            raise UserError(f'batch_size={cfg.batch_size} must divide into {self.world_size} processes x '
                            f'{cfg.accum_steps} micro-batches')
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.run_dir = Path(cfg.out)
        state = None
        if resume:  # before the model is built: a changed config is refused by name, not by a shape mismatch
            ckpt.prepare_run_dir(self.run_dir, resume, overwrite)  # checks only: a resume makes and deletes nothing
            state = ckpt.load_train_state(self.run_dir)
            check_resume_config(cfg, state.get('config') or {}, self.run_dir)
        # the model first: a bad upcycling source or kwargs must fail before the run directory is made
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.upcycled_from: Optional[Dict[str, Any]] = None
        if cfg.upcycle_from and not resume:  # a resumed run's weights come from its own checkpoint
            self.model, self.upcycled_from = upcycle_model(cfg, self.model_kwargs)
        else:
            self.model = create_model(cfg.model, self.model_kwargs, 'model_kwargs', convert=cfg.convert)
        side = cfg.img_size or self.info['input_size'][-1]
        check_input_size(self.model, self.model_kwargs['in_chans'], side, cfg.model,
                         'img_size={need} resizes the images inside the model')
        if self.primary and not resume:
            ckpt.prepare_run_dir(self.run_dir, resume, overwrite)
        self._barrier()
        self.net = normalized(self.model, self.info['mean'], self.info['std'], cfg.img_size).to(self.device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum, filter_bias_and_bn=cfg.filter_bias_and_bn)
        self.train_set = build_dataset(cfg.dataset, 'train', cfg.data_dir, cfg.download, augment=cfg.augment,
                                       seed=cfg.seed, limit=cfg.train_limit)
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size  # minibatches per epoch (one data pass)
        if self.steps_per_epoch < 1:
            raise UserError(f'batch_size={cfg.batch_size} is larger than the {len(self.train_set)} training images')
        # Free-AT's epoch (a data pass) makes free_replays updates per minibatch; a per-update schedule runs over
        # them all, a per-epoch one (the reference's Lightning interval 'epoch') over the data passes
        self.free = free_at.from_config(cfg)  # None unless training=free
        self.updates_per_epoch = self.steps_per_epoch * (cfg.free_replays if self.free is not None else 1)
        # timm's scheduler acts on step() or on step_update() as step_on_epochs says; the loop calls both
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_rate=cfg.poly_power, min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, step_on_epochs=cfg.sched_step == 'epoch',
            updates_per_epoch=self.updates_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema else None
        self.amp_dtype = (torch.float16 if self.device.type == 'cuda' else torch.bfloat16) if cfg.amp else None
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        # bfloat16 has float32's exponent range: only float16 underflows, so only it needs the attack's scaling
        self.attack_scaler = InputGradScaler() if fp16 and cfg.attack_precision == 'amp' else None
        self.ddp = (nn.parallel.DistributedDataParallel(self.net, device_ids=[self.device.index]
                                                        if self.device.type == 'cuda' else None)
                    if self.distributed else self.net)
        self.step_net, self.local_net = compile_for_training(self.ddp, self.net, cfg.torchcompile,
                                                             cfg.torchcompile_mode, self.distributed)
        self.eval_set = self._eval_set() if cfg.eval_limit and self.primary else None
        self.epoch, self.step_in_epoch, self.global_step, self.history = 0, 0, 0, []
        if state is not None:
            self._load(state)
            if self.primary and cfg.to_dict() != state.get('config'):
                save_config(cfg, self.run_dir / 'config.yaml')  # what changed (max_steps, ...): config.yaml says it
        elif self.primary:
            if self.upcycled_from is not None:  # config.yaml pins the dense source by content
                cfg.upcycle_sha256 = self.upcycled_from['sha256']
            save_config(cfg, self.run_dir / 'config.yaml')

    def _compile_settings(self) -> contextlib.AbstractContextManager:
        if not self.cfg.torchcompile:
            return contextlib.nullcontext()
        return torchcompile_settings(timm_moe.num_experts(self.model), cpu=self.device.type == 'cpu')

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
            if cfg.training == 'pgd':
                x_adv = madry_examples(self.local_net, x, y, cfg.eps, cfg.attack_step, cfg.attack_steps,
                                       cfg.random_start, scaler=self.attack_scaler)
            elif cfg.training == 'fast':
                x_adv = fast_examples(self.local_net, x, y, cfg.eps, cfg.fast_step, scaler=self.attack_scaler)
            else:
                x_adv = trades_examples(self.local_net, x, cfg.eps, cfg.attack_step, cfg.attack_steps,
                                        scaler=self.attack_scaler)
        self.net.train(was_training)
        return x_adv

    def _loss(self, x: torch.Tensor, y: torch.Tensor, shard: int, micro: int) -> Dict[str, torch.Tensor]:
        cfg, leaf = self.cfg, None
        if cfg.training in ('normal', 'free'):
            if self.free is not None:  # Free-AT: the carried perturbation; this backward fills its gradient (`leaf`)
                with forked_rng(self.device, key_seed(cfg.seed, self.epoch, self.global_step, shard)):
                    x, leaf = self.free.inputs(x, slice(micro, None, cfg.accum_steps))
            with self._autocast():
                logits = self.step_net(x)
                task = F.cross_entropy(logits, y)
            aux = timm_moe.aux_loss(self.model)
        elif cfg.training in ('pgd', 'fast'):
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
        # aux and loss are logged as computed: a switch loss lacks the reference's constant -1 (FIDELITY.md row 3)
        return dict(loss=task + aux.to(task.dtype), task=task.detach(), aux=aux.detach(),
                    correct=(logits.argmax(1) == y).sum().detach(), free_leaf=leaf)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        """One minibatch: one optimizer update, or Free-AT's `free_replays` updates on the same images."""
        if self.free is None:
            return self._update(x, y)
        self.free.begin(self._to_device(x))
        return free_at.replay(lambda: self._update(x, y), self.cfg.free_replays)

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        accum = self.cfg.accum_steps
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        keys = ('loss', 'task', 'aux', 'correct')
        sums = torch.zeros(len(keys), device=self.device)  # on the device: one host sync per step, not four
        for micro in range(accum):
            xs, ys = self._to_device(x[micro::accum]), y[micro::accum].to(self.device)
            sync = micro == accum - 1 or not self.distributed
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                out = self._loss(xs, ys, self.rank * accum + micro, micro)
                loss = out['loss'] / accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            if self.free is not None:  # the ascent step, from the gradient this backward gave for free
                self.free.ascend(out['free_leaf'], slice(micro, None, accum))
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
        totals['updates'] = 1
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
    def state(self, free: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        rng = dict(torch=torch.get_rng_state())
        if self.device.type == 'cuda':
            rng['cuda'] = torch.cuda.get_rng_state(self.device)
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), ema=self.ema.state_dict() if self.ema else None,
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    attack_scaler=self.attack_scaler.state_dict() if self.attack_scaler else None,
                    free=free, epoch=self.epoch,
                    step_in_epoch=self.step_in_epoch, global_step=self.global_step, rng=rng,
                    history=self.history, config=self.cfg.to_dict(), model_name=self.cfg.model,
                    model_kwargs=self.model_kwargs, upcycled_from=self.upcycled_from)

    def _load(self, state: Dict[str, Any]) -> None:
        if state.get('model_name') != self.cfg.model:
            raise UserError(f'--resume: {self.run_dir} trains {state.get("model_name")!r}, not {self.cfg.model!r}')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        # the scheduler's state carries how it steps and would silently override the config's
        saved = 'epoch' if state['scheduler'].get('t_in_epochs') else 'update'
        if saved != self.cfg.sched_step:
            raise UserError(f'--resume: {self.run_dir} stepped its LR schedule per {saved}, not per '
                            f'{self.cfg.sched_step}; pass --sched-step {saved} to continue it')
        self.scheduler.load_state_dict(state['scheduler'])
        if self.ema is not None and state.get('ema') is not None:
            self.ema.load_state_dict(state['ema'])
        if self.scaler is not None and state.get('scaler') is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.attack_scaler is not None and state.get('attack_scaler') is not None:
            self.attack_scaler.load_state_dict(state['attack_scaler'])
        if self.free is not None and state.get('free') is not None:
            free_at.load_state(self.free, state['free'], self.rank, self.world_size, self.device)
        self.upcycled_from = state.get('upcycled_from')
        self.epoch, self.step_in_epoch = state['epoch'], state['step_in_epoch']
        self.global_step, self.history = state['global_step'], state['history']
        torch.set_rng_state(state['rng']['torch'])
        if 'cuda' in state['rng'] and self.device.type == 'cuda':
            torch.cuda.set_rng_state(state['rng']['cuda'], self.device)

    def save(self) -> None:
        # Free-AT's carried perturbation, gathered from every rank (a collective: before the primary-only part)
        free = free_at.gather_state(self.free, self.world_size) if self.free is not None else None
        if not self.primary:
            return
        atomic_save(self.state(free), self.run_dir / ckpt.TRAIN_STATE)
        atomic_save(self.model.state_dict(), self.run_dir / ckpt.WEIGHTS)
        atomic_save_safetensors(self.model.state_dict(), self.run_dir / ckpt.SAFE_WEIGHTS)
        if self.ema is not None:
            atomic_save(self.ema.module.state_dict(), self.run_dir / ckpt.EMA_WEIGHTS)
            atomic_save_safetensors(self.ema.module.state_dict(), self.run_dir / ckpt.SAFE_EMA_WEIGHTS)

    def _log(self, record: Dict[str, Any]) -> None:
        if self.primary:
            with open(self.run_dir / 'metrics.jsonl', 'a') as f:
                f.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + '\n')  # null, never NaN

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

    def fit(self) -> TrainRecord:
        cfg = self.cfg
        total = cfg.epochs * self.updates_per_epoch if cfg.max_steps is None else min(
            cfg.max_steps, cfg.epochs * self.updates_per_epoch)
        images_seen, train_seconds = 0, 0.0
        with progress_bar(enabled=cfg.progress and self.primary) as bar, self._compile_settings():
            task = bar.add_task(f'{cfg.training} {cfg.model}', total=total, completed=self.global_step, ips='')
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
                    if not math.isfinite(out['loss']):  # nothing of this step is logged or saved
                        raise UserError(f'training diverged: the loss is {out["loss"]} at step {self.global_step} '
                                        f'(epoch {self.epoch}); lower lr (now {cfg.lr:g}) or set clip_grad; the '
                                        f'checkpoints in {self.run_dir} are from before')
                    dt = time.perf_counter() - t0
                    train_seconds += dt
                    images_seen += len(y) * self.world_size
                    self.step_in_epoch += 1
                    n_steps += 1
                    for k in sums:
                        sums[k] += out[k]
                    ips = images_seen / max(train_seconds, 1e-9)
                    bar.update(task, advance=out['updates'], ips=f'{ips:.0f} img/s', loss=out['loss'])
                    if free_at.crossed(cfg.log_every, self.global_step, out['updates']):
                        self._log(dict(kind='step', epoch=self.epoch, step=self.global_step,
                                       lr=self.optimizer.param_groups[0]['lr'], img_per_s=ips, **out))
                    if free_at.crossed(cfg.checkpoint_every, self.global_step, out['updates']):
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
                    self.scheduler.step(self.epoch)  # the LR of the next epoch (a no-op for sched_step=update)
                self.save()
        result = TrainRecord(run_dir=str(self.run_dir), checkpoint=str(self.run_dir / ckpt.WEIGHTS),
                             safetensors=str(self.run_dir / ckpt.SAFE_WEIGHTS), model=cfg.model,
                             model_kwargs=self.model_kwargs, history=self.history, steps=self.global_step,
                             img_per_s=images_seen / train_seconds if train_seconds else None,
                             config_sha256=cfg.sha256(), world_size=self.world_size,
                             upcycled_from=self.upcycled_from)
        if self.primary:
            # grid resumes from this file: a kill must leave it whole or absent
            write_json_atomic(result.to_json(), self.run_dir / 'result.json', indent=2, default=str)
        return result

    def close(self) -> None:
        torch.use_deterministic_algorithms(self._was_deterministic)
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _routing_summary(model: nn.Module) -> Dict[str, Any]:
    return {name: dict(load=[round(v, 4) for v in s['load']], collapse=round(s['collapse'], 4))
            for name, s in timm_moe.routing_stats(model).items()}


def run_training(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainRecord:
    """Train one model as `cfg` says; returns its `TrainRecord` (run directory, weights, history, throughput).

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
