"""Option files at smoke scale: the same recipe (losses, optimizer, schedule shape, switches, classes, protocol) on a
tiny network, tiny patches and a few iterations, on the CPU. One home for the shrinking that ``table --smoke``, the
GPU check's ``--tiny`` runs and the full-recipe tests do."""
import copy

# demo scale: the size keys of each arch (switches, classes and protocol keys stay the recipe's)
SMOKE_NETWORKS = {
    'SymUNet': dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1]),
    'SESymUNet': dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1],
                      cross_attn_inner_dims=[16, 16, 16], middle_cross_attn_inner_dim=16, clip_pretrained=None,
                      clip_vision_cfg={'image_size': 28, 'patch_size': 14, 'width': 32, 'layers': 1,
                                       'head_width': 32}),
    'PromptIR': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_dims=[8, 16, 40],
                     prompt_sizes=[16, 8, 4]),
    'DaAIR': dict(dim=8, num_blocks=[1, 1, 1, 1], num_dec_blocks=[1, 1, 1], num_refinement_blocks=1, rank_ratio=4,
                  expert_kernel_size=3),
    'PromptDSANet': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_dims=[8, 16, 40],
                         prompt_sizes=[16, 8, 4], prompt_net='resnet18', prompt_net_pretrained=None),
}
# network options that name external weight files: a smoke run uses random initialisation instead
PRETRAINED_KEYS = ('clip_pretrained', 'prompt_net_pretrained')


def smoke_network(network_g):
    """``network_g`` at demo scale: the arch's size keys replaced, everything else (switches, classes) kept."""
    arch = network_g.get('type')
    if arch not in SMOKE_NETWORKS:
        raise ValueError(f'no smoke size for network_g.type {arch!r} (known: {sorted(SMOKE_NETWORKS)})')
    return dict(network_g, **SMOKE_NETWORKS[arch])


def without_pretrained(network_g):
    """``network_g`` with every external weight file (CLIP, ResNet) replaced by random initialisation."""
    return {k: (None if k in PRETRAINED_KEYS and v else v) for k, v in network_g.items()}


def compress_schedule(train_opt, iters):
    """``train_opt``'s schedule squeezed into ``iters`` iterations, its shape kept (the full one would stay in its
    warm-up at a learning rate near 0), in place."""
    sched = train_opt.get('scheduler') or {}
    if sched.get('type') == 'LinearWarmupCosineLR':
        sched.update(warmup_iter=min(int(sched.get('warmup_iter', 0)), 1), max_iter=max(iters, 2))
    elif sched.get('type') == 'CosineAnnealingRestartLR':
        sched.update(periods=[iters], restart_weights=[1])
    elif sched.get('type') == 'CosineAnnealingLR':
        sched['T_max'] = iters
    if int(train_opt.get('warmup_iter', -1) or -1) >= iters:
        train_opt['warmup_iter'] = -1
    if train_opt.get('teacher_forcing_iter'):
        train_opt['teacher_forcing_iter'] = 1  # iteration 1 routes by the labels, the others by the routers
    return train_opt


def shrink_train_options(opt, iters, tiny=True, gt_size=32, batch_size=2, num_gpu=0):
    """A train option file at smoke scale (a new dict): the tiny network (``tiny``; else the file's own, with random
    initialisation instead of weight files), ``gt_size`` patches, ``batch_size`` per GPU, no loader workers,
    ``iters`` iterations on the compressed schedule, the final validation only, no tensorboard."""
    opt = copy.deepcopy(opt)
    opt['num_gpu'] = num_gpu
    opt['datasets']['train'].update(gt_size=gt_size, batch_size_per_gpu=batch_size, num_worker_per_gpu=0,
                                    persistent_workers=False, prefetch_mode=None, dataset_enlarge_ratio=1)
    opt['network_g'] = without_pretrained(smoke_network(opt['network_g']) if tiny else opt['network_g'])
    opt['train']['total_iter'] = iters
    compress_schedule(opt['train'], iters)
    if opt.get('val') is not None:
        opt['val'].update(val_freq=10 * iters, pbar=False, save_img=False)
    opt['logger'] = dict(opt.get('logger') or {}, print_freq=1, save_checkpoint_freq=10 * iters, use_tb_logger=False,
                         wandb={'project': None, 'resume_id': None})
    opt['path'] = dict(opt.get('path') or {}, pretrain_network_g=None, resume_state=None)
    return opt


def shrink_test_options(opt, weights, tiny=True, num_gpu=0):
    """A test option file at smoke scale (a new dict) that scores the weights file ``weights``."""
    opt = copy.deepcopy(opt)
    opt['num_gpu'] = num_gpu
    opt['network_g'] = without_pretrained(smoke_network(opt['network_g']) if tiny else opt['network_g'])
    opt['path'] = dict(opt.get('path') or {}, pretrain_network_g=weights)
    opt['val'] = dict(opt.get('val') or {}, pbar=False, save_img=False)
    return opt
