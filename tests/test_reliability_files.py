"""Hostile files around a run: device nodes, FIFOs and links where an output, a lock, a partial scan, a
config or a cache file is expected; writes cut short between the sidecar and the scores; names too long
for the file system.

Every device node is made here, in the test's folder (`mknod`, as root): no test writes to the real
`/dev`. Whatever could hang (a FIFO read, a FIFO written) runs in a subprocess with a timeout, so
that a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import cli_env
from reliability import listing
from spectrum.cache.scores_file import STALE_TEMPORARY_SECONDS, meta_path, remove_stale_temporaries
from spectrum.errors import CacheError
from spectrum.workflow import load_or_scan

HANG = 90  # seconds: a run that takes longer is hanging

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """The issue's model: six 32x16 float32 up_proj matrices in one `model.safetensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    save_file({f"model.layers.{layer}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator)
               for layer in range(6)}, str(folder / "model.safetensors"))
    return folder


def device(path: Path, minor: int) -> Path:
    """A character device node of the memory driver (major 1): 3 is null, 5 zero, 7 full."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    return path


def is_device(path: Path, minor: int) -> bool:
    status = os.lstat(path)
    return stat.S_ISCHR(status.st_mode) and status.st_rdev == os.makedev(1, minor)


def spectrum(cwd: Path, *args: str, timeout: float = HANG, **options) -> subprocess.CompletedProcess:
    """`python -m spectrum ARGS` in a subprocess that fails the test (TimeoutExpired) if it hangs."""
    return subprocess.run([sys.executable, "-m", "spectrum", *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, **options)


def one_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The run failed with `code` and one line `spectrum: error: ...` holding every fragment."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("spectrum: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def tiny(tmp_path) -> Path:
    return save_tiny(tmp_path / "m")


@pytest.fixture
def yaml_bytes(tiny, tmp_path) -> bytes:
    """The YAML a run writes to a plain new file (what every other target must receive)."""
    result = spectrum(tmp_path, "--model", "m", "--no-check", "--quiet", "--output", "plain.yaml")
    assert result.returncode == 0, result.stderr
    return (tmp_path / "plain.yaml").read_bytes()


ARGS = ("--model", "m", "--no-check", "--quiet")


@needs_root
class TestOutputTargets:
    """--output (and the report's --png/--html) never replace a device, a FIFO or a link by a regular file."""

    def test_a_null_device_is_written_through_and_stays_a_device(self, tmp_path, yaml_bytes):
        null = device(tmp_path / "null", 3)
        result = spectrum(tmp_path, *ARGS, "--output", "null")
        assert (result.returncode, result.stderr) == (0, "")
        assert is_device(null, 3)
        assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".tmp")) == []

    def test_a_full_device_is_an_error_and_stays_a_device(self, tmp_path, yaml_bytes):
        full = device(tmp_path / "full", 7)
        one_error(spectrum(tmp_path, *ARGS, "--output", "full"), 1, "full: cannot write (No space left on device)")
        assert is_device(full, 7)

    def test_a_fifo_is_written_through_to_its_reader(self, tmp_path, yaml_bytes):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
        reader.start()  # blocks in open() until the run opens the FIFO for writing
        result = spectrum(tmp_path, *ARGS, "--output", "pipe")
        reader.join(HANG)
        assert (result.returncode, result.stderr) == (0, "")
        assert received == [yaml_bytes]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    def test_a_link_stays_a_link_and_its_target_is_replaced(self, tmp_path, yaml_bytes):
        (tmp_path / "out").mkdir()
        target = tmp_path / "out" / "real.yaml"
        target.write_text("old\n")
        (tmp_path / "link.yaml").symlink_to("out/real.yaml")
        (tmp_path / "dangling.yaml").symlink_to("out/new.yaml")
        for link in ("link.yaml", "dangling.yaml"):
            result = spectrum(tmp_path, *ARGS, "--output", link)
            assert (result.returncode, result.stderr) == (0, "")
            assert (tmp_path / link).is_symlink()
        assert target.read_bytes() == (tmp_path / "out" / "new.yaml").read_bytes() == yaml_bytes
        assert listing(tmp_path / "out") == ["new.yaml", "real.yaml"]

    def test_dev_stdout_is_written_through_after_what_the_file_holds(self, tmp_path, yaml_bytes):
        """A link of the test's own, made as `/dev/stdout` is: a regression replaces it, never the real one."""
        (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
        piped = spectrum(tmp_path, *ARGS, "--output", "stdout")  # stdout is a pipe here
        assert (piped.returncode, piped.stderr, piped.stdout.encode()) == (0, "", yaml_bytes)
        log = tmp_path / "log.txt"
        log.write_text("earlier line\n")
        with open(log, "a") as appended:  # as `spectrum ... --output <stdout link> >> log.txt` would
            result = subprocess.run([sys.executable, "-m", "spectrum", *ARGS, "--output", "stdout"], cwd=tmp_path,
                                    env=cli_env(), stdout=appended, stderr=subprocess.PIPE, timeout=HANG)
        assert result.returncode == 0, result.stderr
        assert log.read_bytes() == b"earlier line\n" + yaml_bytes
        assert (tmp_path / "stdout").is_symlink()

    def test_a_device_in_a_folder_nobody_may_write_to(self, tmp_path, yaml_bytes):
        """Root may write into any folder but one on a read-only mount: the device is bind-mounted read-only
        in a mount namespace of the run's own (`unshare -m`)."""
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
            pytest.skip("no mount namespace for a read-only folder")
        readonly = tmp_path / "ro"
        readonly.mkdir()
        null = device(readonly / "null", 3)
        command = (f"mount --bind -o ro {readonly} {readonly} && "
                   f"exec {sys.executable} -m spectrum {' '.join(ARGS)} --output {null}")
        result = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=tmp_path, env=cli_env(),
                                capture_output=True, text=True, timeout=HANG)
        assert (result.returncode, result.stderr) == (0, "")
        assert is_device(null, 3)

    def test_the_report_writes_through_a_device_and_replaces_a_links_target(self, tmp_path, yaml_bytes):
        pytest.importorskip("matplotlib")
        null = device(tmp_path / "null", 3)
        (tmp_path / "page.html").write_text("old\n")
        (tmp_path / "link.html").symlink_to("page.html")
        result = spectrum(tmp_path, "report", "m", "--png", "null", "--html", "link.html", "--quiet")
        assert (result.returncode, result.stderr) == (0, "")
        assert is_device(null, 3) and (tmp_path / "link.html").is_symlink()
        assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
        full = device(tmp_path / "full", 7)
        one_error(spectrum(tmp_path, "report", "m", "--png", "full", "--no-html", "--quiet"), 1,
                  "full: cannot write (No space left on device)")
        assert is_device(full, 7)


class TestCacheLinks:
    """Nothing in the cache folder is written through a link, and a lock file a process did not create is
    never truncated."""

    @pytest.mark.parametrize("suffix", [".lock", ".partial.jsonl"])
    def test_a_symlinked_lock_or_partial_file_is_an_error_and_its_target_untouched(self, tmp_path, tiny, suffix):
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        cache = tmp_path / "model_snr_results"
        cache.mkdir()
        (cache / f"snr_results_m{suffix}").symlink_to(victim)
        one_error(spectrum(tmp_path, *ARGS), 1, f"model_snr_results/snr_results_m{suffix}: ", "is a symbolic link",
                  "delete")
        assert victim.read_text() == "precious\n"
        assert (cache / f"snr_results_m{suffix}").is_symlink()
        assert not (cache / "snr_results_m.json").exists()

    def test_a_lock_file_with_another_link_is_not_truncated(self, tmp_path, tiny):
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        cache = tmp_path / "model_snr_results"
        cache.mkdir()
        os.link(victim, cache / "snr_results_m.lock")  # a hard link: the same file under the lock's name
        result = spectrum(tmp_path, *ARGS)
        assert (result.returncode, result.stderr) == (0, "")
        assert victim.read_text() == "precious\n"

    def test_a_fifo_lock_file_is_an_error(self, tmp_path, tiny):
        (tmp_path / "model_snr_results").mkdir()
        os.mkfifo(tmp_path / "model_snr_results" / "snr_results_m.lock")
        one_error(spectrum(tmp_path, *ARGS), 1, "snr_results_m.lock: the lock file is a FIFO (named pipe), not a regular file")

    def test_a_symlinked_scores_file_is_replaced_and_its_target_untouched(self, tmp_path, tiny):
        """The choice for the cache's own files: a link there is replaced by the rename, never written through."""
        assert spectrum(tmp_path, *ARGS).returncode == 0
        cache = tmp_path / "model_snr_results"
        victim = tmp_path / "victim.json"
        shutil.move(cache / "snr_results_m.json", victim)
        good = victim.read_bytes()
        victim.write_bytes(good.replace(b"model.layers", b"other.layers"))
        (cache / "snr_results_m.json").symlink_to(victim)
        result = spectrum(tmp_path, *ARGS, "--rescan")
        assert (result.returncode, result.stderr) == (0, "")
        assert victim.read_bytes() == good.replace(b"model.layers", b"other.layers")
        assert not (cache / "snr_results_m.json").is_symlink()
        assert (cache / "snr_results_m.json").read_bytes() == good


class TestInterruptedWrites:
    """The sidecar goes before the scores: a run cut short between the two renames leaves a state the
    next run scans again, and the temporary files a killed run leaves are removed."""

    @staticmethod
    def failing_second_write(monkeypatch, cache_file: str) -> None:
        """os.replace fails (ENOSPC) at the second of `write_scores`' two renames, whichever file it is."""
        real = os.replace
        targets = {cache_file, meta_path(cache_file)}
        calls = []

        def replace(source, destination, *args, **kwargs):
            if os.fspath(destination) in targets:
                calls.append(destination)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(source, destination, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    @pytest.mark.parametrize("previous", ["none", "good"])
    def test_a_failed_second_rename_is_scanned_again(self, tmp_path, tiny, monkeypatch, previous):
        cache_file = str(tmp_path / "cache" / "snr_results_m.json")
        options = dict(cache_dir=str(tmp_path / "cache"), name="m", threads=1, device="cpu")
        if previous == "good":
            assert load_or_scan(str(tiny), **options).scanned
            save_tiny(tiny, seed=1)  # new weights: same names and shapes, other scores
        self.failing_second_write(monkeypatch, cache_file)
        with pytest.raises(CacheError, match="No space left on device"):
            load_or_scan(str(tiny), **options, rescan=previous == "good")
        monkeypatch.undo()
        again = load_or_scan(str(tiny), **options)
        assert again.scanned, "scores without their sidecar, or beside another's, are never trusted"
        text = Path(cache_file).read_bytes()
        assert json.loads(Path(meta_path(cache_file)).read_text())["scores_sha256"] == hashlib.sha256(text).hexdigest()
        assert not load_or_scan(str(tiny), **options).scanned
        assert listing(tmp_path / "cache") == ["snr_results_m.json", "snr_results_m.meta.json"]

    def test_sigkill_between_the_renames_then_a_run_that_rescans_and_cleans_up(self, tmp_path, tiny):
        cache = tmp_path / "model_snr_results"
        killer = (
            "import os, runpy, signal, sys\n"
            "real, seen = os.replace, []\n"
            "def replace(source, destination, *args, **kwargs):\n"
            "    if os.path.basename(destination) in ('snr_results_m.json', 'snr_results_m.meta.json'):\n"
            "        seen.append(destination)\n"
            "        if len(seen) == 2:\n"
            "            os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(source, destination, *args, **kwargs)\n"
            "os.replace = replace\n"
            "sys.argv = ['spectrum', *sys.argv[1:]]\n"
            "runpy.run_module('spectrum', run_name='__main__')\n"
        )
        killed = subprocess.run([sys.executable, "-c", killer, *ARGS], cwd=tmp_path, env=cli_env(),
                                capture_output=True, text=True, timeout=HANG)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = listing(cache)
        temporaries = [name for name in left if name.endswith(".tmp")]
        assert len(temporaries) == 1 and "snr_results_m.lock" in left and "snr_results_m.partial.jsonl" in left, left
        old = time.time() - STALE_TEMPORARY_SECONDS - 1  # a run removes temporary files no live writer holds
        os.utime(cache / temporaries[0], (old, old))

        result = spectrum(tmp_path, *ARGS)
        assert result.returncode == 0
        assert "resuming an interrupted scan: 6 matrices already scored" in result.stderr
        assert listing(cache) == ["snr_results_m.json", "snr_results_m.meta.json"]
        sidecar = json.loads((cache / "snr_results_m.meta.json").read_text())
        assert sidecar["scores_sha256"] == hashlib.sha256((cache / "snr_results_m.json").read_bytes()).hexdigest()

    def test_only_stale_unlocked_temporaries_of_this_entry_are_removed(self, tmp_path):
        old = time.time() - STALE_TEMPORARY_SECONDS - 1
        names = {
            "dead": ".snr_results_m.json.aaaaaaaa.tmp",
            "dead_sidecar": ".snr_results_m.meta.json.bbbbbbbb.tmp",
            "dead_partial": ".snr_results_m.partial.jsonl.cccccccc.tmp",
            "dead_tensors": ".snr_results_m.tensors.json.iiiiiiii.tmp",  # the checkpoint's scores beside trainer-named ones
            "live": ".snr_results_m.json.dddddddd.tmp",  # flocked: its writer is alive
            "young": ".snr_results_m.json.eeeeeeee.tmp",  # made a moment ago: its writer may not have locked it yet
            "other_entry": ".snr_results_m-2.json.ffffffff.tmp",
            "not_ours": "snr_results_m.json.gggggggg.tmp",
        }
        for key, name in names.items():
            (tmp_path / name).write_text(key)
            if key != "young":
                os.utime(tmp_path / name, (old, old))
        (tmp_path / ".snr_results_m.json.hhhhhhhh.tmp").symlink_to(tmp_path / "not_ours")
        with open(tmp_path / names["live"]) as live:
            fcntl.flock(live.fileno(), fcntl.LOCK_EX)
            removed = remove_stale_temporaries(str(tmp_path / "snr_results_m.json"), (".partial.jsonl",))
        assert sorted(removed) == sorted([names["dead"], names["dead_sidecar"], names["dead_partial"], names["dead_tensors"]])
        kept = {names[key] for key in ("live", "young", "other_entry", "not_ours")} | {".snr_results_m.json.hhhhhhhh.tmp"}
        assert set(listing(tmp_path)) == kept


class TestSpecialReads:
    """Every JSON and text file a run reads must be a regular file of sane size: a FIFO or a device is
    named in one line, never waited on or read without end."""

    @staticmethod
    def expect(tmp_path: Path, *fragments: str, args: tuple[str, ...] = ARGS) -> None:
        one_error(spectrum(tmp_path, *args), 1, *fragments)

    def test_a_fifo_config(self, tmp_path, tiny):
        os.mkfifo(tiny / "config.json")
        self.expect(tmp_path, "m/config.json: is a FIFO (named pipe), not a regular file; replace it with the file itself")

    @needs_root
    def test_a_config_linked_to_a_zero_device(self, tmp_path, tiny):
        zero = device(tmp_path / "zero", 5)
        (tiny / "config.json").symlink_to(zero)
        self.expect(tmp_path, f"m/config.json: is a character device (a link to {zero}), not a regular file")

    def test_a_config_far_too_large(self, tmp_path, tiny):
        with open(tiny / "config.json", "wb") as handle:
            handle.truncate(65 << 20)  # sparse: nothing is written
        self.expect(tmp_path, "m/config.json: holds more than 64 MB")

    def test_a_fifo_model_card_of_a_gptq_checkpoint(self, tmp_path, tiny):
        (tiny / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
        os.mkfifo(tiny / "README.md")
        self.expect(tmp_path, "m is a GPTQ-quantized checkpoint", "scan the unquantized base model it was made from instead")

    @pytest.mark.parametrize("name", ["model.safetensors.index.json", "model.gguf", "pytorch_model.bin"])
    def test_fifo_weights_and_indexes(self, tmp_path, name):
        folder = tmp_path / "m"
        folder.mkdir()
        os.mkfifo(folder / name)
        self.expect(tmp_path, f"m/{name}: is a FIFO (named pipe), not a regular file")

    def test_a_fifo_weights_file_given_itself(self, tmp_path):
        os.mkfifo(tmp_path / "model.gguf")
        self.expect(tmp_path, "model.gguf: is a FIFO (named pipe), not a regular file",
                    args=("--model", "model.gguf", "--no-check", "--quiet"))

    @pytest.mark.parametrize("suffix", [".json", ".meta.json", ".partial.jsonl"])
    def test_fifo_cache_files(self, tmp_path, tiny, suffix):
        cache = tmp_path / "model_snr_results"
        if suffix != ".json":  # the sidecar is read beside a scores file
            assert spectrum(tmp_path, *ARGS).returncode == 0
            if suffix == ".partial.jsonl":
                (cache / "snr_results_m.json").unlink()
        cache.mkdir(exist_ok=True)
        (cache / f"snr_results_m{suffix}").unlink(missing_ok=True)
        os.mkfifo(cache / f"snr_results_m{suffix}")
        fix = "delete it" if suffix == ".partial.jsonl" else "delete it or rerun with --rescan"
        self.expect(tmp_path, f"snr_results_m{suffix}: is a FIFO (named pipe), not a regular file; {fix}")

    def test_models_from_a_fifo_still_works(self, tmp_path, tiny):
        fifo = tmp_path / "models"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_text("m\n"), daemon=True)
        writer.start()  # `--models-from <(echo m)`
        result = spectrum(tmp_path, "--models-from", "models", "--no-check", "--quiet", "--output", "-")
        writer.join(HANG)
        assert result.returncode == 0 and result.stdout.startswith("# spectrum"), result.stderr


class TestLongNames:
    """Names too long for the file system are usage errors before any work, with the fix that works."""

    def test_a_model_folder_at_a_long_path_needs_name(self, tmp_path):
        folder = save_tiny(tmp_path / ("x" * 200) / ("y" * 64))
        assert len(str(folder)) > 264
        result = spectrum(tmp_path, "--model", str(folder), "--no-check", "--quiet")
        one_error(result, 2, "would have names of up to", "more than the 255 a file name may have",
                  "name the cache files with --name SHORT")
        assert not (tmp_path / "model_snr_results").exists()
        named = spectrum(tmp_path, "--model", str(folder), "--name", "short", "--no-check", "--quiet")
        assert named.returncode == 0, named.stderr
        assert listing(tmp_path / "model_snr_results") == ["snr_results_short.json", "snr_results_short.meta.json"]

    def test_a_long_name_says_shorter_name(self, tmp_path, tiny):
        one_error(spectrum(tmp_path, "--model", "m", "--name", "n" * 240, "--no-check", "--quiet"), 2,
                  "give a shorter --name")

    def test_a_huge_bogus_model_id_is_no_such_model(self, tmp_path):
        result = spectrum(tmp_path, "--model", "a" * 100_000, "--no-check", "--quiet")
        line = one_error(result, 1, "(100000 characters)", ": no such file or folder")
        assert len(line) < 500
        assert listing(tmp_path) == []

    def test_a_top_percent_of_400_digits_fails_before_the_scan(self, tmp_path, tiny):
        one_error(spectrum(tmp_path, *ARGS, "--top-percent", "1e-400"), 2,
                  "the YAML's file name snr_results_m_unfrozenparameters_0.000", "more than the 255",
                  "give --output a shorter path, or a --top-percent with fewer digits")
        assert listing(tmp_path) == ["m"], "nothing scanned, nothing written"
        named = spectrum(tmp_path, *ARGS, "--top-percent", "1e-400", "--output", "out.yaml")
        # past the name check: the scan runs, and so small a K selects nothing, which is its own error
        assert named.returncode == 1 and "selects no module" in named.stderr, named.stderr

    def test_the_report_checks_its_names_before_drawing(self, tmp_path, tiny):
        assert spectrum(tmp_path, *ARGS, "--output", "out.yaml").returncode == 0
        one_error(spectrum(tmp_path, "report", "m", "--top-percent", "1e-400"), 2,
                  "--png snr_results_m_0.000", "give --png a shorter path")
