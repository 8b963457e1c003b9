"""`import allinone_basicsr` alone (fresh interpreter) registers every name and makes basicsr importable."""
from pipeline_util import run_python

EXPECTED = {
    'ARCH_REGISTRY': ['SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet'],
    'DATASET_REGISTRY': ['MixedDegradationDataset', 'AllInOneTestDataset'],
    'LOSS_REGISTRY': ['FFTLoss', 'L1Loss', 'TaskClassificationLoss'],
    'METRIC_REGISTRY': ['calculate_psnr_aio', 'calculate_ssim_aio', 'calculate_routing_accuracy'],
    'MODEL_REGISTRY': ['AllInOneModel'],
}


def test_import_registers_every_name():
    code = ('import allinone_basicsr, basicsr.utils.registry as r\n'
            f'for reg, names in {EXPECTED!r}.items():\n'
            '    for n in names:\n'
            '        assert n in getattr(r, reg), (reg, n)\n'
            'print("ok")')
    proc = run_python(['-c', code], check=False, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]


def test_compat_is_applied():
    import torchvision.transforms.functional_tensor as ft  # noqa: F401  (removed upstream; the shim provides it)

    from allinone_basicsr import _compat
    from allinone_basicsr.utils.resume import load_resume_state

    import basicsr.train
    import basicsr.utils.dist_util as dist_util
    assert basicsr.train.load_resume_state is load_resume_state
    assert dist_util._init_dist_pytorch is _compat._init_dist_pytorch
    assert dist_util._init_dist_slurm is _compat._init_dist_slurm
