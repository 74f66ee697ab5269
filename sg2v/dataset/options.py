"""Conversion options: one dataclass per source format plus the shared ones, each field with its help text.

The CLI (`sg2v-data convert FORMAT --help`) and dataset.json are both generated from these fields, so every
option is documented once, beside its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sg2v.errors import DatasetError
from sg2v.options import option as option


class OptionError(DatasetError):
    """An option value that does not fit (command-line exit status 2, like other invalid input)."""

    exit_code = 2


def _sizes() -> list[str]:
    from sg2v.config import MODEL_SIZES

    return sorted(MODEL_SIZES)


@dataclass
class CommonOptions:
    """Options every format takes."""

    size: str = option("small", "model size whose frames / height / width to convert to", choices=_sizes)
    frames: int = option(0, "frames per clip (0: the size's); images are always one-frame clips")
    height: int = option(0, "frame height in pixels (0: the size's)")
    width: int = option(0, "frame width in pixels (0: the size's)")
    seed: int = option(0, "seed of the seeded splits and of any sampling the format does")
    workers: int = option(1, "processes decoding and resizing frames (1: in this process)")
    skip_unreadable: bool = option(False, "count frame files that cannot be decoded in the drop table and go "
                                          "on (default: stop with an error naming the file)")
    force: bool = option(False, "replace an existing --out folder (only once the new one is complete)")


@dataclass
class VGOptions:
    """Visual Genome 1.4; defaults are sg2im's preprocessing (google/sg2im scripts/preprocess_vg.py)."""

    images_dir: str = option("", "folder holding VG_100K/ and VG_100K_2/ (default: SOURCE/images, then "
                                 "SOURCE)")
    splits_json: str = option("", "sg2im's split file (sg2im/data/vg_splits.json: {\"train\": [image ids], "
                                  "\"val\": [...], \"test\": [...]}); default: a seeded split")
    val_fraction: float = option(0.1, "share of images in val when no --splits-json is given")
    test_fraction: float = option(0.1, "share of images in test when no --splits-json is given")
    aliases: bool = option(True, "merge names with object_alias.txt and relationship_alias.txt (sg2im)",
                           negative="no_aliases",
                           negative_help="keep names as written (no alias files needed)")
    min_image_size: int = option(200, "drop images whose shorter side is below this many pixels")
    min_object_instances: int = option(2000, "object vocabulary: names of at least this many training "
                                             "objects")
    min_object_size: int = option(32, "drop objects narrower or shorter than this many pixels")
    min_objects_per_image: int = option(3, "drop images with fewer objects left")
    max_objects_per_image: int = option(30, "drop images with more objects left")
    min_relationship_instances: int = option(500, "predicate vocabulary: predicates of at least this many "
                                                  "training relationships between kept objects")
    min_relationships_per_image: int = option(1, "drop images with fewer relationships left")
    max_relationships_per_image: int = option(30, "drop images with more relationships left")
    resolve_merged_ids: bool = option(False, "map relationship endpoints that name a merged object id "
                                             "(objects' merged_object_ids) to that object; sg2im drops them")


@dataclass
class CocoOptions:
    """COCO 2017 + COCO-Stuff; defaults are sg2im's (google/sg2im sg2im/data/coco.py, scripts/train.py)."""

    annotations_dir: str = option("", "folder of instances_*2017.json and stuff_*2017.json "
                                      "(default: SOURCE/annotations)")
    images_dir: str = option("", "folder holding train2017/ and val2017/ (default: SOURCE/images, then "
                                 "SOURCE)")
    stuff: bool = option(True, "read stuff_train2017.json / stuff_val2017.json (COCO-Stuff)",
                         negative="no_stuff", negative_help="things only: do not read the stuff annotations")
    stuff_only: bool = option(True, "keep only images that have stuff annotations (sg2im)",
                              negative="all_images",
                              negative_help="also keep images without stuff annotations (sg2im keeps only "
                                            "images with some)")
    min_object_size: float = option(0.02, "keep objects whose box covers more than this fraction of the "
                                          "image")
    min_objects_per_image: int = option(3, "drop images with fewer objects left")
    max_objects_per_image: int = option(8, "drop images with more objects left")
    include_other: bool = option(False, "keep the stuff class 'other' (id 183)")
    instance_whitelist: str = option("", "comma-separated thing names to keep (default: all)")
    stuff_whitelist: str = option("", "comma-separated stuff names to keep (default: all)")
    skip_crowd: bool = option(False, "drop crowd annotations (iscrowd 1); sg2im keeps them")
    centers: str = option("mask", "object centers for the left/right/above/below rule: mask centroid (sg2im) "
                                  "or box center", choices=("mask", "box"))
    val_images: int = option(1024, "first val2017 images (after filtering) that form val; the rest form test")


@dataclass
class AGOptions:
    """Action Genome v1.0; frame filters as STTran's loader (yrcong/STTran dataloader/action_genome.py)."""

    annotations_dir: str = option("", "folder of the pickles and class lists (default: SOURCE/annotations)")
    frames_dir: str = option("", "folder of VIDEO.mp4/FRAME.png frames (default: SOURCE/frames)")
    val_fraction: float = option(0.1, "share of the training videos that form val")
    clip_stride: int = option(0, "annotated frames between clip starts (0: --frames, clips do not overlap)")
    keep_frames_without_person: bool = option(False, "keep frames with no person box (person not visible in "
                                                     "them); STTran drops them")
    keep_frames_without_objects: bool = option(False, "keep frames with no visible object; STTran drops them")
    spatial_direction: str = option("object-to-person", "which way a spatial relationship (above, beneath, "
                                    "in front of, behind, on the side of, in) is written: the data set's "
                                    "definition, where the object is relative to the person ([chair, "
                                    "beneath, person]), or person -> object as STTran forms its triplets",
                                    choices=("object-to-person", "person-to-object"))


@dataclass
class FolderOptions:
    """The user's own recordings: NAME.json beside NAME.mp4, a NAME/ folder of frames, or a NAME image."""

    vocab: str = option("", "vocabulary JSON (sg2im form) the graphs must use (default: built from the "
                            "graphs)")
    val_fraction: float = option(0.1, "share of recordings in val")
    test_fraction: float = option(0.1, "share of recordings in test")
    frame_step: int = option(1, "take every n-th frame of a recording")
    clip_stride: int = option(0, "taken frames between clip starts (0: --frames, clips do not overlap)")
    skip_invalid: bool = option(False, "count recordings whose graph or layout is invalid in the drop table "
                                       "(default: stop with an error naming the file and the fix)")


def to_dict(opts: Any) -> dict[str, Any]:
    return dataclasses.asdict(opts)
