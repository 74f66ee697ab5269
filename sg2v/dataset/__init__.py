"""Real data for sg2v (torch-free): Visual Genome, COCO-Stuff, Action Genome or your own recordings converted
into one documented on-disk format (docs/ARCHITECTURE.md "Converted data set"), and read back.

  from sg2v.dataset import convert, ConvertedDataset
  convert("vg", "datasets/vg", "data/vg")            # or `sg2v-data convert vg datasets/vg --out data/vg`
  ds = ConvertedDataset("data/vg", "train")           # ds[i]: graph, frames, boxes, visible, source, ...
"""

from sg2v.dataset.convert import FORMATS, convert
from sg2v.dataset.format import SPLITS, ConvertedDataset, read_info
from sg2v.dataset.formats import DATA_FORMATS, DataFormat
from sg2v.dataset.options import AGOptions, CocoOptions, CommonOptions, FolderOptions, VGOptions

__all__ = ["DATA_FORMATS", "FORMATS", "SPLITS", "AGOptions", "CocoOptions", "CommonOptions",
           "ConvertedDataset", "DataFormat", "FolderOptions", "VGOptions", "convert", "read_info"]
