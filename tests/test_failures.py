"""Unexpected exceptions inside jobs: faults injected into real runs of convert, attribute, activations, ingest and
analyze. Each must end with one line naming the step and the file ("relaylab CMD: STEP failed on FILE: TYPE:
MESSAGE"), exit status 1, the traceback only with -v, and a store that the same command, run again without the
fault, completes to the same bytes as an uninterrupted run (or no store at all when nothing was committed). Ctrl-C
ends with status 130 and one line, leaving a resumable store. Most cases run the command in-process (conftest's
`cli`); the child-process cases check the real stderr across the process boundary, with a real SIGINT."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from relaylab.analyze import run as analyze_run
from relaylab.cli import EXIT_ERROR, EXIT_INTERRUPTED, unexpected_error_line
from relaylab.data import store as zstore
from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.errors import IncompleteStoreError, step
from relaylab.explain import ingest as ingest_module
from relaylab.explain import jobs

from .helpers import make_store

HINT = " (run with -v for the traceback)"
INTERRUPTED = "interrupted; run the same command again to resume"
# inputs: uint8 3×32×32 (3 KiB a sample): 4 samples per inner chunk, 8 per shard and per write block;
# attributions: float32 (12 KiB a sample): 1 per inner chunk, 2 per shard and block
CHUNK_BYTES, SHARD_BYTES = 4 * 3 * 32 * 32, 8 * 3 * 32 * 32


def one_line(stderr: str) -> str:
    """The single line a failed command printed (asserting that it printed exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store by its path inside it: what a resumed and an uninterrupted run must agree on."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def committed_blocks(store: Path, group: str) -> int:
    return int(zstore._root(store)[zstore.progress_key(group)][:].sum())


# ------------------------------------------------------------------------------------------------------- convert


def small_copy_blocks(monkeypatch):
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", CHUNK_BYTES)
    monkeypatch.setattr(zstore, "SHARD_BYTES", SHARD_BYTES)
    monkeypatch.setattr(zstore, "SHARDS_PER_COPY_BLOCK", 1)  # a write block is one shard: 8 blocks of inputs


class DiskFull:
    """Makes `ShardWriter.store` fail on one shard of `array` (block `index`), as a full disk would, while armed."""

    def __init__(self, monkeypatch, array: str, index: int):
        self.armed, self.array, self.index, self.stored = True, array, index, []
        original = zstore.ShardWriter.store

        def store(writer, shards):
            if writer.array.path == self.array:
                if self.armed and shards[0][0] == self.index:
                    raise OSError(28, "No space left on device")
                self.stored.append(shards[0][0])
            original(writer, shards)

        monkeypatch.setattr(zstore.ShardWriter, "store", store)


def test_a_failed_convert_names_step_and_file_and_resumes_to_the_same_bytes(make_project, tmp_path, monkeypatch, cli):
    small_copy_blocks(monkeypatch)
    project = make_project(n_samples=64, height=32, width=32)
    out, reference = tmp_path / "p.zarr", tmp_path / "reference.zarr"
    assert cli("convert", "-q", project, reference).returncode == 0
    fault = DiskFull(monkeypatch, "inputs/input", index=2)

    failed = cli("convert", "-q", project, out)
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab convert: writing inputs samples 16–23 failed on {out}: "
                                       f"OSError: [Errno 28] No space left on device{HINT}")
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    assert fault.stored == [0, 1]
    assert committed_blocks(out, "inputs") == 2 and zstore.unfinished_groups(out) == ["inputs"]
    with pytest.raises(IncompleteStoreError, match="run the same command again"):
        open_project(out)

    verbose = cli("-v", "convert", "-q", project, out)  # the same fault again: now with the traceback
    assert verbose.returncode == EXIT_ERROR
    assert "Traceback (most recent call last)" in verbose.stderr and "in store" in verbose.stderr
    last = verbose.stderr.strip().splitlines()[-1]
    assert last.startswith("relaylab convert: writing inputs samples 16–23 failed on") and HINT not in last
    assert fault.stored == [0, 1] and committed_blocks(out, "inputs") == 2  # nothing redone, nothing lost

    fault.armed = False
    resumed = cli("convert", "-q", project, out)
    assert resumed.returncode == 0, resumed.stderr
    assert fault.stored == list(range(8))  # the resumed run started at the block that failed, and redid none
    assert store_files(out) == store_files(reference)


def test_a_convert_failing_before_any_block_leaves_no_store(make_project, tmp_path, monkeypatch, cli):
    """The issue's case: zarr raising while the new store's first group is laid out. No store is left behind, and
    the same command without the fault makes the store an uninterrupted run makes."""
    project = make_project(n_samples=40)
    out, reference = tmp_path / "p.zarr", tmp_path / "reference.zarr"
    assert cli("convert", "-q", project, reference).returncode == 0
    original = zstore._create_template

    def fails_on_inputs(path, group, *args):
        if group == "inputs":
            raise ValueError("could not convert string to float: '/data/img0000.png'")
        return original(path, group, *args)

    monkeypatch.setattr(zstore, "_create_template", fails_on_inputs)
    failed = cli("convert", "-q", project, out)
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab convert: creating inputs failed on {out}: "
                                       f"ValueError: could not convert string to float: '/data/img0000.png'{HINT}")
    assert not out.exists()

    monkeypatch.setattr(zstore, "_create_template", original)
    assert cli("convert", "-q", project, out).returncode == 0
    assert store_files(out) == store_files(reference)


def test_a_convert_failing_after_its_inputs_keeps_them_and_drops_the_empty_group(make_project, tmp_path, monkeypatch, cli):
    """The store holds committed work (the inputs), so it stays; the group this run created and wrote nothing into
    does not stay "writing"."""
    small_copy_blocks(monkeypatch)
    project = make_project(n_samples=64, height=32, width=32)
    out = tmp_path / "p.zarr"
    fault = DiskFull(monkeypatch, "attributions/lrp_epsilon_plus/attribution", index=0)
    failed = cli("convert", "-q", project, out)
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr).startswith("relaylab convert: writing attributions/lrp_epsilon_plus sample")
    # the inputs are complete; the attribution group, with nothing in it, is gone rather than left "writing"
    assert zstore.group_metas(out)["inputs"]["status"] == "complete"
    assert zstore.list_groups(out, "attributions") == [] and zstore.unfinished_groups(out) == []
    fault.armed = False
    assert cli("convert", "-q", project, out).returncode == 0
    with open_project(out) as converted, open_project(project) as source:
        np.testing.assert_array_equal(converted.attributions["lrp_epsilon_plus"].sortby("sample")["attribution"].values,
                                      source.attributions["lrp_epsilon_plus"].sortby("sample")["attribution"].values)


# ------------------------------------------------------------------------------------------ attribute, activations


def small_job_blocks(monkeypatch):
    """8 samples per write block of float32 3×16×16 attributions: 5 blocks for 40 samples."""
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 3 * 16 * 16 * 4 * 4)
    monkeypatch.setattr(zstore, "SHARD_BYTES", 3 * 16 * 16 * 4 * 8)


REAL_BLOCKS = {"attribution_block": jobs.attribution_block}


def failing_at(monkeypatch, name: str, start: int, error: BaseException) -> list[int]:
    """Replace `jobs.<name>` by one raising `error` for the block at `start` (none: -1); returns the starts it
    computed."""
    real, computed = REAL_BLOCKS[name], []

    def block(job, first, stop):
        if first == start:
            raise error
        computed.append(first)
        return real(job, first, stop)

    monkeypatch.setattr(jobs, name, block)
    return computed


def test_a_failed_attribute_names_the_block_and_resumes_to_the_same_bytes(tmp_path, monkeypatch, cli):
    small_job_blocks(monkeypatch)
    a, b = make_store(tmp_path / "a" / "p.zarr"), make_store(tmp_path / "b" / "p.zarr")
    command = ["attribute", "-q", "--name", "sg", "--method", "smoothgrad", "--batch-size", "3"]
    assert cli(*command, a).returncode == 0
    computed = failing_at(monkeypatch, "attribution_block", 16, RuntimeError("CUDA error: an illegal memory access\nwas encountered"))

    failed = cli(*command, b)
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab attribute: computing attributions/sg samples 16–23 failed on {b}: "
                                       f"RuntimeError: CUDA error: an illegal memory access was encountered{HINT}")
    assert computed == [0, 8]
    with pytest.raises(IncompleteStoreError, match="2 of 5 blocks"), open_project(b) as project:
        project.attributions["sg"]

    computed = failing_at(monkeypatch, "attribution_block", -1, RuntimeError())  # no fault
    resumed = cli(*command, b)
    assert resumed.returncode == 0, resumed.stderr
    assert computed == [16, 24, 32]
    assert store_files(b / "attributions" / "sg") == store_files(a / "attributions" / "sg")


def test_an_attribute_failing_at_its_first_block_leaves_nothing_in_the_way(tmp_path, monkeypatch, cli):
    """No block committed: the group is removed, so a run with other settings under the same name is not refused."""
    small_job_blocks(monkeypatch)
    store = make_store(tmp_path / "p.zarr")
    failing_at(monkeypatch, "attribution_block", 0, MemoryError("out of memory"))
    failed = cli("attribute", "-q", store, "--name", "x", "--method", "gradient")
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr).startswith(f"relaylab attribute: computing attributions/x samples 0–7 failed on {store}: MemoryError")
    assert zstore.list_groups(store, "attributions") == [] and zstore.unfinished_groups(store) == []
    failing_at(monkeypatch, "attribution_block", -1, RuntimeError())
    done = cli("attribute", "-q", store, "--name", "x", "--method", "epsilon_plus")  # other settings, same name
    assert done.returncode == 0, done.stderr


def test_ctrl_c_in_attribute_exits_130_quietly_and_resumes(tmp_path, monkeypatch, cli):
    small_job_blocks(monkeypatch)
    a, b = make_store(tmp_path / "a" / "p.zarr"), make_store(tmp_path / "b" / "p.zarr")
    command = ["attribute", "-q", "--name", "lrp"]
    assert cli(*command, a).returncode == 0
    failing_at(monkeypatch, "attribution_block", 24, KeyboardInterrupt())
    stopped = cli(*command, b)
    assert stopped.returncode == EXIT_INTERRUPTED and stopped.stderr.strip() == INTERRUPTED
    assert committed_blocks(b, "attributions/lrp") == 3
    computed = failing_at(monkeypatch, "attribution_block", -1, RuntimeError())
    assert cli(*command, b).returncode == 0
    assert computed == [24, 32]
    assert store_files(b / "attributions" / "lrp") == store_files(a / "attributions" / "lrp")


def test_a_failed_activations_job_names_the_write_and_resumes(tmp_path, monkeypatch, cli):
    """The fault in the store's write of a block (not the computation): the block is not recorded as committed."""
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 8 * 4 * 4 * 4 * 2)  # 6 samples per block: 4 blocks of 20
    monkeypatch.setattr(zstore, "SHARD_BYTES", 8 * 4 * 4 * 4 * 6)
    a, b = make_store(tmp_path / "a" / "p.zarr", n=20), make_store(tmp_path / "b" / "p.zarr", n=20)
    command = ["activations", "-q", "--layers", "features.0", "classifier", "--batch-size", "4"]
    assert cli(*command, a).returncode == 0
    fault = DiskFull(monkeypatch, "activations/activations/features.0/activation", index=2)
    failed = cli(*command, b)
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab activations: writing activations/activations samples 12–17 failed on {b}: "
                                       f"OSError: [Errno 28] No space left on device{HINT}")
    assert committed_blocks(b, "activations/activations") == 2
    fault.armed = False
    assert cli(*command, b).returncode == 0
    assert store_files(b / "activations") == store_files(a / "activations")


# ------------------------------------------------------------------------------------------------------- ingest


def test_an_image_failing_to_decode_is_named_and_the_ingest_resumes(tmp_path, monkeypatch, cli):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 1)  # one 3×8×8 sample per block: 12 blocks
    monkeypatch.setattr(zstore, "SHARD_BYTES", 3 * 8 * 8)
    real, bad = ingest_module.prepare, {"file": str(folder / "dog" / "2.png")}

    def prepare(image, prep):  # the PNGs are RGB: `to_rgb` passes Pillow's image, with its file name, through
        if getattr(image, "filename", None) == bad["file"]:
            raise ZeroDivisionError("division by zero")
        return real(image, prep)

    monkeypatch.setattr(ingest_module, "prepare", prepare)
    out, reference = tmp_path / "p.zarr", tmp_path / "reference.zarr"
    failed = cli("ingest", "-q", folder, out, "--size", "8", "8")
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab ingest: decoding and resizing failed on {bad['file']}: "
                                       f"ZeroDivisionError: division by zero{HINT}")
    assert committed_blocks(out, "inputs") == 8  # the cats, dogs 0 and 1: every block before the failing image

    bad["file"] = None
    assert cli("ingest", "-q", folder, out, "--size", "8", "8").returncode == 0
    assert cli("ingest", "-q", folder, reference, "--size", "8", "8").returncode == 0
    with open_project(out) as resumed, open_project(reference) as uninterrupted:
        np.testing.assert_array_equal(resumed.inputs["input"].values, uninterrupted.inputs["input"].values)


# ------------------------------------------------------------------------------------------------------ analyze

CONFIG = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"},
          "clusterings": {"kmeans": {"k": [2, 3]}}}


def analysis_arrays(store: Path, name: str) -> dict[str, np.ndarray]:
    with open_project(store) as project:
        tree = project.analyses[name]
        return {f"{node.path}/{var}": node[var].values for node in tree.subtree for var in node.variables}


def test_a_failed_analyze_names_the_category_and_resumes_to_the_same_result(make_project, tmp_path, monkeypatch, cli, dask_cluster):
    store, reference = tmp_path / "p.zarr", tmp_path / "reference.zarr"
    convert_to_zarr(make_project(n_samples=90), store, progress=False)
    shutil.copytree(store, reference)
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    command = ["analyze", "-q", "--name", "spray", "--config", config, "--scheduler", dask_cluster.scheduler_address]
    assert cli(*command[:1], reference, *command[1:]).returncode == 0
    original = analyze_run.run_batch

    def fails_on_class_1(writer, attribution, batch, config):  # pickled by value to the workers, where it raises
        done = []
        for category, rows in batch.items():
            with step(f"analysing {writer.group}/{category}", writer.path):
                if rows[0] % 3 == 1:
                    raise FloatingPointError("eigensolver did not converge")
            done += original(writer, attribution, {category: rows}, config)
        return done

    monkeypatch.setattr(analyze_run, "run_batch", fails_on_class_1)
    failed = cli(*command[:1], store, *command[1:])
    assert failed.returncode == EXIT_ERROR
    assert one_line(failed.stderr) == (f"relaylab analyze: analysing analyses/spray/n00000001 failed on {store}: "
                                       f"FloatingPointError: eigensolver did not converge{HINT}")
    metas = zstore.group_metas(store)
    assert metas.get("analyses/spray/n00000001") is None  # never committed
    if "analyses/spray" in metas:  # kept only for the categories committed before the failure arrived
        assert metas["analyses/spray"]["status"] == "writing"
        assert any(metas.get(f"analyses/spray/n0000000{c}", {}).get("status") == "complete" for c in (0, 2))

    monkeypatch.setattr(analyze_run, "run_batch", original)
    assert cli(*command[:1], store, *command[1:]).returncode == 0
    resumed, expected = analysis_arrays(store, "spray"), analysis_arrays(reference, "spray")
    assert sorted(resumed) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_array_equal(resumed[key], values, err_msg=key)


# ----------------------------------------------------------------------------------------- the one-line report


def test_the_report_is_one_line_however_the_message_looks():
    args = argparse.Namespace(command="convert", verbose=False, project=Path("in.yaml"))
    with pytest.raises(ValueError) as caught, step("reading inputs samples 0–9", "data.h5"), step("inner", "x.h5"):
        raise ValueError("a\nmulti-line\tmessage " + "x" * 1000)
    line = unexpected_error_line(args, caught.value)
    assert "\n" not in line and len(line) < 600 and line.endswith("x…" + HINT)
    assert line.startswith("relaylab convert: inner failed on x.h5: ValueError: a multi-line message xxx")  # the innermost step
    assert unexpected_error_line(args, AssertionError()) == f"relaylab convert failed on in.yaml: AssertionError{HINT}"
    verbose = argparse.Namespace(command="info", verbose=True, projects=[Path("a.zarr"), Path("b.zarr")])
    assert unexpected_error_line(verbose, ValueError("bad")) == "relaylab info failed on a.zarr, b.zarr: ValueError: bad"


# -------------------------------------------------------------------------------------------- child processes

# Ctrl-C as a terminal's foreground job gets it: a job started in the background by a non-interactive shell (CI, `cmd &`)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
SIGINT_AS_IN_A_TERMINAL = "signal.signal(signal.SIGINT, signal.default_int_handler)"

FAULTY = textwrap.dedent("""
    import os, signal, sys
    {sigint}
    from relaylab.data import store
    store.INNER_CHUNK_BYTES, store.SHARD_BYTES, store.SHARDS_PER_COPY_BLOCK = {chunk}, {shard}, 1
    original = store.ShardWriter.store
    def faulty(writer, shards):
        if writer.array.path == "inputs/input" and shards[0][0] == 2:
            {fault}
        original(writer, shards)
    store.ShardWriter.store = faulty
    from relaylab.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_faulty(tmp_path: Path, fault: str, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY.format(chunk=CHUNK_BYTES, shard=SHARD_BYTES, fault=fault, sigint=SIGINT_AS_IN_A_TERMINAL))
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # four child processes; the in-process cases cover the same messages
def test_the_real_command_line_prints_no_traceback_and_ctrl_c_exits_130(make_project, tmp_path, monkeypatch, cli):
    small_copy_blocks(monkeypatch)  # as in the child processes
    project = make_project(n_samples=64, height=32, width=32)
    failed, interrupted = tmp_path / "failed.zarr", tmp_path / "interrupted.zarr"

    child = run_faulty(tmp_path, 'raise OSError(5, "Input/output error")', "convert", "-q", project, failed)
    assert child.returncode == EXIT_ERROR
    assert "Traceback" not in child.stderr
    assert one_line(child.stderr) == f"relaylab convert: writing inputs samples 16–23 failed on {failed}: OSError: [Errno 5] Input/output error{HINT}"
    verbose = run_faulty(tmp_path, 'raise OSError(5, "Input/output error")', "-v", "convert", "-q", project, failed)
    assert verbose.returncode == EXIT_ERROR and "Traceback (most recent call last)" in verbose.stderr

    # a real SIGINT, as Ctrl-C sends, while the block is being stored: that block still lands, then the job stops
    child = run_faulty(tmp_path, "os.kill(os.getpid(), signal.SIGINT)", "convert", "-q", project, interrupted)
    assert child.returncode == EXIT_INTERRUPTED, child.stderr
    assert child.stderr.strip() == INTERRUPTED
    assert 3 <= committed_blocks(interrupted, "inputs") < 8

    for out in (failed, interrupted):
        assert cli("convert", "-q", project, out).returncode == 0
    reference = tmp_path / "reference.zarr"
    assert cli("convert", "-q", project, reference).returncode == 0
    assert store_files(failed) == store_files(reference) == store_files(interrupted)
    assert any(name.startswith("attributions/lrp") for name in store_files(reference))  # compared too


ANALYZE_CTRL_C = textwrap.dedent("""
    import os, signal, sys

    def run():
        from relaylab.analyze import run as analyze_run
        from relaylab.data import store
        record = store.AnalysisWriter.record
        analyze_run.BATCH_SAMPLES = 30  # one category per task

        def interrupting(self, categories):  # the first task's category is committed (by the worker)
            record(self, categories)
            os.killpg(0, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group, the Dask workers too

        store.AnalysisWriter.record = interrupting
        from relaylab.cli import main
        sys.exit(main(sys.argv[1:]))

    if __name__ == "__main__":  # the workers' processes import this file too
        SIGINT_AS_IN_A_TERMINAL
        run()
""").replace("SIGINT_AS_IN_A_TERMINAL", SIGINT_AS_IN_A_TERMINAL)


@pytest.mark.slow
def test_ctrl_c_stops_analyze_and_its_local_cluster_quietly(make_project, tmp_path, cli):
    """Ctrl-C reaches the LocalCluster's worker processes too: they ignore it (no KeyboardInterrupt traceback from
    them), the command stops with 130 and one line, and the category committed before it stays."""
    store = tmp_path / "p.zarr"
    convert_to_zarr(make_project(n_samples=90), store, progress=False)
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    script = tmp_path / "ctrl_c.py"
    script.write_text(ANALYZE_CTRL_C)
    command = ["analyze", "-q", store, "--name", "spray", "--config", config, "--workers", "1"]
    child = subprocess.run([sys.executable, script, *map(str, command)], capture_output=True, text=True, timeout=300,
                           start_new_session=True)  # its own process group, for os.killpg
    assert child.returncode == EXIT_INTERRUPTED, child.stderr
    assert "Traceback" not in child.stderr and child.stderr.strip().splitlines()[-1] == INTERRUPTED
    metas = zstore.group_metas(store)
    assert metas["analyses/spray"]["status"] == "writing"
    # the worker commits its tasks' categories itself: it may finish another before the interrupt shuts it down
    assert sum(metas.get(f"analyses/spray/n0000000{c}", {}).get("status") == "complete" for c in range(3)) >= 1
    assert cli(*command).returncode == 0
    with open_project(store) as project:
        assert sorted(project.analyses["spray"].children) == ["n00000000", "n00000001", "n00000002"]
