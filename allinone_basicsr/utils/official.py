"""The official SymUNet / PromptIR architecture code, imported from a local checkout, for comparisons only (the
GPU check, ``benchmarks/speed.py --compare-official``). Nothing of it is shipped or needed otherwise."""
import importlib.util
import sys
import types
from os import path as osp

# the file holding the arch inside a checkout, its class, and the paper config (the official option files' keywords)
OFFICIAL = {
    'SymUNet': dict(file='basicsr/models/archs/SymUNet_arch.py', cls='SymUNet',
                    config=dict(img_channel=3, width=48, middle_blk_num=8, enc_blk_nums=[4, 6, 6],
                                dec_blk_nums=[6, 6, 4], restormer_heads=[1, 2, 4], restormer_middle_heads=8,
                                ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias')),
    'PromptIR': dict(file='net/model.py', cls='PromptIR', config=dict(decoder=True)),
}


class OfficialCodeError(ValueError):
    """A folder that is not an official checkout, or official code that cannot be imported here."""


def official_method(checkout):
    """Which official repository ``checkout`` is (its method name), or an OfficialCodeError."""
    for method, spec in OFFICIAL.items():
        if osp.isfile(osp.join(checkout, spec['file'])):
            return method
    wanted = ', '.join(f'{spec["file"]} ({m})' for m, spec in OFFICIAL.items())
    raise OfficialCodeError(f'{checkout}: not an official checkout; expected one of: {wanted}')


def load_official(checkout):
    """Import the official arch class from a checkout; returns (method, class, paper config).

    The official file is imported by its path alone (it needs ``einops``). SymUNet's file also imports
    ``transformers`` at the top, for SE-SymUNet's CLIP; when it is not installed an empty stand-in takes its place,
    since plain SymUNet never uses it."""
    method = official_method(checkout)
    spec = OFFICIAL[method]
    # sys.modules first: find_spec raises on a module there without a __spec__ (the stand-in of an earlier call)
    if 'transformers' not in sys.modules and importlib.util.find_spec('transformers') is None:
        stand_in = types.ModuleType('transformers')
        stand_in.CLIPModel = stand_in.CLIPImageProcessor = None
        sys.modules['transformers'] = stand_in
    module_spec = importlib.util.spec_from_file_location(f'official_{method.lower()}_arch',
                                                         osp.join(checkout, spec['file']))
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        raise OfficialCodeError(f'the official {method} code imports {err.name}: pip install {err.name} '
                                '(needed for the comparison only)') from err
    return method, getattr(module, spec['cls']), dict(spec['config'])
