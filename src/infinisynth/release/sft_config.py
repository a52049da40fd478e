"""The TRL SFT config of a release: the Infinite-Instruct recipe, as ``trl sft --config`` reads it.

Learning rate 2e-5, 3 epochs, cosine schedule, an effective batch of 512 sequences
(``per_device_train_batch_size`` x ``gradient_accumulation_steps`` x the number of devices: 8 x 64
on one device; divide the accumulation by the device count), and loss on the assistant's turns
only (the paper's prompt loss mask 0.0, response 1.0): TRL's ``assistant_only_loss``, which needs
a chat template that marks assistant turns with ``{% generation %}``.
"""

from __future__ import annotations

from typing import Any

import yaml

EFFECTIVE_BATCH = 512
PER_DEVICE_BATCH = 8


def sft_config(dataset: str, *, model: str, output_dir: str) -> dict[str, Any]:
    """The config's fields (TRL's ScriptArguments, SFTConfig and ModelConfig names)."""
    return {
        "model_name_or_path": model,
        "dataset_name": dataset,
        "dataset_train_split": "train",
        "output_dir": output_dir,
        "learning_rate": 2.0e-5,
        "num_train_epochs": 3,
        "lr_scheduler_type": "cosine",
        "per_device_train_batch_size": PER_DEVICE_BATCH,
        "gradient_accumulation_steps": EFFECTIVE_BATCH // PER_DEVICE_BATCH,
        "assistant_only_loss": True,
        "gradient_checkpointing": True,
        "logging_steps": 10,
        "save_strategy": "epoch",
        "report_to": "none",
    }


def sft_config_yaml(dataset: str, *, model: str, output_dir: str) -> str:
    header = (
        "# TRL SFT config of this release (Infinite-Instruct's recipe): trl sft --config sft_config.yaml\n"
        f"# Effective batch {EFFECTIVE_BATCH} = per_device_train_batch_size x gradient_accumulation_steps x devices:\n"
        "# on N devices divide gradient_accumulation_steps by N. assistant_only_loss masks the prompt tokens\n"
        "# (the paper's prompt loss weight 0.0); it needs a chat template with {% generation %} markers.\n"
    )
    return header + yaml.safe_dump(sft_config(dataset, model=model, output_dir=output_dir), sort_keys=False)
