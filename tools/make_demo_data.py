"""Generate (or reuse) the embedded demo dataset.

    python tools/make_demo_data.py [--task seg|det] [--root DIR] [--num-train 200]

``seg`` writes ADE20K layout to data/demo_shapes, ``det`` COCO instance
layout to data/demo_shapes_coco (the same scenes).
"""
import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', choices=('seg', 'det'), default='seg')
    parser.add_argument('--root', default=None,
                        help='default: data/demo_shapes (seg), '
                        'data/demo_shapes_coco (det)')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    from mmvim.datasets import make_demo_detection, make_demo_segmentation
    start = time.time()
    if args.task == 'seg':
        make, root, kind = (make_demo_segmentation, 'data/demo_shapes',
                            'segmentation')
    else:
        make, root, kind = (make_demo_detection, 'data/demo_shapes_coco',
                            'detection')
    root = make(args.root or root, args.num_train, args.num_val, args.size,
                args.seed)
    print(f'demo {kind} data ready in {root} '
          f'({args.num_train} train / {args.num_val} val images, '
          f'{time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
