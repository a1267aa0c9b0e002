"""The safetensors reader against real files: exact round trips, sharded checkpoints written by
transformers, and hostile or broken files, which must each fail with a CorruptCheckpointError
that names the problem (never a crash, never a large allocation)."""

from __future__ import annotations

import json
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spectrum.errors import CorruptCheckpointError, SourceError, UsageError
from helpers import expect_cli_failure
from spectrum.sources import open_source
from spectrum.sources.safetensors import INDEX_FILE, LocalSafetensorsSource, SafetensorsFile, shards_from_index

# ---------------------------------------------------------------------------------------------
# helpers


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", *, declared_length: int | None = None) -> Path:
    """A safetensors file built by hand: 8-byte little-endian header length, header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    length = len(raw) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + raw + data)
    return path


def expect_corrupt(path: Path, *fragments: str) -> CorruptCheckpointError:
    """Opening `path` raises CorruptCheckpointError whose message names the problem and the file; and
    the command line, given the file, prints that message as its one line, exits 1, and writes nothing."""
    with pytest.raises(CorruptCheckpointError) as caught:
        SafetensorsFile(str(path), path.name)
    message = str(caught.value)
    assert caught.value.path == str(path)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    expect_cli_failure(path, message)
    return caught.value


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads and -0.0 count too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def header_of(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


# ---------------------------------------------------------------------------------------------
# real tensors round-trip exactly


def _originals() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    f32 = torch.randn(7, 5, generator=generator)
    f32[0, 0], f32[0, 1], f32[0, 2], f32[0, 3] = float("inf"), float("-inf"), float("nan"), -0.0
    return {
        "f32.weight": f32,
        "f16.weight": (torch.randn(3, 4, 2, generator=generator) * 1000).to(torch.float16),
        "bf16.weight": torch.randn(16, 9, generator=generator).to(torch.bfloat16),
        "f64.weight": torch.randn(6, 3, generator=generator, dtype=torch.float64),
        "i64.ids": torch.tensor([0, -1, 2**62, -(2**63), 2**63 - 1], dtype=torch.int64),
        "scalar": torch.tensor(3.25, dtype=torch.float32),
        "empty_f32": torch.zeros(0, 5),
        "empty_bf16": torch.zeros(4, 0, dtype=torch.bfloat16),
        "empty_i64": torch.zeros(0, dtype=torch.int64),
    }


EXPECTED_DTYPE = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
}


def test_read_round_trips_every_dtype_exactly(tmp_path):
    originals = _originals()
    path = tmp_path / "mixed.safetensors"
    save_file(originals, str(path))

    handle = SafetensorsFile(str(path), "mixed.safetensors")
    assert set(handle.entries) == set(originals)
    for name, original in originals.items():
        info = handle.entries[name].info
        assert info.dtype == EXPECTED_DTYPE[original.dtype]
        assert info.shape == tuple(original.shape)
        assert info.shard == "mixed.safetensors"
        tensor = handle.read(info)
        assert same_bits(tensor, original), name
        if not (original.is_floating_point() and original.isnan().any()):
            assert torch.equal(tensor, original), name
    assert handle.read(handle.entries["f32.weight"].info).isnan().tolist() == originals["f32.weight"].isnan().tolist()


def test_source_reads_a_single_file_in_file_order(tmp_path):
    originals = _originals()
    path = tmp_path / "mixed.safetensors"
    save_file(originals, str(path))
    offsets = {name: spec["data_offsets"][0] for name, spec in header_of(path).items() if name != "__metadata__"}

    source = LocalSafetensorsSource.from_path(str(path))
    infos = source.tensors()
    assert source.shard_order() == ["mixed.safetensors"]
    assert source.root == str(tmp_path)
    assert {info.name for info in infos} == set(originals)
    listed = [offsets[info.name] for info in infos]
    assert listed == sorted(listed)  # tensors() lists them in file order

    # asked in reverse, yielded in file order, each exactly the stored tensor
    yielded = list(source.read("mixed.safetensors", list(reversed(infos))))
    positions = [offsets[info.name] for info, _ in yielded]
    assert positions == sorted(positions)
    assert {info.name for info, _ in yielded} == set(originals)
    for info, tensor in yielded:
        assert same_bits(tensor, originals[info.name]), info.name

    description = source.describe()
    assert description.kind == "local"
    assert [(s.name, s.size) for s in description.shards] == [("mixed.safetensors", path.stat().st_size)]
    source.close()


def test_a_shard_deleted_while_it_is_read_stays_readable(tmp_path):
    """Another process (a `--no-keep-shards` scan of the same Hub cache, say) deletes the shard this
    scan is reading: the file stays open from its first read until the shard is released."""
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 4) for i in range(3)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    source = open_source(str(tmp_path / "model.safetensors"))
    reading = source.read("model.safetensors", source.tensors())
    first_info, first = next(reading)
    (tmp_path / "model.safetensors").unlink()
    rest = list(reading)
    assert [info.name for info, _ in [(first_info, first), *rest]] == list(tensors)
    assert all(torch.equal(tensor, tensors[info.name]) for info, tensor in [(first_info, first), *rest])
    handle = source._files["model.safetensors"]
    source.release("model.safetensors")
    assert handle._handle is None and "model.safetensors" not in source._files  # closed once released
    source.close()


def test_zero_size_tensor_sharing_its_offset_with_the_next_tensor(tmp_path):
    """A zero-size tensor listed after a non-empty one that starts at the same offset: valid for the
    safetensors library, and not an overlap (regression: it was reported as overlapping)."""
    header = {
        "w.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "e.weight": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
        "tail": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
    }
    path = write_raw(tmp_path / "z.safetensors", header, struct.pack("<2f", 1.5, -2.0))
    reference = load_file(str(path))  # the safetensors library accepts the file

    handle = SafetensorsFile(str(path), "z")
    for name, expected in reference.items():
        tensor = handle.read(handle.entries[name].info)
        assert same_bits(tensor, expected), name
    assert handle.read(handle.entries["w.weight"].info).tolist() == [1.5, -2.0]


# ---------------------------------------------------------------------------------------------
# folders, indexes and single files


def test_sharded_checkpoint_lists_exactly_the_index(tiny_llama_dir):
    index = json.loads((tiny_llama_dir / INDEX_FILE).read_text())
    weight_map: dict[str, str] = index["weight_map"]
    shard_order = sorted(set(weight_map.values()))  # model-00001-of-0000N first
    assert len(shard_order) > 1, "the fixture should be sharded"

    source = LocalSafetensorsSource.from_path(str(tiny_llama_dir))
    infos = source.tensors()
    assert sorted(info.name for info in infos) == sorted(weight_map)  # exactly, no duplicates
    assert {info.name: info.shard for info in infos} == weight_map
    assert source.shard_order() == shard_order == shards_from_index(str(tiny_llama_dir / INDEX_FILE))
    assert shard_order == sorted(p.name for p in tiny_llama_dir.glob("*.safetensors"))

    # grouped by shard, in shard order
    groups = list(dict.fromkeys(info.shard for info in infos))
    assert groups == shard_order

    for shard in shard_order:
        on_disk = load_file(str(tiny_llama_dir / shard))
        with safe_open(str(tiny_llama_dir / shard), framework="pt") as reference:
            shard_infos = [info for info in infos if info.shard == shard]
            for info in shard_infos:
                assert info.dtype == "BF16"
                assert list(info.shape) == list(reference.get_slice(info.name).get_shape())
        for info, tensor in source.read(shard, shard_infos):
            assert tensor.dtype == torch.bfloat16
            assert torch.equal(tensor, on_disk[info.name]), info.name

    description = source.describe()
    assert description.kind == "local"
    assert description.location == str(tiny_llama_dir)
    assert [(s.name, s.size) for s in description.shards] == [
        (name, (tiny_llama_dir / name).stat().st_size) for name in shard_order
    ]
    assert isinstance(open_source(str(tiny_llama_dir)), LocalSafetensorsSource)


def test_folder_without_index_lists_every_file_sorted(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    names = ["zeta.safetensors", "alpha-00002.safetensors", "alpha-00010.safetensors", "beta.safetensors"]
    for position, name in enumerate(names):
        save_file({f"t{position}.weight": torch.full((2, 2), float(position))}, str(model / name))
    (model / "config.json").write_text("{}")
    (model / "notes.safetensors.txt").write_text("not weights")

    source = open_source(str(model))
    assert isinstance(source, LocalSafetensorsSource)
    assert source.shard_order() == sorted(names)
    by_shard = {info.shard: info.name for info in source.tensors()}
    assert by_shard == {name: f"t{position}.weight" for position, name in enumerate(names)}
    for position, name in enumerate(names):
        [(info, tensor)] = list(source.read(name, [i for i in source.tensors() if i.shard == name]))
        assert torch.equal(tensor, torch.full((2, 2), float(position)))


def test_a_folder_with_model_safetensors_scans_it_alone(tmp_path):
    """Without an index transformers loads model.safetensors and nothing else: an adapter or a
    consolidated copy saved beside it is not part of the model."""
    model = tmp_path / "model"
    model.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 2)}, str(model / "model.safetensors"))
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 2)},
              str(model / "adapter_model.safetensors"))
    save_file({"layers.0.feed_forward.w3.weight": torch.ones(4, 2)}, str(model / "consolidated.safetensors"))
    source = open_source(str(model))
    assert source.shard_order() == ["model.safetensors"]
    assert [info.name for info in source.tensors()] == ["model.layers.0.mlp.up_proj.weight"]


def test_single_safetensors_file_path(minilm_dir):
    path = minilm_dir / "model.safetensors"
    source = open_source(str(path))
    assert isinstance(source, LocalSafetensorsSource)
    assert source.shard_order() == ["model.safetensors"]
    assert source.root == str(minilm_dir)
    with safe_open(str(path), framework="pt") as reference:
        keys = set(reference.keys())
        infos = source.tensors()
        assert {info.name for info in infos} == keys
        for info in infos:
            assert info.shard == "model.safetensors"
            assert list(info.shape) == list(reference.get_slice(info.name).get_shape())
        wanted = [info for info in infos if info.name.endswith("attention.self.query.weight")]
        assert len(wanted) == 6
        for info, tensor in source.read("model.safetensors", wanted):
            assert torch.equal(tensor, reference.get_tensor(info.name))


def test_shards_from_index_sorted_without_duplicates(tmp_path):
    index = tmp_path / INDEX_FILE
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "s2.safetensors", "b": "s1.safetensors",
                                                                 "c": "s2.safetensors", "d": "sub/s3.safetensors"}}))
    assert shards_from_index(str(index)) == ["s1.safetensors", "s2.safetensors", "sub/s3.safetensors"]


# ---------------------------------------------------------------------------------------------
# hostile and broken files


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_the_length_prefix(tmp_path, size):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01" * size)
    expect_corrupt(path, f"file is {size} bytes", "too short")


def test_header_length_beyond_the_end_of_the_file(tmp_path):
    header = json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = write_raw(tmp_path / "cut.safetensors", header, b"\0" * 4, declared_length=len(header) + 1000)
    expect_corrupt(path, f"header claims {len(header) + 1000} bytes", "truncated")


def test_absurd_header_length(tmp_path):
    path = write_raw(tmp_path / "absurd.safetensors", b"{}", declared_length=2**63)
    expect_corrupt(path, "more than the format allows")


@pytest.mark.parametrize("header", [b"{not json", b"", b'{"t": {"dtype": "F32",', b"\x00" * 16])
def test_header_not_json(tmp_path, header):
    expect_corrupt(write_raw(tmp_path / "bad.safetensors", header), "header is not valid JSON")


@pytest.mark.parametrize("header", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_header_json_but_not_an_object(tmp_path, header):
    expect_corrupt(write_raw(tmp_path / "list.safetensors", header), "header is not a JSON object")


def test_header_with_non_utf8_bytes(tmp_path):
    header = b'{"t\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    error = expect_corrupt(write_raw(tmp_path / "latin.safetensors", header, b"\0" * 4), "not valid JSON")
    assert "utf-8" in str(error).lower()


def test_header_nested_too_deeply(tmp_path):
    header = b"[" * 200_000 + b"]" * 200_000
    expect_corrupt(write_raw(tmp_path / "deep.safetensors", header), "nested too deeply")


@pytest.mark.parametrize("cut", [1, 3, 4096])
def test_truncated_shard(tmp_path, cut):
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.ones(32, 32), "b.weight": torch.zeros(16, 8)}, str(path))
    SafetensorsFile(str(path), "model.safetensors")  # valid before the cut
    header = header_of(path)
    data_size = path.stat().st_size - cut - 8 - struct.unpack("<Q", path.read_bytes()[:8])[0]
    beyond = [n for n in header if n != "__metadata__" and header[n]["data_offsets"][1] > data_size]
    assert beyond
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - cut)
    message = str(expect_corrupt(path, f"of a {data_size}-byte data section", "truncated"))
    assert any(f"tensor {name} ends at byte {header[name]['data_offsets'][1]} " in message for name in beyond)


def test_truncated_inside_the_header(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.ones(4, 4)}, str(path))
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    with open(path, "r+b") as handle:
        handle.truncate(8 + length - 5)
    expect_corrupt(path, "truncated")


@pytest.mark.parametrize(
    ("dtype", "shape", "offsets", "data"),
    [
        ("F32", [3], [0, 8], 8),  # 12 bytes declared by dtype x shape, 8 by the offsets
        ("BF16", [2, 2], [0, 16], 16),
        ("F64", [4], [0, 16], 16),
        ("I64", [0], [0, 8], 8),
        ("F16", [], [0, 4], 4),
    ],
)
def test_dtype_and_shape_not_matching_the_byte_count(tmp_path, dtype, shape, offsets, data):
    header = {"t": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    path = write_raw(tmp_path / "mismatch.safetensors", header, b"\0" * data)
    expect_corrupt(path, f"tensor t is {dtype} {shape}", f"span {offsets[1] - offsets[0]} bytes")


def test_overlapping_tensors(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    expect_corrupt(write_raw(tmp_path / "overlap.safetensors", header, b"\0" * 12), "tensors a and b overlap")


def test_a_tensor_named_twice_in_a_header(tmp_path):
    a = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    b = '{"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}'
    raw = f'{{"w": {a}, "w": {b}}}'.encode()  # JSON allows it; json.loads would keep the second silently
    expect_corrupt(write_raw(tmp_path / "twice.safetensors", raw, b"\0" * 16), "header names tensor w twice")


def test_identical_ranges_overlap(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
    }
    expect_corrupt(write_raw(tmp_path / "alias.safetensors", header, b"\0" * 8), "overlap")


@pytest.mark.parametrize(
    "offsets",
    [[-4, 4], [0, -4], [0.0, 4.0], [0, 4.5], ["0", "4"], [4, 0], [0], [0, 4, 8], [False, True], None, {"0": 4}],
)
def test_invalid_data_offsets(tmp_path, offsets):
    header = {"t": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    expect_corrupt(write_raw(tmp_path / "offsets.safetensors", header, b"\0" * 8), "tensor t has invalid data offsets")


@pytest.mark.parametrize("shape", [[-1, 2], [2.0], "2", [True], None, [[2]]])
def test_invalid_shape(tmp_path, shape):
    header = {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}
    expect_corrupt(write_raw(tmp_path / "shape.safetensors", header, b"\0" * 8), "tensor t has an invalid shape")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("F32", "tensor t has no dtype/shape/offsets entry"), ({"shape": [1], "data_offsets": [0, 4]}, "tensor t has no dtype")],
)
def test_tensor_entry_missing_its_fields(tmp_path, spec, fragment):
    expect_corrupt(write_raw(tmp_path / "entry.safetensors", {"t": spec}, b"\0" * 4), fragment)


@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**62, 2**62, 2**62], [2**40, 2**40, 0], [2**63, 0]])
def test_enormous_shape_fails_fast_without_allocating(tmp_path, shape):
    """Rejected from the header alone: no buffer, no tensor; zero-size but unrepresentable shapes too
    (regression: [2**63, 0] passed the checks and crashed torch with a TypeError on read)."""
    header = {"huge.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 if 0 not in shape else 0]}}
    path = write_raw(tmp_path / "huge.safetensors", header, b"\0" * 4)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CorruptCheckpointError) as caught:
            SafetensorsFile(str(path), "huge")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 1_000_000
    assert "tensor huge.weight" in str(caught.value)


def test_unknown_dtype_parses_but_cannot_be_read(tmp_path):
    header = {"t.weight": {"dtype": "F4_MYSTERY", "shape": [2], "data_offsets": [0, 1]}}
    handle = SafetensorsFile(str(write_raw(tmp_path / "odd.safetensors", header, b"\0")), "odd")
    with pytest.raises(CorruptCheckpointError, match="dtype F4_MYSTERY, which cannot be read"):
        handle.read(handle.entries["t.weight"].info)


# ---------------------------------------------------------------------------------------------
# source errors


def test_open_source_missing_path(tmp_path):
    for missing in (tmp_path / "no-such-model", tmp_path / "nowhere" / "model.safetensors"):
        with pytest.raises(SourceError, match="no such file or folder") as caught:
            open_source(str(missing))
        assert str(missing) in str(caught.value)


def test_open_source_folder_without_safetensors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(SourceError, match=r"holds no \*\.safetensors weights") as caught:
        open_source(str(empty))
    assert ".bin" not in str(caught.value)

    (empty / "training_args.bin").write_bytes(b"PK\x03\x04 not weights")  # pytorch_model*.bin: test_torch_bin.py
    with pytest.raises(SourceError, match="holds no") as caught:
        open_source(str(empty))
    assert "training_args.bin" in str(caught.value)


def test_open_source_file_that_is_not_safetensors(minilm_dir):
    with pytest.raises(SourceError, match="is not a .safetensors file"):
        open_source(str(minilm_dir / "config.json"))


def test_revision_with_a_local_path_is_a_usage_error(tiny_llama_dir):
    with pytest.raises(UsageError, match="drop --revision") as caught:
        open_source(str(tiny_llama_dir), revision="main")
    assert caught.value.exit_code == 2


def _copy(tiny_llama_dir: Path, destination: Path) -> Path:
    shutil.copytree(tiny_llama_dir, destination)
    return destination


def test_index_naming_a_missing_shard(tmp_path, tiny_llama_dir):
    model = _copy(tiny_llama_dir, tmp_path / "model")
    victim = sorted(p.name for p in model.glob("*.safetensors"))[1]
    (model / victim).unlink()
    with pytest.raises(SourceError) as caught:
        open_source(str(model))
    assert not isinstance(caught.value, CorruptCheckpointError)
    assert victim in str(caught.value) and "missing" in str(caught.value)
    expect_cli_failure(model, str(caught.value))


def test_index_mapping_tensors_no_shard_holds(tmp_path, tiny_llama_dir):
    """A shard replaced by another save (with fewer tensors) under the same name: the index still maps
    the tensors it lost, and a scan would silently leave those layers out."""
    model = _copy(tiny_llama_dir, tmp_path / "model")
    weight_map = json.loads((model / INDEX_FILE).read_text())["weight_map"]
    victim = sorted(set(weight_map.values()))[-1]
    kept = load_file(str(model / victim))
    lost = sorted(kept)[1:]
    save_file({name: kept[name] for name in sorted(kept)[:1]}, str(model / victim))
    with pytest.raises(CorruptCheckpointError) as caught:
        open_source(str(model)).tensors()
    message = str(caught.value)
    assert message.startswith(f"{model / INDEX_FILE}: it maps {len(lost)} tensor(s) that no shard holds ({lost[0]}, ")
    assert f"the first should be in {victim})" in message
    expect_cli_failure(model, message)


def test_a_tensor_stored_in_two_shards(tmp_path, tiny_llama_dir):
    model = _copy(tiny_llama_dir, tmp_path / "model")
    first, second = sorted(p.name for p in model.glob("*.safetensors"))[:2]
    stray = sorted(load_file(str(model / first)))[0]
    both = load_file(str(model / second))
    both[stray] = torch.zeros(2, 2)  # another value under a name the first shard holds
    save_file(both, str(model / second))
    with pytest.raises(CorruptCheckpointError) as caught:
        open_source(str(model)).tensors()
    assert str(caught.value).startswith(f"{model / second}: tensor {stray} is stored in {first} as well")
    expect_cli_failure(model, str(caught.value))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors", "..\\evil.safetensors",
                                   "/etc/passwd"])
def test_index_pointing_outside_the_folder(tmp_path, tiny_llama_dir, shard):
    model = _copy(tiny_llama_dir, tmp_path / "model")
    index = json.loads((model / INDEX_FILE).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (model / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="points outside the model folder") as caught:
        open_source(str(model))
    assert repr(shard) in str(caught.value)
    expect_cli_failure(model, str(caught.value))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "not a valid safetensors index"),
        ('{"metadata": {}}', "not a valid safetensors index"),
        ('{"weight_map": ["model.safetensors"]}', "not a valid safetensors index"),
        ('{"weight_map": {"a.weight": 3}}', "not a valid safetensors index"),
        ("[]", "not a valid safetensors index"),
        ('{"weight_map": {}}', "names no tensor"),
    ],
)
def test_broken_index(tmp_path, text, fragment):
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a.weight": torch.ones(2, 2)}, str(model / "model.safetensors"))
    (model / INDEX_FILE).write_text(text)
    with pytest.raises(CorruptCheckpointError, match=fragment) as caught:
        open_source(str(model))
    expect_cli_failure(model, str(caught.value))


def test_scan_leaves_out_a_zero_size_matrix(tmp_path):
    from spectrum.scoring.checkpoint import scan

    path = tmp_path / "model.safetensors"
    save_file(
        {
            "model.layers.0.mlp.down_proj.weight": torch.randn(8, 4, generator=torch.Generator().manual_seed(0)),
            "model.layers.1.mlp.down_proj.weight": torch.zeros(0, 4),
        },
        str(path),
    )
    scores = scan(str(path), threads=1)
    assert list(scores.entries) == ["model.layers.0.mlp.down_proj"]
