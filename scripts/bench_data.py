"""Item 4: one training epoch of batches from the in-memory tensors against a torch DataLoader over the same data.

Data: 50,000 CIFAR-shaped uint8 images (CIFAR-10's training split size), batches of 128, shuffled. Both sides
deliver normalised float32 batches and labels:

* plain: ``InMemoryDataset.batches(shuffle=True)`` against ``DataLoader(TensorDataset(x, y), shuffle=True)``
  (default collate, no workers) followed by the same per-channel normalisation of each batch;
* augmented: ``batches(shuffle=True, augment=True)`` (batched random crop with 4-pixel padding + horizontal flip)
  against the usual torchvision pipeline, ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` applied
  per image in the data set's ``__getitem__``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import _bench_common as bc
from bench_eval import cifar_like

N_TRAIN = 50_000
BATCH = 128


class Augmented(Dataset):
    """Per-image torchvision augmentation of uint8 tensors (what a DataLoader pipeline would do)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from torchvision import transforms

        self.x, self.y = x, y
        self.t = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.t(self.x[i]), self.y[i]


def measure(device: str = "cpu", suffix: str = "") -> tuple[list[dict], dict]:
    data = cifar_like(N_TRAIN, 16, "cpu")
    on_device = data.to(device)
    scale, shift = data._affine(torch.device(device))
    generator = torch.Generator(device=device).manual_seed(0)
    loader_gen = torch.Generator().manual_seed(0)
    pin = torch.device(device).type == "cuda"

    def drain(batches) -> int:  # noqa: ANN001
        n = 0
        for x, y in batches:
            n += len(y)
        return n

    def in_memory(augment: bool):  # noqa: ANN202
        return lambda: drain(on_device.batches("train", BATCH, shuffle=True, generator=generator, augment=augment))

    def loader(dataset: Dataset):  # noqa: ANN202
        def run() -> int:
            n = 0
            for x, y in DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=loader_gen, pin_memory=pin):
                x = x.to(device, non_blocking=True).to(torch.float32) * scale + shift
                n += len(y.to(device, non_blocking=True))
            return n
        return run

    plain = TensorDataset(data.x_train, data.y_train)
    times = bc.paired({"in_memory": in_memory(False), "dataloader": loader(plain),
                       "in_memory_augmented": in_memory(True),
                       "dataloader_augmented": loader(Augmented(*plain.tensors))}, device=device)
    details = {"images": N_TRAIN, "batch": BATCH, "seconds_per_epoch": bc.medians(times)}
    rows = [bc.speedup(f"4. data: epoch from in-memory tensors vs DataLoader{suffix}",
                       bc.ratio(times, "dataloader", "in_memory"), 2),
            bc.speedup(f"4. data: same, with crop + flip augmentation{suffix}",
                       bc.ratio(times, "dataloader_augmented", "in_memory_augmented"), 2)]
    return rows, details


def main() -> None:
    bc.setup()
    print("bench 4: data path")
    rows, details = measure("cpu")
    notes = [f"Data: one epoch of {N_TRAIN:,} CIFAR-shaped uint8 images in shuffled batches of {BATCH}, normalised to "
             "float32; DataLoader with default collate and no worker processes (augmented: torchvision RandomCrop + "
             "RandomHorizontalFlip per image)."]
    bc.record("4_data", "data path", rows, details, notes)


if __name__ == "__main__":
    main()
