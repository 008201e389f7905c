"""Names of the files a run or sweep writes, and of the settings kept out of sweep point directory names.

One home for these facts: the engine, the app, the CLI and the report read them from here.
"""

from __future__ import annotations

RESULTS = "results.json"          # inject-eval (and each sweep point / rate): accuracies under faults
ATTACK = "attack.json"            # attack (and each sweep point of command=attack): the progressive bit search
ATTACK_CURVE = "attack_curve.png" # attack: accuracy against flips, adversarial and random
ATTACKS_CSV = "attacks.csv"       # sweep: one row per attack point (flips to target, clean and random accuracy)
MODEL = "model.pt"                # train: the finished model (weights, resolved config, metrics)
LAST_CHECKPOINT = "last.pt"       # train: the state after the last finished epoch (what --resume continues)
METRICS = "metrics.json"          # train: test accuracy, losses, history
TRAIN_CONFIG = "train_config.json"  # sweep --train: the config a shared model was trained with
SUMMARY = "summary.csv"           # sweep: one row per point and bit error rate
BER_CURVE = "ber_curve.png"       # sweep: accuracy against BER, one line per configuration
RERR_CURVE = "rerr_curve.png"     # sweep: robust error against BER
TABLE_MD = "table.md"             # sweep: the study table (Stutz et al.'s layout), with its caption
TABLE_CSV = "table.csv"           # sweep: the same numbers, machine-readable
PAIRED = "paired.csv"             # sweep: paired differences between configurations that differ in one factor
SENSITIVITY_CSV = "sensitivity.csv"  # sensitivity: one row per layer x bit position
SENSITIVITY_PNG = "sensitivity.png"  # sensitivity: the heatmap (layers x bits, RErr colour)
BUDGET_CSV = "budget.csv"         # sensitivity --budget: whole-model RErr as protection is added
BUDGET_PNG = "budget.png"         # sensitivity --budget: RErr against the fraction of stored bits protected
MODELS_DIR = "models"             # sweep --train: <sweep dir>/models/<digest>/
LATEST_FILE = "latest_checkpoint.txt"  # outputs root: the model `qfi train` wrote last

# Settings that never name a sweep point's directory (bookkeeping, or single-valued on the command line).
POINT_DIR_EXCLUDED = ("command", "checkpoint", "sweep_train", "device", "paths.root", "sweep", "logger",
                      "trust_code")
