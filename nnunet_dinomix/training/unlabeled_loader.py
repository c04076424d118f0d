"""The unlabeled stream: nnU-Net's data loader with random crops only, in nnU-Net's background augmenters."""
from __future__ import annotations

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class nnUNetUnlabeledDataLoader(nnUNetDataLoader):
    """Random crops of unlabeled cases.

    Unlabeled cases have no ``class_locations`` and no annotated region, so foreground oversampling is off and
    the ignore-label path (which centres crops on annotated voxels) is disabled even when the dataset has an
    ignore label. Everything else (padding, transforms, batching) is nnU-Net's.
    """

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False


def make_augmenter(loader, num_processes: int, pin_memory: bool):
    """Wrap a loader the way nnU-Net wraps its training loader, and start it."""
    if num_processes == 0:
        augmenter = SingleThreadedAugmenter(loader, None)
    else:
        augmenter = NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_processes,
                                                 num_cached=max(6, num_processes // 2), seeds=None,
                                                 pin_memory=pin_memory, wait_time=0.002)
    next(augmenter)  # starts the workers, as nnU-Net does for its own loaders
    return augmenter
