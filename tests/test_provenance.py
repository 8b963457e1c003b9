"""Where every number comes from: each number of the protocol table (allinone_basicsr/tools/protocols.yml) and each
number the table specs (tables/*.yml) print as the paper's has one of four sources, `paper`, `official code`,
`derived` or `assumption`, with evidence a test can check. A `paper` label carries a short quote of the paper's text
that holds the value (protocol rows), or names the paper and the table whose printed row holds the numbers (table
specs); an `assumption` names the section of docs/ that argues it (``methods.md §daair-sources``: a page and a
heading's anchor, which must exist); with the papers' text, which is not part of the repository, beside the
clone (``../shared/papers``, or ``$ALLINONE_SHARED/papers``) every quote must be in the paper's text and every
printed number in its row of the paper's table. Departures from a paper's stated protocol (the augmentation) are
assumptions, flagged in the option file's header too."""
import functools
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from test_docs import SECTION_REF, section_exists

from allinone_basicsr.tools import protocols as pt
from allinone_basicsr.tools import recipe as rc

REPO = Path(__file__).resolve().parents[1]
PAPERS = Path(os.environ.get('ALLINONE_SHARED', REPO.parent / 'shared')) / 'papers'
SPECS = sorted((REPO / 'tables').glob('*.yml'))
SOURCES = ('paper', 'official code', 'derived', 'assumption')
# each method's paper, by the title its text opens with; PromptIR's paper is not among the papers' texts, so no
# PromptIR number can be labelled `paper`
METHOD_PAPERS = {
    'DaAIR': 'Efficient Degradation-aware Any Image Restoration',
    'PromptDSANet': 'All-In-One Image Restoration',
    'SymUNet': 'Unleashing Degradation-Carrying Features in Symmetric U-Net',
    'SE-SymUNet': 'Unleashing Degradation-Carrying Features in Symmetric U-Net',
}
NUMBER = re.compile(r'(?<![\d.])(?:\d+(?:\.\d+)?|\.\d+)(?:[eE]-?\d+)?')
CODE_FILE = re.compile(r'[\w./-]+\.(?:py|yml)\b')  # a file of the official code (not a spec's .md)
TICKS = ('✓', '-')
MAX_QUOTE = 80  # characters: evidence, not a copy of the paper


# --------------------------------------------------------------------------------------------------------- helpers
def numbers(text):
    """Every number written in ``text`` ('.974', 'PSNR34.23', '2e-4', '36M', '30.9/0.904' give 0.974, 34.23, ...)."""
    return [float(m) for m in NUMBER.findall(text)]


def same_number(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def value_in(value, text):
    """Whether a protocol value is written in ``text``: a number among its numbers, a name as a substring."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return any(same_number(value, n) for n in numbers(text))
    if isinstance(value, list):
        return bool(value) and all(value_in(v, text) for v in value)
    return str(value) in text


def normalised(text):
    return ' '.join(text.split())


def title_of(text):
    """A paper text's first line without markdown marks."""
    first = next(line for line in text.splitlines() if line.strip())
    return first.strip().strip('#* ').strip()


@functools.lru_cache(maxsize=None)
def paper_texts():
    texts = [p.read_text(encoding='utf-8') for p in sorted(PAPERS.glob('*.txt'))]
    return {title_of(text): text for text in texts}


def paper_text(title):
    """The text of the paper whose title starts with ``title`` (None when no paper's does)."""
    found = [text for full, text in paper_texts().items() if full.startswith(title)]
    return found[0] if len(found) == 1 else None


@pytest.fixture(scope='module')
def papers():
    if not PAPERS.is_dir() or not list(PAPERS.glob('*.txt')):
        pytest.skip(f"the papers' text is not at {PAPERS} (set ALLINONE_SHARED to the shared folder): the quotes and "
                    'printed numbers cannot be checked against it')
    return paper_texts()


def protocol_leaves():
    """(option file, field, leaf, method) for every number of the protocol table."""
    for name, row in pt.load_protocols().items():
        for key, entry in row.items():
            if key in pt.PROTOCOL_GROUPS:
                for sub, leaf in entry.items():
                    yield name, f'{key}.{sub}', leaf, row['method']
            elif isinstance(entry, dict):
                yield name, key, entry, row['method']


def load_yaml(path):
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def printed_numbers(cells):
    """The numbers of a table row's ``paper:`` cells (a number, or one per metric; nulls left out)."""
    out = []
    for value in (cells or {}).values():
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                out.append(float(v))
    return out


def contains_all(found, wanted):
    """Whether the numbers ``found`` on a line include every number of ``wanted``, each occurrence once."""
    left = list(found)
    for w in wanted:
        hit = next((i for i, f in enumerate(left) if same_number(f, w)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def line_ticks(line):
    return [cell.strip() for cell in line.split('|') if cell.strip() in TICKS]


def row_ticks(spec, row):
    """The printed ticks of a row's text cells in the spec's column order ('✓ (no router to train)' is a tick)."""
    keys = [c['key'] for c in spec['columns'] if c.get('kind') == 'text']
    return [str((row.get('text') or {}).get(k, '')).strip()[:1] for k in keys]


# ----------------------------------------------------------------------------------------------- the checker itself
def test_the_number_matching_reads_the_papers_notations():
    assert numbers('PromptIR [31] | 36M | 30.58 | .974 |') == [31, 36, 30.58, 0.974]
    assert numbers('PSNR34.23') == [34.23] and numbers('30.9/0.904') == [30.9, 0.904]
    assert value_in(2.0e-4, 'an initial learning rate of 2e-4') and not value_in(1.0e-4, 'a learning rate of 2e-4')
    assert value_in(120, 'train for 120 epochs') and not value_in(12, 'train for 120 epochs')
    assert value_in('Adam', 'using the Adam [19] optimizer') and not value_in('AdamW', 'using the Adam optimizer')
    assert contains_all([33.98, 0.933, 31.31, 0.888], [0.933, 33.98]) and not contains_all([0.913], [0.913, 0.913])
    assert line_ticks('(a) | - | ✓ | ✓ | - | 32.12 | .911 |') == ['-', '✓', '✓', '-']


# ------------------------------------------------------------------------------------------------- protocol table
def test_every_protocol_number_has_one_of_four_sources_and_its_evidence():
    """paper: the method's paper (one we have the text of), its section, a short quote holding the value; official
    code: the file; derived: the arithmetic; assumption: the section of docs/ that argues it (it must exist)."""
    assert pt.PROTOCOL_SOURCES == SOURCES
    wrong = []
    for name, key, leaf, method in protocol_leaves():
        source, ref, where = leaf.get('source'), str(leaf.get('ref', '')), f'{name} {key}'
        if source not in SOURCES:
            wrong.append(f'{where}: source {source!r} is not one of {SOURCES}')
        elif source == 'paper':
            quote = leaf.get('quote')
            if method not in METHOD_PAPERS:
                wrong.append(f"{where}: source paper, but the papers' texts hold no {method} paper to state it")
            elif not re.search(r'\bpaper §', ref):
                wrong.append(f"{where}: source paper, but ref {ref!r} names no section of the paper ('... paper §')")
            if not isinstance(quote, str) or not quote.strip():
                wrong.append(f"{where}: source paper without a quote of the paper's text")
            elif len(quote) > MAX_QUOTE:
                wrong.append(f'{where}: quote longer than {MAX_QUOTE} characters: {quote!r}')
            elif not value_in(leaf['value'], quote):
                wrong.append(f"{where}: the value {leaf['value']!r} is not in its quote {quote!r}")
        elif 'quote' in leaf:
            wrong.append(f'{where}: a quote on a {source} number (quotes are the evidence of paper labels)')
        elif source == 'official code' and not CODE_FILE.search(ref):
            wrong.append(f'{where}: source official code, but ref {ref!r} names no file of the code')
        elif source == 'derived' and '=' not in ref:
            wrong.append(f'{where}: source derived, but ref {ref!r} shows no arithmetic')
        elif source == 'assumption' and not SECTION_REF.search(ref):
            wrong.append(f"{where}: source assumption, but ref {ref!r} names no section of docs/ that argues it "
                         "('methods.md §<heading anchor>')")
        for page, anchor in SECTION_REF.findall(ref):
            if not section_exists(page, anchor):
                wrong.append(f'{where}: ref {ref!r} names {page} §{anchor}, which docs/ does not have')
    assert not wrong, f'{len(wrong)} protocol numbers without their provenance:\n' + '\n'.join(wrong)


def test_every_paper_quote_of_the_protocol_table_is_in_the_paper(papers):
    missing, checked = [], 0
    for name, key, leaf, method in protocol_leaves():
        if leaf.get('source') != 'paper' or not isinstance(leaf.get('quote'), str):
            continue
        text = paper_text(METHOD_PAPERS.get(method, f'no {method} paper'))
        if text is None:
            missing.append(f"{name} {key}: no {method} paper among the papers' texts")
        elif normalised(leaf['quote']) not in normalised(text):
            missing.append(f"{name} {key}: {leaf['quote']!r} is not in the {method} paper's text")
        checked += 1
    assert not missing, f'{len(missing)} paper labels the papers do not bear out:\n' + '\n'.join(missing)
    assert checked >= 30  # DaAIR's epochs and optimizer in its 12 rows, PromptDSANet's protocol


def test_every_train_file_states_its_augmentation_and_flags_an_assumed_one():
    """Each protocol row pins the crops' augmentation; where it departs from (or is not in) what the paper states,
    the row says assumption and the option file's header flags it with a line '# Augmentation: ... assumption'."""
    unflagged = []
    for name, row in pt.load_protocols().items():
        leaf = row.get('augment')
        if not isinstance(leaf, dict):
            unflagged.append(f'{name}: no augment in its protocol row')
            continue
        if leaf['source'] != 'assumption':
            continue
        header = []
        for line in (REPO / 'options' / name).read_text(encoding='utf-8').splitlines():
            if not line.startswith('#'):
                break
            header.append(line)
        flagged = [i for i, line in enumerate(header) if line.startswith('# Augmentation:')]
        if not flagged or 'assumption' not in ' '.join(header[flagged[0]:flagged[0] + 3]):
            unflagged.append(f"{name}: augmentation is an assumption, but its header has no '# Augmentation: ... "
                             "(assumption: ...)' line")
    assert not unflagged, '\n'.join(unflagged)


def test_a_changed_augmentation_fails_the_protocol_table(tmp_path):
    """The row's augment is compared with what the file's dataset does (use_hflip; use_rot = vflip + rot90)."""
    path = str(REPO / 'options' / 'train_promptdsanet.yml')
    opt = rc.load_options(path)
    opt['datasets']['train']['use_rot'] = False  # flips only, as a reader of 'random cropping' might expect
    report = rc.recipe_report(path, root=str(tmp_path), opt=opt)
    text = '\n'.join(pt.protocol_mismatches(report, pt.load_protocols()['train_promptdsanet.yml']))
    assert ("augment: file ['hflip'], protocol ['hflip', 'vflip', 'rot90'] (assumption: "
            'methods.md §promptdsanet-sources: the paper states random cropping only') in text


# ---------------------------------------------------------------------------------------------------- table specs
def test_every_table_spec_names_where_its_printed_numbers_are():
    wrong = []
    for path in SPECS:
        prov = load_yaml(path).get('provenance')
        if not isinstance(prov, dict):
            wrong.append(f'{path.name}: no provenance (source, paper, table, match) for its printed numbers')
            continue
        if prov.get('source') != 'paper':
            wrong.append(f"{path.name}: provenance source {prov.get('source')!r}: the numbers under rows' paper: are "
                         "the paper's only (official code's or derived numbers belong in notes)")
        if not prov.get('paper') or not prov.get('table') or prov.get('match') not in ('row', 'listing'):
            wrong.append(f'{path.name}: provenance needs paper (its title), table and match (row or listing)')
    assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('path', SPECS, ids=lambda p: p.name)
def test_every_printed_number_of_a_table_spec_is_in_the_paper(path, papers):
    """match: row = the numbers of a row's paper: cells (and its ticks, for Table 4) stand together on one line of
    the paper's text, the printed table row; match: listing = each number stands somewhere in the text."""
    spec = load_yaml(path)
    prov = spec.get('provenance')
    assert isinstance(prov, dict), f'{path.name}: no provenance'
    text = paper_text(prov['paper'])
    assert text is not None, f"{path.name}: no paper titled {prov['paper']!r} among the papers' texts"
    lines = [(line, numbers(line)) for line in text.splitlines()]
    everything = numbers(text)
    wrong = []
    for row in spec['rows']:
        wanted = printed_numbers(row.get('paper'))
        if not wanted:
            continue
        if prov['match'] == 'listing':
            absent = [w for w in wanted if not any(same_number(w, n) for n in everything)]
            if absent:
                wrong.append(f"row '{row['label']}': {absent} not in the paper's text")
            continue
        ticks = row_ticks(spec, row)
        hits = [line for line, found in lines if contains_all(found, wanted)]
        if not hits:
            wrong.append(f"row '{row['label']}': no line of {prov['table']} holds all of {wanted}")
        elif ticks and not any(line_ticks(line) == ticks for line in hits):
            wrong.append(f"row '{row['label']}': ticks {ticks} differ from the printed row(s) "
                         f'{[line_ticks(h) for h in hits]}')
    assert not wrong, f"{path.name}: numbers labelled as printed in {prov['table']} that it does not print:\n" + \
        '\n'.join(wrong)
