from .demo_shapes import (
    DET_CLASSES,
    DemoShapesDataset,
    make_demo_detection,
    make_demo_segmentation,
    render_instances,
    render_scene,
)

__all__ = ['DET_CLASSES', 'DemoShapesDataset', 'make_demo_detection',
           'make_demo_segmentation', 'render_instances', 'render_scene']
