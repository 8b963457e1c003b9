#!/usr/bin/env python
"""Public 3-task all-in-one data (noise, rain, haze) -> the LMDBs that options/*.yml read.

Usage:
    python datasets_prep/prepare_3task.py --raw RAW --out datasets [--workers N] [--compress-level 1]
        [--format png|source|raw] [--force]

RAW is the folder of unpacked downloads, laid out as the PromptIR / SymUNet repositories describe:

    RAW/Train/Denoise/                 BSD400 (a<id>.jpg or <id>.jpg) + WED (<id>.bmp), clean images
    RAW/Train/Derain/{rainy,gt}/       Rain100L train: rainy/rain-N.png <-> gt/norain-N.png
    RAW/Train/Dehaze/synthetic/partK/  RESIDE OTS: <id>_<A>_<beta>.jpg <-> RAW/Train/Dehaze/original/<id>.jpg
    RAW/data_dir/noisy/denoise.txt, rainy/rainTrain.txt, hazy/hazy_outside.txt   (optional official lists)
    RAW/test/denoise/bsd68/            BSD68, clean
    RAW/test/derain/Rain100L/{input,target}/   target named like the input or norain-N.png
    RAW/test/dehaze/{input,target}/    SOTS outdoor: input/<id>_<A>_<beta>.jpg <-> target/<id>.png

Output (BasicSR LMDBs with meta_info.txt; LQ and GT LMDBs of a task share keys):
    datasets/train/denoise_gt.lmdb, rain_{lq,gt}.lmdb, haze_{lq,gt}.lmdb (+ haze_lq.lmdb/gt_keys.txt: each hazy
    image's clean key, so the clean photos are stored once), datasets/test/bsd68.lmdb, rain100l_{lq,gt}.lmdb,
    sots_outdoor_{lq,gt}.lmdb; and datasets/prepare_3task_summary.md. Two key lists serve PromptDSANet's smaller
    protocol (``meta_info_file``): denoise_gt.lmdb/bsd400_keys.txt (the BSD400 images) and
    haze_lq.lmdb/ots800_keys.txt (800 evenly spaced OTS pairs).
"""
import argparse
import os
import re
from os import path as osp

from prep_util import (Job, PrepError, Unit, add_arguments, add_pairs, add_singles, fail_unpaired, list_images,
                       main_guard, natural_key, read_list_file, require_dir, run_all, select_listed)

EXPECTED = {'denoise': 5144, 'derain': 200, 'dehaze': 72135, 'bsd68': 68, 'rain100l': 100, 'sots': 500}
BSD_ID = re.compile(r'^a(\d+)$')
OTS_SUBSET = 800


def denoise_key(stem):
    """BSD400 files are ``<id>.jpg`` or, as PromptIR's denoise.txt names them, ``a<id>.jpg``: both give ``<id>``."""
    match = BSD_ID.match(stem)
    return match.group(1) if match else stem


def denoise_job(raw):
    folder = require_dir(raw, 'Train/Denoise', 'BSD400 + WED clean training images')
    files = list_images(folder)
    job = Job('denoise (BSD400 + WED)', ('train/denoise_gt',), [], EXPECTED['denoise'])
    list_path, listed = read_list_file(raw, ('data_dir/noisy/denoise.txt', 'data_dir/noisy/denoise_airnet.txt'))
    if listed is not None:
        by_key = {denoise_key(osp.splitext(f)[0]): f for f in files}
        files = select_listed(job, list_path, [osp.basename(n) for n in listed], files, folder,
                              lambda n: n if n in by_key.values() else by_key.get(denoise_key(osp.splitext(n)[0])))
    # BSD400 (JPEG) vs WED (BMP): PromptDSANet's protocol trains on BSD400 alone (meta_info_file: bsd400_keys.txt)
    bsd400 = sorted((denoise_key(osp.splitext(f)[0]) for f in files if osp.splitext(f)[1].lower() in ('.jpg', '.jpeg')),
                    key=natural_key)
    job.extra = {0: {'bsd400_keys.txt': ''.join(f'{k}\n' for k in bsd400)}}
    return add_singles(job, folder, files, key_of=lambda f: denoise_key(osp.splitext(f)[0]))


def rain_train_job(raw):
    rainy = require_dir(raw, 'Train/Derain/rainy', 'Rain100L training inputs rain-N.png')
    gt_dir = require_dir(raw, 'Train/Derain/gt', 'Rain100L training targets norain-N.png')
    job = Job('derain (Rain100L train)', ('train/rain_lq', 'train/rain_gt'), [], EXPECTED['derain'])
    list_path, listed = read_list_file(raw, ('data_dir/rainy/rainTrain.txt',))
    files = list_images(rainy)
    if listed is not None:
        files = select_listed(job, list_path, [osp.basename(n) for n in listed], files, rainy)
    norain = (lambda f: f.replace('rain-', 'norain-', 1) if f.startswith('rain-') else f)
    return add_pairs(job, rainy, files, lambda f: osp.join(gt_dir, norain(f)), 'rainy/rain-N.png -> gt/norain-N.png')


def haze_train_job(raw):
    synthetic = require_dir(raw, 'Train/Dehaze/synthetic', 'RESIDE OTS hazy images in part1..part4/')
    original = require_dir(raw, 'Train/Dehaze/original', 'RESIDE OTS clean images <id>.jpg')
    job = Job('dehaze (RESIDE OTS)', ('train/haze_lq', 'train/haze_gt'), [], EXPECTED['dehaze'])
    found = []  # (relative path, file)
    for part in sorted(os.listdir(synthetic), key=natural_key):
        if osp.isdir(osp.join(synthetic, part)):
            found += [(f'synthetic/{part}/{f}', osp.join(synthetic, part, f))
                      for f in list_images(osp.join(synthetic, part))]
    found += [(f'synthetic/{f}', osp.join(synthetic, f)) for f in list_images(synthetic)]
    list_path, listed = read_list_file(raw, ('data_dir/hazy/hazy_outside.txt',))
    if listed is not None:
        by_rel = dict(found)
        rels = select_listed(job, list_path, [n.lstrip('./') for n in listed], by_rel, synthetic)
        found = [(r, by_rel[r]) for r in rels]
    originals = {osp.splitext(f)[0]: f for f in list_images(original)}
    unpaired, gt_keys, first_use = [], [], set()
    for rel, path in found:
        stem = osp.splitext(osp.basename(path))[0]
        clean_id = stem.split('_')[0]
        same_ext = f'{clean_id}{osp.splitext(path)[1]}'
        gt_file = same_ext if osp.isfile(osp.join(original, same_ext)) else originals.get(clean_id)
        if gt_file is None:
            unpaired.append(rel)
            continue
        write_gt = clean_id not in first_use  # each clean photo is stored once; later pairs only check its size
        first_use.add(clean_id)
        job.units.append(Unit((path, osp.join(original, gt_file)), (0, 1 if write_gt else None), (stem, clean_id)))
        gt_keys.append(f'{stem} {clean_id}')
    fail_unpaired(unpaired, 'synthetic/partK/<id>_<A>_<beta>.jpg -> original/<id>.jpg', synthetic)
    job.found = len(job.units)
    # PromptDSANet's protocol trains on 800 OTS pairs (which ones is unpublished): every n-th listed pair, fixed
    step = max(1, len(gt_keys) / OTS_SUBSET)
    subset = [gt_keys[int(i * step)].split()[0] for i in range(min(OTS_SUBSET, len(gt_keys)))]
    job.extra = {0: {'gt_keys.txt': '\n'.join(gt_keys) + '\n', 'ots800_keys.txt': ''.join(f'{k}\n' for k in subset)}}
    return job


def bsd68_job(raw):
    folder = require_dir(raw, 'test/denoise/bsd68', 'BSD68 clean test images')
    job = Job('test: BSD68', ('test/bsd68',), [], EXPECTED['bsd68'])
    return add_singles(job, folder, list_images(folder))


def rain100l_test_job(raw):
    inputs = require_dir(raw, 'test/derain/Rain100L/input', 'Rain100L test inputs')
    targets = require_dir(raw, 'test/derain/Rain100L/target', 'Rain100L test targets')
    job = Job('test: Rain100L', ('test/rain100l_lq', 'test/rain100l_gt'), [], EXPECTED['rain100l'])

    def gt_of(file):  # target/<same name>, or target/norain-N.png for rain-N.png
        names = [file, file.replace('rain-', 'norain-', 1)] if file.startswith('rain-') else [file]
        return next((osp.join(targets, n) for n in names if osp.isfile(osp.join(targets, n))), None)
    return add_pairs(job, inputs, list_images(inputs), gt_of, 'input/<name> -> target/<name> or target/norain-N.png')


def sots_job(raw):
    inputs = require_dir(raw, 'test/dehaze/input', 'SOTS outdoor hazy inputs <id>_<A>_<beta>.jpg')
    targets = require_dir(raw, 'test/dehaze/target', 'SOTS outdoor clean targets <id>.png')
    job = Job('test: SOTS outdoor', ('test/sots_outdoor_lq', 'test/sots_outdoor_gt'), [], EXPECTED['sots'])
    by_id = {osp.splitext(f)[0]: f for f in list_images(targets)}
    gt_of = (lambda f: osp.join(targets, by_id[f.split('_')[0]]) if f.split('_')[0] in by_id else None)
    return add_pairs(job, inputs, list_images(inputs), gt_of, 'input/<id>_<A>_<beta>.jpg -> target/<id>.png')


JOBS_3TASK = (denoise_job, rain_train_job, haze_train_job, bsd68_job, rain100l_test_job, sots_job)


def main(argv=None, jobs=JOBS_3TASK, script='prepare_3task', doc=__doc__):
    parser = add_arguments(argparse.ArgumentParser(description=doc.split('\n\n')[0]))
    args = parser.parse_args(argv)
    if not osp.isdir(args.raw):
        raise PrepError(f'--raw: not a folder: {args.raw}')
    built = [make(args.raw) for make in jobs]  # every pairing check runs before anything is written
    return run_all(built, args, script)


if __name__ == '__main__':
    main_guard(main)
