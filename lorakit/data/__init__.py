"""Datasets: kohya folder layout, captions, images, latent cache and seeded epochs."""
from .captions import CaptionOptions, process_caption
from .dataset import Batch, TrainDataset
from .folders import DatasetIndex, FolderSummary, ImageItem, scan_folders
from .images import load_image_rgb, resize_center_crop, to_tensor

__all__ = ["Batch", "CaptionOptions", "DatasetIndex", "FolderSummary", "ImageItem", "TrainDataset",
           "load_image_rgb", "process_caption", "resize_center_crop", "scan_folders", "to_tensor"]
