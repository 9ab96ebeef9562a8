"""Datasets: image folders, the flat ImageNet validation layout, Kinetics-style video, built-in digits, and the
data sets in their distributed formats (:mod:`gradtrust.data.specs`: CIFAR, CIFAR-C, ImageNet-C/A/R/O, SVHN, MNIST,
Textures, OOD folders, Hugging Face ``save_to_disk`` folders, WebDataset shards).

Every dataset yields :class:`Sample` items and never raises for one unreadable file (see
``docs/architecture.md``); :func:`collate_samples` sets the failures aside.
"""

from gradtrust.data.arrays import ArrayImageDataset
from gradtrust.data.arrow import ArrowImageDataset
from gradtrust.data.cifar import (
                                    CIFAR10_CLASSES,
                                    CIFAR100_CLASSES,
                                    COMMON_CORRUPTIONS,
                                    CIFARDataset,
                                    CorruptedCIFARDataset,
)
from gradtrust.data.classes import (
                                    imagenet_wnid_to_index,
                                    is_wnid,
                                    load_imagenet_class_names,
                                    load_imagenet_wnids,
                                    resolve_class_indices,
)
from gradtrust.data.digits import CORRUPTIONS, DIGITS_CLASSES, SEVERITIES, DigitsDataset, digits_image
from gradtrust.data.imagenet import FlatImageDataset, read_devkit_meta
from gradtrust.data.images import IMAGE_EXTENSIONS, ImageFolderDataset, default_image_transform, read_rgb_image, to_rgb
from gradtrust.data.mnist import MNISTDataset
from gradtrust.data.samples import Batch, Sample, collate_samples
from gradtrust.data.specs import DataSpec, available_datasets, data_specs, open_data_spec, register_data_spec
from gradtrust.data.svhn import SVHNDataset
from gradtrust.data.variants import ImageNetVariantDataset, OODFolderDataset
from gradtrust.data.video import (
                                    VIDEO_EXTENSIONS,
                                    VIDEO_MODELS,
                                    VideoClipSettings,
                                    VideoFolderDataset,
                                    clip_frame_indices,
                                    read_video_clip,
                                    video_clip_settings,
)
from gradtrust.data.webdataset import WebDatasetShards, expand_braces

__all__ = [
    "CORRUPTIONS", "DIGITS_CLASSES", "DigitsDataset", "SEVERITIES", "digits_image",
    "Batch", "FlatImageDataset", "IMAGE_EXTENSIONS", "ImageFolderDataset", "Sample", "VIDEO_EXTENSIONS",
    "VIDEO_MODELS", "VideoClipSettings", "VideoFolderDataset", "clip_frame_indices", "collate_samples",
    "default_image_transform", "imagenet_wnid_to_index", "is_wnid", "load_imagenet_class_names",
    "load_imagenet_wnids", "read_devkit_meta", "read_rgb_image", "resolve_class_indices", "to_rgb",
    "read_video_clip", "video_clip_settings",
    "ArrayImageDataset", "ArrowImageDataset", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFARDataset", "COMMON_CORRUPTIONS",
    "CorruptedCIFARDataset", "DataSpec", "ImageNetVariantDataset", "MNISTDataset", "OODFolderDataset", "SVHNDataset",
    "WebDatasetShards", "available_datasets", "data_specs", "expand_braces", "open_data_spec", "register_data_spec",
]
