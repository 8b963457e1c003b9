"""Optional dependencies (setup.py's extras): lazy imports, and a missing one named with its extra."""
import textwrap

from pipeline_util import run_python

TINY_SYMUNET = "dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1])"
TINY_SE = ("dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1], "
           "cross_attn_inner_dims=[32, 32, 64], cross_attn_heads=[1, 2, 4], middle_cross_attn_inner_dim=64, "
           "middle_cross_attn_heads=4, patch_sizes=[4, 4, 2], middle_patch_size=2, "
           "clip_model_name='openai/clip-vit-large-patch14', "
           "clip_vision_cfg={'image_size': 28, 'patch_size': 7, 'width': 64, 'layers': 1, 'head_width': 32})")


def python_c(code, blocked=()):
    """``python -c code`` in a fresh interpreter, with the ``blocked`` modules made unimportable first."""
    head = 'import sys\n' + ''.join(f'sys.modules[{name!r}] = None\n' for name in blocked)
    return run_python(['-c', head + textwrap.dedent(code)], check=False, timeout=300, threads=1)


def test_package_and_symunet_do_not_import_extras():
    proc = python_c(f"""
        import allinone_basicsr  # noqa
        from basicsr.utils.registry import ARCH_REGISTRY
        ARCH_REGISTRY.get('SymUNet')(**{TINY_SYMUNET})
        print('loaded:', sorted(m for m in ('open_clip', 'mmengine') if m in sys.modules))
        """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'loaded: []' in proc.stdout


def test_se_symunet_without_open_clip_names_the_extra():
    proc = python_c(f"""
        import allinone_basicsr  # noqa
        from allinone_basicsr.utils.extras import MissingExtraError
        from basicsr.utils.registry import ARCH_REGISTRY
        ARCH_REGISTRY.get('SymUNet')(**{TINY_SYMUNET})
        print('SymUNet built')
        try:
            ARCH_REGISTRY.get('SESymUNet')(**{TINY_SE})
        except ImportError as err:
            print('error:', type(err).__name__, isinstance(err, MissingExtraError), err)
        """, blocked=['open_clip'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'SymUNet built' in proc.stdout
    assert "error: MissingExtraError True SESymUNet needs open_clip_torch: pip install 'allinone-basicsr[se]'" \
        in proc.stdout, proc.stdout


def test_se_symunet_builds_with_open_clip():
    proc = python_c(f"""
        import allinone_basicsr  # noqa
        from basicsr.utils.registry import ARCH_REGISTRY
        import torch
        net = ARCH_REGISTRY.get('SESymUNet')(**{TINY_SE})
        print('out', tuple(net(torch.rand(1, 3, 32, 32)).shape))
        """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'out (1, 3, 32, 32)' in proc.stdout


def test_complexity_without_mmengine_names_the_extra():
    proc = python_c(f"""
        import allinone_basicsr  # noqa
        from allinone_basicsr.tools.common import run
        from allinone_basicsr.tools.table import count_macs
        from basicsr.utils.registry import ARCH_REGISTRY
        net = ARCH_REGISTRY.get('SymUNet')(**{TINY_SYMUNET})
        run(lambda argv: count_macs(net, 16), 'allinone-table', [])
        """, blocked=['mmengine'])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "allinone-table: error: counting MACs (utils.complexity) needs mmengine: "
        "pip install 'allinone-basicsr[complexity]'"), proc.stderr
