"""Datasets per format (IDX, image folders) and image loading, all returning uint8 tensors (C, H, W)."""

from foveal.data.classification import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_SAMPLE,
    MNIST_CLASSES,
    ClassificationData,
    open_dataset,
    split_train_val,
    subset,
)
from foveal.data.idx import read_idx, write_idx
from foveal.data.images import IMAGE_EXTENSIONS, expand_inputs, list_images, load_image, peek_channels

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_SAMPLE",
    "IMAGE_EXTENSIONS",
    "MNIST_CLASSES",
    "ClassificationData",
    "expand_inputs",
    "list_images",
    "load_image",
    "open_dataset",
    "peek_channels",
    "read_idx",
    "split_train_val",
    "subset",
    "write_idx",
]
