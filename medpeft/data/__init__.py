"""Datasets (MedFMC, ISIC 2018, MedMNIST, CSV/folder), few-shot splits, transforms and the eval image cache."""

from .annotations import read_annotations, read_list, read_names, write_annotations
from .cache import ResizedImageCache
from .dataset import ImageDataset, eval_dataset, train_dataset
from .demo import make_demo_data
from .generic import load_csv, load_folder
from .images import check_image, is_image_file, read_image
from .isic import load_isic, read_isic_csv
from .medfmc import available_splits, load_medfmc, split_path, write_medfmc_splits
from .medmnist import load_medmnist
from .registry import DATASETS, Dataset, get_dataset, load_dataset
from .samples import DatasetSplits, Samples, check_files, check_images
from .splits import few_shot_split, fraction_split, medfmc_few_shot, parse_shots, per_class_few_shot
from .tasks import MEDFMC_TASKS, TASKS, TaskSpec, get_task
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEDFMC_TASKS",
    "TASKS",
    "Dataset",
    "DatasetSplits",
    "ImageDataset",
    "ResizedImageCache",
    "Samples",
    "TaskSpec",
    "available_splits",
    "check_files",
    "check_image",
    "check_images",
    "eval_dataset",
    "eval_transform",
    "few_shot_split",
    "fraction_split",
    "get_dataset",
    "get_task",
    "load_csv",
    "load_folder",
    "is_image_file",
    "load_dataset",
    "load_isic",
    "load_medfmc",
    "load_medmnist",
    "make_demo_data",
    "medfmc_few_shot",
    "parse_shots",
    "per_class_few_shot",
    "read_annotations",
    "read_image",
    "read_isic_csv",
    "read_list",
    "read_names",
    "split_path",
    "train_dataset",
    "train_transform",
    "write_annotations",
    "write_medfmc_splits",
]
