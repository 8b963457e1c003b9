"""AllInOneModel: BasicSR's SRModel with the all-in-one training and evaluation protocol."""
import csv
import math
import os
from collections import OrderedDict
from copy import deepcopy
from os import path as osp

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY
from ..metrics.routing_accuracy_metric import routing_vote
from ..resume import gather_rng_states, restore_rng_states
from .checkpoint_util import atomic_torch_save, extract_state_dict, load_checkpoint
from .optimization import optimizer_class, scheduler_class
from .precision import Compiled, amp_dtype, autocast, grad_scaler

ROUTING_METRICS = ('calculate_routing_accuracy',)  # scored on the task logits, not on the image


def _grad_with_strides_of(param):
    """A gradient hook giving ``param``'s gradient exactly ``param``'s strides.

    Convolutions on channels-last features return weight gradients whose strides differ from the weight's only
    in size-1 dims (1×1 and depthwise kernels): the same memory, but DistributedDataParallel compares strides
    exactly and warns that the layout may impair performance. Such a gradient is re-viewed with the weight's
    strides (no copy); any other layout difference is copied into the weight's layout.
    """

    def hook(grad):
        if grad.stride() == param.stride():
            return grad
        if all(g == p for n, g, p in zip(grad.shape, grad.stride(), param.stride()) if n != 1):
            return grad.as_strided(grad.shape, param.stride(), grad.storage_offset())  # size-1 dims: same memory
        return torch.empty_like(param).copy_(grad)

    return hook


@MODEL_REGISTRY.register()
class AllInOneModel(SRModel):
    """One network for many degradations, trained and scored the way the all-in-one papers do.

    On top of SRModel:

    - Losses: ``train.pixel_opt`` (e.g. L1Loss), ``train.fft_opt`` (FFTLoss), and ``train.cls_opt`` (a
      task-classification loss on the degradation logits of archs with ``has_task_logits = True``; the batch's
      ``degradation`` labels are the targets). Their sum is minimised.
    - ``train.optim_g.type``: any ``torch.optim`` optimizer (AdamW, ...). ``train.scheduler.type``: BasicSR's
      MultiStepLR / MultiStepRestartLR / CosineAnnealingRestartLR, ours (``LinearWarmupCosineLR``) or any
      ``torch.optim.lr_scheduler`` class (stepped once per iteration).
    - ``train.teacher_forcing_iter``: for archs with task logits, route by the batch's labels (``task_labels``)
      up to this iteration, then by the archs' own votes (default 0: never). Training logs ``route_acc``.
    - ``val.metrics`` may include ``type: calculate_routing_accuracy`` (archs with task logits): the share of images
      whose router vote is the test set's degradation class, a column of the same table.
    - ``train.grad_clip``: max gradient norm (a number, or ``{max_norm, norm_type}``); unset = no clipping.
    - Archs that define ``after_optimizer_step()`` get it called after every optimizer step (on the bare net).
    - ``train.ema_decay``: BasicSR's EMA of the weights (``net_g_ema``, saved as ``params_ema``).
    - Validation/test (``val``): metrics on the float RGB output, clamped to [0, 1] unless ``clamp: false``
      (the official SymUNet protocol does not clamp); ``input_metrics: true`` (default) also scores the degraded
      input, so the table shows what the network gained. Each val/test set is one row of a table (plus the
      average), logged and written to ``metrics.csv`` / ``metrics.md`` in ``results/<name>/`` (test) or
      ``experiments/<name>/`` (validation during training). ``pbar`` (default true) shows progress.
    - Checkpoints and training states are written atomically (temporary file, then rename).
    - Distributed runs without CUDA wrap the net in a CPU DistributedDataParallel (gloo).
    """

    # ------------------------------------------------------------------ setup
    def model_to_device(self, net):
        if self.opt['dist']:
            for param in net.parameters():
                param.register_hook(_grad_with_strides_of(param))
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    def init_training_settings(self):
        super().init_training_settings()
        self._nonfinite_streak = 0
        train_opt = self.opt['train']
        logger = get_root_logger()
        self.cri_fft = build_loss(train_opt['fft_opt']).to(self.device) if train_opt.get('fft_opt') else None
        self.cri_cls = None
        if train_opt.get('cls_opt'):
            if getattr(self.get_bare_model(self.net_g), 'has_task_logits', False):
                self.cri_cls = build_loss(train_opt['cls_opt']).to(self.device)
            else:
                logger.warning(f'train.cls_opt is ignored: arch {self.opt["network_g"]["type"]} has no task logits.')
        grad_clip = train_opt.get('grad_clip')
        if grad_clip is None or isinstance(grad_clip, dict):
            self.grad_clip = grad_clip
        else:
            self.grad_clip = {'max_norm': float(grad_clip)}
        self.amp = amp_dtype(train_opt.get('amp'), 'train.amp')
        self.scaler = grad_scaler(self.device, self.amp)
        self._train_forward = Compiled(self.net_g, 'train.compile', logger) if train_opt.get('compile') else self.net_g

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        return optimizer_class(optim_type)(params, lr, **kwargs)

    def setup_schedulers(self):
        sched_opt = deepcopy(self.opt['train']['scheduler'])
        sched_cls = scheduler_class(sched_opt.pop('type'))
        for optimizer in self.optimizers:
            self.schedulers.append(sched_cls(optimizer, **sched_opt))

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """Load weights from a checkpoint in any known layout: BasicSR, Lightning (official PromptIR), bare."""
        if not osp.isfile(load_path):
            raise FileNotFoundError(f'path.pretrain_network_g: no such file: {load_path}')
        logger = get_root_logger()
        state = extract_state_dict(load_checkpoint(load_path, logger), param_key, load_path)
        net = self.get_bare_model(net)
        logger.info(f'Loading {net.__class__.__name__} from {load_path} (strict={strict}).')
        self._print_different_keys_loading(net, state, strict)
        check_state_dict_fits(net, state, strict, load_path)
        net.load_state_dict(state, strict=strict)

    # ------------------------------------------------------------------ training
    def feed_data(self, data):
        super().feed_data(data)
        self.lq_path = data.get('lq_path')
        labels = data.get('degradation')
        self.degradation = labels.to(self.device) if labels is not None else None
        # the labels as the loader gave them (CPU): checked against the arch's classes without a device sync
        self._labels_host = labels.tolist() if labels is not None and labels.device.type == 'cpu' else None

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        if self.cri_cls is not None:
            if self.degradation is None:
                raise KeyError('train.cls_opt needs degradation labels: the train dataset returned no "degradation"')
            labels = {'task_labels': self.degradation} \
                if current_iter <= self.opt['train'].get('teacher_forcing_iter', 0) else {}  # route by the labels
            with autocast(self.device, self.amp):
                self.output, task_logits = self._train_forward(self.lq, return_task_logits=True, **labels)
            task_logits = [lg.float() for lg in task_logits]
        else:
            with autocast(self.device, self.amp):
                self.output = self._train_forward(self.lq)
        self.output = self.output.float()  # the losses in float32

        loss_dict = OrderedDict()
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_fft:
            loss_dict['l_fft'] = self.cri_fft(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
        if self.cri_cls is not None:
            self._check_labels(task_logits[0].shape[1])
            loss_dict['l_cls'] = self.cri_cls(task_logits, self.degradation)
        l_total = sum(loss_dict.values())
        finite = torch.isfinite(l_total.detach())
        (self.scaler.scale(l_total) if self.scaler else l_total).backward()
        # the one host sync of the step, after the backward is queued: skip the step if any rank's loss is not finite
        if not self._loss_is_finite(finite, loss_dict, current_iter):
            return  # step skipped: no optimizer step, no EMA
        if self.scaler:
            self.scaler.unscale_(self.optimizer_g)  # clip the true gradients
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), **self.grad_clip)
        if self.scaler:  # float16: skips the step when the scaled gradients overflowed, then adapts the scale
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            self.optimizer_g.step()

        bare = self.get_bare_model(self.net_g)
        if hasattr(bare, 'after_optimizer_step'):
            bare.after_optimizer_step()
        pending = OrderedDict((k, v.detach()) for k, v in loss_dict.items())
        if self.cri_cls is not None:  # share of the batch whose router vote is right (logged, not a loss)
            votes = routing_vote([lg.detach() for lg in task_logits])
            pending['route_acc'] = (votes == self.degradation).float().mean()
        self._pending_log = pending  # turned into numbers when read (log_dict), not here: no sync in the step
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    @property
    def log_dict(self):
        """The last step's losses (and ``route_acc``) as numbers, averaged over the ranks (BasicSR's
        ``reduce_loss_dict``). Computed when read -- the training loop reads it every ``print_freq`` iterations, on
        every rank -- so the training step itself never waits for the device."""
        pending = self.__dict__.pop('_pending_log', None)
        if pending is not None:
            self.__dict__['_log_values'] = self.reduce_loss_dict(pending)
        return self.__dict__.get('_log_values', OrderedDict())

    @log_dict.setter
    def log_dict(self, values):
        self.__dict__.pop('_pending_log', None)
        self.__dict__['_log_values'] = values

    def _check_labels(self, num_classes):
        """The batch's labels fit the arch's classes (checked on the loader's CPU labels: no device sync)."""
        if self._labels_host and not all(0 <= label < num_classes for label in self._labels_host):
            raise ValueError(f'degradation label {max(self._labels_host)} out of range for the {num_classes} classes '
                             f'of {self.opt["network_g"]["type"]}: datasets.train.degradation_classes and the arch '
                             '(num_experts / num_classes) disagree')

    def _loss_is_finite(self, finite, loss_dict, current_iter):
        """A NaN/Inf loss (on any rank) skips the step; ``train.max_nonfinite_steps`` in a row stop the run."""
        bad = (~finite).float()
        if self.opt['dist']:
            torch.distributed.all_reduce(bad)  # every rank skips together, or DDP would hang
        if bad.item() == 0:
            self._nonfinite_streak = 0
            return True
        self._nonfinite_streak += 1
        limit = int(self.opt['train'].get('max_nonfinite_steps', 10))
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        keys = [os.path.basename(str(p)) for p in (self.lq_path or [])]
        get_root_logger().warning(f'Non-finite loss at iteration {current_iter} ({values}); step skipped '
                                  f'({self._nonfinite_streak} in a row). Batch: {keys}')
        self.optimizer_g.zero_grad(set_to_none=True)
        self.log_dict = OrderedDict((k, v) for k, v in values.items())
        if self._nonfinite_streak >= limit:
            raise RuntimeError(f'{self._nonfinite_streak} consecutive non-finite losses (train.max_nonfinite_steps: '
                               f'{limit}), last at iteration {current_iter}: stopping. Lower the learning rate, '
                               f'enable train.grad_clip, or check the data (batch {keys}).')
        return False

    def model_ema(self, decay=0.999):
        """BasicSR's EMA of the parameters, plus the same EMA of floating-point buffers (e.g. DaAIR's controllers,
        which BasicSR's version would leave at their initial values in ``net_g_ema``)."""
        super().model_ema(decay)
        ema_buffers = dict(self.net_g_ema.named_buffers())
        with torch.no_grad():
            for name, buf in self.get_bare_model(self.net_g).named_buffers():
                if name in ema_buffers and buf.is_floating_point():
                    ema_buffers[name].mul_(decay).add_(buf, alpha=1 - decay)

    def test(self):
        """Inference with the bare network (net_g_ema if present; never the DDP wrapper, whose forward is a collective)
        in eval mode; archs with task logits also give ``self.task_logits``."""
        net = self._eval_net()
        forward = self._eval_forward(net)
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.device, amp_dtype((self.opt.get('val') or {}).get('amp'), 'val.amp')):
            if getattr(net, 'has_task_logits', False):
                self.output, self.task_logits = forward(self.lq, return_task_logits=True)
                self.task_logits = [lg.float() for lg in self.task_logits]
            else:
                self.output, self.task_logits = forward(self.lq), None
        self.output = self.output.float()
        net.train(was_training)

    def _eval_forward(self, net):
        """The inference forward: ``net``, or its compiled form with ``val.compile`` (or ``train.compile``)."""
        if not ((self.opt.get('val') or {}).get('compile') or (self.opt.get('train') or {}).get('compile')):
            return net
        cached = getattr(self, '_compiled_eval', None)
        if cached is None or cached.module is not net:
            self._compiled_eval = Compiled(net, 'val.compile', get_root_logger())
        return self._compiled_eval

    # ------------------------------------------------------------------ saving
    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = {k[7:] if k.startswith('module.') else k: v.cpu() for k, v in state.items()}
        name = 'latest' if current_iter == -1 else current_iter
        atomic_torch_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{name}.pth'))

    def save_training_state(self, epoch, current_iter):
        """Optimizers, schedulers and every rank's RNG states (gathered: every rank calls this; rank 0 writes)."""
        if current_iter == -1:
            return
        rng = gather_rng_states(self.opt)
        if self.opt['rank'] != 0:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'rng': rng,
            'nonfinite_streak': self._nonfinite_streak,
            'scaler': self.scaler.state_dict() if getattr(self, 'scaler', None) else None,
            # what the saved position means: the schedule (a resume may change it) and the data (it may not)
            'run': dict(getattr(self, 'run_info', {}), total_iter=self.opt['train']['total_iter'],
                        scheduler=dict(self.opt['train']['scheduler'])),
        }
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """Optimizers and schedulers (BasicSR), plus the RNG states saved with them.

        When the option file changed the schedule since the state was saved (``train.total_iter`` raised, new
        ``scheduler`` settings such as ``periods``), the optimizers resume and the schedule is the file's: its
        schedulers are set to the saved step with the learning rate the new schedule gives there (BasicSR would
        restore the old schedule and fail past its end). The log says what changed.
        """
        saved = (resume_state.get('run') or {})
        changes = self._schedule_changes(saved)
        if not changes:
            super().resume_training(resume_state)
        else:
            for optimizer, state in zip(self.optimizers, resume_state['optimizers']):
                optimizer.load_state_dict(state)
            step = resume_state['schedulers'][0]['last_epoch']
            for scheduler in self.schedulers:
                self._position_scheduler(scheduler, step)
            get_root_logger().info(f'Resuming with a changed schedule ({"; ".join(changes)}): the schedule continues '
                                   f'from step {step} as the option file now gives it (learning rate '
                                   f'{self.get_current_learning_rate()[0]:.4g}).')
        if 'rng' in resume_state:
            restore_rng_states(resume_state['rng'], self.opt)
        if getattr(self, 'scaler', None) and resume_state.get('scaler'):
            self.scaler.load_state_dict(resume_state['scaler'])
        self._nonfinite_streak = resume_state.get('nonfinite_streak', 0)

    def _schedule_changes(self, saved):
        """What differs between the saved schedule and the option file's (empty for states without the record)."""
        if 'scheduler' not in saved:
            return []
        train_opt = self.opt['train']
        changes = []
        if saved.get('total_iter') != train_opt['total_iter']:
            changes.append(f'train.total_iter {saved.get("total_iter")} -> {train_opt["total_iter"]}')
        old, new = dict(saved['scheduler']), dict(train_opt['scheduler'])
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f'train.scheduler.{key} {old.get(key)} -> {new.get(key)}')
        return changes

    def _position_scheduler(self, scheduler, step):
        """Set a freshly built scheduler to ``step`` steps taken, with the learning rate of its schedule there."""
        from ..recipe import LearningRateCurve  # closed forms of the schedules
        train_opt = self.opt['train']
        optim_opt = dict(train_opt['optim_g'], type=type(scheduler.optimizer).__name__)  # BasicSR popped 'type'
        curve = LearningRateCurve({'optim_g': optim_opt, 'scheduler': train_opt['scheduler']})
        lr = curve.scheduled(step)
        if lr is None:
            raise ValueError(f'train.scheduler.type {curve.scheduler_type}: the schedule changed since the state was '
                             'saved and this scheduler has no closed form to continue from; keep its settings')
        scheduler.last_epoch = step
        for group in scheduler.optimizer.param_groups:
            group['lr'] = lr / curve.base_lr * group['initial_lr']
        scheduler._last_lr = [group['lr'] for group in scheduler.optimizer.param_groups]

    # ------------------------------------------------------------------ validation
    def _eval_net(self):
        """The bare network that validation and test run (``net_g_ema`` if present)."""
        return self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._validate(dataloader, current_iter, tb_logger, save_img, rank=0, world_size=1)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Distributed validation: the ranks share the images and gather the scores.

        BasicSR validates on rank 0 alone with the DDP-wrapped network while the other ranks wait. That hangs for
        networks with buffers (DaAIR's controllers, BatchNorm): DDP broadcasts the buffers before every forward, a
        collective the waiting ranks never join. And one rank running the whole test sets can outlast NCCL's
        watchdog. Here instead:

        1. rank 0's buffers are broadcast to every rank (under DDP each rank's BatchNorm statistics drift from rank
           0's, which DDP re-broadcasts at each training forward and which the saved checkpoint holds);
        2. image ``i`` is scored by rank ``i % world_size`` with the bare network (no collective in its forward, so
           ranks may score different numbers of images);
        3. one all-reduce per test set gathers the per-image scores, and every rank averages them in image order.

        The numbers equal a single-process validation of rank 0's weights (tested), and the other ranks wait only for
        the slowest share, not for the whole validation.
        """
        import torch.distributed as dist
        for buffer in self._eval_net().buffers():
            dist.broadcast(buffer, src=0)
        self._validate(dataloader, current_iter, tb_logger, save_img, self.opt['rank'], self.opt['world_size'])

    def _validate(self, dataloader, current_iter, tb_logger, save_img, rank, world_size):
        """Score images ``rank, rank + world_size, ...`` of the set; with several ranks gather every image's scores;
        average them in image order, then log and tabulate the set (identical on every rank).

        cuDNN's autotuning (``cudnn.benchmark``, on for training) is off meanwhile: test images come in many sizes,
        and it would re-tune every convolution for each new size.
        """
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            self._validate_set(dataloader, current_iter, tb_logger, save_img, rank, world_size)
        finally:
            torch.backends.cudnn.benchmark = benchmark

    def _validate_set(self, dataloader, current_iter, tb_logger, save_img, rank, world_size):
        dataset = dataloader.dataset
        dataset_opt = dataset.opt
        dataset_name = dataset_opt['name']
        val_opt = self.opt['val']
        metrics = val_opt.get('metrics') or {}
        clamp = val_opt.get('clamp', True)
        if not hasattr(self, '_input_scores'):
            self._input_scores = {}
        score_input = val_opt.get('input_metrics', True) and dataset_name not in self._input_scores
        if metrics:
            self._initialize_best_metric_results(dataset_name)
        names = list(metrics)
        image_names = [n for n in names if metrics[n].get('type') not in ROUTING_METRICS]  # the input is scored too
        if world_size == 1:
            indices, loader = range(len(dataloader)), dataloader
        else:
            indices = range(rank, len(dataset), world_size)
            loader = DataLoader(Subset(dataset, indices), batch_size=1, shuffle=False,
                                num_workers=dataloader.num_workers, collate_fn=dataloader.collate_fn,
                                pin_memory=dataloader.pin_memory)
        # {image index: [output score per metric, input score per image metric]}, images with ground truth only
        scores = {}
        pbar = tqdm(total=len(indices), unit='image', desc=dataset_name, leave=False,
                    disable=not val_opt.get('pbar', True) or rank != 0)
        for index, val_data in zip(indices, loader):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            output = self.output.detach().cpu()
            if clamp:
                output = output.clamp(0, 1)
            gt = self.gt.detach().cpu() if hasattr(self, 'gt') else None
            if gt is not None:
                lq = self.lq.detach().cpu()
                row = [self._routing_score(name, metrics[name]) if name not in image_names else
                       score(metrics[name], output, gt) for name in names]
                if score_input:
                    row += [score(metrics[name], lq, gt) for name in image_names]
                scores[index] = [float(v) for v in row]
                del self.gt
            if save_img:
                # one folder per val/test set (sets share image names: rain and haze test images, for one)
                folder = osp.join(self.opt['path']['visualization'], dataset_name)
                suffix = current_iter if self.opt['is_train'] else (val_opt.get('suffix') or self.opt['name'])
                imwrite(tensor2img([output]), osp.join(folder, f'{img_name}_{suffix}.png'))
            del self.lq, self.output
            pbar.update(1)
        pbar.close()
        if world_size > 1:
            scores = self._gather_scores(scores, len(dataset), len(names) + len(image_names))

        rows = [scores[i] for i in sorted(scores)]  # images with ground truth, in image order
        if not metrics or not rows:  # nothing to score (no ground truth): images only
            return
        self.metric_results = {name: sum(r[j] for r in rows) / len(rows) for j, name in enumerate(names)}
        if score_input:
            self._input_scores[dataset_name] = {name: sum(r[len(names) + j] for r in rows) / len(rows)
                                                for j, name in enumerate(image_names)}
        for name, value in self.metric_results.items():
            self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self._add_table_row(current_iter, dataset_name, dataset_opt, len(rows))

    def _gather_scores(self, scores, num_images, width):
        """Every rank's ``{image index: row}`` merged on every rank: one all-reduce of a (num_images, 1 + width) table
        in which each rank filled only its own rows (column 0 flags an image with ground truth), so the sum holds
        every score exactly."""
        import torch.distributed as dist
        table = torch.zeros(num_images, 1 + width, dtype=torch.float64)
        for index, row in scores.items():
            table[index, 0] = 1.0
            table[index, 1:1 + len(row)] = torch.tensor(row, dtype=torch.float64)
        table = table.to(self.device)
        dist.all_reduce(table)
        return {i: row[1:] for i, row in enumerate(table.cpu().tolist()) if row[0] == 1.0}

    def _routing_score(self, name, metric_opt):
        if self.task_logits is None:
            raise ValueError(f'val.metrics.{name}: {metric_opt["type"]} needs an arch with task logits; '
                             f'{self.opt["network_g"]["type"]} has none')
        if self.degradation is None:
            raise ValueError(f'val.metrics.{name}: the val/test dataset returns no "degradation" label')
        return calculate_metric({'task_logits': self.task_logits, 'degradation': self.degradation}, metric_opt)

    def _add_table_row(self, current_iter, dataset_name, dataset_opt, count):
        """Collect one row per val/test set; once every set of this round is in, log and write the table."""
        expected = [k for k in self.opt['datasets'] if k.split('_')[0] in ('val', 'test')]
        if getattr(self, '_table_iter', None) != current_iter or len(self._table_rows) >= len(expected):
            self._table_iter, self._table_rows = current_iter, OrderedDict()  # a new round (the final validation
            # after the last periodic one has the same iteration)
        row = OrderedDict(test_set=dataset_name, degradation=dataset_opt.get('degradation', ''), images=count)
        inputs = self._input_scores.get(dataset_name, {})
        for name, value in self.metric_results.items():
            if name in inputs:
                row[f'input_{name}'] = inputs[name]
            row[name] = value
            if name in inputs and 'psnr' in name.lower():
                row[f'gain_{name}'] = value - inputs[name]
        self._table_rows[dataset_name] = row
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                get_root_logger().warning(
                    f'Test set {dataset_name}: {key} is {value}; left out of the average. An infinite PSNR means '
                    'images equal to their GT: usually the LQ images are the GT (check dataroot_lq).')
        rows = list(self._table_rows.values())
        path = self.opt['path']['results_root'] if not self.opt['is_train'] else self.opt['path']['experiments_root']
        write_metric_table(rows, path, self.opt['name'])
        if len(rows) >= len(expected):
            get_root_logger().info(f'Results of {self.opt["name"]} at {current_iter}:\n' + format_metric_table(rows))


def score(metric_opt, img, gt):
    """One image's score under ``val.metrics.<name>`` (``metric_opt``), as a float, fed the way the metric expects.

    - this plugin's metrics (``calculate_psnr_aio``, ...): the float RGB tensors (the all-in-one protocol);
    - BasicSR's ``*_pt`` metrics: the float RGB tensors too (their tensor result becomes a float);
    - BasicSR's numpy metrics (``calculate_psnr`` / ``calculate_ssim`` with ``crop_border``, ``test_y_channel``,
      NIQE, ...): uint8 BGR images from ``tensor2img``, exactly as BasicSR's SRModel gives them.
    """
    func = METRIC_REGISTRY.get(metric_opt['type'])
    if func.__module__.startswith('allinone_basicsr.') or metric_opt['type'].endswith('_pt'):
        value = calculate_metric({'img': img, 'img2': gt}, metric_opt)
    else:
        value = calculate_metric({'img': tensor2img([img]), 'img2': tensor2img([gt])}, metric_opt)
    return float(value.mean() if torch.is_tensor(value) else value)


def check_state_dict_fits(net, state, strict, load_path):
    """A clear error for a checkpoint of another arch or config: name the first mismatching keys and shapes."""
    own = net.state_dict()
    wrong = [f'{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}'
             for k, v in state.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    if wrong or missing or unexpected:
        parts = [f'{name} ({len(keys)}): {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
                 for name, keys in (('shape mismatch', wrong), ('missing in the checkpoint', missing),
                                    ('not in the network', unexpected)) if keys]
        raise ValueError(f'path.pretrain_network_g: {load_path} does not fit {net.__class__.__name__} '
                         f'(another arch or network_g config?). ' + '; '.join(parts))


def _average_row(rows):
    """The mean of every numeric column over the sets, finite values only (an inf / NaN set is left out)."""
    numeric = [k for k in rows[0] if isinstance(rows[0][k], float)]
    avg = OrderedDict(test_set='Average', degradation='', images=sum(r['images'] for r in rows))
    for key in numeric:
        values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        avg[key] = sum(values) / len(values) if values else float('nan')
    return avg


def format_metric_table(rows):
    """Markdown table of per-set rows plus their average (PSNR-like values with 2 decimals, SSIM with 4); a value
    that is not finite is flagged and a note says it is left out of the average."""
    rows = list(rows) + [_average_row(rows)]
    columns = list(rows[0].keys())
    flagged = []

    def fmt(row, key, value):
        if isinstance(value, float):
            if not math.isfinite(value):
                if row['test_set'] != 'Average':
                    flagged.append(f'{row["test_set"]} {key}')
                return f'{value} (!)'
            return f'{value:.4f}' if 'ssim' in key.lower() else f'{value:.3f}' if 'acc' in key.lower() else \
                f'{value:.2f}'
        return str(value)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r, c, r.get(c, '')) for c in columns) + ' |' for r in rows]
    if flagged:
        lines += ['', f'(!) not finite, left out of the Average: {", ".join(flagged)}. An infinite PSNR means images '
                  'equal to their GT: usually the LQ images are the GT (check dataroot_lq).']
    return '\n'.join(lines)


@master_only
def write_metric_table(rows, folder, name):
    """Write ``metrics.csv`` (full precision, with the average row) and ``metrics.md`` into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    all_rows = list(rows) + [_average_row(rows)]
    with open(osp.join(folder, 'metrics.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(all_rows[0].keys()))
        writer.writeheader()
        writer.writerows(all_rows)
    with open(osp.join(folder, 'metrics.md'), 'w') as f:
        f.write(f'# {name}\n\n{format_metric_table(rows)}\n')
