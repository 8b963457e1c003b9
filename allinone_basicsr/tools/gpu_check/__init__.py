"""The GPU check: every CUDA path of the package on one GPU in minutes, on data it makes itself.

    python -m allinone_basicsr.tools.gpu_check --out gpu_check            # a GPU machine: paper-size networks
    python -m allinone_basicsr.tools.gpu_check --device cpu --tiny --out /tmp/gpu_check   # the same on CPU, tiny
    ... [--official-symunet DIR] [--official-promptir DIR] [--sections S ...] [--methods M ...] [--variants V ...]
    allinone-gpu-check ...                                                 (console script)

Needs a source checkout (it reads the recipes in ``options/``), no datasets, no weight files and no network: the
images are scikit-image's photos with synthetic noise, rain and haze (``data/demo_set.py``), the CLIP and ResNet
towers are randomly initialised. Every section is timed, prints one PASS/FAIL line (and one per row), and adds rows
to ``<out>/gpu_check.md`` and ``gpu_check.json``, which are rewritten after every row: a run stopped at a time limit
keeps what it measured. ``<out>/gpu_check.log`` has BasicSR's log, the warnings and every failure's traceback.

Sections, in the order they run (``--sections`` picks some):

methods   Each method at paper size (``network_g`` of ``options/train_<method>.yml``) trained through
          ``AllInOneModel`` (the recipe's losses, clipping, non-finite guard; a constant learning rate) on one fixed
          batch (``--batch`` × ``--size``², PromptDSANet: its recipe's batch and patch), ``--steps`` steps per variant:
          ``fp32``, ``bf16`` (``train.amp: bf16``), ``fp16`` (``train.amp: fp16``, GradScaler), ``bf16+cl``
          (channels-last input and weights). A row passes when every loss is finite, the loss falls (mean of the
          last three ≤ :data:`LOSS_FALL` × mean of the first three: the gradients are right on this device) and the
          variant's eval output on the initial weights is within :data:`TOLERANCE` of fp32's. Each row gives ms per
          step (after a warm-up), the peak memory (``torch.cuda.max_memory_allocated``) and the attention kernels
          that ``scaled_dot_product_attention`` dispatched to.
syncs     Host syncs of one training step (``AllInOneModel.optimize_parameters``) of SymUNet and DaAIR in fp32,
          bf16 and fp16: on CUDA counted by CUDA's sync debug mode, on CPU the host reads a GPU would wait for
          (``utils/probes.py``). Expected: one, the non-finite guard's (fp16 adds the GradScaler's own); the
          ``feed_data`` of a batch in pageable CPU memory is reported beside it.
resume    Exact resume: ``python -m allinone_basicsr.train`` on a demo LMDB tree for N iterations (a checkpoint and a
          validation at N/2), then the state of N/2 resumed by ``--auto_resume`` in a new process: identical final
          weights (``params`` and ``params_ema``) and validation table, with ``deterministic: true``. SymUNet with
          EMA, launched by ``torchrun --nproc_per_node=1 --launcher pytorch`` (NCCL on CUDA), and DaAIR with its
          router loss, one process. The ``torchrun`` row reads the first run's log: backend, world size,
          distributed validation, checkpoint.
restore   the restore tool on the device, whole images and ``--tile``: the tiled output within :data:`TILE_PSNR`
          dB of the untiled one, and the blend itself exact (a pixel-wise network gives equal
          outputs, tiled or not).
official  With ``--official-symunet`` / ``--official-promptir`` (local checkouts of the official repositories):
          both archs at the paper config, ours loading the official weights (``strict=True``): outputs equal (TF32
          off), then fp32 and bf16 train steps (forward, L1, backward, AdamW) of the two interleaved, with the ratios.
compile   ``bf16+compile`` (``train.compile: true``) for each method, as a methods row: last, since compiling takes
          the longest; the first-step loss is compared with the eager bf16 row's.

``--tiny`` uses each method's smoke-size network (``utils/smoke.py``), ``--batch 4 --size 32``, so the whole check
runs on a CPU in minutes; the test suite runs ``--device cpu --tiny``. On a CPU every timing and memory figure is a
CPU figure (the report says so). Exit status: 0 when nothing failed, 1 otherwise, 2 for a usage error.
"""
from allinone_basicsr.tools.gpu_check.cli import cli, main  # noqa: F401
from allinone_basicsr.tools.gpu_check.common import (DEFAULT_VARIANTS, LOSS_FALL, METHODS, SECTIONS,  # noqa: F401
                                                     TOLERANCE, Variant, parse_variant)
