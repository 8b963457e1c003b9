#!/usr/bin/env python
"""Public 5-task all-in-one data (noise, rain, haze, blur, low light) -> the LMDBs that options/*_5task.yml read.

Usage:
    python datasets_prep/prepare_5task.py --raw RAW --out datasets [--workers N] [--compress-level 1] [--force]

Everything prepare_3task.py writes (same RAW layout), plus:

    RAW/GoPro/{train,test}/<SEQUENCE>/{blur,sharp}/<frame>.png     GoPro (blur <-> sharp by file name)
    RAW/LOL/{our485,eval15}/{low,high}/<n>.png                      LOL-v1 (low <-> high by file name)

Output adds datasets/train/gopro_{lq,gt}.lmdb (512×512 sub-crops with step 256, as NAFNet's preparation; keys
``<SEQUENCE>_<frame>_sNNN``; an image smaller than 512 is kept whole), train/lol_{lq,gt}.lmdb,
test/gopro_{lq,gt}.lmdb (full 1280×720 frames, keys ``<SEQUENCE>_<frame>``) and test/lol_{lq,gt}.lmdb.
"""
import os
from os import path as osp

from prep_util import Job, add_pairs, list_images, main_guard, natural_key, require_dir
from prepare_3task import JOBS_3TASK
from prepare_3task import main as main_3task

GOPRO_CROP, GOPRO_STEP = 512, 256
EXPECTED = {'gopro_train': 2103, 'gopro_test': 1111, 'lol_train': 485, 'lol_test': 15}


def _gopro_job(raw, split, crop):
    root = require_dir(raw, f'GoPro/{split}', f'GoPro {split} set: <SEQUENCE>/blur and <SEQUENCE>/sharp')
    title = f'deblur (GoPro train, {GOPRO_CROP} px crops)' if crop else 'test: GoPro'
    job = Job(title, (f'{split}/gopro_lq', f'{split}/gopro_gt'), [], EXPECTED[f'gopro_{split}'])
    for seq in sorted(os.listdir(root), key=natural_key):
        if not osp.isdir(osp.join(root, seq)):
            continue
        blur = require_dir(raw, f'GoPro/{split}/{seq}/blur', 'blurred frames')
        sharp = require_dir(raw, f'GoPro/{split}/{seq}/sharp', 'sharp frames of the same names')
        add_pairs(job, blur, list_images(blur), lambda f: osp.join(sharp, f),
                  '<SEQUENCE>/blur/<frame> -> <SEQUENCE>/sharp/<frame>',
                  key_of=lambda f: f'{seq}_{osp.splitext(f)[0]}', crop=(GOPRO_CROP, GOPRO_STEP) if crop else None)
    return job


def gopro_train_job(raw):
    return _gopro_job(raw, 'train', crop=True)


def gopro_test_job(raw):
    return _gopro_job(raw, 'test', crop=False)


def _lol_job(raw, part, split):
    low = require_dir(raw, f'LOL/{part}/low', f'LOL-v1 {part} low-light images')
    high = require_dir(raw, f'LOL/{part}/high', f'LOL-v1 {part} normal-light images of the same names')
    title = 'low light (LOL-v1 our485)' if split == 'train' else 'test: LOL-v1 eval15'
    job = Job(title, (f'{split}/lol_lq', f'{split}/lol_gt'), [], EXPECTED[f'lol_{split}'])
    return add_pairs(job, low, list_images(low), lambda f: osp.join(high, f), 'low/<name> -> high/<name>')


def lol_train_job(raw):
    return _lol_job(raw, 'our485', 'train')


def lol_test_job(raw):
    return _lol_job(raw, 'eval15', 'test')


JOBS_5TASK = JOBS_3TASK + (gopro_train_job, lol_train_job, gopro_test_job, lol_test_job)


def main(argv=None):
    return main_3task(argv, jobs=JOBS_5TASK, script='prepare_5task', doc=__doc__)


if __name__ == '__main__':
    main_guard(main)
