"""What the GPU check's sections share: the recipes and their sizes, the variants, the fixed batch, the settings,
building a model, peak memory."""
import contextlib
import copy
import gc
import logging
import warnings
from dataclasses import dataclass
from os import path as osp

import numpy as np
import torch

from allinone_basicsr.data.degradations import add_gaussian_noise, noise_rng
from allinone_basicsr.data.demo_set import make_images
from allinone_basicsr.tools.common import UsageError
from allinone_basicsr.utils.options import plain, read_yaml
from allinone_basicsr.utils.smoke import smoke_network, without_pretrained

from basicsr.models import build_model

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
RECIPES = {'SymUNet': 'train_symunet.yml', 'SESymUNet': 'train_se_symunet.yml', 'PromptIR': 'train_promptir.yml',
           'DaAIR': 'train_daair.yml', 'PromptDSANet': 'train_promptdsanet.yml'}
METHODS = tuple(RECIPES)
OWN_SIZE = ('PromptDSANet',)  # trained at its recipe's patch and batch (global attention over every pixel)
DEFAULT_VARIANTS = ('fp32', 'bf16', 'fp16', 'bf16+cl', 'bf16+compile')
SECTIONS = ('methods', 'syncs', 'resume', 'restore', 'official', 'compile')
# eval output of the initial weights under autocast vs float32: max |difference| in image units ([0, 1] images)
TOLERANCE = {'bf16': 3e-2, 'fp16': 5e-3}
LOSS_FALL = 0.95  # the last three losses' mean must be at most this share of the first three's
COMPILE_FIRST_LOSS = 2e-2  # first-step loss of a compiled variant vs its eager twin (relative)
# dB between the tiled and the untiled restore of a real network: it sees less context in a tile (MDTA's attention
# and the U-Net's receptive field stop at the tile), so only the seams' blend can be exact
TILE_PSNR = 30.0
OFFICIAL_ATOL = 1e-4  # official vs ours, float32 outputs (TF32 off), relative to max |official output|
# smoke sizes the official constructors accept (official PromptIR hard-codes its prompt widths for dim 48)
OFFICIAL_TINY = {'SymUNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1],
                                 restormer_middle_heads=2),
                 'PromptIR': dict(num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)}
CONSTANT_LR = {'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 1.0}
EXPECTED_SYNCS = {'fp32': ['loss_guard.py'], 'bf16': ['loss_guard.py'], 'fp16': ['loss_guard.py', 'grad_scaler.py']}


@dataclass(frozen=True)
class Variant:
    """A training configuration: autocast dtype (None: float32), channels-last tensors, ``torch.compile``."""
    name: str
    amp: str = None
    channels_last: bool = False
    compile: bool = False

    @property
    def twin(self):
        """The eager, channels-first variant of the same precision (its first loss is this one's reference)."""
        return self.amp or 'fp32'


def parse_variant(text):
    """``fp32`` | ``bf16`` | ``fp16``, optionally ``+cl`` (channels-last) and/or ``+compile``."""
    parts = text.split('+')
    if parts[0] not in ('fp32', 'bf16', 'fp16') or any(p not in ('cl', 'compile') for p in parts[1:]):
        raise UsageError(f'--variants: {text!r} is not fp32 | bf16 | fp16 with optional +cl and +compile')
    return Variant(text, None if parts[0] == 'fp32' else parts[0], 'cl' in parts[1:], 'compile' in parts[1:])


# ------------------------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    device: torch.device
    tiny: bool
    batch: int
    size: int
    steps: int
    work: str
    compile_backend: str = 'inductor'
    sized: bool = False  # --batch or --size given: every method trains at that size

    @property
    def cuda(self):
        return self.device.type == 'cuda'

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


def load_recipe(method):
    path = osp.join(REPO, 'options', RECIPES[method])
    if not osp.isfile(path):
        raise UsageError(f'the GPU check reads the recipes of a source checkout: {path} does not exist')
    return plain(read_yaml(path))


def network_of(recipe, tiny):
    """The recipe's ``network_g`` (smoke size with ``tiny``), external weight files replaced by random init."""
    return without_pretrained(smoke_network(recipe['network_g']) if tiny else dict(recipe['network_g']))


def batch_shape(method, recipe, settings):
    """(batch, patch) a method trains at: ``--batch`` × ``--size``, or its recipe's (``OWN_SIZE``) at full size
    when neither was given."""
    if method in OWN_SIZE and not settings.tiny and not settings.sized:
        train = recipe['datasets']['train']
        return int(train['batch_size_per_gpu']), int(train['gt_size'])
    return settings.batch, settings.size


_IMAGES = {}


def fixed_batch(batch, size):
    """``batch`` demo crops (centre ``size``²) with noise σ25, rain and haze in turn: (lq, gt, labels), CPU float32
    RGB in [0, 1], labels 0 / 1 / 2 (noise, rain, haze) as a CPU tensor, as the loader gives them."""
    if 'train' not in _IMAGES:
        _IMAGES['train'] = make_images(seed=0, splits=('train', ))['train']
    images = _IMAGES['train']
    keys = sorted(images['clean'])
    keys = [keys[i * len(keys) // batch] for i in range(batch)] if batch <= len(keys) else \
        [keys[i % len(keys)] for i in range(batch)]
    lqs, gts, labels = [], [], []
    for i, key in enumerate(keys):
        task = i % 3
        gt = images['clean'][key]
        lq = add_gaussian_noise(gt, 25, noise_rng(key, 25)) if task == 0 else \
            images['rain_lq' if task == 1 else 'haze_lq'][key]
        h, w = gt.shape[:2]
        if size > min(h, w):
            raise UsageError(f'--size {size}: the demo crops are {h}×{w}')
        top, left = (h - size) // 2, (w - size) // 2
        for img, out in ((lq, lqs), (gt, gts)):
            crop = np.ascontiguousarray(img[top:top + size, left:left + size])
            out.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0)
        labels.append(task)
    return torch.stack(lqs), torch.stack(gts), torch.tensor(labels)


@contextlib.contextmanager
def logged_warnings():
    """Warnings raised inside go to BasicSR's log (the file), not the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught
    logger = logging.getLogger('basicsr')
    for message in dict.fromkeys(f'{w.category.__name__}: {w.message} ({osp.basename(w.filename)}:{w.lineno})'
                                 for w in caught):
        logger.warning(message)


def model_options(method, recipe, network, variant, settings, steps):
    """Options of an AllInOneModel training the recipe's losses, clipping and optimizer at a constant learning
    rate (a warm-up would keep it near 0 for the few steps here) in ``variant``."""
    train = copy.deepcopy(recipe['train'])
    compile_opt = ({'backend': settings.compile_backend} if settings.compile_backend != 'inductor' else True) \
        if variant.compile else False
    train.update(total_iter=steps, amp=variant.amp, compile=compile_opt, scheduler=dict(CONSTANT_LR))
    for key in ('warmup_iter', 'teacher_forcing_iter'):
        train.pop(key, None)
    folder = osp.join(settings.work, 'models', f'{method}_{variant.name}')
    return {'name': f'gpu_check_{method}', 'model_type': 'AllInOneModel', 'num_gpu': 1 if settings.cuda else 0,
            'manual_seed': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'network_g': network,
            'train': train, 'datasets': {}, 'val': {'pbar': False},
            'path': {'models': folder, 'training_states': folder, 'experiments_root': folder, 'visualization': folder,
                     'results_root': folder, 'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}}


def build(opt):
    torch.manual_seed(0)  # every variant of a method starts from the same weights
    with logged_warnings():
        return build_model(opt)


def release(*objects):
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of a block: CUDA's max allocated (MiB), or on CPU the growth of the peak resident size."""

    def __init__(self, settings):
        self.settings = settings

    def __enter__(self):
        if self.settings.cuda:
            torch.cuda.reset_peak_memory_stats(self.settings.device)
        else:
            import resource
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        if self.settings.cuda:
            self.mib = torch.cuda.max_memory_allocated(self.settings.device) / 2**20
        else:
            import resource
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024
