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


# ------------------------------------------------------------------------------------- paths the repository lacks
# A repository-relative path written in a doc, an option or table file, or a comment or docstring of the package
# must name something the repository has: a reader of the clone cannot open a file kept elsewhere.
PATH_REF = re.compile(r'(?<![\w./-])((?:\.\./)?(?:specs|shared|docs|options|tables|allinone_basicsr|tests|datasets_prep'
                      r'|benchmarks|scripts)/(?:\{[\w,]*\}|[\w./*<>-])*)')
BARE_MD = re.compile(r'(?<![\w./-])([\w-]+\.md)\b')  # 'design.md', 'SPEC.md': a page of the repository's root or docs/
# what follows "PromptIR's " or "va1shn9v/PromptIR " is a file of that official repository, not of this one
OFFICIAL = re.compile(r"(?:\w's|\b[\w.-]+/[\w.-]+) `?$")
SECTION_REF = re.compile(r'(?<![\w./-])(?:docs/)?([\w-]+\.md) §([a-z0-9][\w-]*)')  # 'methods.md §daair-sources'
# 'spec §3', "DaAIR's spec": a section of a method spec, which the repository does not have (docs/methods.md is home)
SPEC_SECTION = re.compile(r"\b(specs?(?:'s)? §[\d.]+"
                          r"|(?:DaAIR|PromptDSANet|SymUNet|SE-SymUNet|PromptIR)(?:'s)? specs?\b)")
WRITTEN = ('metrics.md', 'compare.md', 'task_summary.md', 'gpu_check.md')  # files the tools write into results/
OUTSIDE = ('specs/', 'shared/', '../')  # never in the repository


def source_texts():
    """(where, text) of every place the check reads: README.md, docs/*.md, options/**/*.yml, tables/*.yml, the
    package's .yml files, and each comment and docstring of the package's modules."""
    import ast
    import io
    import tokenize
    for path in PAGES + sorted((REPO / 'options').rglob('*.yml')) + sorted((REPO / 'tables').glob('*.yml')) \
            + sorted((REPO / 'allinone_basicsr').rglob('*.yml')):
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
            yield f'{path.relative_to(REPO)}:{number}', line
    for path in sorted((REPO / 'allinone_basicsr').rglob('*.py')):
        source = path.read_text(encoding='utf-8')
        where = path.relative_to(REPO)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                yield f'{where}:{tok.start[0]}', tok.string
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    first = node.body[0].lineno
                    for offset, line in enumerate(doc.splitlines()):
                        yield f'{where}:{first + offset}', line


def path_exists(ref):
    """Whether the repository has what ``ref`` names: a file or folder, or a glob's match (``train_*.yml``,
    ``train_<method>_demo.yml`` and ``{a,b}`` read as wildcards)."""
    ref = ref.rstrip('.,;:)')
    if ref.startswith(OUTSIDE):
        return False
    pattern = re.sub(r'<[^>]*>|\{[^}]*\}', '*', ref)
    pattern = re.sub(r'(?<![A-Za-z])[A-Z](?![A-Za-z])', '*', pattern)  # 'train_X.yml': a placeholder
    if '*' in pattern:
        return any(REPO.glob(pattern))
    return (REPO / ref).exists()


def md_exists(name):
    return (REPO / name).exists() or (REPO / 'docs' / name).exists()


def section_exists(page, anchor):
    """Whether ``page`` (a file of the repository's root or docs/) has a heading whose GitHub anchor is ``anchor``."""
    for path in (REPO / page, REPO / 'docs' / page):
        if path.exists():
            return anchor in anchors(path)
    return False


def missing_references(texts):
    """'where: reference' for every path, page or section in ``texts`` the repository lacks."""
    missing = []
    for where, line in texts:
        for m in PATH_REF.finditer(line):
            if not OFFICIAL.search(line[:m.start()]) and not path_exists(m.group(1)):
                missing.append(f'{where}: {m.group(1)}')
        for m in BARE_MD.finditer(line):
            name = m.group(1)
            if not OFFICIAL.search(line[:m.start()]) and not md_exists(name) and name not in WRITTEN:
                missing.append(f'{where}: {name}')
        for m in SPEC_SECTION.finditer(line):
            missing.append(f'{where}: {m.group(1) or m.group(2)} (a spec the repository does not have)')
        for page, anchor in SECTION_REF.findall(line):
            if md_exists(page) and not section_exists(page, anchor):
                missing.append(f'{where}: {page} §{anchor} (no such heading)')
    return missing


def test_the_reference_check_finds_what_the_repository_lacks():
    texts = [('a', 'built from the paper and `specs/daair.md` (see ../shared/SPEC.md, shared/DESIGN.md)'),
             ('b', '# defaults of daair.md §6; layout as in DESIGN.md'),
             ('b2', 'batch 32 (assumption, spec §3, §6 #10); weight 0.01 (DaAIR spec; PromptDSANet 0.1)'),
             ('c', 'see docs/nothing.md, options/train_nothing.yml and methods.md §no-such-section'),
             ('d', 'see docs/methods.md, docs/methods.md §daair-sources, options/train_*.yml, design.md, '
                   'options/demo/train_<method>_demo.yml, options/demo/{train,test}_<method>_demo.yml, '
                   "options/train_X.yml, allinone_basicsr/tools/protocols.yml, README.md, metrics.md, SymUNet's "
                   "options/train/AllInOne/symunet.yml, WenlongJiao/SymUNet options/train/AllInOne/symunet.yml and "
                   "PromptIR's `INSTALL.md`.")]
    assert missing_references(texts) == [
        'a: specs/daair.md', 'a: ../shared/SPEC.md', 'a: shared/DESIGN.md', 'b: daair.md', 'b: DESIGN.md',
        'b2: spec §3 (a spec the repository does not have)', 'b2: DaAIR spec (a spec the repository does not have)',
        'c: docs/nothing.md', 'c: options/train_nothing.yml',
        'c: methods.md §no-such-section (no such heading)']


def test_docs_options_tables_and_package_comments_name_only_what_the_repository_has():
    missing = missing_references(source_texts())
    assert not missing, (f'{len(missing)} references to paths the repository lacks (write what is needed in docs/ '
                         'and point to its section, or name the paper or the official repository):\n'
                         + '\n'.join(missing))


def test_readme_install_steps_are_the_makefiles():
    """The README's manual install runs the pip commands of `make install`, in the same order (a fresh venv's old
    setuptools without wheel fails the editable install: the upgrade comes first)."""
    makefile = (REPO / 'Makefile').read_text(encoding='utf-8')
    torch_pkgs = re.search(r'^TORCH_PKGS\s*\??=\s*(.*)$', makefile, re.M)
    make_steps = [line.strip().replace('$(PY) -m ', '') for line in makefile.splitlines()
                  if line.strip().startswith('$(PY) -m pip install')]
    make_steps = [s.replace('$(TORCH_PKGS)', torch_pkgs.group(1).strip() if torch_pkgs else 'torch torchvision')
                  for s in make_steps]
    text = README.read_text(encoding='utf-8')
    block = text[text.index('make install'):]
    block = block[:block.index('```')]
    readme_steps = [line.split('#')[0].strip() for line in block.splitlines() if line.startswith('pip install')]
    assert readme_steps[0] == 'pip install --upgrade pip setuptools wheel'
    assert readme_steps == make_steps
