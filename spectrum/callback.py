"""Rescanning between epochs: a transformers `TrainerCallback` that moves the trained set to the live SNR ranking.

The paper's conclusion names "dynamically rescanning the model between epochs and adjusting the targeting
layers" as a direction under experimentation. At each rescan the live weights are scored
(`spectrum.scan_model`), the top K% per type becomes the trainable set (`requires_grad`), and the
optimizer stays consistent:

- Every parameter a rescan may select (the scanned matrix types and the embeddings, as the YAML
  unfreezes them) is made trainable at `on_init_end`, before the Trainer builds its optimizer from the
  trainable parameters, so each is registered in the optimizer once, up front. `on_train_begin` then
  freezes all but the first selection.
- A frozen parameter has `requires_grad=False` and `grad=None`: torch's optimizers skip parameters
  without a gradient, so it neither moves (weight decay included) nor gets optimizer state.
- Policy for a parameter that leaves the selection: its optimizer state (Adam's moments) is **dropped**.
  It holds memory Spectrum is meant to save, and moments from steps ago would mis-scale the first update
  if the parameter came back; a returning parameter starts fresh, as a newly unfrozen one does.

This module imports transformers (it defines a subclass); `import spectrum` does not import it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Union

from transformers import TrainerCallback

from .errors import UsageError
from .scores import Scores
from .selection.freeze import entries_for
from .selection.model_view import axolotl_pattern
from .selection.topk import parse_top_percent

LOG = logging.getLogger("spectrum")

Every = Union[str, int]


@dataclass(frozen=True)
class Rescan:
    """One rescan: when, which parameters came into and went out of the trainable set, and the set after it.

    Args:
        step: the Trainer's `global_step` at the rescan (0: the initial selection).
        epoch: the Trainer's `epoch` then (None before training).
        came_in, went_out: parameter names, in `named_parameters()` order.
        trainable: every trainable parameter name after the rescan.
        seconds: how long the scan and the move took.
    """

    step: int
    epoch: float | None
    came_in: tuple[str, ...]
    went_out: tuple[str, ...]
    trainable: tuple[str, ...]
    seconds: float


class SpectrumCallback(TrainerCallback):
    """Train the top K% per module type by SNR, rescanning the live weights every epoch or every N steps.

    Args:
        top_percent: K in (0, 100], as for `spectrum.freeze`.
        every: "epoch" (at each epoch's end) or a number of optimizer steps.
        scores: the first selection's scores; default: as `freeze(model, top_percent=K)` finds them (the
            scores cached for the model's `name_or_path`, else a scan of the live model).
        embeddings: keep the input embeddings and output head trainable, as the YAML does.
        threads: CPU workers of each scan (default: one per core).

    Pass it to the Trainer's constructor (`callbacks=[...]`), with the Trainer building its own optimizer:
    the candidates must be trainable when the optimizer is made. `history` holds a `Rescan` per rescan,
    and each is logged (logger "spectrum", level INFO) with the modules that came in and went out.
    """

    def __init__(self, top_percent: float | str, every: Every = "epoch", *, scores: Scores | None = None,
                 embeddings: bool = True, threads: int | None = None) -> None:
        parse_top_percent(top_percent)  # a bad K fails here, not at the first rescan
        if not (every == "epoch" or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)):
            raise UsageError(f"every must be 'epoch' or a number of steps >= 1, not {every!r}")
        self.top_percent = top_percent
        self.every = every
        self.embeddings = embeddings
        self.threads = threads
        self.history: list[Rescan] = []
        self._scores = scores
        self._candidates: set[str] | None = None
        self._selection: tuple[str, ...] = ()

    # --- the selection ---------------------------------------------------------------------------

    def _select(self, model, scores: Scores) -> tuple[str, ...]:
        """The parameter names the top K% of `scores` unfreezes (requires_grad is set by `_apply`)."""
        patterns = [axolotl_pattern(entry) for entry in entries_for(
            model, scores, self.top_percent, embeddings=self.embeddings, group_experts=False)]
        return tuple(name for name, _ in model.named_parameters() if any(p.match(name) for p in patterns))

    def _all_candidates(self, model) -> set[str]:
        """Every parameter a live rescan can select: its top 100% over the scanned types, from the
        parameters' names and shapes alone (no weight is read)."""
        from .scoring.live import candidates

        patterns = [axolotl_pattern(entry) for entry in entries_for(model, candidates(model), 100,
                                                                    embeddings=self.embeddings, group_experts=False)]
        return {name for name, _ in model.named_parameters() if any(p.match(name) for p in patterns)}

    def _apply(self, model, selection: tuple[str, ...], optimizer) -> None:
        """Make exactly `selection` trainable; a parameter leaving it loses its gradient and optimizer state."""
        chosen = set(selection)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
        for name, parameter in model.named_parameters():
            keep = name in chosen
            if parameter.requires_grad and not keep:
                parameter.grad = None
                if inner is not None:
                    inner.state.pop(parameter, None)
            parameter.requires_grad_(keep)

    # --- Trainer events --------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """Before the optimizer exists: every candidate trainable, so that the Trainer registers each once."""
        if model is None:
            return
        if self._scores is None:
            from .training import scores_for

            self._scores = scores_for(model, threads=self.threads)
        self._selection = self._select(model, self._scores)
        self._candidates = self._all_candidates(model) | set(self._selection)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in self._candidates)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """The optimizer holds every candidate: freeze all but the first selection."""
        if model is None:
            return
        if self._candidates is None:
            raise UsageError("SpectrumCallback must be passed to the Trainer's constructor (callbacks=[...]), so "
                             "that every parameter a rescan may select is in the optimizer it builds")
        inner = getattr(optimizer, "optimizer", optimizer)
        if inner is not None:
            registered = {id(p) for group in inner.param_groups for p in group["params"]}
            missing = [name for name, p in model.named_parameters() if name in self._candidates and id(p) not in registered]
            if missing:
                raise UsageError(f"{len(missing)} parameters a rescan may select are not in the optimizer ({missing[0]}, "
                                 "...); let the Trainer build it, or build it over every parameter SpectrumCallback "
                                 "makes trainable at init")
        started = time.perf_counter()
        self._apply(model, self._selection, optimizer)
        self._record(state, (), self._selection, (), started)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if isinstance(self.every, int) and model is not None and state.global_step % self.every == 0:
            self.rescan(model, optimizer, state)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.every == "epoch" and model is not None:
            self.rescan(model, optimizer, state)

    def rescan(self, model, optimizer, state=None) -> Rescan:
        """Score the live weights and move the trainable set (and the optimizer) to the new top K%."""
        from .training import scan_model

        started = time.perf_counter()
        scores = scan_model(model, threads=self.threads, progress=False)
        selection = self._select(model, scores)
        outside = [name for name in selection if self._candidates is not None and name not in self._candidates]
        if outside:
            raise UsageError(f"the rescan selected {outside[0]}, which is not in the optimizer")
        before = set(self._selection)
        came_in = tuple(name for name in selection if name not in before)
        went_out = tuple(name for name in self._selection if name not in set(selection))
        self._apply(model, selection, optimizer)
        self._selection = selection
        self._scores = scores
        return self._record(state, came_in, selection, went_out, started)

    def _record(self, state, came_in, selection, went_out, started) -> Rescan:
        record = Rescan(getattr(state, "global_step", 0) or 0, getattr(state, "epoch", None), tuple(came_in),
                        tuple(went_out), tuple(selection), round(time.perf_counter() - started, 3))
        self.history.append(record)
        LOG.info("step %d, top %s%%: %d trainable tensors; in: %s; out: %s", record.step, self.top_percent,
                 len(selection), ", ".join(record.came_in) or "none", ", ".join(record.went_out) or "none")
        return record

    @property
    def scores(self) -> Scores | None:
        """The scores of the latest selection."""
        return self._scores
