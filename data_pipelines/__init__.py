"""Data: CoinRun recording, video-folder import, on-disk storage, clip datasets and the DataModule.

Imports no model package (architecture §3). The DataModule lives in `data_pipelines.datamodule` (imports Lightning).
"""

from data_pipelines.clips import ClipDataset, StreamingClipDataset, VideoFolderClipDataset
from data_pipelines.storage import DatasetWriter, Episode, info, load_split, read_card
from genie.core.errors import GenieInputError

__all__ = ["ClipDataset", "StreamingClipDataset", "VideoFolderClipDataset", "GenieInputError", "DatasetWriter", "Episode", "info", "load_split", "read_card"]
