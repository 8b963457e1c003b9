"""Training-loader prefetchers that start at ``reset()``.

BasicSR's ``CPUPrefetcher`` and ``CUDAPrefetcher`` start iterating the loader when they are built: the workers load
(and the CUDA one copies to the GPU) the first batches of an epoch whose sampler has not been told its epoch or its
resume position yet, and the loop's first ``reset()`` throws them away. These start at ``reset()``, which the loop
calls after ``sampler.set_epoch``.
"""
import torch

from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher


class LazyCPUPrefetcher(CPUPrefetcher):
    """``CPUPrefetcher`` that iterates the loader only from ``reset()`` on."""

    def __init__(self, loader):
        self.ori_loader = loader
        self.loader = iter(())


class LazyCUDAPrefetcher(CUDAPrefetcher):
    """``CUDAPrefetcher`` (batches copied to the GPU on a side stream, one batch ahead) that starts at ``reset()``."""

    def __init__(self, loader, opt):
        self.ori_loader = loader
        self.loader = iter(())
        self.opt = opt
        self.stream = torch.cuda.Stream()
        self.device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.batch = None
