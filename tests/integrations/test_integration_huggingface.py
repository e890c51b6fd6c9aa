"""The Hugging Face callback, with the real ``transformers.Trainer`` on tiny GPT-2 and BERT models.

Models are built from configs with random weights and trained on random
tokens; nothing downloads (``HF_HUB_OFFLINE=1``). References are independent
of delve: forward hooks of the test keep every tracked layer's outputs,
keyed by the epoch or step window they belong to, and numpy computes the
statistics (conftest's ``ref``). Reported values are read back from
``trainer.state.log_history`` and from TensorBoard event files with
tensorboard's EventAccumulator; resumed runs are compared with
uninterrupted ones.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from probe_reference import ridge_probe  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402

import delve  # noqa: E402
from delve.capture.observation import find_observer  # noqa: E402
from delve.integrations.huggingface import STATE_FILE, SaturationCallback  # noqa: E402

STATS = ["lsat", "idim", "trc", "dtrc"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: on a shared CPU, one intra-op thread is about ten times faster than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def track_conv1d() -> None:
    """GPT-2's projections are Conv1D; register them unless delve already does."""
    if find_observer(Conv1D(2, 2)) is None:
        delve.register_observer(Conv1D, lambda module, output, config: output, kind="linear")


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return GPT2LMHeadModel(config)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def token_data(n: int, length: int = 12, labels: str = "tokens", seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 100, (n, length), generator=generator)
    classes = torch.randint(0, 2, (n,), generator=generator)
    return [{"input_ids": ids, "labels": ids if labels == "tokens" else label} for ids, label in zip(tokens, classes)]


def arguments(output_dir: Path, **kwargs) -> TrainingArguments:
    options = dict(
        num_train_epochs=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    options.update(kwargs)
    return TrainingArguments(output_dir=str(output_dir), **options)


def tracked_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        name.replace(".", "-"): module
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }


class Capture(TrainerCallback):
    """Every tracked layer's outputs, keyed by (period, mode, layer), through the test's own hooks.

    A period is an epoch, or with ``interval`` a window of that many steps.
    Training forwards of step ``g`` run while ``global_step == g``;
    evaluations run after the step that triggered them. The evaluation of
    ``eval_on_start`` is not kept.
    """

    def __init__(self, model: torch.nn.Module, interval: int | None = None) -> None:
        self.rows: dict[tuple[int, str, str], list[np.ndarray]] = defaultdict(list)
        self.interval = interval
        self.state = None
        self.started = False
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in tracked_modules(model).items()
        ]

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.state = state

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.started = True

    def _period(self, training: bool) -> int:
        if self.interval is None:
            return math.floor(self.state.epoch) if training else math.ceil(self.state.epoch) - 1
        step = self.state.global_step
        return step // self.interval if training else (step - 1) // self.interval

    def _hook(self, name: str):
        def keep(module, inputs, output) -> None:
            if self.started:
                mode = "train" if module.training else "eval"
                rows = output.detach().reshape(-1, output.shape[-1]).double().numpy().copy()
                self.rows[(self._period(module.training), mode, name)].append(rows)

        return keep

    def expected(self, period: int, ref, modes=("train", "eval")) -> dict[str, float]:
        values = {}
        for (key_period, mode, name), chunks in self.rows.items():
            if key_period != period or mode not in modes:
                continue
            stats = ref.stats(np.concatenate(chunks))
            for statistic in ("saturation", "intrinsic-dimensionality", "covariance-trace", "diagonal-trace", "rows"):
                if statistic in stats:  # rows: beside the values a mode with fewer rows than features leaves missing
                    values[f"{mode}-{statistic}_{name}"] = stats[statistic]
        return values


def delve_records(history: list[dict]) -> list[dict]:
    return [record for record in history if any(key.startswith(("train-", "eval-")) for key in record)]


def assert_values(actual: dict, expected: dict, rtol: float = 1e-9) -> None:
    assert expected
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=rtol, abs=1e-12, nan_ok=True), name


def test_gpt2_epoch_statistics_reach_log_history_and_tensorboard(tmp_path, ref, capsys) -> None:
    track_conv1d()
    model = tiny_gpt2()
    capture = Capture(model)
    callback = SaturationCallback(stats=STATS)
    args = arguments(tmp_path, eval_strategy="epoch", report_to=["tensorboard"], logging_strategy="epoch")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=token_data(16),
        eval_dataset=token_data(8, seed=2),
        callbacks=[callback, capture],
    )
    capsys.readouterr()
    trainer.train()

    # The report is printed when training ends, after the last epoch's values.
    printed = capsys.readouterr().out
    report = printed[printed.index("delve report, epoch 1: ") :].splitlines()
    expected = callback.tracker.report()
    assert report[0] == f"delve report, epoch 1: {len(expected)} layers, no findings"
    assert report[1].split() == ["layer", "width", "saturation", "k", "bound"]
    record = callback.tracker.run_record
    for line, (_, row) in zip(report[2:], expected.iterrows()):
        # Conv1D 32->96 can span at most 32 directions: the bound is printed beside its width.
        assert line.startswith(record.label(row["layer"]))
        numbers = [int(row["width"]), f"{row['saturation']:.2f}", int(row["k"]), int(row["bound"])]
        assert line.split()[-4:] == [str(number) for number in numbers]

    records = delve_records(trainer.state.log_history)
    # One record per epoch, at the epoch's last step, after that epoch's evaluation.
    assert [(record["step"], record["epoch"]) for record in records] == [(4, 1.0), (8, 2.0)]
    for epoch, record in enumerate(records):
        expected = capture.expected(epoch, ref)
        assert {key for key in record if key not in ("step", "epoch")} == set(expected)
        assert_values(record, expected)
    assert "train-saturation_transformer-h-0-attn-c_attn" in records[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_folder,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_folder))
    events.Reload()
    for name in ("train-covariance-trace_lm_head", "eval-intrinsic-dimensionality_transformer-h-1-mlp-c_fc"):
        scalars = events.Scalars(f"train/{name}")
        assert [event.step for event in scalars] == [4, 8]
        for epoch, event in enumerate(scalars):
            assert event.value == pytest.approx(capture.expected(epoch, ref)[name], rel=1e-6, nan_ok=True)

    # The hooks are gone once training ends: only the test's own remain.
    assert sum(len(m._forward_hooks) for m in model.modules()) == len(capture.handles)
    assert callback.last_values == {k: v for k, v in records[1].items() if k not in ("step", "epoch")}


def test_bert_every_n_steps_with_step_evaluations(tmp_path, ref) -> None:
    model = tiny_bert()
    capture = Capture(model, interval=3)
    callback = SaturationCallback(stats=STATS, interval="logging_steps")
    args = arguments(tmp_path, eval_strategy="steps", eval_steps=3, logging_steps=3, eval_on_start=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=token_data(16, labels="classes"),
        eval_dataset=token_data(8, labels="classes", seed=2),
        callbacks=[callback, capture],
    )
    trainer.train()
    records = delve_records(trainer.state.log_history)
    # Windows of 3 steps; steps 7-8 (and the final evaluation) make the last one, at the end of training.
    assert [record["step"] for record in records] == [3, 6, 8]
    for window, record in enumerate(records):
        assert_values(record, capture.expected(window, ref))
        assert "eval-saturation_bert-encoder-layer-0-attention-self-query" in record


def test_without_a_trainer_the_values_go_to_the_log_history_with_a_warning(tmp_path, ref) -> None:
    from transformers import TrainerControl, TrainerState

    model = tiny_bert()
    capture = Capture(model)
    callback = SaturationCallback(stats=STATS)
    args, state, control = arguments(tmp_path), TrainerState(), TrainerControl()
    # A custom loop calling the hooks itself: no Trainer on the call stack.
    for hook in (callback.on_train_begin, capture.on_train_begin):
        hook(args, state, control, model=model)
    for hook in (callback.on_epoch_begin, capture.on_epoch_begin):
        hook(args, state, control)
    batch = torch.stack([sample["input_ids"] for sample in token_data(4)])
    model.train()
    model(input_ids=batch)
    state.epoch = 1.0
    with pytest.warns(RuntimeWarning, match="no transformers.Trainer"):
        callback.on_epoch_end(args, state, control)
    callback.on_train_end(args, state, control)
    (record,) = state.log_history
    assert record["epoch"] == 1.0 and record["step"] == 0
    assert_values(record, capture.expected(0, ref, modes=("train",)))
    assert sum(len(m._forward_hooks) for m in model.modules()) == len(capture.handles)


def run_bert(output_dir: Path, resume: Path | None = None, seed: int = 0) -> tuple[Trainer, SaturationCallback]:
    model = tiny_bert(seed)
    callback = SaturationCallback(stats=STATS)
    args = arguments(output_dir, eval_strategy="epoch", save_strategy="steps", save_steps=2)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=token_data(16, labels="classes"),
        eval_dataset=token_data(8, labels="classes", seed=2),
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return trainer, callback


def test_resuming_from_checkpoints_gives_the_uninterrupted_statistics(tmp_path) -> None:
    straight, straight_callback = run_bert(tmp_path / "a")
    expected = delve_records(straight.state.log_history)
    assert [record["step"] for record in expected] == [4, 8]

    # Every checkpoint folder holds the tracker state, loadable without pickle.
    for step in (2, 4, 6, 8):
        state = torch.load(tmp_path / "a" / f"checkpoint-{step}" / STATE_FILE, weights_only=True)
        assert len(state["ranks"]) == 1 and state["global_step"] == step

    # Mid-epoch (step 6 of 4-step epochs): the partial accumulators come back and the data continues.
    resumed, resumed_callback = run_bert(tmp_path / "a", resume=tmp_path / "a" / "checkpoint-6", seed=5)
    assert delve_records(resumed.state.log_history)[-1] == expected[-1]
    assert resumed_callback.last_values.keys() == straight_callback.last_values.keys()

    # Step 4 ends epoch 0 but was saved before the epoch's end: the Trainer resumes with epoch 1, so the
    # restored epoch 0 is reported when it begins. Its evaluation never runs in the resumed job (the
    # Trainer skips it too), so only its training values can match.
    resumed, _ = run_bert(tmp_path / "a", resume=tmp_path / "a" / "checkpoint-4", seed=5)
    records = delve_records(resumed.state.log_history)
    assert [record["step"] for record in records][-2:] == [4, 8]
    first = {k: v for k, v in records[-2].items() if not k.startswith("eval-")}
    assert first == {k: v for k, v in expected[0].items() if not k.startswith("eval-")}
    assert records[-1] == expected[-1]


def test_resuming_without_a_saved_state_warns(tmp_path) -> None:
    run_bert(tmp_path / "a")
    os.remove(tmp_path / "a" / "checkpoint-6" / STATE_FILE)
    with pytest.warns(RuntimeWarning, match="no delve_tracker.pt"):
        run_bert(tmp_path / "a", resume=tmp_path / "a" / "checkpoint-6")


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match=r"accepted keys:.*lsat"):
        SaturationCallback(stats=["lsat", "entropy"])
    for interval in (0, -2, 1.5, "epoch", True):
        with pytest.raises(ValueError, match="interval"):
            SaturationCallback(interval=interval)
    with pytest.raises(ValueError, match="nosave"):
        SaturationCallback(nosave=True)
    with pytest.raises(TypeError, match="stat_threshold"):
        SaturationCallback(stat_threshold=0.9)


def test_probes_read_the_labels_of_a_sequence_classifier(tmp_path) -> None:
    model = tiny_bert()
    layers = {
        "bert-encoder-layer-0-output-dense": model.bert.encoder.layer[0].output.dense,
        "classifier": model.classifier,
    }
    seen: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    labels: dict[str, list[np.ndarray]] = defaultdict(list)

    def keep_labels(module, args, kwargs):
        labels["train" if module.training else "eval"].append(kwargs["labels"].numpy().copy())

    handles = [model.register_forward_pre_hook(keep_labels, with_kwargs=True)]
    for name, module in layers.items():

        def keep(module, inputs, output, name=name):
            pooled = output.detach().double()
            pooled = pooled.mean(1) if pooled.ndim == 3 else pooled  # one row per sequence: the mean over tokens
            seen[("train" if module.training else "eval", name)].append(pooled.numpy().copy())

        handles.append(module.register_forward_hook(keep))
    callback = SaturationCallback(stats=["probe"], layer_filter=list(layers))
    args = arguments(tmp_path, num_train_epochs=1, eval_strategy="epoch")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=token_data(24, labels="classes"),
        eval_dataset=token_data(12, labels="classes", seed=2),
        callbacks=[callback],
    )
    trainer.train()
    for handle in handles:
        handle.remove()
    train_t, eval_t = np.concatenate(labels["train"]), np.concatenate(labels["eval"])
    for name in layers:
        train_x, eval_x = np.concatenate(seen[("train", name)]), np.concatenate(seen[("eval", name)])
        expected = ridge_probe(train_x, train_t, eval_x, eval_t, classes=True, width=2)
        for mode in ("train", "eval"):
            r2, accuracy = expected[f"{mode}-r2"], expected[f"{mode}-accuracy"]
            assert callback.last_values[f"{mode}-probe-r2_{name}"] == pytest.approx(r2, rel=1e-6, abs=1e-9)
            assert callback.last_values[f"{mode}-probe-accuracy_{name}"] == pytest.approx(accuracy)


def test_token_level_labels_add_no_probe_rows_and_say_so_once(tmp_path) -> None:
    model = tiny_gpt2()
    callback = SaturationCallback(stats=["lsat", "probe"], layer_filter="transformer.h.0.mlp.*")
    trainer = Trainer(
        model=model, args=arguments(tmp_path, num_train_epochs=1), train_dataset=token_data(8), callbacks=[callback]
    )
    with pytest.warns(UserWarning, match="token-level labels") as caught:
        trainer.train()
    assert sum("token-level labels" in str(warning.message) for warning in caught) == 1
    assert any(name.startswith("train-saturation") for name in callback.last_values)
    assert not any("probe" in name for name in callback.last_values)
