"""Item 22: a torch.ao int8 ResNet-18 (torchvision, random init, FX-quantized, first conv on 1 channel) on the 8x8
digits' test split (450 images, one batch), as ``qfi inject-eval --bers 1e-5,1e-4,1e-3`` runs it.

Per rate: one trial's injection (``FaultInjector.trial``: sample the flips, write them into the stored int8 codes,
repack the touched layers, restore the packed params afterwards) against one clean forward over the test split,
timed side by side. The row is injection / forward (what a trial adds to the forward it needs anyway).
"""

from __future__ import annotations

import _bench_common as bc
import torch

RATES = (1e-5, 1e-4, 1e-3)


def main() -> None:
    bc.setup()
    from qfi_cli.faults import FaultConfig, FaultInjector
    from qfi_cli.models.torch_ao import torchvision_int8
    from qfi_cli.quant import frozen_weights

    model = torchvision_int8("resnet18", num_classes=10, in_channels=1, side=8)
    x = torch.randn(450, 1, 8, 8)
    rows, details = [], {}
    with torch.inference_mode():
        for rate in RATES:
            with frozen_weights(model), FaultInjector(model, FaultConfig(ber=rate), seed=0) as injector:
                counter = iter(range(10 ** 9))
                flips = []

                def inject() -> None:
                    with injector.trial(next(counter)):
                        flips.append(injector.flips_total())

                times = bc.paired({"inject": inject, "forward": lambda: model(x)})
                bits = injector.exposed_bits()
            value = bc.ratio(times, "inject", "forward")
            med = bc.medians(times)
            rows.append(bc.row(f"22. torch.ao int8 ResNet-18, one trial's injection (flip, repack, restore) / one "
                               f"clean forward (450 images), ber {bc.ber(rate)}", value, "—", None))
            details[bc.ber(rate)] = {"inject_ms": round(1e3 * med["inject"], 3),
                                     "forward_ms": round(1e3 * med["forward"], 3),
                                     "mean_flips": round(sum(flips) / len(flips), 1), "bits_total": bits}
    notes = ["per rate (injection | forward | mean flips of " + f"{bits:,} stored bits): " + "; ".join(
        f"p={k}: {v['inject_ms']} ms | {v['forward_ms']} ms | {v['mean_flips']}" for k, v in details.items())]
    bc.record("22_torch_ao", "torch.ao int8 models", rows, details, notes)


if __name__ == "__main__":
    main()
