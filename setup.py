#!/usr/bin/env python
"""allinone-basicsr: all-in-one image restoration methods as a BasicSR plugin."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, 'allinone_basicsr', '__init__.py')) as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


setup(
    name='allinone-basicsr',
    version=read_version(),
    description='All-in-one image restoration (SymUNet, SE-SymUNet, DaAIR, PromptDSANet, PromptIR) for BasicSR',
    long_description=open(os.path.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['allinone_basicsr', 'allinone_basicsr.*']),
    package_data={'allinone_basicsr': ['tools/protocols.yml']},  # the protocol table of allinone_basicsr.tools.recipe
    python_requires='>=3.10',
    install_requires=[
        'basicsr>=1.4.2,<1.5',  # _compat.py patches private functions of basicsr 1.4.2 (the tested release)
        'torch>=2.1',
        'torchvision',
        'lmdb',
        'matplotlib>=3.7',  # compare's bar plots
        'numpy',
        'opencv-python',
        'Pillow',  # restore's completeness checks of image files (also a dependency of torchvision)
        'pyyaml',
        # metrics (PSNR/SSIM reference implementation) and the demo photos; pinned to the release the stored metric
        # values were checked with (tests/test_metrics/test_metric_values.py): its PSNR/SSIM move the reported numbers
        'scikit-image>=0.26,<0.27',
        'tqdm',
    ],
    # optional dependencies (utils/extras.py names the extra when one is missing); the test suite needs them all
    extras_require={
        'se': ['open_clip_torch'],  # SE-SymUNet's frozen CLIP (archs/clip_tokens.py)
        'complexity': ['mmengine'],  # MACs: utils/complexity.py (table, compare --macs, benchmarks/complexity.py)
        'test': ['pytest', 'open_clip_torch', 'mmengine'],
        'dev': ['pytest', 'open_clip_torch', 'mmengine', 'flake8', 'isort>=5', 'pre-commit'],
    },
    entry_points={
        'console_scripts': [
            'allinone-train=allinone_basicsr.train:main',
            'allinone-test=allinone_basicsr.test:main',
            'allinone-restore=allinone_basicsr.tools.restore:cli',
            'allinone-compare=allinone_basicsr.tools.compare:cli',
            'allinone-convert=allinone_basicsr.tools.convert:cli',
            'allinone-recipe=allinone_basicsr.tools.recipe:cli',
            'allinone-table=allinone_basicsr.tools.table:cli',
            'allinone-gpu-check=allinone_basicsr.tools.gpu_check:cli',
        ]
    },
    license='Apache-2.0',
    license_files=['LICENSE'],
)
