"""Rebuild the Fashion-MNIST subset bundled in `bench/assets/` from Debian's `dataset-fashion-mnist`.

    apt-get update && apt-get install dataset-fashion-mnist
    python scripts/make_fashion_mnist_subset.py [--src /usr/share/datasets/fashion-mnist]

The subset is the first N_TRAIN training and first N_TEST test images, in the original idx format,
gzip-compressed with a zero timestamp so that the output is byte-identical on every machine. The
sha256 of each source and output file goes into `bench/assets/fashion_mnist_subset.json`, which
`bench.data` checks on load. Fashion-MNIST is (c) Zalando SE, MIT licence (see the JSON's `licence`).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import struct
from pathlib import Path

N_TRAIN = 10000
N_TEST = 2000
ASSETS = Path(__file__).resolve().parent.parent / 'bench' / 'assets'
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', N_TRAIN),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', N_TEST),
}
LICENCE = ('Fashion-MNIST, Copyright (c) 2017 Zalando SE, MIT licence: '
           'https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE')


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_of_idx(raw: bytes, n: int) -> bytes:
    """The idx header with its first dimension set to `n`, followed by the first `n` records."""
    ndim = raw[3]
    dims = list(struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim]))
    if n > dims[0]:
        raise SystemExit(f'asked for {n} records, the file has {dims[0]}')
    record = 1
    for d in dims[1:]:
        record *= d
    header = raw[:4] + struct.pack(f'>{ndim}I', n, *dims[1:])
    body_start = 4 + 4 * ndim
    return header + raw[body_start:body_start + n * record]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--src', type=Path, default=Path('/usr/share/datasets/fashion-mnist'))
    parser.add_argument('--out', type=Path, default=ASSETS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {'licence': LICENCE, 'source': 'Debian package dataset-fashion-mnist', 'files': {}}
    for split, (images, labels, n) in FILES.items():
        for name in (images, labels):
            src = args.src / name
            if not src.exists():
                raise SystemExit(f'{src} not found: apt-get update && apt-get install dataset-fashion-mnist')
            out = args.out / f'fashion-mnist-subset-{name}'
            # mtime=0 and no file name in the header: the same bytes on every machine
            with open(out, 'wb') as f, gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0, compresslevel=9) as gz:
                gz.write(head_of_idx(gzip.decompress(src.read_bytes()), n))
            manifest['files'][out.name] = {
                'split': split, 'records': n, 'sha256': sha256(out), 'source': name, 'source_sha256': sha256(src)}
    (args.out / 'fashion_mnist_subset.json').write_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    print(f'wrote {len(manifest["files"])} files to {args.out}')


if __name__ == '__main__':
    main()
