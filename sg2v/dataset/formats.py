"""The data formats `sg2v-data convert` reads: one table, `DATA_FORMATS`, read by the CLI (its FORMAT choices,
their help and flags), `sg2v.dataset.convert`, `sg2v-train --data` (the relation-rule family a source
implies), the docs table in docs/ARCHITECTURE.md (tests/test_dataset_formats.py keeps it equal) and the tests.

A format is a module with `plan(source, options, seed, frames) -> sg2v.dataset.common.Plan` (reads and
filters the source, decodes nothing) plus one `DataFormat` row here; docs/EXTENDING.md "A data format" walks
it. `plan` is looked up when its format is converted.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sg2v.dataset.options import AGOptions, CocoOptions, FolderOptions, VGOptions


@dataclass(frozen=True)
class DataFormat:
    """One source data format: its name, what it reads and writes, its converter and its flags."""

    name: str  # `sg2v-data convert NAME`, dataset.json's source_format
    help: str  # one line for --help: what SOURCE holds
    module: str  # the converter: `plan(source, options, seed, frames) -> Plan`
    options: type  # dataclass of its flags (fields made with `sg2v.dataset.options.option`)
    samples: str  # what one sample is (docs table)
    splits: str  # how train / val / test are formed (docs table)
    defaults: str  # whose preprocessing the defaults follow (docs table)
    rules: str = "none"  # relation-rule family `sg2v-train --data` implies (sg2v.relations.FAMILIES or none)
    inputs: tuple[tuple[str, bool], ...] = ()  # (option, is a folder) naming what it reads besides SOURCE

    def plan(self, source: Path, options: Any, seed: int, frames: int) -> Any:
        """The source read and filtered (`Plan`): the converter module's `plan`."""
        return importlib.import_module(self.module).plan(source, options, seed, frames)


DATA_FORMATS: dict[str, DataFormat] = {f.name: f for f in (
    DataFormat(
        name="vg",
        help="Visual Genome 1.4: SOURCE holds objects.json, relationships.json, image_data.json, the alias "
             "files and images/VG_100K*/ (sg2im's preprocessing as defaults)",
        module="sg2v.dataset.vg", options=VGOptions, samples="images",
        splits="sg2im's `vg_splits.json` with `--splits-json`, else seeded 80/10/10",
        defaults="sg2im `preprocess_vg.py`: aliases, vocabulary >= 2000 objects / 500 relationships, objects "
                 ">= 32 px, 3..30 objects and 1..30 relationships per image, images >= 200 px",
        inputs=(("images_dir", True), ("splits_json", False))),
    DataFormat(
        name="coco-stuff",
        help="COCO 2017 + COCO-Stuff: SOURCE holds annotations/{instances,stuff}_{train,val}2017.json and "
             "images/{train,val}2017/ (sg2im's scene graphs)",
        module="sg2v.dataset.coco", options=CocoOptions, samples="images",
        splits="train2017; first 1024 val2017 images -> val, the rest -> test",
        defaults="sg2im `coco.py`: category ids as object ids, stuff images only, boxes > 2% of the image, "
                 "3..8 objects, no \"other\"; geometric relationships drawn once per image (seeded)",
        rules="coco", inputs=(("images_dir", True), ("annotations_dir", True))),
    DataFormat(
        name="action-genome",
        help="Action Genome v1.0: SOURCE holds annotations/ (pickles, class lists, frame_list.txt) and "
             "frames/VIDEO.mp4/FRAME.png",
        module="sg2v.dataset.action_genome", options=AGOptions,
        samples="clips of F consecutive usable annotated frames",
        splits="metadata train / test; val carved from train videos (seeded)",
        defaults="STTran's frame filters (no person box / no visible object: dropped); relationships with "
                 "per-frame `rel_frames`: attention and contacting person -> object, spatial object -> "
                 "person (the paper's definition: where the object is relative to the person; "
                 "`--spatial-direction person-to-object` writes them as STTran does)",
        inputs=(("annotations_dir", True), ("frames_dir", True))),
    DataFormat(
        name="folder",
        help="your recordings: NAME.json (scene graph, optional layout) beside NAME.mp4, NAME/ (frames) or "
             "an image",
        module="sg2v.dataset.folder", options=FolderOptions,
        samples="clips of F consecutive frames (every `--frame-step`-th), images",
        splits="seeded by recording",
        defaults="vocabulary from the graphs or `--vocab`", inputs=(("vocab", False),)),
)}


def data_format(name: str) -> DataFormat:
    """The registry row of `name`; DatasetError naming the formats when there is none."""
    from sg2v.errors import DatasetError

    if name not in DATA_FORMATS:
        raise DatasetError(f"unknown format {name!r}; choose one of {', '.join(DATA_FORMATS)}")
    return DATA_FORMATS[name]


def source_rules(source_format: str) -> str:
    """The relation-rule family data converted from `source_format` implies ("none" for an unknown one)."""
    return DATA_FORMATS[source_format].rules if source_format in DATA_FORMATS else "none"


def docs_rows() -> list[str]:
    """The per-source table rows of docs/ARCHITECTURE.md, one per format."""
    return [f"| `{f.name}` | {f.samples} | {f.splits} | {f.defaults} |" for f in DATA_FORMATS.values()]
