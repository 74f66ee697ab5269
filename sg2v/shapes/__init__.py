"""The shapes world (specs/shapes-world.md): generator, dataset and oracle, numpy only."""

from sg2v.shapes.oracle import BatchReport, OracleReport, score_batch, score_video
from sg2v.shapes.world import (
    COLOR_NAMES,
    COLORS,
    OBJECT_NAMES,
    PREDICATES,
    SHAPES,
    SPLITS,
    Motion,
    ShapesDataset,
    ShapesError,
    ShapesSample,
    ShapesWorld,
    relation_score,
    shape_template,
)

__all__ = [
    "COLORS", "COLOR_NAMES", "OBJECT_NAMES", "PREDICATES", "SHAPES", "SPLITS", "BatchReport", "Motion",
    "OracleReport", "ShapesDataset", "ShapesError", "ShapesSample", "ShapesWorld", "relation_score",
    "score_batch", "score_video", "shape_template",
]
