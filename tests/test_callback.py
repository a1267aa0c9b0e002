"""`spectrum.SpectrumCallback` in a real transformers Trainer on the CPU: rescans move the trainable set to the
selection of the live weights, frozen parameters do not move and hold no optimizer state."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

import spectrum
from spectrum.errors import UsageError


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def dataset(count: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(count):
        ids = torch.randint(0, 96, (16,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def trainer(model, tmp_path, callbacks, epochs: int = 2) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=epochs,
                             learning_rate=3e-2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    return Trainer(model=model, args=args, train_dataset=dataset(), callbacks=callbacks)


class FrozenStayPut(TrainerCallback):
    """Snapshots the frozen parameters as each step begins; as it ends, they must be bit-identical and
    without optimizer state, and some trainable parameter must have moved."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        self.trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        for name, parameter in model.named_parameters():
            if name in self.frozen:
                assert torch.equal(parameter.detach(), self.frozen[name]), name
                assert parameter not in inner.state, name
        assert any(not torch.equal(model.get_parameter(n).detach(), before) for n, before in self.trained.items())
        self.steps += 1


def test_rescans_every_two_steps_follow_the_live_weights(tmp_path, caplog):
    model = tiny_llama()
    spectrum_callback = spectrum.SpectrumCallback(top_percent=34, every=2)
    checker = FrozenStayPut()
    run = trainer(model, tmp_path, [checker, spectrum_callback])
    candidates = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(candidates) == 3 * 7 + 2  # every layer matrix and both embeddings, registered up front
    inner = run.create_optimizer()
    assert {id(p) for g in inner.param_groups for p in g["params"]} == {id(model.get_parameter(n)) for n in candidates}
    with caplog.at_level(logging.INFO, logger="spectrum"):
        run.train()
    assert checker.steps == 8
    history = spectrum_callback.history
    assert [record.step for record in history] == [0, 2, 4, 6, 8]
    assert any(record.came_in for record in history[1:])  # the selection moved at least once
    for before, after in zip(history, history[1:]):
        assert set(after.trainable) == (set(before.trainable) - set(after.went_out)) | set(after.came_in)
        assert len(after.came_in) == len(after.went_out)
    assert sum("in: model.layers" in r.getMessage() for r in caplog.records) == sum(bool(h.came_in) for h in history)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(history[-1].trainable) and len(trainable) == 7 + 2
    model.save_pretrained(tmp_path / "saved")
    fresh = LlamaForCausalLM.from_pretrained(tmp_path / "saved")
    unfrozen = spectrum.freeze(fresh, spectrum.scan(str(tmp_path / "saved"), threads=1), top_percent=34)
    assert set(unfrozen.names) == trainable


def test_every_epoch_with_given_scores(tmp_path):
    model = tiny_llama()
    first = spectrum.scan_model(model, threads=1, progress=False)
    spectrum_callback = spectrum.SpectrumCallback(top_percent=34, scores=first)
    trainer(model, tmp_path, [spectrum_callback], epochs=2).train()
    assert [record.step for record in spectrum_callback.history] == [0, 4, 8]
    assert [record.epoch for record in spectrum_callback.history[1:]] == [1.0, 2.0]
    assert spectrum_callback.history[0].trainable == spectrum.freeze(tiny_llama(), first, top_percent=34).names


def test_misuse_is_one_line(tmp_path):
    for every in ("step", 0, True):
        with pytest.raises(UsageError, match="every must be"):
            spectrum.SpectrumCallback(top_percent=25, every=every)
    with pytest.raises(UsageError, match="top-percent"):
        spectrum.SpectrumCallback(top_percent=0)
    model = tiny_llama()
    late = trainer(model, tmp_path, [])
    late.add_callback(spectrum.SpectrumCallback(top_percent=34))  # after the Trainer's init: too late
    with pytest.raises(UsageError, match="constructor"):
        late.train()


def test_a_fused_moe_model_rescans_its_3d_experts(tmp_path):
    """Mixtral's experts are 3-D parameters in transformers 5: candidates up front, trained whole, and the last
    rescan's set is the selection of a fresh live scan of the trained weights."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                             num_local_experts=4, num_experts_per_tok=2))
    spectrum_callback = spectrum.SpectrumCallback(top_percent=50, every=2)
    run = trainer(model, tmp_path, [FrozenStayPut(), spectrum_callback], epochs=1)
    candidates = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"model.layers.{i}.mlp.experts.{w}" for i in (0, 1) for w in ("gate_up_proj", "down_proj")} <= candidates
    run.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    fresh = spectrum.scan_model(model, threads=1, progress=False)
    assert trainable == set(spectrum.freeze(model, fresh, top_percent=50).names)
    assert sum(name.endswith("experts.gate_up_proj") for name in trainable) == 1
