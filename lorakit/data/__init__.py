"""Datasets: kohya folder layout, captions, buckets, augmentation, images, latent cache and seeded epochs."""
from .augment import AugmentOptions
from .buckets import BucketSet, make_bucket_resolutions
from .captions import CaptionOptions, process_caption
from .dataset import Batch, TrainDataset
from .folders import DatasetIndex, FolderSummary, ImageItem, scan_folders
from .images import load_image_rgb, probe_image, resize_center_crop, to_tensor
from .validate import validate_data_config

__all__ = ["AugmentOptions", "Batch", "BucketSet", "CaptionOptions", "DatasetIndex", "FolderSummary", "ImageItem",
           "TrainDataset", "load_image_rgb", "make_bucket_resolutions", "probe_image", "process_caption",
           "resize_center_crop", "scan_folders", "to_tensor", "validate_data_config"]
