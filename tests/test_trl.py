"""The README's "Spectrum while training" examples with TRL's real `SFTTrainer` on the CPU: what trains is
exactly the selection (judged by which parameters changed), at the learning rates `param_groups` gives,
and `SpectrumCallback` works inside TRL's trainer as inside transformers'."""

from __future__ import annotations

import random

import datasets  # TRL's own dependency
import pytest
import torch
import trl  # in the test extra (pyproject.toml), which scripts/setup.sh installs

import spectrum

WORDS = [f"w{index}" for index in range(90)]


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over WORDS, built here (no Hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {word: index for index, word in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    inner = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0, eos_token_id=1))


def sft_trainer(model, tokenizer, tmp_path, *, epochs: int = 1, learning_rate: float = 1e-2, **extra):
    generator = random.Random(0)
    rows = [{"text": " ".join(generator.choice(WORDS) for _ in range(12))} for _ in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), learning_rate=learning_rate, num_train_epochs=epochs,
                         per_device_train_batch_size=4, max_length=32, report_to=[], save_strategy="no", use_cpu=True,
                         disable_tqdm=True, logging_strategy="no")
    return trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer, **extra)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, parameter in model.named_parameters() if not torch.equal(parameter.detach(), before[name])}


def test_live_scan_and_freeze_train_exactly_the_selection(tokenizer, tmp_path):
    model = tiny_llama()
    scores = spectrum.scan_model(model, progress=False)
    unfrozen = spectrum.freeze(model, scores, top_percent=34)
    before = snapshot(model)
    sft_trainer(model, tokenizer, tmp_path).train()
    assert changed(model, before) == set(unfrozen.names)
    # one module of each of the 7 layer types (34% of 3 layers) and the two embeddings
    assert len(unfrozen.names) == 7 + 2


def test_param_groups_give_the_optimizer_its_rates(tokenizer, tmp_path):
    model = tiny_llama()
    scores = spectrum.scan_model(model, progress=False)
    unfrozen = spectrum.freeze(model, scores, top_percent=67)
    groups = spectrum.param_groups(model, scores, 1e-2, top_percent=67, boost=2.0)
    rates = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
    assert sorted({group["lr"] for group in groups}) == pytest.approx([1e-2, 2e-2])  # two kept per type: x1, x2
    before = snapshot(model)
    run = sft_trainer(model, tokenizer, tmp_path, optimizers=(torch.optim.AdamW(groups), None))
    run.train()
    assert changed(model, before) == set(unfrozen.names) == {name for name, p in model.named_parameters()
                                                             if id(p) in rates}
    # the optimizer TRL stepped holds the groups as given (the scheduler scales them alike from these)
    assert [group["initial_lr"] for group in run.optimizer.param_groups] == [group["lr"] for group in groups]


def test_spectrum_callback_rescans_inside_sft_trainer(tokenizer, tmp_path):
    model = tiny_llama()
    callback = spectrum.SpectrumCallback(top_percent=34, every="epoch")
    before = snapshot(model)
    sft_trainer(model, tokenizer, tmp_path, epochs=2, learning_rate=3e-2, callbacks=[callback]).train()
    assert [record.step for record in callback.history] == [0, 4, 8]  # the first selection, then each epoch's end
    ever_trainable = set().union(*(record.trainable for record in callback.history[:-1]))
    assert changed(model, before) <= ever_trainable
    # the last rescan's selection is that of a fresh live scan of the trained weights
    final = set(callback.history[-1].trainable)
    assert final == {name for name, p in model.named_parameters() if p.requires_grad}
    assert final == set(spectrum.freeze(model, spectrum.scan_model(model, progress=False), top_percent=34).names)
