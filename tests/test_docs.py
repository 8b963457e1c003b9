"""The documentation as a path: README.md stays short, and every relative link of README.md and docs/*.md leads
somewhere (an existing file and, for ``#anchor`` links, an existing heading with GitHub's slug)."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
PAGES = [README] + sorted((REPO / 'docs').glob('*.md'))
MAX_README_LINES = 200

FENCE = re.compile(r'^\s*(```|~~~)')
HEADING = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
LINK = re.compile(r'!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')


def prose_lines(text):
    """The lines outside fenced code blocks."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def slug(heading):
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces -> hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # a link keeps its text
    text = re.sub(r'<[^>]+>', '', text)  # inline HTML
    text = text.replace('*', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    """Every anchor of a page, duplicates numbered as GitHub does (``name``, ``name-1``, ...)."""
    seen, result = {}, set()
    for line in prose_lines(path.read_text(encoding='utf-8')):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f'{base}-{n}')
    return result


def relative_links(path):
    """(line number, target) of every link outside code that is not a URL."""
    in_code = False
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(CODE_SPAN.sub('', line)):
            if not re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto: ...
                yield number, target


def test_slug_follows_github():
    assert slug('Model options (`model_type: AllInOneModel`)') == 'model-options-model_type-allinonemodel'
    assert slug('basicsr 1.4.2 on current torch') == 'basicsr-142-on-current-torch'
    assert slug('Evaluation: test, metric tables, compare, restore') == 'evaluation-test-metric-tables-compare-restore'
    assert slug('The demo') == 'the-demo'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition('#')
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f'{page.name}:{number}: {target}: no file {dest}')
        elif anchor and dest.suffix == '.md' and anchor.lower() not in anchors(dest):
            broken.append(f'{page.name}:{number}: {target}: no heading #{anchor} in {dest.name}')
    assert not broken, '\n'.join(broken)


def test_readme_links_every_docs_page_it_replaces():
    linked = {(README.parent / t.partition('#')[0]).resolve() for _, t in relative_links(README)}
    for name in ('data.md', 'methods.md', 'training.md', 'evaluation.md', 'benchmarks.md', 'design.md', 'gpu.md',
                 'precision.md', 'model_zoo.md'):
        assert (REPO / 'docs' / name).resolve() in linked, f'README does not link docs/{name}'


def test_readme_is_short():
    lines = README.read_text(encoding='utf-8').splitlines()
    assert len(lines) <= MAX_README_LINES, f'README.md has {len(lines)} lines (at most {MAX_README_LINES}): ' \
        'move details to docs/'


def test_readme_has_no_issue_numbers_or_commit_hashes():
    text = README.read_text(encoding='utf-8')
    found = re.findall(r'\bissues?\s+#?\d+', text, re.I)
    found += re.findall(r'(?:^|[\s(])#\d+\b', text, re.M)
    found += re.findall(r'`[0-9a-f]{7,40}`', text)
    found += re.findall(r'\bcommit\s+[0-9a-f]{7,40}\b', text, re.I)
    assert not found, f'README.md refers to project history: {found}'


def test_readme_keeps_the_commands_ci_and_newcomers_use():
    text = README.read_text(encoding='utf-8')
    assert 'make test' in text  # .ci/run runs the README's test command
    assert 'make test' in (REPO / '.ci' / 'run').read_text(encoding='utf-8')
    for command in ('make demo', 'python datasets_prep/prepare_3task.py --raw ~/raw --out datasets',
                    'python -m allinone_basicsr.train -opt options/train_symunet.yml',
                    'torchrun --nproc_per_node=4 -m allinone_basicsr.train',
                    'python -m allinone_basicsr.test -opt options/test_symunet.yml'):
        assert command in text, command
