"""Scans of the same model into the same cache folder, side by side: one scans, the others wait and reuse
its result; nothing is half-written, and a lock left by a dead process holds nobody up.

Real processes, real `flock`, real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


from helpers import load_json
from reliability import listing, score_lines, start_cli, wait_for_scores
from reliability import reference_bytes, slow_model  # noqa: F401 (fixtures)
from spectrum.cache.lock import EntryLock, lock_path

SCAN = ("--name", "slow", "--device", "cpu", "--quiet")


def waiting_line(first: subprocess.Popen) -> str:
    return (f"warning: model_snr_results/snr_results_slow.json: process {first.pid} is scanning this model; "
            "waiting for it, then using its scores")


class TestTwoScans:
    """The first scan is paused (SIGSTOP, as Ctrl-Z does) while it holds the lock, so that the second
    one certainly finds it busy, however fast or slow the machine."""

    def test_the_second_waits_and_reuses_the_first_ones_scores(self, slow_model, reference_bytes, tmp_path):
        results = tmp_path / "model_snr_results"
        first = start_cli("--model", str(slow_model), *SCAN, "--threads", "1", cwd=tmp_path)
        wait_for_scores(results / "snr_results_slow.partial.jsonl", 1, first)  # it holds the lock now
        first.send_signal(signal.SIGSTOP)
        second = start_cli("--model", str(slow_model), *SCAN, "--threads", "2", cwd=tmp_path)
        assert second.stderr.readline().rstrip("\n") == waiting_line(first)
        first.send_signal(signal.SIGCONT)

        _, first_err = first.communicate(timeout=120)
        _, second_err = second.communicate(timeout=120)
        assert first.returncode == 0 and first_err == "", first_err
        assert second.returncode == 0 and second_err == "", second_err
        assert (results / "snr_results_slow.json").read_bytes() == reference_bytes
        assert load_json(results / "snr_results_slow.meta.json")["workers"] == 1, "written by the first, not rescanned"
        assert listing(results) == ["snr_results_slow.json", "snr_results_slow.meta.json"]
        assert listing(tmp_path) == ["model_snr_results", "snr_results_slow_unfrozenparameters_50percent.yaml"]

    def test_the_waiting_one_takes_over_when_the_first_is_killed(self, slow_model, reference_bytes, tmp_path):
        results = tmp_path / "model_snr_results"
        partial = results / "snr_results_slow.partial.jsonl"
        first = start_cli("--model", str(slow_model), *SCAN, "--threads", "1", cwd=tmp_path)
        wait_for_scores(partial, 3, first)
        first.send_signal(signal.SIGSTOP)
        second = start_cli("--model", str(slow_model), *SCAN, "--threads", "1", cwd=tmp_path)
        assert second.stderr.readline().rstrip("\n") == waiting_line(first)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        saved = score_lines(partial)

        _, second_err = second.communicate(timeout=120)
        assert second.returncode == 0, second_err
        assert second_err == f"warning: resuming an interrupted scan: {saved} matrices already scored in {partial.relative_to(tmp_path)}\n"
        assert (results / "snr_results_slow.json").read_bytes() == reference_bytes
        assert load_json(results / "snr_results_slow.meta.json")["resumed"] == saved
        assert listing(results) == ["snr_results_slow.json", "snr_results_slow.meta.json"]


class TestEntryLock:
    def test_one_holder_at_a_time(self, tmp_path):
        """Threads with their own lock objects take turns on a counter; the lock file is removed and
        recreated all along, which must never let two of them in at once."""
        path = lock_path(str(tmp_path / "cache" / "snr_results_m.json"))
        counter = tmp_path / "counter"
        counter.write_text("0")
        inside = []

        def work() -> None:
            for _ in range(40):
                with EntryLock(path):
                    inside.append(1)
                    assert len(inside) == 1
                    value = int(counter.read_text())
                    time.sleep(0)
                    counter.write_text(str(value + 1))
                    inside.pop()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert counter.read_text() == "160"
        assert listing(tmp_path / "cache") == [], "no lock file left"

    def test_a_waiter_is_told_who_holds_it_and_gets_it_on_release(self, tmp_path):
        path = lock_path(str(tmp_path / "snr_results_m.json"))
        holder = EntryLock(path).acquire()
        told: list = []
        waiter = EntryLock(path, on_wait=told.append)
        thread = threading.Thread(target=waiter.acquire)
        thread.start()
        time.sleep(0.2)
        assert thread.is_alive() and told == [os.getpid()]
        holder.release()
        thread.join(timeout=10)
        assert not thread.is_alive() and waiter.waited
        waiter.release()
        assert listing(tmp_path) == []

    def test_the_lock_of_a_killed_process_is_free(self, tmp_path):
        path = lock_path(str(tmp_path / "snr_results_m.json"))
        holder = hold_in_another_process(path)
        told: list = []
        blocked = EntryLock(path, on_wait=told.append)
        thread = threading.Thread(target=blocked.acquire)
        thread.start()
        time.sleep(0.2)
        assert thread.is_alive() and told == [holder.pid]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the kernel dropped the dead process's lock"
        blocked.release()
        assert listing(tmp_path) == []

        holder = hold_in_another_process(path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert listing(tmp_path) == ["snr_results_m.lock"], "a dead process leaves its lock file"
        stale = EntryLock(path).acquire()
        assert not stale.waited
        stale.release()
        assert listing(tmp_path) == []


def hold_in_another_process(path: str) -> subprocess.Popen:
    """A process that takes the lock the way spectrum does (flock on the lock file, its pid inside) and keeps it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time\n"
         f"fd = os.open({path!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_failed_first_scan_into_new_nested_folders_leaves_none_behind(tmp_path, tiny_llama_dir):
    from helpers import run_cli

    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    result = run_cli("--model", str(broken), "--cache-dir", "deep/er/cache", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert listing(tmp_path) == ["model"], "deep/er/cache was created for the lock and is removed again"
    (tmp_path / "kept").mkdir()
    result = run_cli("--model", str(broken), "--cache-dir", "kept/new", cwd=tmp_path)
    assert result.returncode == 1 and listing(tmp_path / "kept") == []  # an existing folder stays
