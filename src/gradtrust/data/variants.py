"""Image-folder releases: ImageNet-C, ImageNet-A/R/O, Textures (DTD) and plain folders of out-of-distribution images.

=================  =====================================================================================
``imagenet-c``     ``DIR/<corruption>/<severity>/<wnid>/<image>.JPEG`` (Hendrycks & Dietterich 2019: 19
                   corruptions × severities 1-5, the 1000 ImageNet classes as WordNet-ID folders)
``imagenet-a``     ``DIR/<wnid>/<image>`` (Hendrycks et al. 2021, "Natural Adversarial Examples"): 200 classes
``imagenet-r``     ``DIR/<wnid>/<image>`` (Hendrycks et al. 2021, "The Many Faces of Robustness"): 200 classes
``imagenet-o``     ``DIR/<wnid>/<image>``: out-of-distribution images (label −1) filed under the 200 ImageNet-A
                   classes a ResNet-50 confused them with
``textures``       DTD (Cimpoi et al. 2014): ``DIR/images/<class>/<image>.jpg``; an out-of-distribution set
``ood``            every image under ``DIR`` (any depth): Places365, LSUN, iSUN, TinyImageNet crops…
=================  =====================================================================================

ImageNet-A/R/O's WordNet-ID folders are matched to a 1000-class model's outputs through the bundled ImageNet
class list (:func:`gradtrust.data.imagenet_wnid_to_index`). Their papers score a 1000-class model on the
200-class subset by keeping only the subset's logits (``logits[:, indices_in_1k]``, Hendrycks et al.'s
``eval`` code): such a dataset carries ``output_subset`` (the 1000-class indices of its classes, in class
order) and :func:`gradtrust.models.restrict_outputs` gives the model whose outputs are those 200 logits, so
that accuracy, predictions and every trust score are over the subset's classes. Out-of-distribution sets have
label −1; opened for a model they take the model's class names (no sample claims one of them).
"""

from __future__ import annotations

import os
from typing import Any

from gradtrust.data.cifar import COMMON_CORRUPTIONS, SEVERITY_LEVELS
from gradtrust.data.classes import imagenet_wnid_to_index
from gradtrust.data.images import IMAGE_EXTENSIONS, ImageFileDataset, check_root, list_examples, scan_class_folders
from gradtrust.errors import DataError

__all__ = ["ImageNetVariantDataset", "OODFolderDataset", "imagenet_subset_indices"]

VARIANTS = ("imagenet-a", "imagenet-r", "imagenet-o")


def imagenet_subset_indices(wnids: list[str]) -> list[int]:
    """The ImageNet-1k output index of each WordNet ID (``n01440764`` → 0); :class:`DataError` for one outside it."""
    index = imagenet_wnid_to_index()
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise DataError(
            f"{len(unknown)} class folders are not ImageNet-1k WordNet IDs: {list_examples(unknown)}; "
            "the ImageNet-A/R/O and ImageNet-C folders are named n01440764 … n15075141"
        )
    return [index[w] for w in wnids]


class ImageNetVariantDataset(ImageFileDataset):
    """ImageNet-A, -R, -O or -C images in WordNet-ID class folders (see the module docstring).

    Args:
        root: the release folder (for ImageNet-C, the folder holding ``<corruption>/``).
        variant: ``"imagenet-a"``, ``"imagenet-r"``, ``"imagenet-o"`` (labels −1) or ``"imagenet-c"``.
        corruption, severity: ImageNet-C only.
        transform: applied to each RGB PIL image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        variant: str,
        transform: Any = None,
        *,
        corruption: str | None = None,
        severity: int | str | None = None,
    ) -> None:
        given = check_root(root)
        self.variant = variant
        if variant == "imagenet-c":
            if corruption not in COMMON_CORRUPTIONS:
                raise DataError(
                    f"imagenet-c: unknown corruption {corruption!r}; one of {', '.join(COMMON_CORRUPTIONS)}"
                )
            if str(severity) not in tuple(map(str, SEVERITY_LEVELS)):
                raise DataError(f"imagenet-c: severity must be 1, 2, 3, 4 or 5, got {severity!r}")
            folder = os.path.join(given, str(corruption), str(severity))
            if not os.path.isdir(folder):
                raise DataError(
                    f"imagenet-c: {folder} does not exist. Expected layout: "
                    f"{given}/<corruption>/<severity 1-5>/<wnid>/<image>.JPEG"
                )
            self.corruption, self.severity = corruption, int(str(severity))
        elif variant in VARIANTS:
            folder = given
        else:
            raise DataError(f"variant must be imagenet-c or one of {', '.join(VARIANTS)}, got {variant!r}")
        classes, paths, labels = scan_class_folders(folder, IMAGE_EXTENSIONS, example="n01440764/image.jpg")
        indices = imagenet_subset_indices(classes)
        #: the 1000-class outputs of the subset's classes (ImageNet-A/R/O; ImageNet-C has the 1000 classes)
        self.output_subset = indices if variant in VARIANTS else None
        if variant == "imagenet-o":
            labels = [-1] * len(labels)
        super().__init__(folder, paths, labels, classes, transform=transform)
        self.extensions = IMAGE_EXTENSIONS


class OODFolderDataset(ImageFileDataset):
    """Every image under ``root`` (any depth, sorted by relative path), label −1: an out-of-distribution set.

    ``classes``: the model's class names (label −1 claims none of them); ``name``: the spec it was opened as.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Any = None,
        classes: list[str] | tuple[str, ...] = (),
        name: str = "ood",
    ) -> None:
        folder = check_root(root)
        paths = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            paths += [
                os.path.relpath(os.path.join(dirpath, f), folder)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not paths:
            raise DataError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        paths.sort()
        self.variant = name
        super().__init__(folder, paths, [-1] * len(paths), list(classes), transform=transform)
        self.extensions = IMAGE_EXTENSIONS


# Spec openers: each is a DataSpec.opener (gradtrust.data.specs), called as opener(args, options, context) with
# the spec's positional fields (their count checked by DataSpec.open), its key=value options and the
# OpenContext (transform, model); it returns the dataset.


def open_imagenet_c(args: list[str], options: dict[str, str], context: Any) -> ImageNetVariantDataset:
    return ImageNetVariantDataset(args[0], "imagenet-c", context.transform, corruption=args[1], severity=args[2])


def open_imagenet_a(args: list[str], options: dict[str, str], context: Any) -> ImageNetVariantDataset:
    return ImageNetVariantDataset(args[0], "imagenet-a", context.transform)


def open_imagenet_r(args: list[str], options: dict[str, str], context: Any) -> ImageNetVariantDataset:
    return ImageNetVariantDataset(args[0], "imagenet-r", context.transform)


def open_imagenet_o(args: list[str], options: dict[str, str], context: Any) -> ImageNetVariantDataset:
    return ImageNetVariantDataset(args[0], "imagenet-o", context.transform)


def open_textures(args: list[str], options: dict[str, str], context: Any) -> OODFolderDataset:
    given = check_root(args[0])
    for folder in (os.path.join(given, "images"), os.path.join(given, "dtd", "images")):
        if os.path.isdir(folder):
            return OODFolderDataset(folder, context.transform, context.class_names, name="textures")
    raise DataError(
        f"textures: no images/ folder in {given} (nor dtd/images/). Expected layout: "
        f"{given}/images/<class>/<image>.jpg (the DTD release dtd-r1.0.1)"
    )


def open_ood(args: list[str], options: dict[str, str], context: Any) -> OODFolderDataset:
    return OODFolderDataset(args[0], context.transform, context.class_names, name="ood")
