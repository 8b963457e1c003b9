"""Train with BasicSR's pipeline pieces, this plugin registered; outputs go under the working directory.

    python -m allinone_basicsr.train -opt options/train_symunet.yml [--auto_resume] [--launcher pytorch]
    allinone-train -opt ...                     (console script)
    python allinone_basicsr/train.py -opt ...   (as Real-ESRGAN's entry file)

The loop is a fork of BasicSR 1.4.2's ``train_pipeline`` (same options, logs, checkpoints, validation, in the
same order). It is forked, not wrapped, because exact resumption needs the sampler and the mid-epoch position,
which ``train_pipeline`` builds and keeps inside itself. The deviations, each commented where it happens:

- options are type-checked first (``option_check``), and one run per experiment name holds a lock (``experiment``);
- the train loader is built around ``resume.ResumableSampler`` / ``SeededDataset`` (every sample its own seed),
  so a run resumed from the state of iteration k continues with the batches, crops and noise of the
  uninterrupted run (on CPU: the same weights bit for bit); BasicSR restarts the epoch instead;
- the schedule is checked against ``total_iter`` before anything runs (``optimization.check_schedule``);
- resume loads onto the CPU, falls back past unreadable states, keeps the seed drawn for ``manual_seed: null``,
  refuses a changed batch, seed or data (``resume.load_resume_state`` / ``resume_seed`` / ``check_resume_data``)
  and applies changed optimizer settings (``optimization.resume_with_changed_settings``);
- the prefetchers start at ``reset()``, after the sampler knows its epoch and position (``data/prefetch.py``);
- distributed runs check at the end that every rank holds the same weights, and leave the process group cleanly;
- distributed runs beat a heartbeat: a rank that stops answering stops every rank, named (``utils/heartbeat.py``);
- the final validation is left out when the loop has just validated the same weights (``total_iter`` a multiple of
  ``val.val_freq``); BasicSR runs the whole validation twice there.

Stock ``basicsr.train.train_pipeline`` with the plugin imported works too (minus exact mid-epoch resume).
"""
import datetime
import logging
import os
import time
from os import path as osp

import torch

import allinone_basicsr  # noqa: F401  (applies the basicsr fixes and registers archs, data, losses, metrics, models)
from allinone_basicsr.data.prefetch import LazyCPUPrefetcher, LazyCUDAPrefetcher
from allinone_basicsr.models.optimization import check_schedule
from allinone_basicsr.utils import heartbeat
from allinone_basicsr.utils.cli import option_errors, parse_options, print_help_if_asked
from allinone_basicsr.utils.experiment import DEFAULT_LEASE, ExperimentLock, remove_temporaries
from allinone_basicsr.utils.options import check_option_file
from allinone_basicsr.utils.resume import (check_resume_data, load_resume_state, resumable_loader, resume_seed,
                                           run_record)

from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.train import init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs,
                           mkdir_and_rename)
from basicsr.utils.options import copy_opt_file, dict2str


def _prefetcher(opt, loader):
    mode = opt['datasets']['train'].get('prefetch_mode')
    if mode in (None, 'cpu'):
        return LazyCPUPrefetcher(loader)
    if mode == 'cuda':
        if opt['datasets']['train'].get('pin_memory') is not True:
            raise ValueError('datasets.train.prefetch_mode: cuda needs pin_memory: true')
        return LazyCUDAPrefetcher(loader, opt)
    raise ValueError(f"datasets.train.prefetch_mode {mode!r} is not one of: ~, 'cpu', 'cuda'")


def validation_loaders(opt, logger):
    """A loader of every ``val*`` set of ``opt['datasets']`` (BasicSR's build and log line); another phase than
    train / val is an error, as in BasicSR."""
    loaders = []
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            continue
        if phase.split('_')[0] != 'val':
            raise ValueError(f'Dataset phase {phase} is not recognized.')
        dataset = build_dataset(dataset_opt)
        loaders.append(build_dataloader(dataset, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                                        seed=opt['manual_seed']))
        logger.info(f'Number of val images/folders in {dataset_opt["name"]}: {len(dataset)}')
    return loaders


def check_ranks_agree(model, logger):
    """Distributed: every rank must end with the same weights (a float64 checksum per tensor, gathered).

    Parameters and buffers are compared, except BatchNorm running statistics: DDP does not average those, it
    broadcasts rank 0's at every training forward, so the other ranks' drift by their last batch. Rank 0's are the
    model's (the checkpoint holds them, and distributed validation broadcasts them first).
    """
    import torch.distributed as dist
    net = model.get_bare_model(model.net_g)
    batch_norm = {f'{name}.{buffer}' if name else buffer
                  for name, module in net.named_modules() if isinstance(module, torch.nn.modules.batchnorm._NormBase)
                  for buffer, _ in module.named_buffers(recurse=False)}
    sums = torch.stack([p.detach().double().sum() for name, p in net.state_dict().items()
                        if p.is_floating_point() and name not in batch_norm])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError('distributed training ended with different weights on different ranks')
    note = f" (BatchNorm statistics: rank 0's, {len(batch_norm)} buffers not compared)" if batch_norm else ''
    logger.info(f'Weights identical on all {len(gathered)} ranks{note}.')


def train_pipeline(root_path, argv=None):
    """Train as the command line (or ``argv``, e.g. ``['-opt', 'x.yml', '--auto_resume']``) says, outputs under
    ``root_path``."""
    opt, args = parse_options(root_path, True, argv)
    opt['root_path'] = root_path
    beat = heartbeat.start_heartbeat(opt)  # distributed: a silent rank stops every rank, named (utils/heartbeat.py)
    try:
        notes = check_option_file(opt, args.opt, is_train=True)  # keys, types and values, before anything runs
        lock = ExperimentLock(root_path, opt['name'], lease=opt.get('lock_lease', DEFAULT_LEASE))  # rank 0 holds it
        if opt['rank'] == 0:
            notes = list(notes) + lock.acquire().notices  # a lock taken over: logged once the log file exists
        try:
            _train(opt, args, root_path, notes)
        finally:
            lock.release()
    except BaseException as error:
        if beat is not None and not (isinstance(error, SystemExit) and not error.code):
            beat.fail(error)  # the other ranks stop now, naming this one; the log lists every rank's progress
        raise
    finally:
        if beat is not None:
            beat.stop()  # a normal end (after fail(): nothing more)


def configure_determinism(opt):
    """``deterministic: true`` (top level): cuDNN deterministic without autotuning, torch's deterministic algorithms
    (ops that have none warn once, naming themselves) and cuBLAS's fixed workspace, so a GPU run resumed from a state
    ends with the weights of the uninterrupted run. Off (default): cuDNN autotunes the training convolutions."""
    deterministic = bool(opt.get('deterministic', False))
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read when cuBLAS starts: before any matmul
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _train(opt, args, root_path, notes=()):
    configure_determinism(opt)
    schedule = check_schedule(opt['train'])  # deviation: a schedule that would fail is refused before the first step
    notes = list(notes) + schedule.notes  # logged once the log file exists
    resume_state = load_resume_state(opt, notes)  # adds a skipped unreadable state to the notes
    if resume_state is None:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(root_path, 'tb_logger', opt['name']))
    copy_opt_file(args.opt, opt['path']['experiments_root'])
    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    for note in notes:  # numbers read as strings (2e-3); schedule misfits; a lock taken over; a skipped state
        logger.warning(note)
    if resume_state:  # manual_seed: null: the seed the run drew at its start, before loaders and model are built
        seed_notice = resume_seed(opt, resume_state, getattr(args, 'seed_drawn', False))
        if seed_notice:
            logger.info(seed_notice)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    tb_logger = init_tb_loggers(opt)
    if opt['dist']:
        import torch.distributed as dist
        device = f'cuda:{torch.cuda.current_device()}' if opt['num_gpu'] and torch.cuda.is_available() else 'cpu'
        logger.info(f'Distributed: backend {dist.get_backend()}, world size {opt["world_size"]}, rank {opt["rank"]} '
                    f'on {device}.')
    if opt.get('deterministic'):
        logger.info('Deterministic: cuDNN autotuning off, deterministic algorithms on (an op without one warns).')
    if opt['rank'] == 0:
        for path in remove_temporaries(opt['path']['experiments_root']):
            logger.info(f'Removed {path}: the temporary file of a write a killed run never finished.')

    train_loader, sampler = resumable_loader(opt, logger)  # deviation: per-sample seeds, mid-epoch start
    val_loaders = validation_loaders(opt, logger)
    total_iters = int(opt['train']['total_iter'])
    # the loader's real batch: batch_size_per_gpu, times num_gpu under DataParallel (num_gpu > 1, no launcher)
    batch_size = train_loader.batch_size
    iters_per_epoch = sampler.num_samples // batch_size  # drop_last
    if iters_per_epoch == 0:
        raise ValueError(f'datasets.train: {sampler.num_samples} samples per rank are fewer than one batch '
                         f'({batch_size}): raise dataset_enlarge_ratio or lower batch_size_per_gpu')

    model = build_model(opt)
    model.run_info = run_record(opt, batch_size, len(train_loader.dataset))  # batch, seed and data of the position
    epoch, current_iter = 0, 0
    if resume_state:
        check_resume_data(resume_state.get('run'), model.run_info, opt, logger)  # same batch, seed, data, or refuse
        model.resume_training(resume_state)  # optimizers (changed settings applied), schedulers, RNG states
        epoch, current_iter = resume_state['epoch'], resume_state['iter']
        sampler.skip = min(sampler.num_samples, max(0, current_iter - epoch * iters_per_epoch) * batch_size)
        logger.info(f'Resuming training from epoch: {epoch}, iter: {current_iter}. '
                    f'The epoch continues at sample {sampler.skip}.')
    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetcher = _prefetcher(opt, train_loader)

    logger.info(f'Start training from epoch: {epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    first_iter = current_iter + 1
    validated_at = None  # the iteration of the last validation this process ran
    while current_iter < total_iters:
        sampler.set_epoch(epoch)
        prefetcher.reset()
        train_data = prefetcher.next()
        while train_data is not None and current_iter < total_iters:
            data_timer.record()
            current_iter += 1
            heartbeat.mark(current_iter)  # sent with the next beat (no device access)
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter == first_iter:
                msg_logger.reset_start_time()
            if current_iter % opt['logger']['print_freq'] == 0:
                log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                            'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time()}
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            due = current_iter % opt['logger']['save_checkpoint_freq'] == 0
            if due or getattr(model, 'save_deferred', False):  # deferred: unhealthy weights (AllInOneModel.save)
                if due:
                    logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
            if opt.get('val') is not None and current_iter % opt['val']['val_freq'] == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])
                validated_at = current_iter
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next()
        if current_iter < total_iters:
            sampler.skip = 0
            epoch += 1

    logger.info(f'End of training. Time consumed: {datetime.timedelta(seconds=int(time.time() - start_time))}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    if opt['dist']:
        check_ranks_agree(model, logger)
    if opt.get('val') is not None and validated_at != current_iter:  # not the same weights twice
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])
    if tb_logger:
        tb_logger.close()
    if opt['dist']:  # a process group left alive makes gloo's threads abort the interpreter at exit
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def main():
    print_help_if_asked('allinone-train', "Train from an option file: BasicSR's training loop (same options, logs, "
                        'checkpoints, validation) with exact mid-epoch resume and distributed validation, the '
                        'all-in-one plugin registered.', train=True)
    with option_errors('allinone-train'):  # a refused option file: one line naming the file and the key, status 2
        train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
