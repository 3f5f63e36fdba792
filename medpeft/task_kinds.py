"""Task kinds: what differs between classifying images and segmenting them, behind one interface.

Training (:func:`medpeft.train.fit`), the bench, summaries, tracking and export ask a task's kind
(``get_kind(task.kind)``) for its head, loss, training data, metrics, post-hoc calibration and exported output, and
never test a task's name; the task itself (:class:`medpeft.data.TaskSpec`) names the metrics that report, select and
break ties. :class:`Classification` (single- and multi-label) is
medpeft's original behaviour; :class:`Segmentation` predicts a class per pixel with a dense head
(:mod:`medpeft.heads`) on the backbone's patch map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import calibrate_logits
from .errors import ParameterError, UserError
from .types import Calibration

#: Validation pixels a segmentation temperature is fitted on, at most (drawn with a fixed seed beyond that).
MAX_CALIBRATION_PIXELS = 1_000_000


class TaskKind:
    """The interface; see :class:`Classification` and :class:`Segmentation`."""

    name = ""

    def head(self, given: str | None) -> str | None:
        """The dense head a model of this kind gets for ``--head`` ``given`` (None: the method's classifier)."""
        raise NotImplementedError

    def loss(self, task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def train_dataset(self, samples, img_size: int, task, mean, std):
        """The training images (and targets) with their random augmentation."""
        raise NotImplementedError

    def labelled(self, samples) -> bool:
        """Whether ``samples`` carry the truth metrics need."""
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, samples, task) -> dict[str, float]:
        """The metrics of ``logits`` (as :func:`~medpeft.evaluate.predict_logits` gives them) against ``samples``."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray, task) -> np.ndarray | None:
        """What a run writes as its test predictions (a submission's probabilities); None: nothing."""
        raise NotImplementedError

    def calibrate(self, name: str, logits: np.ndarray, samples, task) -> Calibration | None:
        """The post-hoc calibrator ``name`` (:data:`medpeft.calibration.CHOICES`) fitted on validation."""
        raise NotImplementedError

    def changed_by_calibration(self, task) -> tuple[str, ...]:
        """The test metrics temperature scaling changes."""
        raise NotImplementedError

    def exported(self, model, task):
        """``(module, output name, output description)`` of the ONNX graph of a trained model."""
        raise NotImplementedError

    keeps_logits: bool = False  #: whether a run keeps its logits for post-hoc steps (``logits.npz``)
    per_pixel: bool = False  #: whether predictions are label masks (``predict`` writes masks, not a CSV)
    unscaled_metrics: tuple[str, ...] = ()  #: metrics that are not fractions (tables do not multiply them by 100)


class Classification(TaskKind):
    """One label per image (softmax cross-entropy) or several (binary cross-entropy); a classifier on the pooled
    feature; accuracy / mAP / AUC / ECE / Brier (:func:`medpeft.metrics.task_metrics`)."""

    name = "classification"
    keeps_logits = True

    def head(self, given):
        if given is not None:
            raise ParameterError("head", "{head} {value!r} applies to segmentation tasks", value=given)
        return None

    def loss(self, task):
        """Multi-label: BCE summed over classes, averaged over the batch (mmcls); multi-class: softmax CE."""
        if task.multilabel:
            return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]
        return F.cross_entropy

    def train_dataset(self, samples, img_size, task, mean, std):
        from .data import train_dataset

        return train_dataset(samples, img_size, task=task, mean=mean, std=std)

    def labelled(self, samples):
        return samples.labels is not None

    def evaluate(self, logits, samples, task):
        from .evaluate import evaluate, scores_of

        return evaluate(scores_of(logits, task), samples, task)

    def scores(self, logits, task):
        from .evaluate import scores_of

        return scores_of(logits, task)

    def calibrate(self, name, logits, samples, task):
        return calibrate_logits(name, logits, samples.labels, task.multilabel)

    def changed_by_calibration(self, task):
        """ECE and Brier; accuracy and mAP never (argmax and per-class rankings stay), AUC only for single-label
        tasks of more than two classes (softmax re-ranks images per class)."""
        return ("ECE", "Brier") + (("AUC",) if not task.multilabel and task.num_classes > 2 else ())

    def exported(self, model, task):
        """The probabilities of the submission files: sigmoid (multi-label) or softmax."""
        return WithProbabilities(model, task), PROBABILITIES, "sigmoid" if task.multilabel else "softmax"


class Segmentation(TaskKind):
    """A class per pixel. The model's (C, S, S) logits at its input size are resized (bilinear) to each image's mask
    size and scored there, as MMSegmentation scores at the original size: mIoU / mDice / per-class IoU and Dice /
    aAcc / per-image Dice / HD95 / pixel ECE (:func:`medpeft.seg_metrics.segmentation_metrics`). Loss: cross-entropy
    + Dice (MONAI's ``DiceCELoss``, softmax, background included). Selection on validation mIoU. Temperature
    scaling is fitted on validation pixels (at most :data:`MAX_CALIBRATION_PIXELS`, drawn with seed 0 beyond that)
    through the classification calibrators."""

    name = "segmentation"
    per_pixel = True
    unscaled_metrics = ("HD95",)

    def head(self, given):
        from .heads import DEFAULT_HEAD, check_head

        if given is not None:
            check_head(given)
        return given or DEFAULT_HEAD

    def loss(self, task):
        try:
            from monai.losses import DiceCELoss
        except ImportError:
            raise UserError("segmentation needs MONAI: pip install 'medpeft[seg]'") from None
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda logits, masks: dice_ce(logits, masks.unsqueeze(1))

    def train_dataset(self, samples, img_size, task, mean, std):
        from .data.dataset import MaskDataset

        return MaskDataset(samples, img_size, task, mean=mean, std=std)

    def labelled(self, samples):
        return samples.masks is not None

    def _resized(self, logits: np.ndarray, samples, task):
        """Per image: its (C, H, W) logits at its mask's size (float32) and its (H, W) class-index mask."""
        from .data.seg import read_mask

        for logit, mask in zip(logits, samples.masks):
            truth = read_mask(mask, task)
            x = torch.from_numpy(np.asarray(logit, dtype=np.float32))[None]
            if x.shape[-2:] != truth.shape:
                x = F.interpolate(x, size=truth.shape, mode="bilinear", align_corners=False)
            yield x[0], truth

    def evaluate(self, logits, samples, task):
        from .seg_metrics import segmentation_metrics

        preds, probs, truths = [], [], []
        for x, truth in self._resized(logits, samples, task):
            p = x.double().softmax(dim=0)
            preds.append(p.argmax(dim=0).numpy())
            probs.append(p.float().numpy())
            truths.append(truth)
        return segmentation_metrics(preds, truths, task.num_classes, probs=probs, class_names=list(task.classes))

    def scores(self, logits, task):
        return None

    def calibrate(self, name, logits, samples, task):
        if name == "none":
            return calibrate_logits(name, None, None, False)
        pixels, targets = [], []
        for x, truth in self._resized(logits, samples, task):
            pixels.append(x.flatten(1).T.numpy())
            targets.append(truth.reshape(-1))
        pixels, targets = np.concatenate(pixels), np.concatenate(targets)
        if len(targets) > MAX_CALIBRATION_PIXELS:
            keep = np.sort(np.random.default_rng(0).choice(len(targets), MAX_CALIBRATION_PIXELS, replace=False))
            pixels, targets = pixels[keep], targets[keep]
        return calibrate_logits(name, pixels, targets, False)

    def changed_by_calibration(self, task):
        """Pixel ECE; the argmax, hence mIoU, mDice and HD95, stays."""
        return ("ECE",)

    def exported(self, model, task):
        """Per-pixel logits (N, C, S, S) at the input size (the argmax is the class; ``classes`` and ``values`` in
        the graph's metadata name it and give its mask value)."""
        return model, "logits", "per-pixel logits (N, C, S, S); argmax = class index"


#: the output of a classification model's ONNX graph
PROBABILITIES = "probabilities"


class WithProbabilities(torch.nn.Module):
    """A classifier followed by the probabilities of its task (what a classification model exports)."""

    def __init__(self, model: torch.nn.Module, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from .evaluate import probabilities

        return probabilities(self.model(images), self.task)


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Classification(), Segmentation())}


def get_kind(name: str) -> TaskKind:
    """The task kind called ``name`` (a task's :attr:`~medpeft.data.TaskSpec.kind`)."""
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"unknown task kind {name!r}: choose from {', '.join(KINDS)}") from None
