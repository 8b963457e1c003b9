"""The checks of ../shared/tools/check_reference.py, run on every reference file of an implemented arch:
outputs of the official code reproduced from its weights (strict load), full-size keys, shapes and param counts."""
import pytest

FILES = {
    'symunet_tiny_reference.pt': None,
    'symunet_full_keys.json': '22,288,827',
    'promptir_tiny_reference.pt': None,
    'promptir_full_keys.json': '35,592,263',
    'se_symunet_full_keys.json': '67,432,643',  # trainable only: CLIP is frozen and outside the state dict
}


@pytest.mark.parametrize('name', sorted(FILES))
def test_matches_official_code(check_reference, reference_dir, name):
    check = check_reference.check_json if name.endswith('.json') else check_reference.check_pt
    ok, msg = check(str(reference_dir / name))
    assert ok, f'{name}: {msg}'
    if FILES[name]:
        assert f'params {FILES[name]} (official {FILES[name]})' in msg
