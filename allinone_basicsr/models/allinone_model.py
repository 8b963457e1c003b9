"""AllInOneModel: BasicSR's SRModel with the all-in-one training and evaluation protocol."""
from collections import OrderedDict
from copy import deepcopy
from os import path as osp

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from allinone_basicsr.archs.arch_util import AfterStepArch, has_task_logits
from allinone_basicsr.metrics.routing_accuracy_metric import routing_vote
from allinone_basicsr.utils.checkpoint import (atomic_torch_save, check_state_dict_fits, extract_state_dict,
                                               load_checkpoint, save_network_file)
from allinone_basicsr.utils.metric_table import MetricTable, SetScores, set_fingerprint, set_row
from allinone_basicsr.utils.resume import restore_rng_states, training_state

from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from .distributed import broadcast_buffers, gather_scores, match_gradient_strides, shard
from .loss_guard import SPIKE_FACTOR, DeferredLog, NonFiniteGuard, check_labels
from .optimization import optimizer_class, resume_with_changed_settings, scheduler_class
from .precision import EvalPrecision, TrainPrecision, autocast, without_cudnn_autotuning


@MODEL_REGISTRY.register()
class AllInOneModel(SRModel):
    """One network for many degradations, trained and scored the way the all-in-one papers do: BasicSR's SRModel
    with (options in docs/training.md)

    - losses ``train.pixel_opt`` + ``fft_opt`` + ``cls_opt`` (task classification, for archs with task logits,
      see ``archs/arch_util.TaskLogitsArch``), routed by the labels up to ``train.teacher_forcing_iter``;
    - any ``torch.optim`` optimizer and scheduler (``models/optimization.py``), ``train.grad_clip``,
      ``train.amp`` / ``train.compile`` (``models/precision.py``), a guard against non-finite losses and loss
      spikes that keeps such weights out of checkpoints too (``models/loss_guard.py``, ``save``), the EMA of
      buffers too, and ``after_optimizer_step()`` of ``AfterStepArch`` archs;
    - validation / test on the bare network, shared between the ranks (``models/distributed.py``), one table per
      round with the degraded input's scores and the gain (``metrics/metric_table.py``);
    - exact resume (``resume.py``) and atomic checkpoints that load in any known layout
      (``models/checkpoint_util.py``).
    """

    # ------------------------------------------------------------------ setup
    def model_to_device(self, net):
        if self.opt['dist']:
            match_gradient_strides(net)  # channels-last gradients in the weights' layout: DDP's buckets expect it
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    def init_training_settings(self):
        super().init_training_settings()
        train_opt = self.opt['train']
        self.guard = NonFiniteGuard(train_opt.get('max_nonfinite_steps', 10), self.opt['dist'],
                                    train_opt.get('spike_factor', SPIKE_FACTOR))
        self.save_deferred, self._saved_iter = False, None  # a checkpoint due, not written (save); the last written
        logger = get_root_logger()
        self.cri_fft = build_loss(train_opt['fft_opt']).to(self.device) if train_opt.get('fft_opt') else None
        self.cri_cls = None
        if train_opt.get('cls_opt'):
            if has_task_logits(self.get_bare_model(self.net_g)):
                self.cri_cls = build_loss(train_opt['cls_opt']).to(self.device)
            else:
                logger.warning(f'train.cls_opt is ignored: arch {self.opt["network_g"]["type"]} has no task logits.')
        self.precision = TrainPrecision(train_opt, self.device, self.net_g, logger)  # amp, compile, clipping

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
        logger.info(f'Loading {net.__class__.__name__} from {load_path} (strict={strict}). Weights: {state.source}.')
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

    def _losses(self, forward, batch):
        """The training losses (an OrderedDict of device scalars) of ``forward`` (the step's: ``self.precision``) on
        ``batch`` (``lq``, ``gt``, ``degradation``, ``labels_host``, ``iter``), the task logits (or None) and the
        output (float32)."""
        task_logits = None
        if self.cri_cls is not None:
            if batch['degradation'] is None:
                raise KeyError('train.cls_opt needs degradation labels: the train dataset returned no "degradation"')
            labels = {'task_labels': batch['degradation']} \
                if batch['iter'] <= self.opt['train'].get('teacher_forcing_iter', 0) else {}  # route by the labels
            output, task_logits = forward(batch['lq'], return_task_logits=True, **labels)
            task_logits = [lg.float() for lg in task_logits]
        else:
            output = forward(batch['lq'])
        output = output.float()  # the losses in float32
        gt = batch['gt']
        loss_dict = OrderedDict()
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(output, gt)
        if self.cri_fft:
            loss_dict['l_fft'] = self.cri_fft(output, gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
        if self.cri_cls is not None:
            check_labels(batch['labels_host'], task_logits[0].shape[1], self.opt['network_g']['type'])
            loss_dict['l_cls'] = self.cri_cls(task_logits, batch['degradation'])
        return loss_dict, task_logits, output

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        self._step_batch = batch = {'lq': self.lq, 'gt': self.gt, 'degradation': self.degradation,
                                    'labels_host': self._labels_host, 'iter': current_iter}  # for save's check
        loss_dict, task_logits, self.output = self._losses(self.precision, batch)
        l_total = sum(loss_dict.values())
        self.precision.backward(l_total)
        # the one host sync of the step, after the backward is queued: skip the step if any rank's loss is not finite
        # or spiked (loss_guard.NonFiniteGuard)
        if not self.guard.allows(l_total, loss_dict, current_iter, self.lq_path):
            self.optimizer_g.zero_grad(set_to_none=True)
            self.log_dict = OrderedDict(self.guard.values)
            return  # step skipped: no optimizer step, no EMA
        self.precision.step(self.optimizer_g, self.net_g.parameters())

        bare = self.get_bare_model(self.net_g)
        if isinstance(bare, AfterStepArch):
            bare.after_optimizer_step()
        pending = OrderedDict((k, v.detach()) for k, v in loss_dict.items())
        if self.cri_cls is not None:  # share of the batch whose router vote is right (logged, not a loss)
            votes = routing_vote([lg.detach() for lg in task_logits])
            pending['route_acc'] = (votes == self.degradation).float().mean()
        self._pending_log = pending  # numbers when log_dict is read
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    log_dict = DeferredLog()  # read when logged: no device sync in the step

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
        was_training = net.training
        net.eval()
        if not hasattr(self, '_eval_precision'):
            self._eval_precision = EvalPrecision(self.opt, self.device, get_root_logger())  # val.amp, val.compile
        if has_task_logits(net):
            self.output, task_logits = self._eval_precision(net, self.lq, return_task_logits=True)
            self.task_logits = [lg.float() for lg in task_logits]
        else:
            self.output, self.task_logits = self._eval_precision(net, self.lq), None
        self.output = self.output.float()
        net.train(was_training)

    # ------------------------------------------------------------------ saving
    def save(self, epoch, current_iter):
        """BasicSR's save (networks, then the training state), only of healthy weights: when the last step was
        skipped (``train.max_nonfinite_steps`` / ``train.spike_factor``), or the weights' loss on the last training
        batch (one no-grad forward of the bare network per checkpoint, one host sync) is non-finite or spiked, the
        checkpoint is not written and ``save_deferred`` asks the training loop to try again after every following
        step, until one is healthy. So no checkpoint (and no training state for ``--auto_resume``) holds the weights
        of a non-finite streak or of a step that blew them up; the decision is every rank's (``NonFiniteGuard``)."""
        problem = self._unhealthy()
        logger = get_root_logger()
        name = 'net_g_latest' if current_iter == -1 else f'the checkpoint of iteration {current_iter}'
        if problem is not None:
            last = self._saved_iter
            last = 'none yet' if last is None else f'iteration {last}'
            if current_iter == -1:
                logger.error(f'Not writing {name}: {problem}. The last healthy checkpoint written: {last}.')
            else:
                logger.warning(f'Not writing {name}: {problem}; a checkpoint is written at the first following '
                               f'iteration whose weights are healthy (the last one written: {last}).')
            self.save_deferred = current_iter != -1
            return
        if self.save_deferred and current_iter != -1:
            logger.info(f'Writing the deferred checkpoint at iteration {current_iter}: its weights are healthy.')
        self.save_deferred = False
        super().save(epoch, current_iter)
        if current_iter != -1:
            self._saved_iter = current_iter

    def _unhealthy(self):
        """Why the weights are not fit to be saved (``save``), or None."""
        if self.guard.streak:
            return (f'these weights gave a non-finite or spiked loss in the last {self.guard.streak} step(s), '
                    'which were skipped')
        batch = getattr(self, '_step_batch', None)
        if batch is None:  # no step taken in this process: the weights are those loaded or resumed
            return None
        net = self.get_bare_model(self.net_g)
        with torch.no_grad(), autocast(self.device, self.precision.dtype):
            loss_dict, _, _ = self._losses(net, batch)
        return self.guard.judge(sum(loss_dict.values()))

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        nets, keys = (net, param_key) if isinstance(net, list) else ([net], [param_key])
        name = 'latest' if current_iter == -1 else current_iter
        save_network_file({key: self.get_bare_model(n).state_dict() for n, key in zip(nets, keys)},
                          osp.join(self.opt['path']['models'], f'{net_label}_{name}.pth'))

    def save_training_state(self, epoch, current_iter):
        """The training state (``resume.training_state``: every rank calls this; rank 0 writes), atomically."""
        state = training_state(self, epoch, current_iter) if current_iter != -1 else None
        if state is not None:
            state['loss_guard'] = self.guard.state_dict()  # the loss-spike rule's running mean
            atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """Optimizers and schedulers (BasicSR's, or continuing under the schedule / optimizer settings the option file
        changed, logged), plus the RNG states, GradScaler, non-finite streak and loss running mean saved with them
        (``resume.py``)."""
        if not resume_with_changed_settings(self, resume_state):
            super().resume_training(resume_state)
        if 'rng' in resume_state:
            restore_rng_states(resume_state['rng'], self.opt)
        self.precision.load_state_dict(resume_state.get('scaler'))
        self.guard.streak = resume_state.get('nonfinite_streak', 0)
        self.guard.load_state_dict(resume_state.get('loss_guard'))
        self._saved_iter = resume_state['iter']  # the checkpoint resumed from

    # ------------------------------------------------------------------ validation
    def _eval_net(self):
        """The bare network that validation and test run (``net_g_ema`` if present)."""
        return self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._validate(dataloader, current_iter, tb_logger, save_img, rank=0, world_size=1)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Distributed validation: the ranks share the images and gather the scores (why: models/distributed.py)."""
        broadcast_buffers(self._eval_net())
        self._validate(dataloader, current_iter, tb_logger, save_img, self.opt['rank'], self.opt['world_size'])

    @without_cudnn_autotuning  # test images come in many sizes
    def _validate(self, dataloader, current_iter, tb_logger, save_img, rank, world_size):
        """Score images ``rank, rank + world_size, ...`` of the set, gather, average in image order, log and tabulate
        (the same on every rank)."""
        dataset_opt = dataloader.dataset.opt
        name, val_opt = dataset_opt['name'], self.opt['val']
        metrics = val_opt.get('metrics') or {}
        self._input_scores = getattr(self, '_input_scores', {})  # the degraded inputs' scores, once per set
        scores = SetScores(metrics, val_opt.get('input_metrics', True) and name not in self._input_scores,
                           self.opt['network_g']['type'])
        if metrics:
            self._initialize_best_metric_results(name)
        indices, loader = shard(dataloader, rank, world_size)
        for val_data, index in zip(tqdm(loader, unit='image', desc=name, leave=False,
                                        disable=not val_opt.get('pbar', True) or rank != 0), indices):
            self.feed_data(val_data)
            self.test()
            output = self.output.detach().cpu()
            output = output.clamp(0, 1) if val_opt.get('clamp', True) else output
            if hasattr(self, 'gt'):
                scores.add(index, output, self.lq.detach().cpu(), self.gt.detach().cpu(), self.task_logits,
                           self.degradation)
                del self.gt
            if save_img:  # one folder per val/test set (sets share image names: rain and haze test images, for one)
                img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
                suffix = current_iter if self.opt['is_train'] else (val_opt.get('suffix') or self.opt['name'])
                imwrite(tensor2img([output]), osp.join(self.opt['path']['visualization'], name,
                                                       f'{img_name}_{suffix}.png'))
            del self.lq, self.output
        if world_size > 1:
            scores.scores = gather_scores(scores.scores, len(dataloader.dataset), scores.width, self.device)
        averages = scores.averages() if metrics else None
        if averages is None:  # nothing to score (no ground truth): images only
            return
        self.metric_results, inputs, count = averages
        if scores.score_input:
            self._input_scores[name] = inputs
        for metric, value in self.metric_results.items():
            self._update_best_metric_result(name, metric, value, current_iter)
        self._log_validation_metric_values(current_iter, name, tb_logger)
        if not hasattr(self, '_table'):  # one table per round of every val/test set
            self._table = MetricTable.for_run(self.opt)
        self._table.add(current_iter, set_row(name, dataset_opt.get('degradation', ''), count, self.metric_results,
                                              self._input_scores.get(name, {}), set_fingerprint(dataloader.dataset)))
