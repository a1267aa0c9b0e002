"""Properties that must hold for every input, checked with hypothesis: selection, the cache in both
layouts, the partial-scan journal, and the safetensors header checks."""

from __future__ import annotations

import json
import math
import hashlib
import os
import struct
import tempfile
from decimal import Decimal
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spectrum.cache.scores_file import parse_scores, read_scores, write_scores
from spectrum.errors import CacheError, CorruptCheckpointError
from spectrum.cache.journal import PartialScan
from spectrum.scores import ModuleScore, Scores
from spectrum.selection.topk import parse_top_percent, select_by_type
from spectrum.sources.base import ShardInfo, SourceDescription
from spectrum.sources.dtypes import DTYPES
from spectrum.sources.safetensors import SafetensorsFile

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DISK = settings(SETTINGS, max_examples=50)  # each example writes and fsyncs real files

# Any text a JSON file can hold, including lone surrogates (not valid Unicode on their own, but a JSON
# header can spell them). A high and a low surrogate side by side are left out: JSON reads them as one
# character, so no name read from JSON ever holds them as two.
any_text = (st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=40).map("".join)
            .filter(lambda text: json.loads(json.dumps(text)) == text))
scores = st.one_of(st.sampled_from([0.0, 0.25, 1.0, math.inf]), st.floats(allow_nan=False))  # ties are likely
percents = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=2).map(lambda d: parse_top_percent(str(d)))


@st.composite
def scored_modules(draw) -> list[tuple[str, float, str]]:
    """(module, score, type) rows in file order, module names unique."""
    count = draw(st.integers(0, 40))
    types = draw(st.lists(st.sampled_from(["mlp.up_proj", "self_attn.q_proj", "lm_head", "x"]), min_size=count,
                          max_size=count))
    return [(f"model.layers.{index}.{type_name}", draw(scores), type_name) for index, type_name in enumerate(types)]


class TestSelection:
    @SETTINGS
    @given(rows=scored_modules(), percent=percents)
    def test_count_order_and_ties(self, rows, percent):
        selection = select_by_type(rows, percent)
        assert list(selection) == list(dict.fromkeys(type_name for _, _, type_name in rows)), "first-appearance order"
        for type_name, chosen in selection.items():
            members = [(position, module, score) for position, (module, score, t) in enumerate(rows) if t == type_name]
            assert len(chosen) == math.floor(len(members) * percent / 100)
            # Best first; equal scores keep the file's order (the reference's stable sort).
            expected = [module for _, module, _ in sorted(members, key=lambda member: (-member[2], member[0]))]
            assert chosen == expected[: len(chosen)]

    @SETTINGS
    @given(rows=scored_modules(), first=percents, second=percents)
    def test_monotonic_in_k(self, rows, first, second):
        low, high = sorted((first, second))
        smaller, larger = select_by_type(rows, low), select_by_type(rows, high)
        for type_name, chosen in smaller.items():
            assert larger[type_name][: len(chosen)] == chosen, "a larger K only adds modules, at the end"

    @SETTINGS
    @given(rows=scored_modules(), percent=percents, other=st.lists(scores, max_size=10))
    def test_a_type_is_ranked_on_its_own(self, rows, percent, other):
        extra = [(f"extra.{index}", score, "extra") for index, score in enumerate(other)]
        interleaved = [row for pair in zip(rows, extra) for row in pair] + rows[len(extra):] + extra[len(rows):]
        with_extra = select_by_type(interleaved, percent)
        for type_name, chosen in select_by_type(rows, percent).items():
            assert with_extra[type_name] == chosen

    def test_percent_is_exact(self):
        assert parse_top_percent("33.33") == Fraction(3333, 100)


class TestCacheRoundTrip:
    @DISK
    @given(entries=st.dictionaries(any_text, st.tuples(scores, any_text), min_size=1, max_size=12))
    def test_flat_layout(self, entries):
        table = {module: ModuleScore(snr, type_name) for module, (snr, type_name) in entries.items()}
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "snr_results_m.json")
            write_scores(path, Scores("m", table, {"model": "m"}))
            with open(path, "rb") as handle:
                text = handle.read()
            assert text.isascii()
            again = read_scores(path, "m")
        assert list(again.entries.items()) == list(table.items()), "same entries, same order, floats exact"
        assert again.meta == {"model": "m", "scores_sha256": hashlib.sha256(text).hexdigest()}

    @SETTINGS
    @given(layout=st.dictionaries(any_text, st.dictionaries(any_text.filter(lambda n: n not in ("snr", "type")), scores,
                                                            min_size=1, max_size=6), min_size=1, max_size=6))
    def test_sorted_layout(self, layout):
        # `{type: {module: score}}`; a module named "snr" or "type" would make a type look like a flat entry.
        seen = [module for modules in layout.values() for module in modules]
        assume(len(seen) == len(set(seen)))
        entries = parse_scores(json.dumps(layout))
        assert list(entries.items()) == [(module, ModuleScore(score, type_name))
                                         for type_name, modules in layout.items() for module, score in modules.items()]

    @given(st.sampled_from(['{"a": {"snr": NaN, "type": "t"}}', '{"t": {"a": 0.5, "b": NaN}}']))
    def test_nan_is_refused(self, text):
        with pytest.raises(CacheError, match="NaN score"):
            parse_scores(text, "cache.json")


class TestJournal:
    @DISK
    @given(records=st.lists(st.tuples(any_text, st.floats(allow_nan=False, allow_infinity=False), any_text),
                            max_size=20, unique_by=lambda r: r[0]),
           cut=st.floats(0, 1))
    def test_a_journal_cut_anywhere_gives_back_a_prefix(self, records, cut):
        description = SourceDescription("local", "/m", None, [ShardInfo("model.safetensors", 123)])
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "snr_results_m.partial.jsonl")
            journal = PartialScan(path)
            assert journal.begin(description, "gram") == {}
            for module, snr, type_name in records:
                journal.record(module, ModuleScore(snr, type_name))
            journal.close()
            size = os.path.getsize(path)
            header = open(path, "rb").readline()
            with open(path, "r+b") as handle:  # a crash at any byte after the header
                handle.truncate(len(header) + int((size - len(header)) * cut))
            again = PartialScan(path)
            known = again.begin(description, "gram")
            again.close()
        expected = [(module, ModuleScore(snr, type_name)) for module, snr, type_name in records]
        assert list(known.items()) == expected[: len(known)]


# ---------------------------------------------------------------------------------------------
# safetensors headers


def write_raw(header: object, data: bytes, *, raw_header: bytes | None = None) -> tuple[str, tempfile.TemporaryDirectory]:
    directory = tempfile.TemporaryDirectory()
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path = os.path.join(directory.name, "model.safetensors")
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + data)
    return path, directory


@st.composite
def headers(draw) -> tuple[dict, bytes, bool]:
    """A header of a few tensors and a data section; sometimes consistent, sometimes lying."""
    dtypes = sorted(DTYPES) + ["X9"]
    header, position = {}, 0
    lies = False
    for index in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(dtypes))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        nbytes = math.prod(shape) * DTYPES.get(dtype, (None, 1))[1]
        begin, end = position, position + nbytes
        if draw(st.booleans()) and draw(st.booleans()):  # a lie: other offsets
            begin, end = draw(st.integers(-2, 200)), draw(st.integers(-2, 200))
            lies = True
        header[f"t{index}.weight"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        position = max(position, end)
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    length = position + draw(st.integers(-8, 8))
    lies = lies or length < position
    data = bytes(draw(st.integers(0, 255)) for _ in range(max(length, 0)))
    return header, data, lies



def parse_or_clear_error(raw_header: bytes, data: bytes) -> None:
    """A file of this header and data parses, or fails with CorruptCheckpointError and nothing else."""
    path, directory = write_raw(None, data, raw_header=raw_header)
    with directory:
        try:
            SafetensorsFile(path, "model.safetensors")
        except CorruptCheckpointError:
            pass

class TestSafetensorsHeaders:
    @SETTINGS
    @given(case=headers())
    def test_accepted_headers_describe_their_bytes(self, case):
        header, data, lies = case
        path, directory = write_raw(header, data)
        with directory:
            try:
                shard = SafetensorsFile(path, "model.safetensors")
            except CorruptCheckpointError:
                assert lies, "a consistent header was refused"
                return
            start = os.path.getsize(path) - len(data)
            ranges = []
            for entry in shard.entries.values():
                assert 0 <= entry.begin - start and entry.begin - start + entry.nbytes <= len(data)
                _, itemsize = DTYPES.get(entry.info.dtype, (None, 0))
                if entry.info.dtype in DTYPES:
                    assert entry.nbytes == math.prod(entry.info.shape) * itemsize
                ranges.append((entry.begin, entry.begin + entry.nbytes))
                if DTYPES.get(entry.info.dtype, (None,))[0] is not None:
                    tensor = shard.read(entry.info)
                    assert tuple(tensor.shape) == entry.info.shape
                    raw = data[entry.begin - start : entry.begin - start + entry.nbytes]
                    assert bytes(tensor.contiguous().reshape(-1).view(torch.uint8).tolist()) == raw
            ranges = sorted(r for r in ranges if r[1] > r[0])
            assert all(earlier[1] <= later[0] for earlier, later in zip(ranges, ranges[1:])), "no overlap"

    @SETTINGS
    @given(raw=st.binary(max_size=64), data=st.binary(max_size=64))
    def test_any_bytes_are_a_checkpoint_or_a_clear_error(self, raw, data):
        parse_or_clear_error(raw, data)

    @SETTINGS
    @given(header=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | any_text,
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
                               max_leaves=10),
           data=st.binary(max_size=32))
    def test_any_json_header_is_a_checkpoint_or_a_clear_error(self, header, data):
        raw = json.dumps(header).encode("utf-8", "surrogatepass")
        parse_or_clear_error(raw, data)
