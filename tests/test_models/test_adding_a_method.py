"""docs/design.md "Adding a method", followed step by step: a toy arch registered and option-checked, with the
contracts TaskLogitsArch / AfterStepArch, gets the classification loss and the after-step hook; one that only sets
the attributes the contracts name gets neither (the model recognises the contracts by class)."""
import torch
from torch import nn

from allinone_basicsr.archs.arch_util import AfterStepArch, TaskLogitsArch
from allinone_basicsr.archs.restormer_blocks import OverlapPatchEmbed, crop_output, pad_to_multiple
from allinone_basicsr.utils.arch_options import check_arch_options

from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
@check_arch_options
class ToyContractArch(TaskLogitsArch, AfterStepArch, nn.Module):
    """A tiny net with task logits and a step hook, written from the doc's steps."""

    def __init__(self, dim=8, num_classes=3):
        super().__init__()
        self.embed = OverlapPatchEmbed(3, dim)
        self.out = nn.Conv2d(dim, 3, 3, padding=1)
        self.classifier = nn.Linear(dim, num_classes)
        self.steps = 0

    def forward(self, x, return_task_logits=False, task_labels=None):
        h, w = x.shape[-2:]
        f = self.embed(pad_to_multiple(x, 4))
        y = crop_output(self.out(f) + pad_to_multiple(x, 4), h, w)
        return (y, [self.classifier(f.mean((2, 3)))]) if return_task_logits else y

    def after_optimizer_step(self):
        self.steps += 1


@ARCH_REGISTRY.register()
@check_arch_options
class ToyAttributesArch(nn.Module):
    """The same net with the attributes only (``has_task_logits``, ``after_optimizer_step``), not the contracts."""
    has_task_logits = True

    def __init__(self, dim=8, num_classes=3):
        super().__init__()
        self.inner = ToyContractArch(dim, num_classes)
        self.steps = 0

    def forward(self, x, return_task_logits=False, task_labels=None):
        return self.inner(x, return_task_logits, task_labels)

    def after_optimizer_step(self):
        self.steps += 1


def _model(tmp_path, arch):
    train = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 4,
             'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
             'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
             'cls_opt': {'type': 'TaskClassificationLoss', 'loss_weight': 0.1}}
    opt = {'name': 'toy', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
           'world_size': 1, 'network_g': {'type': arch}, 'train': train, 'datasets': {},
           'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'experiments_root': str(tmp_path)}}
    torch.manual_seed(0)
    model = build_model(opt)
    model.feed_data({'lq': torch.rand(2, 3, 10, 14), 'gt': torch.rand(2, 3, 10, 14),
                     'degradation': torch.tensor([0, 2])})
    model.optimize_parameters(1)
    return model


def test_a_method_written_from_the_doc_gets_the_classification_loss_and_the_hook(tmp_path):
    model = _model(tmp_path, 'ToyContractArch')
    assert set(model.get_current_log()) >= {'l_pix', 'l_cls', 'route_acc'}
    assert model.net_g.steps == 1


def test_attributes_without_the_contracts_get_neither(tmp_path):
    model = _model(tmp_path, 'ToyAttributesArch')
    assert 'l_cls' not in model.get_current_log() and model.cri_cls is None
    assert model.net_g.steps == 0
