"""Layer saturation of a Hugging Face model, in the Trainer's logs.

A two-layer BERT built from a config (random weights, nothing downloaded)
learns whether token 1 occurs more often than token 2 in a random token
sequence. ``callbacks=[SaturationCallback(...)]`` adds per-layer saturation
to every epoch's logs: ``trainer.state.log_history``, the console, and every
``report_to`` integration (``--tensorboard`` turns TensorBoard on). The
statistics of the evaluation that the Trainer runs at the end of each epoch
are reported as ``eval-...``. delve also writes ``delve.csv`` (one row per
epoch) because ``save_to="csv"`` is given.

Needs ``pip install 'delve[huggingface]'``. Run::

    python examples/integrations/huggingface_trainer.py --epochs 3 --out runs/huggingface
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from delve.integrations.huggingface import SaturationCallback

VOCAB, LENGTH = 32, 16


def make_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    labels = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).long()
    return [{"input_ids": ids, "labels": label} for ids, label in zip(tokens, labels)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/huggingface_trainer")
    parser.add_argument("--tensorboard", action="store_true", help="also report to TensorBoard")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-3,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to=["tensorboard"] if args.tensorboard else [],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    # Only the encoder's layers: the classifier head has two outputs, its saturation says little.
    callback = SaturationCallback(save_to="csv", stats=["lsat"], layer_filter="bert.encoder.*")
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=make_data(512, seed=0),
        eval_dataset=make_data(256, seed=1),
        callbacks=[callback],
    )
    trainer.train()

    with open(os.path.join(args.out, "log_history.json"), "w") as handle:
        json.dump(trainer.state.log_history, handle, indent=1)
    print(f"delve wrote {os.path.join(args.out, 'delve.csv')}; the Trainer's logs are in log_history.json")
    for record in trainer.state.log_history:
        saturations = [value for name, value in record.items() if name.startswith("train-saturation_")]
        if saturations:
            print(f"  epoch {record['epoch']:.0f}: mean training saturation {sum(saturations) / len(saturations):.3f}")


if __name__ == "__main__":
    main()
