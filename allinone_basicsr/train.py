"""Train with BasicSR's own pipeline, this plugin registered; outputs go under the working directory.

    python -m allinone_basicsr.train -opt options/train_symunet.yml [--auto_resume] [--launcher pytorch]
    allinone-train -opt ...                     (console script)
    python allinone_basicsr/train.py -opt ...   (as Real-ESRGAN's entry file)
"""
import os

import allinone_basicsr  # noqa: F401  (applies the basicsr fixes and registers archs, data, losses, metrics, models)
from basicsr.train import train_pipeline


def main():
    train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
