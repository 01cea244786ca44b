"""Generate (or reuse) the embedded demo dataset.

    python tools/make_demo_data.py [--root data/demo_shapes] [--num-train 200]
"""
import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', default='data/demo_shapes')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    from mmvim.datasets import make_demo_segmentation
    start = time.time()
    root = make_demo_segmentation(args.root, args.num_train, args.num_val,
                                  args.size, args.seed)
    print(f'demo segmentation data ready in {root} '
          f'({args.num_train} train / {args.num_val} val images, '
          f'{time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
