from .demo_shapes import (
                          DemoShapesDataset,
                          make_demo_segmentation,
                          render_scene,
)

__all__ = ['DemoShapesDataset', 'make_demo_segmentation', 'render_scene']
