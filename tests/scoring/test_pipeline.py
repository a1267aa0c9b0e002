"""Reading overlapped with computing: batching, workers, errors crossing threads."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum.scoring import svd_torch as engine
from spectrum.errors import CorruptCheckpointError
from spectrum.scoring.svd_numpy import cpu_threads_limited
from spectrum.scoring.pipeline import Batcher, Item, Reader, run_batches
from spectrum.scoring.checkpoint import scan, scan_source
from spectrum.sources import open_source


def item(rows: int, cols: int, tag: str) -> Item:
    return Item(tag, torch.zeros(rows, cols, dtype=torch.bfloat16))


def test_cpu_batches_are_single_matrices():
    batcher = Batcher(batch_bytes=0, pending_bytes=0)
    assert [[i.key for i in b] for b in batcher.add("g", item(4, 4, "a"))] == [["a"]]
    assert batcher.flush() == []


def test_gpu_batches_group_by_shape_up_to_budget():
    batcher = Batcher(batch_bytes=3 * 32, pending_bytes=10_000)  # three 4x4 bf16 matrices a batch
    ready = []
    for index in range(7):
        ready += batcher.add(("q", (4, 4)), item(4, 4, f"q{index}"))
        ready += batcher.add(("k", (2, 4)), item(2, 4, f"k{index}"))
    # q: 32 bytes each, a batch at the third; k: 16 bytes each, a batch at the sixth (q5 arrives before k5).
    assert [[i.key for i in batch] for batch in ready] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["k0", "k1", "k2", "k3", "k4", "k5"]]
    assert [[i.key for i in batch] for batch in batcher.flush()] == [["q6"], ["k6"]]


def test_pending_cap_flushes_the_largest_group():
    batcher = Batcher(batch_bytes=1000, pending_bytes=100)
    assert batcher.add("small", item(2, 4, "s")) == []
    ready = batcher.add("big", item(8, 4, "b"))  # 16 + 64 bytes: under the cap
    assert ready == []
    ready = batcher.add("big", item(8, 4, "b2"))  # 144 > 100: the big group goes
    assert [[i.key for i in batch] for batch in ready] == [["b", "b2"]]


def test_run_batches_keeps_every_result_and_propagates_errors():
    collected = []
    items = ((None, Item(index, torch.zeros(1))) for index in range(20))
    run_batches(items, Batcher(batch_bytes=0, pending_bytes=0), lambda b: [b[0].key * 2], workers=3,
                on_results=collected.extend)
    assert sorted(collected) == [2 * index for index in range(20)]

    def broken(batch):
        if batch[0].key == 5:
            raise ValueError("worker failed")
        return []

    with pytest.raises(ValueError, match="worker failed"):
        run_batches(((None, Item(i, torch.zeros(1))) for i in range(20)), Batcher(batch_bytes=0, pending_bytes=0),
                    broken, workers=2, on_results=lambda r: None)


def test_reader_errors_reach_the_consumer():
    def produce():
        yield "a", torch.zeros(2)
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(Reader(produce, depth=1))


def test_reader_queue_is_bounded_in_bytes_not_only_in_tensors():
    """A deep queue (many workers) of large tensors holds at most `max_bytes` of them, and a tensor
    larger than the budget still goes through, alone."""
    import time

    sizes = [100] * 20 + [1000] + [100] * 5  # bytes of float32 tensors
    reader = Reader(lambda: ((index, torch.zeros(size // 4)) for index, size in enumerate(sizes)), depth=1000,
                    max_bytes=350)
    taken = []
    for element in reader:
        time.sleep(0.01)  # a slow consumer: the reader fills the queue as far as it may
        taken.append(element.key)
    assert taken == list(range(len(sizes)))
    assert reader.peak_queued_bytes == 1000  # the large one alone; before it, 300 of 350 bytes
    assert reader.queued_bytes == 0 and reader.bytes_read == sum(sizes)

    small = Reader(lambda: ((index, torch.zeros(25)) for index in range(30)), depth=1000, max_bytes=350)
    for _ in small:
        time.sleep(0.01)
    assert 300 <= small.peak_queued_bytes <= 350


def test_workers_are_capped_at_four_per_core(tiny_llama_dir, caplog):
    from spectrum.scoring.checkpoint import cpu_count

    cores = cpu_count()
    with caplog.at_level("WARNING", logger="spectrum"):
        scores = scan(str(tiny_llama_dir), device="cpu", threads=10**23)
    assert scores.meta["workers"] == 4 * cores
    assert f"--threads {10**23} is more than 4 workers per core; using {4 * cores} ({cores} cores)" in caplog.text
    assert scan(str(tiny_llama_dir), device="cpu", threads=4 * cores).meta["workers"] == 4 * cores


def test_a_failed_scan_leaves_no_reader_running(tmp_path, monkeypatch):
    """A worker fails (a fault injected into the second matrix): by the time the error reaches the
    caller, which closes the source next, the reader thread has stopped reading."""
    import threading

    from spectrum.scoring import checkpoint as scanner

    save_file({f"model.layers.{i}.mlp.p.weight": torch.randn(64, 32) for i in range(40)}, str(tmp_path / "model.safetensors"))
    calls = []
    real = scanner.host_singular_values

    def failing(matrix):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a fault in a worker")
        return real(matrix)

    monkeypatch.setattr(scanner, "host_singular_values", failing)
    with pytest.raises(RuntimeError, match="a fault in a worker") as caught:
        scan_source(open_source(str(tmp_path)), device="cpu", threads=1)
    assert not [thread for thread in threading.enumerate() if thread.name == "spectrum-reader" and thread.is_alive()]
    del caught


def test_threads_do_not_change_scores(tiny_llama_dir):
    one = scan(str(tiny_llama_dir), device="cpu", threads=1)
    two = scan(str(tiny_llama_dir), device="cpu", threads=2)
    assert one.entries == two.entries and list(one.entries) == list(two.entries)
    assert two.meta["workers"] == 2
    assert torch.get_num_threads() == torch.get_num_threads()  # restored after the scan (no crash)


def test_file_shrinking_mid_scan_is_reported(tmp_path):
    rng = torch.Generator().manual_seed(1)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 32, generator=rng) for i in range(4)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    source = open_source(str(path))
    source.tensors()  # header checked while the file was whole
    os.truncate(path, os.path.getsize(path) - 4096)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        scan_source(source, device="cpu", threads=2)


@pytest.mark.parametrize("rows,cols", [(600, 520), (520, 600), (300, 1100)])
@pytest.mark.parametrize("numpy_below", [0, 10**9])  # torch's eigvalsh for every size, or NumPy's
def test_cpu_gram_route_matches_float64_svd_on_both_sides_of_the_size_rule(rows, cols, numpy_below, monkeypatch):
    monkeypatch.setattr(engine, "NUMPY_EIGVALSH_BELOW", numpy_below)
    rng = np.random.default_rng(rows * cols)
    stack = torch.from_numpy(rng.standard_normal((2, rows, cols))).to(torch.bfloat16)
    with cpu_threads_limited():
        values = engine.singular_values(stack, method="gram", device=torch.device("cpu"))
    expected = np.linalg.svd(stack.to(torch.float64).numpy(), compute_uv=False)  # (2, min(rows, cols))
    assert values.dtype == torch.float64 and values.shape == expected.shape
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-9, atol=1e-9 * expected.max())


def test_batched_path_matches_one_by_one(tiny_llama_dir, monkeypatch):
    """The same-shape batches used on CUDA, run on CPU (torch tensors): identical scores."""
    from spectrum.sources.safetensors import ShardedSafetensors

    monkeypatch.setattr(ShardedSafetensors, "reads_arrays", False)  # torch's batches, not NumPy's route
    single, _ = scan_source(open_source(str(tiny_llama_dir)), device="cpu", threads=1)
    batched, meta = scan_source(open_source(str(tiny_llama_dir)), device="cpu", threads=1, batch_bytes=1 << 20)
    assert batched == single and list(batched) == list(single)


def test_moe_experts_of_every_type_batch_together(tmp_path, monkeypatch):
    """Per-expert types (`block_sparse_moe.experts.3.w1`) share a shape: batches are keyed by shape alone, so
    the gate and up matrices of every expert and layer go to the device in one batch."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from spectrum.sources.safetensors import ShardedSafetensors

    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2)).save_pretrained(tmp_path / "mixtral", max_shard_size="30KB")
    monkeypatch.setattr(ShardedSafetensors, "reads_arrays", False)  # torch tensors, batched as on CUDA
    single, _ = scan_source(open_source(str(tmp_path / "mixtral")), device="cpu", threads=1)
    sizes: list[tuple[tuple[int, int], int]] = []
    original = engine.singular_values

    def recording(stack, **options):
        sizes.append((tuple(stack.shape[1:]), stack.shape[0]))
        return original(stack, **options)

    monkeypatch.setattr(engine, "singular_values", recording)
    batched, _ = scan_source(open_source(str(tmp_path / "mixtral")), device="cpu", threads=1, batch_bytes=1 << 30)
    assert batched == single and list(batched) == list(single)
    assert ((48, 32), 2 * 4 * 2) in sizes  # w1 and w3 of 4 experts in 2 layers: 8 types, one batch
    assert sum(count for _, count in sizes) == len(single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("streams", ["1", "3"])
@pytest.mark.parametrize("checkpoint", ["tiny_llama_dir", "minilm_dir"])
def test_cuda_scan_matches_cpu(checkpoint, streams, request, monkeypatch):
    model = request.getfixturevalue(checkpoint)  # one per test: a GPU machine without MiniLM runs `-k "not minilm"`
    monkeypatch.setenv("SPECTRUM_CUDA_STREAMS", streams)  # batches on that many streams, one worker each
    on_cpu = scan(str(model), device="cpu")
    on_gpu = scan(str(model), device="cuda")
    assert on_gpu.meta["device"].startswith("cuda") and on_gpu.meta["workers"] == int(streams)
    assert list(on_gpu.entries) == list(on_cpu.entries)
    for module, score in on_cpu.entries.items():
        assert on_gpu.entries[module].snr == pytest.approx(score.snr, rel=1e-9), module
    assert on_gpu.select(25) == on_cpu.select(25)
